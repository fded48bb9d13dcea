"""Issue 14 (3): a million executions: the admin and API reads an operator uses, at scale.

Fills a scratch database with bulk SQL (no engine calls: ``INSERT ... SELECT`` over
``generate_series`` on PostgreSQL, over a recursive CTE on SQLite) with:

* 1,000,000 executions (x ``--scale``): 75% ``finished``, 20% ``waiting`` on a timer due
  some time in the next year (one pending ``timer`` task each), 5% ``failed``; every
  tenth one a finished child of the execution before it; created over the past year;
* 10 history rows each (10,000,000), and one execution with 1,000 steps;

then ``ANALYZE``s and times, in turns (each query once per round, ``--rounds`` rounds):

* every ```` ```sql ```` block of the README's admin cookbook, as written there (the
  example execution id replaced by the 1,000-step one);
* ``engine.executions()`` (what ``statem list`` runs) unfiltered and with each filter:
  machine, status (each), state, parent, older-than;
* ``engine.stats()``, ``engine.history()`` of the 1,000-step execution, ``engine.get()``,
  and ``engine.trigger()`` of a waiting execution (a real step: lock, fence, history,
  re-armed timer);
* the raw baseline: a bare primary-key ``SELECT`` of one execution, and one raw
  transaction (``bench.common.raw_transaction``), in the same rounds.

Target: each under 50 ms p99 on PostgreSQL. SQLite runs at a tenth of the size (the
embedded default is not meant for a million executions; its figures are printed for
reference, with no target). With ``--explain``, prints PostgreSQL's ``EXPLAIN ANALYZE``
of every SELECT the measured calls send (the first round's).

With ``--compare``, the same reads are timed a second time on the same data after
dropping the indexes of migration 0005 (and with ``stats()`` counting exactly): before
and after in one run.

Run: ``python -m bench.million [--quick] [--scale 0.1] [--explain] [--compare] [--only postgresql]``.
Quick mode is ``--scale 0.1`` (100,000 executions, 1,000,000 history rows).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from statem import Engine, store_stats

from .common import (
    ROOT,
    Result,
    new_engine,
    percentile,
    quiet_logs,
    raw_engine,
    raw_setup,
    raw_transaction,
    say,
    scratch,
    summary,
)

#: Executions at scale 1, history rows per execution, steps of the long execution.
EXECUTIONS, STEPS_EACH, LONG = 1_000_000, 10, 1_000
#: SQLite runs at this fraction of the PostgreSQL size.
SQLITE_FRACTION = 0.1
#: Executions filled per statement (progress lines between them).
CHUNK = 200_000
TARGET_MS = 50.0
KINDS = ("postgresql", "sqlite")
LONG_ID = "mx-long"
COOKBOOK_ID = "order-R1234"

ORDER = {
    "id": "mill_order",
    "version": 1,
    "start_at": "open",
    "context": {"n": "0"},
    "states": {
        "open": {
            "actions": {
                "bump": {"state": "open", "context": {"n": "ctx['n'] + 1"}},
                "pay": {"state": "paid"},
            },
            "always": [{"name": "expire", "state": "expired", "wait_for": {"days": 365}}],
        },
        "paid": {"end": True},
        "expired": {"end": True},
    },
}
CHILD = {
    "id": "mill_child",
    "version": 1,
    "start_at": "go",
    "states": {"go": {"always": [{"state": "done"}]}, "done": {"end": True}},
}


@dataclass(frozen=True)
class Fill:
    """The dialect's bulk statements, each run with ``:lo``/``:hi`` (an execution range)."""

    executions: str
    tasks: str
    steps: str
    long_steps: str


# Execution g (1-based) of n: id mx-<g>; created (n - g) / n of a year ago; every tenth a
# finished child of g - 1; else by a hash of g: 75% finished, 20% waiting, 5% failed.
_BUCKET = "((g * 7919) % 100)"
_STATUS = (
    f"CASE WHEN g % 10 = 0 OR {_BUCKET} < 75 THEN 'finished' "
    f"WHEN {_BUCKET} < 95 THEN 'waiting' ELSE 'failed' END"
)
_STATE = f"CASE WHEN g % 10 = 0 THEN 'done' WHEN {_BUCKET} < 75 THEN 'paid' ELSE 'open' END"
_MACHINE = "CASE WHEN g % 10 = 0 THEN 'mill_child' ELSE 'mill_order' END"
# A failed execution's last step is the timer step that failed it (statem_failures finds it).
_FAILING = f"s = {STEPS_EACH} AND {_STATUS} = 'failed'"
_KIND = f"CASE WHEN s = 1 THEN 'start' WHEN {_FAILING} THEN 'timer' ELSE 'action' END"
_ERROR = f"CASE WHEN {_FAILING} THEN 'boom' END"

PG = Fill(
    executions=f"""
        INSERT INTO statem_executions (id, machine_id, machine_version, state, status, context, input,
            output, error, parent_id, seq, version, armed, created_at, updated_at)
        SELECT 'mx-' || g, {_MACHINE}, 1, {_STATE}, {_STATUS}, json_build_object('n', g % 7), '{{}}'::json,
            NULL, CASE WHEN {_STATUS} = 'failed' THEN 'boom' END,
            CASE WHEN g % 10 = 0 THEN 'mx-' || (g - 1) END, {STEPS_EACH}, {STEPS_EACH},
            {_STATUS} = 'waiting',
            now() - (CAST(:n - g AS double precision) / :n) * interval '365 days',
            now() - (CAST(:n - g AS double precision) / :n) * interval '365 days' + interval '10 minutes'
        FROM generate_series(CAST(:lo AS bigint), :hi) g""",
    tasks=f"""
        INSERT INTO statem_tasks (execution_id, kind, status, due_at, payload, attempts, created_at)
        SELECT 'mx-' || g, 'timer', 'pending', now() + ((g * 104729) % 65536) * interval '8 minutes',
            CAST(:payload AS json), 0, now()
        FROM generate_series(CAST(:lo AS bigint), :hi) g WHERE {_STATUS} = 'waiting'""",
    steps=f"""
        INSERT INTO statem_steps (execution_id, seq, at, kind, name, from_state, to_state, input, context,
            error)
        SELECT 'mx-' || g, s, now() - (CAST(:n - g AS double precision) / :n) * interval '365 days'
                + s * interval '1 minute',
            {_KIND}, CASE WHEN s = 1 THEN NULL ELSE 'bump' END,
            CASE WHEN s = 1 THEN NULL ELSE 'open' END, 'open', '{{}}'::json, json_build_object('n', s),
            {_ERROR}
        FROM generate_series(CAST(:lo AS bigint), :hi) g, generate_series(1, {STEPS_EACH}) s""",
    long_steps=f"""
        INSERT INTO statem_steps (execution_id, seq, at, kind, name, from_state, to_state, input, context)
        SELECT '{LONG_ID}', s, now() - interval '1 day' + s * interval '1 second',
            CASE WHEN s = 1 THEN 'start' ELSE 'action' END, CASE WHEN s = 1 THEN NULL ELSE 'bump' END,
            CASE WHEN s = 1 THEN NULL ELSE 'open' END, 'open', '{{}}'::json, json_build_object('n', s)
        FROM generate_series(1, {LONG}) s""",
)

_SERIES = "WITH RECURSIVE g(g) AS (SELECT CAST(:lo AS INTEGER) UNION ALL SELECT g + 1 FROM g WHERE g < :hi) "
_SQLITE_AGE = "strftime('%Y-%m-%d %H:%M:%f000', 'now', printf('%+.3f seconds', {seconds}))"
_CREATED = _SQLITE_AGE.format(seconds="-31536000.0 * (:n - g) / :n")
SQLITE = Fill(
    executions=f"""{_SERIES}
        INSERT INTO statem_executions (id, machine_id, machine_version, state, status, context, input,
            output, error, parent_id, seq, version, armed, created_at, updated_at)
        SELECT 'mx-' || g, {_MACHINE}, 1, {_STATE}, {_STATUS}, json_object('n', g % 7), '{{}}',
            NULL, CASE WHEN {_STATUS} = 'failed' THEN 'boom' END,
            CASE WHEN g % 10 = 0 THEN 'mx-' || (g - 1) END, {STEPS_EACH}, {STEPS_EACH},
            {_STATUS} = 'waiting', {_CREATED},
            {_SQLITE_AGE.format(seconds="600.0 - 31536000.0 * (:n - g) / :n")}
        FROM g""",
    tasks=f"""{_SERIES}
        INSERT INTO statem_tasks (execution_id, kind, status, due_at, payload, attempts, created_at)
        SELECT 'mx-' || g, 'timer', 'pending', {_SQLITE_AGE.format(seconds="480.0 * ((g * 104729) % 65536)")},
            :payload, 0, {_SQLITE_AGE.format(seconds="0.0")}
        FROM g WHERE {_STATUS} = 'waiting'""",
    steps=f"""{_SERIES}, s(s) AS (SELECT 1 UNION ALL SELECT s + 1 FROM s WHERE s < {STEPS_EACH})
        INSERT INTO statem_steps (execution_id, seq, at, kind, name, from_state, to_state, input, context,
            error)
        SELECT 'mx-' || g, s, {_SQLITE_AGE.format(seconds="60.0 * s - 31536000.0 * (:n - g) / :n")},
            {_KIND}, CASE WHEN s = 1 THEN NULL ELSE 'bump' END,
            CASE WHEN s = 1 THEN NULL ELSE 'open' END, 'open', '{{}}', json_object('n', s), {_ERROR}
        FROM g, s""",
    long_steps=f"""WITH RECURSIVE s(s) AS (SELECT 1 UNION ALL SELECT s + 1 FROM s WHERE s < {LONG})
        INSERT INTO statem_steps (execution_id, seq, at, kind, name, from_state, to_state, input, context)
        SELECT '{LONG_ID}', s, {_SQLITE_AGE.format(seconds="s - 86400.0")},
            CASE WHEN s = 1 THEN 'start' ELSE 'action' END, CASE WHEN s = 1 THEN NULL ELSE 'bump' END,
            CASE WHEN s = 1 THEN NULL ELSE 'open' END, 'open', '{{}}', json_object('n', s)
        FROM s""",
)


def fill(engine: Engine, count: int) -> None:
    """Bulk-insert ``count`` executions with their history and timers, and the long one."""
    began = time.monotonic()
    sqlite = engine.db.dialect.name == "sqlite"
    sql = SQLITE if sqlite else PG
    engine.save_machine(ORDER)
    engine.save_machine(CHILD)
    template = engine.start("mill_order", execution_id="mx-template")
    with engine.db.connect() as conn:
        payload = conn.execute(
            sa.text("SELECT payload FROM statem_tasks WHERE execution_id = :i"), {"i": template.id}
        ).scalar_one()
    payload_json = payload if isinstance(payload, str) else json.dumps(payload)
    with engine.db.begin() as conn:  # the long execution: 1,000 steps, waiting
        conn.execute(
            sa.text(
                "INSERT INTO statem_executions (id, machine_id, machine_version, state, status, "
                "context, input, seq, version, armed, created_at, updated_at) VALUES (:i, 'mill_order', 1, "
                """'open', 'waiting', '{"n": 0}', '{}', :n, :n, false, :at, :at)"""
            ),
            {"i": LONG_ID, "n": LONG, "at": dt.datetime.now(dt.UTC) - dt.timedelta(days=1)},
        )
        conn.execute(sa.text(sql.long_steps))
    for lo in range(1, count + 1, CHUNK):
        hi = min(count, lo + CHUNK - 1)
        params = {"lo": lo, "hi": hi, "n": count, "payload": payload_json}
        with engine.db.begin() as conn:
            if not sqlite:
                conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            conn.execute(sa.text(sql.executions), params)
            conn.execute(sa.text(sql.tasks), params)
            conn.execute(sa.text(sql.steps), params)
        say(f"    filled {hi:,} of {count:,} executions ({time.monotonic() - began:.0f} s)")
    with engine.db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE" if not sqlite else "ANALYZE"))
        rows = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}
    say(
        f"    filled in {time.monotonic() - began:.0f} s: " + ", ".join(f"{t} {n:,}" for t, n in rows.items())
    )


TABLES = ("statem_executions", "statem_steps", "statem_tasks")


def cookbook() -> list[tuple[str, str]]:
    """The README's ```sql blocks: (a short name, the statement)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```sql\n(.*?)```", text, flags=re.S):
        sql = block.strip().rstrip(";").replace(COOKBOOK_ID, LONG_ID)
        view = re.search(r"FROM (statem_\w+)", sql)
        name = f"sql {view.group(1) if view else sql[:20]}"
        taken = sum(1 for n, _ in found if n == name or n.startswith(name + " ("))
        found.append((f"{name} ({taken + 1})" if taken else name, sql))  # one name per query
    return found


Op = Callable[[], object]


def operations(engine: Engine, raw: sa.Engine, waiting: list[str]) -> dict[str, Op]:
    """Everything timed, by name."""
    picks = iter(waiting)
    ops: dict[str, Op] = {}
    for name, sql in cookbook():

        def run_sql(sql: str = sql) -> object:
            with engine.db.connect() as conn:
                return conn.exec_driver_sql(sql).all()

        ops[name] = run_sql
    month = dt.timedelta(days=30)
    ops.update(
        {
            "list": lambda: engine.executions(limit=50),
            "list --machine": lambda: engine.executions("mill_order", limit=50),
            "list --status waiting": lambda: engine.executions(status="waiting", limit=50),
            "list --status failed": lambda: engine.executions(status="failed", limit=50),
            "list --status finished": lambda: engine.executions(status="finished", limit=50),
            "list --status running": lambda: engine.executions(status="running", limit=50),
            "list --state open": lambda: engine.executions(state="open", limit=50),
            "list --parent": lambda: engine.executions(parent_id="mx-99", limit=50),
            "list --older-than 30d": lambda: engine.executions(older_than=month, limit=50),
            "list --status waiting --older-than 30d": lambda: engine.executions(
                status="waiting", older_than=month, limit=50
            ),
            "stats": engine.stats,
            "history (1,000 steps)": lambda: engine.history(LONG_ID),
            "get": lambda: engine.get(LONG_ID),
            "trigger": lambda: engine.trigger(next(picks), "bump"),
        }
    )
    ops["raw: pk select"] = lambda: _raw_select(raw)
    ops["raw: transaction"] = lambda: raw_transaction(raw, random.randrange(1, 101))
    return ops


def _raw_select(raw: sa.Engine) -> object:
    with raw.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM statem_executions WHERE id = :i"), {"i": LONG_ID}).all()


@contextmanager
def captured(db: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements sent on ``db`` while inside."""
    seen: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(db, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        sa.event.remove(db, "before_cursor_execute", listen)


def explain(engine: Engine, name: str, op: Op) -> None:
    """Print EXPLAIN ANALYZE of each SELECT ``op`` sends (PostgreSQL)."""
    with captured(engine.db) as seen:
        op()
    for statement, params in seen:
        if not statement.lstrip().upper().startswith("SELECT"):
            continue
        with engine.db.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF) " + statement, params).scalars().all()
        say(f"\n--- {name}\n{statement.strip()}\n  " + "\n  ".join(plan))


def measure(ops: dict[str, Op], rounds: int) -> dict[str, list[float]]:
    """Each op once per round, in turns (after one warm-up round); latencies in ms."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    for r in range(rounds + 1):
        for name, op in ops.items():
            t = time.perf_counter()
            op()
            if r:
                times[name].append((time.perf_counter() - t) * 1000)
    return times


#: The indexes migration 0005 adds (``--compare`` drops them for a second pass).
INDEXES_0005 = (
    "ix_statem_executions_created_at",
    "ix_statem_executions_unfinished",
    "ix_statem_tasks_due_at",
)


def waiting_ids(engine: Engine, n: int) -> list[str]:
    """``n`` waiting executions to trigger (not the long one)."""
    with engine.db.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT id FROM statem_executions WHERE status = 'waiting' "
                    "AND id LIKE 'mx-%' AND id <> :long ORDER BY id LIMIT :n"
                ),
                {"n": n, "long": LONG_ID},
            ).scalars()
        )


def timed(
    engine: Engine, raw: sa.Engine, triggers: list[str], rounds: int, plans: bool
) -> dict[str, list[float]]:
    """Time every operation (printing the plans first when asked)."""
    ops = operations(engine, raw, triggers)
    if plans:
        for name, op in ops.items():
            if not name.startswith(("raw", "trigger")):
                explain(engine, name, op)
    return measure(ops, rounds)


def without_0005(engine: Engine) -> None:
    """Drop the indexes of migration 0005 and have stats() count exactly: the "before"."""

    with engine.db.begin() as conn:
        for name in INDEXES_0005:
            conn.execute(sa.text(f"DROP INDEX {name}"))
    with engine.db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
    store_stats.STATS_EXACT_ROWS = 1 << 62


#: Purged at the end: the executions finished before this many days ago (about a sixth).
PURGE_DAYS = 300


def purge(engine: Engine) -> Result:
    """``engine.purge()`` of the executions finished more than PURGE_DAYS ago, timing each
    batch (its transaction: how long it holds its locks)."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=PURGE_DAYS)
    batches: list[float] = []
    last = time.perf_counter()

    def tick(_counts: object) -> None:
        nonlocal last
        now = time.perf_counter()
        batches.append((now - last) * 1000)
        last = now

    began = time.perf_counter()
    counts = engine.purge(cutoff, progress=tick)
    took = time.perf_counter() - began
    say(
        f"    purge --older-than {PURGE_DAYS}d: {counts.executions:,} executions, {counts.steps:,} steps, "
        f"{counts.tasks:,} tasks in {took:.1f} s ({counts.executions / took:,.0f} executions/s), "
        f"{counts.batches} batches: p50 {percentile(batches, 0.5):.0f} ms, "
        f"max {max(batches, default=0):.0f} ms"
    )
    kind = engine.db.dialect.name
    return Result(f"million {kind} purge: longest batch", max(batches, default=0.0), "ms")


def show(times: dict[str, list[float]]) -> None:
    """Print p50 and p99 of every operation of one pass."""
    for name, ms in times.items():
        say(f"    {name:42} p50 {percentile(ms, 0.5):8.2f} ms  p99 {percentile(ms, 0.99):8.2f} ms")


def bench(kind: str, count: int, rounds: int, show_plans: bool, compare: bool = False) -> list[Result]:
    """Fill one database of ``kind`` and time the reads on it (then, with ``compare``,
    again without the indexes of migration 0005 and with exact counts in stats())."""

    say(f"  {kind}: {count:,} executions, {count * STEPS_EACH:,} history rows")
    plans = show_plans and kind == "postgresql"
    passes: dict[str, dict[str, list[float]]] = {}
    exact = store_stats.STATS_EXACT_ROWS
    with scratch(kind, "million") as url:
        engine = new_engine(url)
        raw = raw_engine(url)
        try:
            raw_setup(url, 100)
            fill(engine, count)
            triggers = waiting_ids(engine, 2 * (rounds + 1))
            passes[""] = timed(engine, raw, triggers[: rounds + 1], rounds, plans)
            show(passes[""])
            if compare:
                say("    again without the indexes of migration 0005, stats() counting exactly:")
                without_0005(engine)
                passes[" (without 0005)"] = timed(engine, raw, triggers[rounds + 1 :], rounds, plans)
                show(passes[" (without 0005)"])
            purged = purge(engine)
        finally:
            store_stats.STATS_EXACT_ROWS = exact
            engine.close()
            raw.dispose()
    results = [purged]
    for suffix, times in passes.items():
        raw_p99 = percentile(times["raw: pk select"], 0.99)
        for name, ms in times.items():
            p99 = percentile(ms, 0.99)
            if name.startswith("raw"):
                continue
            target = kind == "postgresql" and not suffix
            results.append(
                Result(
                    f"million {kind} {name}{suffix} p99",
                    p99,
                    "ms",
                    raw_p99,
                    "ms (raw pk select)",
                    p99 / raw_p99 if raw_p99 else None,
                    f"< {TARGET_MS:.0f} ms" if target else "",
                    (p99 < TARGET_MS) if target else None,
                )
            )
    return results


def run(
    quick: bool,
    scale: float | None = None,
    kinds: tuple[str, ...] = KINDS,
    show_plans: bool = False,
    compare: bool = False,
) -> list[Result]:
    """The benchmark (``make bench`` calls this with quick False: scale 1)."""
    scale = scale if scale is not None else (0.1 if quick else 1.0)
    rounds = 20 if quick else 50
    results: list[Result] = []
    for kind in kinds:
        count = int(EXECUTIONS * scale * (SQLITE_FRACTION if kind == "sqlite" else 1.0))
        results += bench(kind, max(count, 100), rounds, show_plans, compare)
    return results


def main() -> None:
    """``python -m bench.million``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scale 0.1 (100,000 executions)")
    parser.add_argument("--scale", type=float, help="fraction of 1,000,000 executions (default 1, quick 0.1)")
    parser.add_argument("--only", choices=KINDS, help="one database only")
    parser.add_argument(
        "--explain", action="store_true", help="print EXPLAIN ANALYZE of the reads (PostgreSQL)"
    )
    parser.add_argument(
        "--compare", action="store_true", help="then again without the 0005 indexes (before/after)"
    )
    args = parser.parse_args()
    quiet_logs()
    began = time.monotonic()
    kinds = (args.only,) if args.only else KINDS
    results = run(args.quick, args.scale, kinds, args.explain, args.compare)
    say(f"\nmillion ({time.monotonic() - began:.0f} s)\n{summary(results)}")


if __name__ == "__main__":
    main()
