"""Issue 3 (d): a worker's resident memory over many executions.

One ``statem worker`` subprocess (4 threads) on a SQLite file runs N executions of a
small machine with one effect (the no-op): N = 100,000, 10,000 in quick mode. This
process ``start()``s one execution before the worker starts and feeds the rest as bulk
copies of the rows that start wrote (execution, start step, effect task; 500 per
transaction, at most 2,000 ahead of the worker), so the SQLite write lock goes to the
worker and the run measures the worker alone. The
worker's RSS (psutil) is sampled as the finished count passes 0%, 25%, 50%, 75%, 100%.

Target: flat (growth from 25% to 100% under 10%) and under 200 MB.
Run: ``python -m bench.memory [--quick]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psutil
import sqlalchemy as sa

from statem import Engine
from statem.schema import executions, steps, tasks

from .app import effect_machine
from .common import Result, WorkerProcesses, count_status, main_for, new_engine, say, scratch_sqlite

#: Executions added per chunk, and how many the driver may run ahead of the worker.
CHUNK, AHEAD = 500, 2_000
MILESTONES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: RSS limit and the largest growth between the 25% and the 100% sample.
LIMIT_MB, FLAT = 200.0, 0.10
#: Longest the worker may go without finishing an execution before the benchmark gives up.
STALL_SECONDS = 60.0
QUICK, FULL = 10_000, 100_000
MB = 1024 * 1024


@dataclass(frozen=True)
class Template:
    """The rows ``start()`` wrote for one execution, read before any worker touched them."""

    execution: dict[str, Any]
    steps: list[dict[str, Any]]
    tasks: list[dict[str, Any]]


def template(engine: Engine) -> Template:
    """Start one execution and read back its row, its start step and its effect task."""
    eid = engine.start("bench_effect", {"n": 0}, version=1).id
    with engine.db.connect() as conn:
        execution = dict(conn.execute(sa.select(executions).where(executions.c.id == eid)).one()._mapping)
        history = [
            dict(r._mapping) for r in conn.execute(sa.select(steps).where(steps.c.execution_id == eid))
        ]
        armed = [dict(r._mapping) for r in conn.execute(sa.select(tasks).where(tasks.c.execution_id == eid))]
    for task in armed:
        del task["id"]
    return Template(execution, history, armed)


def clone(engine: Engine, tpl: Template, first: int, last: int) -> None:
    """Insert copies ``clone-first`` .. ``clone-last`` of the template, in one transaction.

    The worker runs them exactly as if ``start()`` had made them; bulk inserts keep the
    driver off the SQLite write lock, so the run measures the worker, not the driver.
    """
    ids = [f"clone-{n}" for n in range(first, last + 1)]
    with engine.db.begin() as conn:
        conn.execute(sa.insert(executions), [{**tpl.execution, "id": i} for i in ids])
        conn.execute(sa.insert(steps), [{**s, "execution_id": i} for i in ids for s in tpl.steps])
        conn.execute(sa.insert(tasks), [{**t, "execution_id": i} for i in ids for t in tpl.tasks])


def rss_mb(proc: psutil.Process) -> float:
    """Resident set size of a process, in MiB."""
    return float(proc.memory_info().rss) / MB


def drive(engine: Engine, tpl: Template, proc: psutil.Process, total: int) -> dict[float, float]:
    """Feed ``total`` executions to the worker (the template is the first); sample its RSS
    as the finished count passes each milestone."""
    samples = {0.0: rss_mb(proc)}
    pending = [m for m in MILESTONES if m > 0]
    started, done, progress = 1, 0, time.monotonic()
    began = progress
    while pending:
        if started < total and started - done <= AHEAD:
            last = min(total, started + CHUNK)
            clone(engine, tpl, started, last - 1)
            started = last
        else:
            time.sleep(0.05)
        now_done = count_status(engine.db, "bench_effect")
        if now_done > done:
            done, progress = now_done, time.monotonic()
        elif time.monotonic() - progress > STALL_SECONDS:
            raise TimeoutError(f"the worker is stuck at {done:,} of {total:,} executions")
        while pending and done >= pending[0] * total:
            samples[pending.pop(0)] = rss = rss_mb(proc)
            say(f"    {done:,} finished ({time.monotonic() - began:.0f} s): worker RSS {rss:.1f} MB")
    elapsed = time.monotonic() - began
    say(f"    {total:,} executions in {elapsed:.1f} s ({total / elapsed:,.0f}/s)")
    return samples


def run(quick: bool) -> list[Result]:
    """Issue 3 d."""
    total = QUICK if quick else FULL
    say(f"  {total:,} executions of a one-effect machine, SQLite, one worker subprocess")
    with scratch_sqlite("memory") as url:
        engine = new_engine(url)
        try:
            engine.save_machine(effect_machine())
            tpl = template(engine)
            with WorkerProcesses(url, 1, 4) as workers:
                workers.wait_ready()
                samples = drive(engine, tpl, psutil.Process(workers.pids()[0]), total)
        finally:
            engine.close()
    growth = (samples[1.0] - samples[0.25]) / samples[0.25]
    peak = max(samples.values())
    results = [
        Result(f"memory/sqlite: worker RSS at {m:.0%}", rss_mb_value, "MB")
        for m, rss_mb_value in samples.items()
    ]
    results.append(
        Result(
            f"memory/sqlite: RSS growth 25%->100% of {total // 1000}k",
            growth * 100,
            "%",
            samples[0.25],
            "MB at 25%",
            None,
            f"< {FLAT:.0%} and peak < {LIMIT_MB:.0f} MB",
            growth < FLAT and peak < LIMIT_MB,
        )
    )
    return results


def main() -> None:
    """``python -m bench.memory [--quick]``."""
    main_for("memory (issue 3 d)", run)


if __name__ == "__main__":
    main()
