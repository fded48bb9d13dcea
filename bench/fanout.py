"""Fan-out throughput: one ``map`` of N no-op effects, 50 at once, run by worker processes.

Reports elements/s next to the raw transaction rate of the same database (one UPDATE and
one INSERT per transaction, bench/common.py) measured in the same run, and the workers'
peak RSS at N and at N/10 elements (flat in N: no per-element state is kept in memory).
``--quick``: 1,000 elements; else 10,000.

When DBOS Transact is importable (run from the bench virtualenv: ``.venv-bench/bin/python
-m bench.fanout``), the same run also times DBOS doing the same fan-out: a workflow that
enqueues N no-op workflows on a ``Queue`` with ``worker_concurrency=50`` and waits for their
results in order, on a fresh SQLite file (with statem's pragmas, bench/peer.py) and a fresh
PostgreSQL database. statem's map and DBOS's fan-out alternate (twice each in default mode)
so drift on the machine hits both alike; the ratio statem/DBOS is printed (target >= 2x).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from typing import Any

import psutil

from .app import NOOP
from .common import Result, WorkerProcesses, main_for, new_engine, raw_run, raw_setup, say, scratch

MAP_ID = "bench_fanout"
#: Elements run at once, by statem's map and by DBOS's queue.
AT_ONCE = 50
#: Seconds between DBOS queue polls: the poll interval the statem workers run with.
DBOS_POLL = 0.2


def map_machine() -> dict[str, Any]:
    """A map of ``input['n']`` no-op effects, 50 at once; the join counts the results."""
    return {
        "id": MAP_ID,
        "version": 1,
        "start_at": "go",
        "context": {"n": "input['n']"},
        "states": {
            "go": {
                "always": [
                    {
                        "name": "each",
                        "invoke": {
                            "map": "list(range(ctx['n']))",
                            "effect": NOOP,
                            "input": "{'i': index}",
                            "max_concurrency": AT_ONCE,
                            "success": {"state": "done", "context": {"count": "len(output)"}},
                        },
                    }
                ]
            },
            "done": {"end": True, "return": "ctx['count']"},
        },
    }


class RssSampler:
    """Samples the summed RSS of some processes every 50 ms; keeps the peak (MB)."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                total = sum(p.memory_info().rss for p in self.procs)
            except psutil.Error:
                continue
            self.peak = max(self.peak, total / 2**20)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_map(kind: str, n: int, workers: int = 2) -> tuple[float, float]:
    """Run one map of ``n`` elements on a fresh ``kind`` database; (elements/s, peak worker RSS MB)."""
    with scratch(kind, "fanout") as url:
        engine = new_engine(url)
        engine.save_machine(map_machine())
        with WorkerProcesses(url, workers, concurrency=8, extra=["--poll", "0.2"]) as procs:
            procs.wait_ready()
            with RssSampler(procs.pids()) as rss:
                began = time.monotonic()
                ex = engine.start(MAP_ID, {"n": n}, version=1)
                done = engine.wait(ex.id, timeout=1800)
                elapsed = time.monotonic() - began
        engine.close()
    if done.output != n:
        say(f"    WARNING: the map ended {done.state}/{done.status} with output {done.output!r}")
    return n / elapsed, rss.peak


def dbos_fanout(kind: str, n: int) -> float:
    """DBOS's fan-out of ``n`` no-op workflows through a queue on a fresh ``kind`` database; elements/s."""
    from dbos import DBOS
    from sqlalchemy.engine import make_url

    from .peer import dbos_app

    def define() -> Any:
        @DBOS.workflow()
        def element(i: int) -> int:
            return i

        @DBOS.workflow()
        def fan_out(count: int) -> int:
            queue = DBOS.retrieve_queue("fanout")
            handles = [queue.enqueue(element, i) for i in range(count)]
            return sum(1 for i, h in enumerate(handles) if h.get_result() == i)

        return fan_out

    with scratch(kind, "fanout_dbos") as url:
        # DBOS takes a plain postgresql:// URL and picks psycopg 3 itself
        dbos_url = make_url(url).set(drivername="postgresql") if kind == "postgresql" else make_url(url)
        with dbos_app(dbos_url.render_as_string(hide_password=False), define, kind == "sqlite") as fan_out:
            # queues are kept in DBOS's system database: registered once it is launched
            DBOS.register_queue("fanout", worker_concurrency=AT_ONCE, polling_interval_sec=DBOS_POLL)
            began = time.monotonic()
            got = fan_out(n)
            elapsed = time.monotonic() - began
    if got != n:
        say(f"    WARNING: DBOS's fan-out returned {got} of {n} results in order")
    return n / elapsed


def raw_rate(kind: str, count: int) -> float:
    """Bare transactions per second on a fresh ``kind`` database, one connection."""
    with scratch(kind, "fanout_raw") as url:
        raw_setup(url, 100)
        latencies = raw_run(url, count, list(range(100)))
    return count / sum(latencies)


def run(quick: bool) -> list[Result]:
    """The fan-out figures on SQLite and PostgreSQL (next to DBOS's when it is installed)."""
    n = 1_000 if quick else 10_000
    peer = importlib.util.find_spec("dbos") is not None
    if not peer:
        say("fanout: DBOS is not installed here: run from .venv-bench for the comparison")
    results: list[Result] = []
    for kind in ("sqlite", "postgresql"):
        say(f"fanout: {kind}: raw transaction rate ...")
        raw = raw_rate(kind, 500 if quick else 2000)
        say(f"fanout: {kind}: a map of {n // 10:,} elements ...")
        _, rss_small = one_map(kind, n // 10)
        timed: dict[str, list[float]] = {"statem": [], "DBOS": []}
        for _ in range(1 if quick or not peer else 2):
            say(f"fanout: {kind}: a map of {n:,} elements ...")
            rate, rss_big = one_map(kind, n)
            timed["statem"].append(n / rate)
            if peer:
                say(f"fanout: {kind}: DBOS, a queue fan-out of {n:,} elements ...")
                timed["DBOS"].append(n / dbos_fanout(kind, n))
        rate = n * len(timed["statem"]) / sum(timed["statem"])
        say(
            f"    {rate:,.0f} elements/s (raw {raw:,.0f} tx/s); "
            f"worker RSS {rss_small:.0f} -> {rss_big:.0f} MB"
        )
        results += [
            Result(f"fanout map {n:,} x noop, 50 at once ({kind})", rate, "elements/s", raw, "raw tx/s",
                   rate / raw),
            Result(f"fanout worker peak RSS at {n:,} vs {n // 10:,} ({kind})", rss_big, "MB", rss_small, "MB",
                   rss_big / rss_small if rss_small else None, "flat in N", rss_big <= rss_small * 1.25 + 10),
        ]  # fmt: skip
        if peer:
            dbos = n * len(timed["DBOS"]) / sum(timed["DBOS"])
            say(f"    DBOS queue: {dbos:,.0f} elements/s; statem/DBOS {rate / dbos:.2f}x")
            results.append(Result(f"fanout statem vs DBOS queue, 50 at once ({kind})", rate, "elements/s",
                                  dbos, "DBOS el/s", rate / dbos, ">= 2x", rate >= 2 * dbos))  # fmt: skip
    return results


def main() -> None:
    """``python -m bench.fanout [--quick]``."""
    main_for("fan-out benchmark", run)


if __name__ == "__main__":
    main()
