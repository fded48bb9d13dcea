"""Issue 11: ``engine.upgrade()`` of many executions, dry run (with the replay check) then apply.

N executions (100,000; 10,000 with ``--quick``) of a small order machine wait in state
``placed`` with a reminder timer armed; version 2 renames ``placed`` to ``accepted`` and
keeps the reminder. They are made as bulk copies of the rows one ``start()`` + trigger
wrote (so the setup does not dominate). Then, on SQLite and PostgreSQL:

* ``dry run``: ``upgrade("order", 2, states={"placed": "accepted"})``, streaming the items
  (``statem.upgrade.run``), every execution read and its history replayed through v2;
* ``apply``: the same with ``apply=True``: one transaction per execution (lock, plan,
  re-point the timer, upgrade step, new version).

Figures: executions/s of each, next to the raw transaction rate (one UPDATE + one INSERT
per transaction, :func:`bench.common.raw_run`), and this process's peak RSS growth while
streaming (the executions are never held at once: the report is not collected).
Target: apply at >= 25% of raw tx/s; RSS flat.
Run: ``python -m bench.upgrade [--quick]``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psutil
import sqlalchemy as sa

from statem import Engine
from statem import upgrade as upgrading
from statem.schema import executions, steps, tasks

from .common import Result, main_for, new_engine, raw_run, raw_setup, say, scratch

QUICK, FULL = 10_000, 100_000
CHUNK = 2_000
RAW_TX = 2_000
TARGET = 0.25
MB = 1024 * 1024


def order(version: int) -> dict[str, Any]:
    """cart -place-> placed (reminder in 1 day) -> reminded; v2 names 'placed' 'accepted'."""
    placed = "placed" if version == 1 else "accepted"
    return {
        "id": "order",
        "version": version,
        "start_at": "cart",
        "context": {"n": "input.get('n', 0)"},
        "states": {
            "cart": {"actions": {"place": {"state": placed, "when": "ctx['n'] >= 0"}}},
            placed: {
                "always": [{"name": "remind", "state": "reminded", "wait_for": {"days": 1}}],
                "actions": {"ship": {"state": "shipped"}},
            },
            "reminded": {"actions": {"ship": {"state": "shipped"}}},
            "shipped": {"end": True},
        },
    }


def populate(engine: Engine, total: int) -> None:
    """One real execution, then ``total - 1`` bulk copies of its rows."""
    engine.start("order", {"n": 1}, version=1, execution_id="o-0000000")
    engine.trigger("o-0000000", "place")
    with engine.db.connect() as conn:
        ex = dict(conn.execute(sa.select(executions).where(executions.c.id == "o-0000000")).one()._mapping)
        hist = [
            dict(r._mapping) for r in conn.execute(sa.select(steps).where(steps.c.execution_id == ex["id"]))
        ]
        armed = [
            dict(r._mapping) for r in conn.execute(sa.select(tasks).where(tasks.c.execution_id == ex["id"]))
        ]
    for t in armed:
        del t["id"]
    for first in range(1, total, CHUNK):
        ids = [f"o-{n:07d}" for n in range(first, min(total, first + CHUNK))]
        with engine.db.begin() as conn:
            conn.execute(sa.insert(executions), [{**ex, "id": i} for i in ids])
            conn.execute(sa.insert(steps), [{**s, "execution_id": i} for i in ids for s in hist])
            conn.execute(sa.insert(tasks), [{**t, "execution_id": i} for i in ids for t in armed])


def timed_run(engine: Engine, apply: bool, total: int) -> tuple[float, float, dict[str, int]]:
    """Stream an upgrade; returns (executions/s, RSS growth in MB after the first 10%, counts)."""
    rt = engine._runtime
    req = upgrading.request(rt, "order", 2, None, {"placed": "accepted"}, None, None, apply, False, None)
    proc = psutil.Process()
    counts: dict[str, int] = {}
    base: float | None = None
    peak = 0.0
    began = time.perf_counter()
    for n, item in enumerate(upgrading.run(rt, req), 1):
        counts[item.outcome] = counts.get(item.outcome, 0) + 1
        if n % 1000 == 0:
            rss = proc.memory_info().rss / MB
            if base is None and n >= total // 10:
                base = rss
            peak = max(peak, rss)
    elapsed = time.perf_counter() - began
    done = sum(counts.values())
    return done / elapsed, (peak - base) if base is not None else 0.0, counts


def run(quick: bool) -> list[Result]:
    """Issue 11: upgrade throughput and memory on both databases."""
    total = QUICK if quick else FULL
    results: list[Result] = []
    for kind in ("sqlite", "postgresql"):
        with scratch(kind, "upgrade") as url:
            engine = new_engine(url)
            try:
                engine.save_machine(order(1))
                engine.save_machine(order(2))
                t0 = time.perf_counter()
                populate(engine, total)
                say(f"  {kind}: {total:,} waiting executions made in {time.perf_counter() - t0:.1f} s")
                raw_setup(url, 100)
                raw = raw_run(url, RAW_TX, list(range(100)))
                raw_rate = 1 / statistics.fmean(raw)
                dry_rate, dry_growth, dry = timed_run(engine, False, total)
                say(f"    dry run with replay: {dry_rate:,.0f} executions/s, RSS +{dry_growth:.1f} MB, {dry}")
                apply_rate, apply_growth, applied = timed_run(engine, True, total)
                say(f"    apply: {apply_rate:,.0f} executions/s, RSS +{apply_growth:.1f} MB, {applied}")
                say(f"    raw: {raw_rate:,.0f} tx/s; apply at {apply_rate / raw_rate:.0%} of raw")
            finally:
                engine.close()
        results += [
            Result(
                f"upgrade/{kind}: dry run + replay",
                dry_rate,
                "exec/s",
                raw_rate,
                "raw tx/s",
                dry_rate / raw_rate,
            ),
            Result(
                f"upgrade/{kind}: apply",
                apply_rate,
                "exec/s",
                raw_rate,
                "raw tx/s",
                apply_rate / raw_rate,
                f">= {TARGET:.0%} of raw",
                apply_rate / raw_rate >= TARGET,
            ),
            Result(
                f"upgrade/{kind}: RSS growth while streaming",
                max(dry_growth, apply_growth),
                "MB",
                target="flat (< 20 MB)",
                met=max(dry_growth, apply_growth) < 20,
            ),
        ]
    return results


def main() -> None:
    """``python -m bench.upgrade [--quick]``."""
    main_for("upgrade of running executions (issue 11)", run)


if __name__ == "__main__":
    main()
