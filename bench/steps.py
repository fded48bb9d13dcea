"""Issue 2: the cost of a step, next to bare SQL transactions on the same database.

On SQLite (a file, WAL) and on PostgreSQL, in one scratch database each:

* raw baseline: N bare transactions of one UPDATE and one INSERT (SQLAlchemy Core, tables
  of our own, the connection set up as statem sets up its own);
* ``trigger()``: N triggers of an action that bumps a counter in the context, one per
  transaction, round-robin over a set of executions; rate and latency p50/p99;
* a 10-step always-chain: ``start()`` of a machine whose start state chains 10
  always-transitions with context updates; its cost in raw-transaction units and the
  always-transitions per second it amounts to.

Targets: triggers/s >= 50% of raw tx/s; a 10-step chain costs < 2 raw transactions.
Run: ``python -m bench.steps [--quick]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from statem import Engine

from .app import chain_machine, counter_machine
from .common import Result, main_for, new_engine, percentile, raw_run, raw_setup, say, scratch

#: Executions (and raw counter rows) the triggers go round-robin over.
ROWS = 100
#: Chained always-transitions in the chain machine.
CHAIN = 10
#: Untimed warm-up calls before each timed series (connection pool, caches, JIT of SQL).
WARMUP = 50
KINDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Sizes:
    """How many calls each timed series makes."""

    transactions: int
    chains: int


QUICK = Sizes(transactions=1_000, chains=200)
FULL = Sizes(transactions=5_000, chains=1_000)


def timed(fn: Callable[[int], object], count: int) -> list[float]:
    """Call ``fn(i)`` for i in 0..count-1; returns each call's latency in seconds."""
    latencies = []
    for i in range(count):
        t = time.perf_counter()
        fn(i)
        latencies.append(time.perf_counter() - t)
    return latencies


def rate(latencies: list[float]) -> float:
    """Calls per second for calls made back to back."""
    return len(latencies) / sum(latencies)


def trigger_series(engine: Engine, count: int) -> list[float]:
    """Latencies of ``count`` bump triggers, round-robin over ``ROWS`` executions."""
    ids = [engine.start("bench_counter").id for _ in range(ROWS)]
    timed(lambda i: engine.trigger(ids[i % ROWS], "bump"), WARMUP)
    return timed(lambda i: engine.trigger(ids[i % ROWS], "bump"), count)


def chain_series(engine: Engine, count: int) -> list[float]:
    """Latencies of ``count`` starts of the chain machine (each takes CHAIN always-steps)."""
    timed(lambda i: engine.start("bench_chain", version=1), WARMUP)
    return timed(lambda i: engine.start("bench_chain", version=1), count)


def ms(seconds: float) -> float:
    """Seconds to milliseconds."""
    return seconds * 1000.0


def bench_kind(kind: str, sizes: Sizes) -> list[Result]:
    """Raw baseline, triggers and chains on one kind of database."""
    with scratch(kind, "steps") as url:
        raw_setup(url, ROWS)
        ids = list(range(ROWS))
        raw_run(url, WARMUP, ids)
        raw = raw_run(url, sizes.transactions, ids)
        engine = new_engine(url)
        try:
            engine.save_machine(counter_machine())
            engine.save_machine(chain_machine(CHAIN))
            trig = trigger_series(engine, sizes.transactions)
            chain = chain_series(engine, sizes.chains)
        finally:
            engine.close()
    raw_rate, trig_rate = rate(raw), rate(trig)
    chain_units = statistics.fmean(chain) / statistics.fmean(raw)
    say(
        f"  {kind}: raw {raw_rate:,.0f} tx/s (p50 {ms(percentile(raw, 0.5)):.2f} ms, "
        f"p99 {ms(percentile(raw, 0.99)):.2f} ms); trigger {trig_rate:,.0f}/s "
        f"(p50 {ms(percentile(trig, 0.5)):.2f} ms, p99 {ms(percentile(trig, 0.99)):.2f} ms) = "
        f"{trig_rate / raw_rate:.0%} of raw; {CHAIN}-step chain start "
        f"{ms(statistics.fmean(chain)):.2f} ms = {chain_units:.2f} raw tx, "
        f"{CHAIN * rate(chain):,.0f} always-transitions/s"
    )
    return [
        Result(
            f"steps/{kind}: trigger() rate",
            trig_rate,
            "/s",
            raw_rate,
            "raw tx/s",
            trig_rate / raw_rate,
            ">= 50% of raw",
            trig_rate / raw_rate >= 0.5,
        ),
        Result(
            f"steps/{kind}: trigger() p50", ms(percentile(trig, 0.5)), "ms", ms(percentile(raw, 0.5)), "ms"
        ),
        Result(
            f"steps/{kind}: trigger() p99", ms(percentile(trig, 0.99)), "ms", ms(percentile(raw, 0.99)), "ms"
        ),
        Result(
            f"steps/{kind}: {CHAIN}-step always-chain start()",
            chain_units,
            "raw tx",
            1.0,
            "raw tx",
            None,
            "< 2 raw tx",
            chain_units < 2,
        ),
        Result(
            f"steps/{kind}: always-transitions",
            CHAIN * rate(chain),
            "/s",
            raw_rate,
            "raw tx/s",
            CHAIN * rate(chain) / raw_rate,
        ),
    ]


def run(quick: bool) -> list[Result]:
    """Issue 2 on SQLite and PostgreSQL."""
    sizes = QUICK if quick else FULL
    say(f"steps: {sizes.transactions} transactions/triggers and {sizes.chains} chain starts per database")
    results: list[Result] = []
    for kind in KINDS:
        results += bench_kind(kind, sizes)
    return results


def main() -> None:
    """``python -m bench.steps [--quick]``."""
    main_for("steps (issue 2)", run)


if __name__ == "__main__":
    main()
