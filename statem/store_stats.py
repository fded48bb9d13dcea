"""The operator's figures, as SQL: ``stats()`` (exact counts, or the planner's estimates
on PostgreSQL tables past STATS_EXACT_ROWS rows), effects no worker has claimed, the
per-state counts of a machine's page, and the database ping of ``/healthz``.

Like :mod:`statem.store`, every function takes an open connection; these are reads only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, literal_column, select, text

from . import dialects
from .kinds import TaskStatus
from .schema import executions, steps, tasks


def ping(conn: Connection) -> None:
    """One round trip: raises when the database does not answer."""
    conn.execute(select(literal_column("1"))).scalar()


def count_states(conn: Connection, machine_id: str, states: Sequence[str], cap: int) -> dict[str, int]:
    """How many executions of the machine are in each of ``states``, each counted up to ``cap + 1``.

    Bounded on purpose (a page view must not count a million rows): a count above ``cap``
    means "more than cap".
    """
    counts: dict[str, int] = {}
    for state in states:
        some = (
            select(literal_column("1"))
            .select_from(executions)
            .where(executions.c.machine_id == machine_id, executions.c.state == state)
            .limit(cap + 1)
            .subquery()
        )
        counts[state] = conn.execute(select(func.count()).select_from(some)).scalar_one()
    return counts


#: PostgreSQL: above this many rows (the planner's estimate), stats() reports the
#: planner's estimates of the big counts instead of counting (COUNT(*) reads every row).
STATS_EXACT_ROWS = 50_000


def _estimated_rows(conn: Connection, table: str) -> int | None:
    """PostgreSQL: the planner's row estimate of a table (pg_class.reltuples, kept by
    ANALYZE and autovacuum); None on SQLite or when never analyzed."""
    if dialects.is_sqlite(conn):
        return None
    n = conn.execute(
        text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}
    ).scalar()
    return int(n) if n is not None and n >= 0 else None


def _estimated_by(conn: Connection, table: str, column: str, rows: int) -> dict[str, int] | None:
    """PostgreSQL: rows per value of a low-cardinality column, from the planner's most
    common values and their frequencies (pg_stats); None when there are none."""
    found = conn.execute(
        text(
            "SELECT most_common_vals::text::text[], most_common_freqs FROM pg_stats "
            "WHERE schemaname = current_schema() AND tablename = :t AND attname = :c"
        ),
        {"t": table, "c": column},
    ).first()
    if found is None or found[0] is None:
        return None
    return {value: round(freq * rows) for value, freq in zip(found[0], found[1], strict=True)}


#: PostgreSQL: the extended statistics (migration 0005) on the combinations of task kind and status.
TASK_STATISTICS = "statem_tasks_kind_status"


def _estimated_tasks(conn: Connection, rows: int) -> dict[str, int] | None:
    """PostgreSQL: tasks per ``kind/status`` from the extended statistics on the pair."""
    found = conn.execute(
        text(
            "SELECT most_common_vals, most_common_freqs FROM pg_stats_ext "
            "WHERE statistics_schemaname = current_schema() AND statistics_name = :s"
        ),
        {"s": TASK_STATISTICS},
    ).first()
    if found is None or found[0] is None:
        return None
    return {f"{k}/{s}": round(freq * rows) for (k, s), freq in zip(found[0], found[1], strict=True)}


def unclaimed_effects(conn: Connection, ready_before: dt.datetime) -> dict[str, tuple[int, dt.datetime]]:
    """Effects with tasks ready since before ``ready_before`` that no worker ever claimed
    (pending, 0 attempts): effect name -> (tasks, earliest due time)."""
    q = (
        select(tasks.c.effect, func.count(), func.min(tasks.c.due_at))
        .where(
            tasks.c.kind == "effect",
            tasks.c.status == "pending",
            tasks.c.attempts == 0,
            tasks.c.due_at < ready_before,
        )
        .group_by(tasks.c.effect)
    )
    return {name: (n, due) for name, n, due in conn.execute(q) if name is not None}


def stats(conn: Connection, now: dt.datetime) -> dict[str, Any]:
    """Counts for operators: executions by status, tasks by kind/status, overdue work.

    Exact, except on PostgreSQL for a table past STATS_EXACT_ROWS rows: there the
    executions by status, the tasks by kind and status and the number of history steps
    are the planner's estimates (``estimated`` lists which), so the call stays in
    milliseconds on a table of millions. The overdue figures are always exact.
    """
    estimated: list[str] = []
    by_status: dict[str, int] | None = None
    rows = _estimated_rows(conn, executions.name)
    if rows is not None and rows > STATS_EXACT_ROWS:
        by_status = _estimated_by(conn, executions.name, "status", rows)
        estimated += ["executions"] if by_status is not None else []
    if by_status is None:
        counted = conn.execute(select(executions.c.status, func.count()).group_by(executions.c.status))
        by_status = {row[0]: row[1] for row in counted}
    by_task: dict[str, int] | None = None
    task_rows = _estimated_rows(conn, tasks.name)
    if task_rows is not None and task_rows > STATS_EXACT_ROWS:
        by_task = _estimated_tasks(conn, task_rows)
        estimated += ["tasks"] if by_task is not None else []
    if by_task is None:
        counted = conn.execute(
            select(tasks.c.kind, tasks.c.status, func.count()).group_by(tasks.c.kind, tasks.c.status)
        )
        by_task = {f"{kind}/{status}": n for kind, status, n in counted}
    overdue = conn.execute(
        select(func.count(), func.min(tasks.c.due_at)).where(
            tasks.c.status == TaskStatus.pending, tasks.c.due_at <= now
        )
    ).one()
    oldest = overdue[1]
    step_rows = _estimated_rows(conn, steps.name)
    if step_rows is not None and step_rows > STATS_EXACT_ROWS:
        estimated.append("steps")
    else:
        step_rows = conn.execute(select(func.count()).select_from(steps)).scalar()
    return {
        "executions": by_status,
        "tasks": by_task,
        "overdue_tasks": overdue[0],
        "oldest_overdue_seconds": (now - oldest).total_seconds() if oldest is not None else None,
        "steps": step_rows,
        **({"estimated": estimated} if estimated else {}),
    }
