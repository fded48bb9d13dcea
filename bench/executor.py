"""Issue 3 (a, c): executor throughput.

(a) Effect tasks per second through 1, 2 and 4 ``statem worker`` subprocesses on
    PostgreSQL, with a no-op effect. K executions, each arming one effect task, are
    started BEFORE the workers; their tasks are then held back (due tomorrow) until every
    worker has logged ``started``, so the clock measures the workers' throughput and not
    Python's start-up; the gate opens with one UPDATE (due now) and a NOTIFY, and the
    clock stops when all K executions are ``finished``. Next to it: the same count of
    raw one-UPDATE-one-INSERT transactions from the same number of processes (run before
    and after the workers; the mean). Also printed: transactions committed per task
    (``pg_stat_database``) and the CPU the workers and the server used.
    K = 4,000 (1,000 in quick mode). Target: >= 50% of raw.
(c) The order machine end to end (``machines/order.yaml`` as shipped; its shipment child
    calls the no-op effect instead of HTTP): start, add, place, fraud-approve, then the
    in-process worker runs the child, its effect and the parent's resume. Orders per
    second on SQLite and PostgreSQL (600 orders; 150 in quick mode), from the first
    start() until every order is ``shipped``, and what one order costs in raw transactions.

Run: ``python -m bench.executor [--quick]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from statem import Engine, WorkerSettings
from statem.settings import WORKER_CONCURRENCY

from .app import effect_machine, order_machines
from .common import (
    CpuMeter,
    Result,
    WorkerProcesses,
    check_states,
    main_for,
    new_engine,
    pg_commits,
    raw_parallel,
    raw_run,
    raw_setup,
    say,
    scratch,
    scratch_pg,
    start_many,
    wait_for_count,
)

#: Worker processes tried in (a).
PROCESSES = (1, 2, 4)
#: Threads per worker process (statem's default).
THREADS = WORKER_CONCURRENCY
#: Threads that pre-load executions with start() on PostgreSQL.
LOADERS = 4
#: Longest a timed phase may take before the benchmark gives up.
TIMEOUT_SECONDS = 240.0


@dataclass(frozen=True)
class Sizes:
    """Effect tasks per worker count in (a); orders per database in (c)."""

    tasks: int
    orders: int


QUICK = Sizes(tasks=1_000, orders=150)
FULL = Sizes(tasks=4_000, orders=600)


# --------------------------------------------------------------------------- (a) worker processes


def hold_tasks(db: sa.Engine) -> None:
    """Make every pending task due tomorrow: workers that start now find nothing to do."""
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE statem_tasks SET due_at = now() + interval '1 day'"))


def release_tasks(db: sa.Engine) -> None:
    """Make every pending task due now and wake the listening workers."""
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE statem_tasks SET due_at = now()"))
        conn.execute(sa.text("NOTIFY statem_tasks"))


def preload(url: str, count: int) -> Engine:
    """Start ``count`` executions of the effect machine (each arms one effect task)."""
    engine = new_engine(url)
    engine.save_machine(effect_machine())
    seconds = start_many(engine, "bench_effect", [{"n": i} for i in range(count)], threads=LOADERS)
    say(f"    pre-loaded {count} executions in {seconds:.1f} s ({count / seconds:,.0f} start()/s)")
    return engine


@dataclass(frozen=True)
class WorkersRun:
    """What one run of (a) measured."""

    rate: float
    raw: float
    tx_per_task: float
    worker_cores: float
    server_cores: float
    ready_seconds: float


def timed_workers(url: str, engine: Engine, processes: int, count: int) -> WorkersRun:
    """Start the workers on held tasks, release them, time until every execution finished."""
    hold_tasks(engine.db)
    engine.db.dispose()  # the loaders' connections close, so their statistics are flushed
    spawned = time.monotonic()
    with WorkerProcesses(url, processes, THREADS) as workers:
        ready = workers.wait_ready()
        meter = CpuMeter(workers.pids())
        commits = pg_commits(url)
        meter.start()
        began = time.monotonic()
        release_tasks(engine.db)
        done = wait_for_count(engine.db, "bench_effect", count, TIMEOUT_SECONDS)
        meter.stop()
    engine.db.dispose()
    time.sleep(0.5)  # let the closed backends report
    check_states(engine.db, "bench_effect", "done", count)
    return WorkersRun(
        count / (done - began),
        0.0,
        (pg_commits(url) - commits) / count,
        meter.share,
        meter.server_share,
        ready - spawned,
    )


def workers_rate(processes: int, count: int) -> WorkersRun:
    """Effect tasks per second through ``processes`` workers, and raw tx/s at that concurrency."""
    with scratch_pg("executor") as url:
        raw_setup(url, 100 * processes)
        before = raw_parallel(url, count, processes)
        engine = preload(url, count)
        try:
            run = timed_workers(url, engine, processes, count)
        finally:
            engine.close()
        raw = (before + raw_parallel(url, count, processes)) / 2
    say(
        f"    {processes} worker(s) x {THREADS} threads: {run.rate:,.0f} tasks/s, "
        f"{run.tx_per_task:.1f} transactions/task, CPU {run.worker_cores:.2f} cores in workers + "
        f"{run.server_cores:.2f} in PostgreSQL (ready {run.ready_seconds:.1f} s after spawn); "
        f"raw {raw:,.0f} tx/s from {processes} process(es)"
    )
    return WorkersRun(run.rate, raw, run.tx_per_task, run.worker_cores, run.server_cores, run.ready_seconds)


def bench_workers(count: int) -> list[Result]:
    """(a): tasks/s through 1, 2 and 4 worker processes, next to raw transactions."""
    say(f"  (a) {count} no-op effect tasks per run, PostgreSQL")
    results = []
    for processes in PROCESSES:
        run = workers_rate(processes, count)
        results.append(
            Result(
                f"executor/postgresql: {processes} worker process(es)",
                run.rate,
                "tasks/s",
                run.raw,
                "raw tx/s",
                run.rate / run.raw,
                ">= 50% of raw",
                run.rate / run.raw >= 0.5,
            )
        )
    return results


# --------------------------------------------------------------------------- (c) the order machine


def drive_order(engine: Engine, n: int) -> None:
    """Take one order from start to fraud approval; the worker runs the shipment."""
    eid = engine.start("order", {"n": n}, version=1).id
    engine.trigger(eid, "add", {"sku": "A", "qty": 2})
    engine.trigger(eid, "place")
    engine.trigger(eid, "fraud-approve")


def orders_rate(kind: str, count: int) -> tuple[float, float]:
    """Orders per second end to end with an in-process worker; and raw tx/s on that database."""
    with scratch(kind, "orders") as url:
        raw_setup(url, 100)
        raw = raw_run(url, 1_000, list(range(100)))
        engine = new_engine(url, env={"shipping_url": "http://unused.invalid"})
        try:
            for machine in order_machines():
                engine.save_machine(machine)
            with engine.worker(WorkerSettings(concurrency=THREADS)):
                began = time.monotonic()
                for n in range(count):
                    drive_order(engine, n)
                driven = time.monotonic()
                done = wait_for_count(engine.db, "order", count, TIMEOUT_SECONDS)
            check_states(engine.db, "order", "shipped", count)
        finally:
            engine.close()
    raw_rate = len(raw) / sum(raw)
    rate = count / (done - began)
    say(
        f"    {kind}: {rate:,.0f} orders/s ({count} orders; the driver took {driven - began:.1f} s, "
        f"the worker finished {done - driven:.1f} s later); one order = {raw_rate / rate:.1f} raw tx"
    )
    return rate, raw_rate


def bench_orders(count: int) -> list[Result]:
    """(c): the order machine end to end on SQLite and PostgreSQL."""
    say(f"  (c) {count} orders end to end (4 API calls + 3 tasks each), in-process worker")
    results = []
    for kind in ("sqlite", "postgresql"):
        rate, raw = orders_rate(kind, count)
        results.append(
            Result(
                f"executor/{kind}: order machine end to end", rate, "orders/s", raw, "raw tx/s", rate / raw
            )
        )
    return results


def run(quick: bool) -> list[Result]:
    """Issue 3 a and c."""
    sizes = QUICK if quick else FULL
    return bench_workers(sizes.tasks) + bench_orders(sizes.orders)


def main() -> None:
    """``python -m bench.executor [--quick]``."""
    main_for("executor (issue 3 a, c)", run)


if __name__ == "__main__":
    main()
