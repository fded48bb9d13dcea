"""Shared pieces of the benchmarks: results, scratch databases, the raw SQL baseline, workers.

Every benchmark module exposes ``run(quick: bool) -> list[Result]`` and a ``main()`` that
parses ``--quick``; :mod:`bench.__main__` runs them all and prints one summary table.
Benchmarks print figures; they never assert speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from statem import Engine
from statem.dialects import make_engine

#: The checkout's root: worker subprocesses run from here so ``bench.app`` imports.
ROOT = Path(__file__).resolve().parent.parent
#: Admin URL of the PostgreSQL server; scratch databases are created next to it.
PG_ADMIN_URL = os.environ.get(
    "STATEM_BENCH_PG_URL",
    os.environ.get("STATEM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
)
#: Where a figure with no baseline or target shows a dash.
DASH = "-"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Result:
    """One figure for the summary table, with its baseline and whether it meets its target."""

    name: str
    figure: float
    unit: str
    baseline: float | None = None
    baseline_unit: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        """The row of the summary table: name, figure, baseline, ratio, target, met?."""
        return [
            self.name,
            f"{fmt(self.figure)} {self.unit}".strip(),
            f"{fmt(self.baseline)} {self.baseline_unit}".strip() if self.baseline is not None else DASH,
            f"{self.ratio:.0%}" if self.ratio is not None else DASH,
            self.target or DASH,
            {True: "yes", False: "NO", None: DASH}[self.met],
        ]


def fmt(value: float | None) -> str:
    """A figure with about three significant digits."""
    if value is None:
        return DASH
    if value == 0 or math.isnan(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.3g}"
    return f"{value:.2e}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


SUMMARY_HEADERS = ("benchmark", "figure", "baseline", "ratio", "target", "met?")


def summary(results: Sequence[Result]) -> str:
    """The summary table of a list of results."""
    return table(SUMMARY_HEADERS, [r.cells() for r in results])


def say(message: str) -> None:
    """Print a progress line at once (benchmarks run long; show where they are)."""
    print(message, flush=True)


def quiet_logs() -> None:
    """Warnings only; and not APScheduler's "skipped: maximum number of running instances
    reached", which an in-process worker logs whenever a wake-up lands during a poll."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def main_for(title: str, run: Callable[[bool], list[Result]]) -> None:
    """The ``main()`` of one benchmark module: parse ``--quick``, run, print its table."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--quick", action="store_true", help="a smaller run (well under a minute)")
    args = parser.parse_args()
    quiet_logs()
    started = time.monotonic()
    results = run(args.quick)
    say(f"\n{title} ({time.monotonic() - started:.0f} s)\n{summary(results)}")


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0..1) of ``values`` by nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


# --------------------------------------------------------------------------- databases


@contextmanager
def scratch_pg(tag: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one benchmark, dropped afterwards; yields its URL."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"statem_bench_{tag}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def scratch_sqlite(tag: str) -> Iterator[str]:
    """A fresh SQLite file (WAL, as statem sets it up) in a temporary directory; yields its URL."""
    folder = tempfile.mkdtemp(prefix=f"statem-bench-{tag}-")
    try:
        yield f"sqlite:///{Path(folder) / 'bench.db'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def scratch(kind: str, tag: str) -> Iterator[str]:
    """A scratch database of ``kind`` ``"sqlite"`` or ``"postgresql"``."""
    maker = scratch_sqlite if kind == "sqlite" else scratch_pg
    with maker(tag) as url:
        yield url


def new_engine(url: str, **kw: Any) -> Engine:
    """A migrated statem engine with the benchmarks' no-op effect registered."""
    from .app import register

    engine = Engine(url, **kw)
    engine.migrate()
    register(engine)
    return engine


def start_many(engine: Engine, machine_id: str, inputs: Sequence[Any], threads: int = 1) -> float:
    """``engine.start(machine_id, input)`` for every input, on ``threads`` threads; returns seconds."""
    from concurrent.futures import ThreadPoolExecutor

    began = time.monotonic()
    if threads <= 1:
        for data in inputs:
            engine.start(machine_id, data, version=1)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda data: engine.start(machine_id, data, version=1), inputs))
    return time.monotonic() - began


def count_status(db: sa.Engine, machine_id: str, status: str = "finished") -> int:
    """How many executions of a machine have ``status`` (read in its own short transaction)."""
    q = sa.text("SELECT count(*) FROM statem_executions WHERE machine_id = :m AND status = :s")
    with db.connect() as conn:
        return int(conn.execute(q, {"m": machine_id, "s": status}).scalar_one())


def wait_for_count(
    db: sa.Engine, machine_id: str, target: int, timeout: float, status: str = "finished"
) -> float:
    """Poll until ``target`` executions of a machine have ``status``; returns when (monotonic).

    Raises TimeoutError after ``timeout`` seconds (a benchmark never hangs).
    """
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        done = count_status(db, machine_id, status)
        if done >= target:
            return now
        if now > deadline:
            raise TimeoutError(
                f"only {done} of {target} {machine_id} executions {status} after {timeout:.0f}s"
            )
        time.sleep(0.02)


def check_states(db: sa.Engine, machine_id: str, state: str, expected: int) -> None:
    """Warn when fewer executions than expected reached ``state`` (a run that measured failures)."""
    q = sa.text("SELECT count(*) FROM statem_executions WHERE machine_id = :m AND state = :s")
    with db.connect() as conn:
        got = int(conn.execute(q, {"m": machine_id, "s": state}).scalar_one())
    if got < expected:
        say(f"    WARNING: only {got:,} of {expected:,} {machine_id} executions reached {state!r}")


def pg_commits(url: str) -> int:
    """Transactions committed in a PostgreSQL database so far (``pg_stat_database``).

    A backend reports its counts when it exits or about once a second: read this after the
    connections that did the work are closed.
    """
    db = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with db.connect() as conn:
            q = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            return int(conn.execute(sa.text(q)).scalar_one())
    finally:
        db.dispose()


def postgres_pids() -> list[int]:
    """The PostgreSQL server's processes on this machine (empty when it runs elsewhere)."""
    return [p.pid for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User plus system CPU seconds used so far by each of these processes still alive."""
    used: dict[int, float] = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        used[pid] = times.user + times.system
    return used


class CpuMeter:
    """CPU used by some processes (and by the PostgreSQL server) between start() and stop()."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._began = 0.0
        self._before: dict[int, float] = {}
        self._server: dict[int, float] = {}
        self.share = 0.0
        self.server_share = 0.0

    def start(self) -> None:
        """Take the first reading."""
        self._before = cpu_seconds(self.pids)
        self._server = cpu_seconds(postgres_pids())
        self._began = time.monotonic()

    def stop(self) -> None:
        """Take the second reading: ``share`` and ``server_share`` in cores (1.0 = one core busy)."""
        elapsed = time.monotonic() - self._began
        after = cpu_seconds(self.pids)
        server = cpu_seconds(postgres_pids())
        self.share = sum(t - self._before.get(p, 0.0) for p, t in after.items()) / elapsed
        self.server_share = sum(t - self._server.get(p, 0.0) for p, t in server.items()) / elapsed


# --------------------------------------------------------------------------- the raw baseline

raw_meta = sa.MetaData()
raw_counters = sa.Table(
    "bench_raw_counters",
    raw_meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
raw_log = sa.Table(
    "bench_raw_log",
    raw_meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("counter_id", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
)


def raw_engine(url: str) -> sa.Engine:
    """A plain SQLAlchemy engine for the baseline.

    SQLite: statem's own connection setup (WAL, synchronous=NORMAL, BEGIN IMMEDIATE), so
    both sides run on the same kind of database. PostgreSQL: a bare ``create_engine``
    (statem pings a pooled connection only after it sat idle for a second, as this does not).
    """
    if make_url(url).get_backend_name() == "sqlite":
        return make_engine(url)
    return sa.create_engine(url)


def raw_setup(url: str, rows: int) -> None:
    """Create the baseline tables (once) and ``rows`` counter rows numbered from 0."""
    db = raw_engine(url)
    raw_meta.create_all(db)
    now = dt.datetime.now(dt.UTC)
    with db.begin() as conn:
        conn.execute(sa.delete(raw_counters))
        conn.execute(sa.insert(raw_counters), [{"id": i, "n": 0, "updated_at": now} for i in range(rows)])
    db.dispose()


_bump = (
    sa.update(raw_counters)
    .where(raw_counters.c.id == sa.bindparam("cid"))
    .values(n=raw_counters.c.n + 1, updated_at=sa.bindparam("now"))
)
_log = sa.insert(raw_log)


def raw_transaction(db: sa.Engine, counter_id: int) -> None:
    """One bare transaction: one UPDATE of a counter row and one INSERT of a log row."""
    now = dt.datetime.now(dt.UTC)
    with db.begin() as conn:
        conn.execute(_bump, {"cid": counter_id, "now": now})
        conn.execute(_log, {"counter_id": counter_id, "at": now, "payload": {"n": counter_id}})


def raw_run(url: str, count: int, ids: Sequence[int]) -> list[float]:
    """``count`` raw transactions round-robin over ``ids``; returns each one's latency in seconds."""
    db = raw_engine(url)
    latencies: list[float] = []
    try:
        for i in range(count):
            t = time.perf_counter()
            raw_transaction(db, ids[i % len(ids)])
            latencies.append(time.perf_counter() - t)
    finally:
        db.dispose()
    return latencies


def _raw_process(url: str, count: int, ids: list[int], ready: Any, go: Any, out: Any) -> None:
    """A baseline process: connect, say ready, wait for the start signal, run, report its span."""
    db = raw_engine(url)
    with db.connect():
        pass  # connect before the clock starts, as a started worker has
    ready.put(os.getpid())
    go.wait()
    begin = time.time()
    for i in range(count):
        raw_transaction(db, ids[i % len(ids)])
    out.put((begin, time.time()))
    db.dispose()


def raw_parallel(url: str, total: int, processes: int) -> float:
    """``total`` raw transactions split over ``processes`` processes; returns transactions per second.

    The clock starts once every process has started and connected.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    share = total // processes
    procs = [
        ctx.Process(
            target=_raw_process,
            args=(url, share, list(range(p * 100, (p + 1) * 100)), ready, go, out),
            daemon=True,
        )
        for p in range(processes)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    spans = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    elapsed = max(end for _, end in spans) - min(begin for begin, _ in spans)
    return share * processes / elapsed


# --------------------------------------------------------------------------- worker processes


class WorkerProcesses:
    """``statem worker`` subprocesses running ``bench.app:make`` on one database.

    Logs go to a file (a pipe nobody reads would block them); ``wait_ready`` watches it for
    each worker's ``started`` line. Stopped with SIGTERM (a clean shutdown), killed if stuck.
    """

    def __init__(self, url: str, count: int, concurrency: int = 4, extra: Sequence[str] = ()) -> None:
        self.url = url
        self.count = count
        self.concurrency = concurrency
        self.extra = list(extra)
        self.folder = Path(tempfile.mkdtemp(prefix="statem-bench-workers-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def command(self) -> list[str]:
        """The worker command line (``python -m statem.cli``: works without the console script)."""
        return [
            sys.executable,
            "-m",
            "statem.cli",
            "--app",
            "bench.app:make",
            "worker",
            "--concurrency",
            str(self.concurrency),
            *self.extra,
        ]

    def start(self) -> WorkerProcesses:
        """Spawn the workers."""
        env = {**os.environ, "STATEM_DATABASE_URL": self.url, "PYTHONPATH": str(ROOT)}
        for i in range(self.count):
            log = (self.folder / f"worker{i}.log").open("wb")
            self.procs.append(
                subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
            log.close()
        return self

    def logs(self) -> list[str]:
        """Each worker's log so far."""
        return [(self.folder / f"worker{i}.log").read_text(errors="replace") for i in range(len(self.procs))]

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until every worker logged ``started``; returns when (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            if all(" started (" in text for text in logs):
                return time.monotonic()
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError("a worker did not start:\n" + "\n".join(t[-2000:] for t in logs))
            time.sleep(0.02)

    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        """SIGTERM every worker, wait for a clean exit, kill the stuck ones; remove the logs."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> WorkerProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
