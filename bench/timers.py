"""Issue 3 (b), issue 14: timer lateness with many timers due in the same second, with and without a backlog.

On PostgreSQL with two ``statem worker`` subprocesses, and on SQLite with one (4 threads
each):

1. ``start()`` N executions of a machine whose start state waits ``until: input['at']``,
   the same ISO timestamp for all, far enough ahead that every insert (and the workers'
   start-up) is done before it is due. Lateness of a timer = the ``at`` of its ``timer``
   step row minus its due time. Printed: p50, p99, max, and the rate they fired at.
2. Insert a backlog of pending timers due next year straight into ``statem_executions``
   and ``statem_tasks`` with one bulk SQL statement each (1,000,000; 100,000 in quick
   mode), and repeat 1:
   the backlog must not slow the due timers down.

Target: p99 lateness under 1 s. Run: ``python -m bench.timers [--quick]``.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import sqlalchemy as sa

from statem import Engine
from statem.schema import executions, steps
from statem.settings import WORKER_CONCURRENCY

from .app import timer_machine
from .common import (
    Result,
    WorkerProcesses,
    check_states,
    main_for,
    new_engine,
    percentile,
    say,
    scratch,
    start_many,
    wait_for_count,
)

#: Worker subprocesses per database (issue 14), and threads each.
WORKERS, THREADS = {"postgresql": 2, "sqlite": 1}, WORKER_CONCURRENCY
#: Threads that arm the timers with start().
LOADERS = 4
#: Seconds between the end of the inserts (and workers' start) and the due time.
MARGIN_SECONDS = 3.0
#: Starts timed to estimate how long N starts take before choosing the due time.
CALIBRATION = 200
#: Longest the timers may take to fire before the benchmark gives up.
TIMEOUT_SECONDS = 240.0
FAR_FUTURE = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Sizes:
    """Timers due together, and the backlog of pending future timers."""

    due: int
    backlog: int


QUICK = Sizes(due=2_000, backlog=100_000)
FULL = Sizes(due=10_000, backlog=1_000_000)


@dataclass(frozen=True)
class Lateness:
    """How late a batch of timers fired, in seconds."""

    p50: float
    p99: float
    worst: float
    per_second: float


def calibrate(engine: Engine) -> float:
    """Seconds one start() takes on LOADERS threads (a few timers armed far in the future)."""
    far = {"at": FAR_FUTURE.isoformat()}
    return start_many(engine, "bench_timer", [far] * CALIBRATION, threads=LOADERS) / CALIBRATION


def arm(engine: Engine, count: int) -> dt.datetime:
    """Arm ``count`` timers due at one instant; returns it (whole second, UTC)."""
    per_start = calibrate(engine)
    lead = count * per_start * 1.3 + MARGIN_SECONDS + 1.0
    due = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)).replace(microsecond=0)
    seconds = start_many(engine, "bench_timer", [{"at": due.isoformat()}] * count, threads=LOADERS)
    left = (due - dt.datetime.now(dt.UTC)).total_seconds()
    say(f"    armed {count:,} timers in {seconds:.1f} s; due in {left:.1f} s")
    if left < MARGIN_SECONDS / 2:
        say("    WARNING: the inserts ran close to the due time; lateness includes worker start-up")
    return due


def lateness(db: sa.Engine, due: dt.datetime) -> list[float]:
    """Seconds between ``due`` and each timer step of the executions armed for it."""
    q = (
        sa.select(steps.c.at)
        .join(executions, executions.c.id == steps.c.execution_id)
        .where(steps.c.kind == "timer", executions.c.input["at"].as_string() == due.isoformat())
    )
    with db.connect() as conn:
        return [(at - due).total_seconds() for (at,) in conn.execute(q)]


def fire(url: str, engine: Engine, count: int) -> Lateness:
    """Arm ``count`` timers, run the workers through their due time, measure lateness."""
    already = _finished(engine)
    due = arm(engine, count)
    with WorkerProcesses(url, WORKERS[engine.db.dialect.name], THREADS) as workers:
        workers.wait_ready()
        wait_for_count(engine.db, "bench_timer", already + count, TIMEOUT_SECONDS + count / 50)
    check_states(engine.db, "bench_timer", "awake", already + count)
    late = lateness(engine.db, due)
    result = Lateness(percentile(late, 0.5), percentile(late, 0.99), max(late), len(late) / max(late))
    say(
        f"    lateness min {min(late):.3f} s, p50 {result.p50:.3f} s, p99 {result.p99:.3f} s, "
        f"max {result.worst:.3f} s "
        f"({len(late):,} timers; {result.per_second:,.0f} timers/s)"
    )
    return result


def _finished(engine: Engine) -> int:
    with engine.db.connect() as conn:
        q = "SELECT count(*) FROM statem_executions WHERE machine_id = 'bench_timer' AND status = 'finished'"
        return int(conn.execute(sa.text(q)).scalar_one())


def template(engine: Engine) -> tuple[str, str, str]:
    """(state, status, task payload JSON) of an execution resting on a far-future timer."""
    eid = engine.start("bench_timer", {"at": FAR_FUTURE.isoformat()}, version=1).id
    with engine.db.connect() as conn:
        row = conn.execute(
            sa.text("SELECT state, status FROM statem_executions WHERE id = :i"), {"i": eid}
        ).one()
        payload = conn.execute(
            sa.text("SELECT CAST(payload AS TEXT) FROM statem_tasks WHERE execution_id = :i"), {"i": eid}
        ).scalar_one()
    return row.state, row.status, payload


def insert_backlog(engine: Engine, count: int) -> None:
    """Insert ``count`` executions resting on timers due next year, with bulk SQL."""
    state, status, payload = template(engine)
    began = time.monotonic()
    due = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    params = {
        "n": count,
        "due_text": due.replace(tzinfo=None).isoformat(sep=" "),
        "state": state,
        "status": status,
        "payload": payload,
        "due": due,
        "at": due.isoformat(),
    }
    with engine.db.begin() as conn:
        for statement in BACKLOG[engine.db.dialect.name]:
            conn.execute(sa.text(statement), params)
    with engine.db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE statem_executions"))
        conn.execute(sa.text("ANALYZE statem_tasks"))
    say(f"    inserted a backlog of {count:,} pending timers in {time.monotonic() - began:.1f} s")


#: The backlog's bulk inserts: executions resting on a timer, and the timers, due one a
#: second from a year ahead (SQLite stores times as ISO text, which sorts as they do).
BACKLOG = {
    "postgresql": [
        "INSERT INTO statem_executions (id, machine_id, machine_version, state, status, context, "
        "input, seq, version, armed, created_at, updated_at) "
        "SELECT 'backlog-' || g, 'bench_timer', 1, :state, :status, '{}'::json, "
        "json_build_object('at', CAST(:at AS text)), 1, 1, true, now(), now() "
        "FROM generate_series(1, :n) g",
        "INSERT INTO statem_tasks (execution_id, kind, status, due_at, payload, attempts, created_at) "
        "SELECT 'backlog-' || g, 'timer', 'pending', :due + g * interval '1 second', "
        "CAST(:payload AS json), 0, now() FROM generate_series(1, :n) g",
    ],
    "sqlite": [
        "INSERT INTO statem_executions (id, machine_id, machine_version, state, status, context, "
        "input, seq, version, armed, created_at, updated_at) "
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :n) "
        "SELECT 'backlog-' || n, 'bench_timer', 1, :state, :status, '{}', json_object('at', :at), "
        "1, 1, 1, :due_text, :due_text FROM g",
        "INSERT INTO statem_tasks (execution_id, kind, status, due_at, payload, attempts, created_at) "
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :n) "
        "SELECT 'backlog-' || n, 'timer', 'pending', datetime(:due_text, '+' || n || ' seconds'), "
        ":payload, 0, :due_text FROM g",
    ],
}


def result(name: str, late: Lateness, baseline: Lateness | None = None) -> list[Result]:
    """Summary rows for one batch: p50 and p99 (against the no-backlog batch when given)."""
    return [
        Result(f"{name} p50", late.p50, "s", baseline.p50 if baseline else None, "s"),
        Result(
            f"{name} p99",
            late.p99,
            "s",
            baseline.p99 if baseline else None,
            "s",
            None,
            "< 1 s",
            late.p99 < 1.0,
        ),
        Result(
            f"{name} fire rate",
            late.per_second,
            "timers/s",
            baseline.per_second if baseline else None,
            "timers/s",
        ),
    ]


def run(quick: bool) -> list[Result]:
    """Issue 3 b, on both databases (issue 14)."""
    sizes = QUICK if quick else FULL
    out: list[Result] = []
    for kind in ("postgresql", "sqlite"):
        with scratch(kind, "timers") as url:
            engine = new_engine(url)
            try:
                engine.save_machine(timer_machine())
                workers = f"{WORKERS[kind]} worker(s)"
                say(f"  {kind}, {workers}: {sizes.due:,} timers due in the same second, no backlog")
                alone = fire(url, engine, sizes.due)
                say(f"  {kind}, {workers}: the same with {sizes.backlog:,} future timers pending")
                insert_backlog(engine, sizes.backlog)
                loaded = fire(url, engine, sizes.due)
            finally:
                engine.close()
        backlog = f"{sizes.backlog // 1000:,}k"
        out += result(f"timers/{kind}: {sizes.due:,} due", alone)
        out += result(f"timers/{kind}: {sizes.due:,} due + {backlog} pending", loaded, alone)
    return out


def main() -> None:
    """``python -m bench.timers [--quick]``."""
    main_for("timers (issue 3 b)", run)


if __name__ == "__main__":
    main()
