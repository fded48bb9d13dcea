"""Issue 2: the cost of a step, next to bare SQL transactions on the same database.

On SQLite (a file, WAL) and on PostgreSQL, in one scratch database each:

* raw baseline: N bare transactions of one UPDATE and one INSERT (SQLAlchemy Core, tables
  of our own; on SQLite the connection set up as statem sets up its own);
* ``trigger()``: N triggers of an action that bumps a counter in the context, one per
  transaction, round-robin over 100 executions; rate and latency p50/p99;
* a 10-step always-chain: N ``start()`` calls (as users write it, without ``version``) of
  a machine whose start state chains 10 always-transitions with context updates; its
  mean cost in raw-transaction units and the always-transitions per second it amounts to.

The series take turns, 100 calls each, so load from elsewhere on the machine hits them
alike. N = 4,000 (1,000 in quick mode).

Targets: triggers/s >= 50% of raw tx/s; a 10-step chain costs < 2 raw transactions.
Run: ``python -m bench.steps [--quick]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from .app import chain_machine, counter_machine
from .common import (
    Result,
    main_for,
    new_engine,
    percentile,
    raw_engine,
    raw_setup,
    raw_transaction,
    say,
    scratch,
)

#: Executions (and raw counter rows) the triggers go round-robin over.
ROWS = 100
#: Chained always-transitions in the chain machine.
CHAIN = 10
#: Untimed warm-up calls of each series (connection pool, caches, compiled SQL).
WARMUP = 50
#: Calls of one series in a row before the next series takes its turn.
BLOCK = 100
KINDS = ("sqlite", "postgresql")
QUICK, FULL = 1_000, 4_000

Call = Callable[[int], object]


def timed(fn: Call, first: int, count: int) -> list[float]:
    """Call ``fn(i)`` for i in first..first+count-1; returns each call's latency in seconds."""
    latencies = []
    for i in range(first, first + count):
        t = time.perf_counter()
        fn(i)
        latencies.append(time.perf_counter() - t)
    return latencies


def interleaved(series: dict[str, Call], count: int) -> dict[str, list[float]]:
    """``count`` timed calls of each series, in turns of BLOCK calls, after a warm-up.

    Taking turns spreads whatever else the machine does over all series alike, so the
    ratios hold even when the figures move.
    """
    for fn in series.values():
        timed(fn, 0, WARMUP)
    latencies: dict[str, list[float]] = {name: [] for name in series}
    for first in range(0, count, BLOCK):
        for name, fn in series.items():
            latencies[name] += timed(fn, WARMUP + first, min(BLOCK, count - first))
    return latencies


def rate(latencies: list[float]) -> float:
    """Calls per second for calls made back to back."""
    return len(latencies) / sum(latencies)


def ms(seconds: float) -> float:
    """Seconds to milliseconds."""
    return seconds * 1000.0


def measure(url: str, count: int) -> dict[str, list[float]]:
    """Raw transactions, triggers and chain starts (as users call it, and pinned to version 1)."""
    raw_setup(url, ROWS)
    raw = raw_engine(url)
    engine = new_engine(url)
    try:
        engine.save_machine(counter_machine())
        engine.save_machine(chain_machine(CHAIN))
        ids = [engine.start("bench_counter").id for _ in range(ROWS)]
        return interleaved(
            {
                "raw": lambda i: raw_transaction(raw, i % ROWS),
                "trigger": lambda i: engine.trigger(ids[i % ROWS], "bump"),
                "chain": lambda i: engine.start("bench_chain"),
                "pinned": lambda i: engine.start("bench_chain", version=1),
            },
            count,
        )
    finally:
        engine.close()
        raw.dispose()


def bench_kind(kind: str, count: int) -> list[Result]:
    """Raw baseline, triggers and chains on one kind of database."""
    with scratch(kind, "steps") as url:
        lat = measure(url, count)
    raw, trig, chain = lat["raw"], lat["trigger"], lat["chain"]
    raw_rate, trig_rate = rate(raw), rate(trig)
    chain_units = statistics.fmean(chain) / statistics.fmean(raw)
    pinned_units = statistics.fmean(lat["pinned"]) / statistics.fmean(raw)
    say(
        f"  {kind}: raw {raw_rate:,.0f} tx/s (p50 {ms(percentile(raw, 0.5)):.2f} ms, "
        f"p99 {ms(percentile(raw, 0.99)):.2f} ms); trigger {trig_rate:,.0f}/s "
        f"(p50 {ms(percentile(trig, 0.5)):.2f} ms, p99 {ms(percentile(trig, 0.99)):.2f} ms) = "
        f"{trig_rate / raw_rate:.0%} of raw; {CHAIN}-step chain start() {ms(statistics.fmean(chain)):.2f} ms "
        f"= {chain_units:.2f} raw tx ({pinned_units:.2f} with version=1), "
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
    count = QUICK if quick else FULL
    say(f"steps: {count:,} raw transactions, triggers and chain starts per database, in turns of {BLOCK}")
    results: list[Result] = []
    for kind in KINDS:
        results += bench_kind(kind, count)
    return results


def main() -> None:
    """``python -m bench.steps [--quick]``."""
    main_for("steps (issue 2)", run)


if __name__ == "__main__":
    main()
