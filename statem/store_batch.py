"""The set-based SQL of a batch of steps: many executions' steps in one transaction.

A worker that has many due timers or many effect results at once writes them as one
transaction of a few statements instead of one transaction of five or six statements per
step (:mod:`statem.batch` decides what goes in a batch; :func:`statem.steps.commit_many`
is the step writer). Every statement here is per-row fenced, so one stale step never
spoils the others:

* :func:`lock_executions` -- one ``SELECT ... FOR NO KEY UPDATE`` of every execution of the
  batch, in id order (the order every writer locks in, so batches do not deadlock);
* :func:`take_claimed` -- one ``DELETE ... RETURNING`` of the armed tasks of the
  executions whose task in the batch is still claimed under our claim (a task reclaimed
  by another worker fences its execution out: nothing of it is deleted);
* :func:`write_executions` -- the fenced execution ``UPDATE`` for each step
  (``executemany``: psycopg sends it as one pipeline), each row fenced by its version;
* :func:`insert_history` / :func:`insert_pending` -- the history rows and armed tasks of
  every step, one ``executemany`` each.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, delete, select, tuple_

from . import dialects
from .errors import ConcurrencyError
from .kinds import TaskStatus
from .schema import executions, tasks
from .semantics import StepRecord, TaskSpec
from .store import _INSERT_STEPS, _INSERT_TASKS, _WRITE_STEP, INBOX_KINDS, _step_rows, _task_rows


def lock_executions(conn: Connection, ids: Sequence[str]) -> dict[str, Row[Any]]:
    """The execution rows of ``ids``, locked until the transaction ends, in id order
    (missing ids are absent). SQLite's writing transaction already holds its write lock."""
    q = select(executions).where(executions.c.id.in_(sorted(ids))).order_by(executions.c.id)
    if not dialects.is_sqlite(conn):
        q = q.with_for_update(key_share=True)
    return {row.id: row for row in conn.execute(q)}


def take_claimed(conn: Connection, claims: Sequence[tuple[int, str]]) -> dict[str, list[Row[Any]]]:
    """Delete every armed task (the inbox kinds aside) of each execution whose task in
    ``claims`` (task id, claim token) is still claimed under that token; returns the
    deleted rows by execution id. An execution whose task was reclaimed or discarded is
    left untouched, and absent from the result."""
    if not claims:
        return {}
    ours = select(tasks.c.execution_id).where(
        tuple_(tasks.c.id, tasks.c.claim).in_(list(claims)), tasks.c.status == TaskStatus.claimed
    )
    q = (
        delete(tasks)
        .where(tasks.c.execution_id.in_(ours.scalar_subquery()), tasks.c.kind.not_in(INBOX_KINDS))
        .returning(*tasks.c)
    )
    taken: dict[str, list[Row[Any]]] = defaultdict(list)
    for row in conn.execute(q):
        taken[row.execution_id].append(row)
    return taken


def write_executions(conn: Connection, writes: Sequence[dict[str, Any]]) -> None:
    """Write back each execution after its step, fenced by its version (``p_id``,
    ``p_version`` and the new values, as :func:`statem.store.write_step` takes them).
    Raises ConcurrencyError if any row's fence failed (the caller holds their locks, so
    that is a bug, and the whole batch rolls back)."""
    if not writes:
        return
    matched = conn.execute(_WRITE_STEP, list(writes)).rowcount
    if matched != len(writes):
        raise ConcurrencyError(f"{len(writes) - matched} of {len(writes)} executions in a batch moved")


def history_rows(
    execution_id: str, first_seq: int, records: Sequence[StepRecord], now: dt.datetime
) -> list[dict[str, Any]]:
    """One step's history rows, numbered from ``first_seq``."""
    return _step_rows(execution_id, first_seq, records, now, None)


def insert_history(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert the history rows of every step of the batch in one ``executemany``."""
    if rows:
        conn.execute(_INSERT_STEPS, list(rows))


def task_rows(execution_id: str, specs: Sequence[TaskSpec], now: dt.datetime) -> list[dict[str, Any]]:
    """The rows of tasks armed pending for workers."""
    return _task_rows(execution_id, specs, now, None)


def insert_pending(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert the tasks every step of the batch armed, pending for workers, in one ``executemany``."""
    if rows:
        conn.execute(_INSERT_TASKS, list(rows))


__all__ = [
    "history_rows",
    "insert_history",
    "insert_pending",
    "lock_executions",
    "take_claimed",
    "task_rows",
    "write_executions",
]
