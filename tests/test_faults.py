"""Fault injection: workers SIGKILLed at random while they run, and trigger storms.

After the storm or the killing: every execution finished, every history has contiguous
seqs with no step applied twice, every effect key was called at least once, and every
final context equals the one a crash-free run gives.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from statem import Engine
from statem.testing import run_until_idle

from .apps.torture_app import MACHINE, POISON, charge
from .conftest import ROOT

pytestmark = pytest.mark.slow
STATEM = [sys.executable, "-m", "statem.cli", "--app", "tests.apps.torture_app:make", "worker"]


def drive(engine: Engine, n: int, pace: float = 0.0) -> list[str]:
    """Start ``n`` executions and fire their actions (the caller's part of the process),
    one every ``pace`` seconds."""
    ids = []
    for i in range(n):
        time.sleep(pace)
        eid = engine.start("torture", {"n": i}, execution_id=f"t{i}").id
        for sku in ("a", "b")[: 1 + i % 2]:
            engine.trigger(eid, "add", {"sku": sku}, idempotency_key=f"{eid}-{sku}")
        engine.trigger(eid, "close", idempotency_key=f"{eid}-close")
        ids.append(eid)
    return ids


def reference(tmp_path: Path, n: int) -> dict[str, Any]:
    """Final contexts from a crash-free, in-process run of the same inputs."""
    engine = Engine(f"sqlite:///{tmp_path / 'reference.db'}")
    engine.migrate()
    engine.save_machine(MACHINE)
    engine.effects.register("charge", charge)
    ids = drive(engine, n)
    deadline = time.monotonic() + 30
    while not all(engine.get(i).done for i in ids) and time.monotonic() < deadline:
        run_until_idle(engine)
        time.sleep(0.05)
    contexts = {i: engine.get(i).context for i in ids}
    engine.close()
    return contexts


def check(engine: Engine, ids: list[str], expected: dict[str, Any], calls: Path) -> dict[str, int]:
    duplicated = lost = 0
    for eid in ids:
        ex = engine.get(eid)
        lost += ex.status != "finished"
        steps = engine.history(eid)
        assert [s.seq for s in steps] == list(range(1, len(steps) + 1)), eid
        kinds = Counter(s.kind for s in steps)
        duplicated += max(kinds["result"] - 1, 0) + max(kinds["timer"] - 1, 0) + max(kinds["action"] - 3, 0)
        assert ex.context == expected[eid], eid
    keys = Counter(calls.read_text().split()) if calls.exists() else Counter()
    assert {k.split(":")[0] for k in keys} == set(ids)  # every execution's effect was called
    figures = {"executions": len(ids), "lost": lost, "duplicated": duplicated,
               "keys": len(keys), "max_calls_per_key": max(keys.values(), default=0)}  # fmt: skip
    assert lost == 0 and duplicated == 0, figures
    assert len(keys) == len(ids), figures  # one effect per execution, each called at least once
    return figures


def torture(
    db_url: str,
    tmp_path: Path,
    workers: int,
    n: int,
    seconds: float,
    kill_every: tuple[float, float] = (0.1, 0.4),
    spread: float = 6.0,
) -> dict[str, int]:
    """Drive ``n`` executions while a random worker is SIGKILLed and restarted, again and again.

    Each kill comes ``kill_every`` seconds (a random pick in the range) after the chosen
    worker said it was up, so every worker gets to claim and run work before it dies,
    however slowly the machine starts a Python process. The executions are started over
    ``spread`` seconds at least, so work keeps arriving while workers die.
    """
    engine = Engine(db_url)
    engine.save_machine(MACHINE)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "STATEM_DATABASE_URL": db_url, "FX_CALLS": str(calls)}
    args = [*STATEM, "--poll", "0.1", "--lease", "1", "--concurrency", "4"]
    spawned = 0

    def spawn() -> tuple[subprocess.Popen[bytes], Path]:
        nonlocal spawned
        spawned += 1
        path = tmp_path / f"worker-{spawned}.log"
        with path.open("wb") as out:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        return proc, path

    def wait_up(path: Path) -> None:
        deadline = time.monotonic() + 30
        while b" started (" not in path.read_bytes() and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.02)

    procs = [spawn() for _ in range(workers)]
    kills = 0
    stop = threading.Event()

    def killer() -> None:
        nonlocal kills
        rng = random.Random(7)
        while not stop.is_set():
            k = rng.randrange(len(procs))
            proc, path = procs[k]
            wait_up(path)
            if stop.wait(rng.uniform(*kill_every)):
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            procs[k] = spawn()

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        ids = drive(engine, n, pace=spread / n)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not all(engine.get(i).done for i in ids):
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
        for proc, _path in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    figures = check(engine, ids, reference(tmp_path, n), calls)
    engine.close()
    figures["kills"] = kills
    print(f"torture figures: {figures}")
    assert kills >= 3
    return figures


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_crash_torture_two_workers_postgresql(db_url: str, tmp_path: Path) -> None:
    torture(db_url, tmp_path, workers=2, n=100, seconds=60)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_crash_torture_one_worker_sqlite(db_url: str, tmp_path: Path) -> None:
    torture(db_url, tmp_path, workers=1, n=40, seconds=60)


# --------------------------------------------------------------------------- mixed fleet, poison

BARE = [sys.executable, "-m", "statem.cli", "worker"]  # the built-in effects only


def mixed_fleet_torture(db_url: str, tmp_path: Path, n: int, poisons: int, seconds: float) -> dict[str, int]:
    """Issue 10: a rolling deploy's fleet (two workers with the app's effects, one
    without) runs ``n`` torture executions and ``poisons`` executions whose effect kills
    the worker running it (``os._exit``); dead workers are restarted. Every execution
    must end finished or failed with its error recorded, none ``running``; the bare
    worker never fails an execution for lacking an effect; the poison is attempted at
    most its ``max_attempts`` (2) per execution."""
    engine = Engine(db_url)
    engine.save_machines([MACHINE, POISON])
    calls, poisoned = tmp_path / "calls.txt", tmp_path / "poison.txt"
    env = {**os.environ, "STATEM_DATABASE_URL": db_url, "FX_CALLS": str(calls), "FX_POISON": str(poisoned)}
    opts = ["--poll", "0.1", "--lease", "1", "--concurrency", "4"]
    fleet: list[tuple[list[str], subprocess.Popen[bytes] | None]] = [
        ([*STATEM, *opts], None), ([*STATEM, *opts], None), ([*BARE, *opts], None),
    ]  # fmt: skip
    logs: list[Path] = []
    deaths = 0

    def keep_up() -> None:
        nonlocal deaths
        for i, (args, proc) in enumerate(fleet):
            if proc is not None and proc.poll() is None:
                continue
            deaths += proc is not None
            path = tmp_path / f"fleet-{i}-{len(logs)}.log"
            logs.append(path)
            with path.open("wb") as out:
                fleet[i] = (
                    args,
                    subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT),
                )

    keep_up()
    ids = []
    try:
        ids = drive(engine, n)
        bad = [engine.start("poison", execution_id=f"p{i}").id for i in range(poisons)]
        everything = ids + bad
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not all(engine.get(i).done for i in everything):
            keep_up()
            time.sleep(0.2)
    finally:
        for _args, proc in fleet:
            if proc is not None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    statuses = Counter(engine.get(i).status for i in everything)
    assert statuses["running"] == statuses["waiting"] == 0, statuses
    figures = check(engine, ids, reference(tmp_path, n), calls)  # the app's executions: as without faults
    for eid in bad:
        ex = engine.get(eid)
        assert (ex.state, ex.status) == ("poisoned", "finished"), (eid, ex)
        assert "the worker died (or lost its lease) running this effect" in ex.context["why"]["message"]
    per_execution = Counter(key.split(":")[0] for key in poisoned.read_text().split())
    # at most max_attempts calls each (an attempt claimed by a worker that died running
    # another task of its batch counts too, so some may have been called less, or never)
    assert set(per_execution) <= set(bad) and max(per_execution.values()) <= 2, per_execution
    text = "".join(p.read_text(errors="replace") for p in logs)
    assert "is registered in this process" not in text  # the bare worker never took an app effect
    figures.update(poisoned=len(bad), poison_calls=sum(per_execution.values()), worker_deaths=deaths)
    engine.close()
    print(f"mixed fleet figures: {figures}")
    # the poison kills workers (at least one), but never more than its max_attempts (2)
    # each: that bound is the guarantee. One death may use up the attempts of several
    # poisons claimed by the same worker, so fewer deaths than poisons is fine.
    assert 1 <= deaths <= 2 * poisons, deaths
    return figures


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_mixed_fleet_with_a_poison_effect_postgresql(db_url: str, tmp_path: Path) -> None:
    mixed_fleet_torture(db_url, tmp_path, n=30, poisons=3, seconds=120)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_mixed_fleet_with_a_poison_effect_sqlite(db_url: str, tmp_path: Path) -> None:
    mixed_fleet_torture(db_url, tmp_path, n=15, poisons=2, seconds=120)


# --------------------------------------------------------------------------- trigger storms

COUNTERS = {
    "id": "counters",
    "version": 1,
    "start_at": "open",
    "context": {"n": "0"},
    "states": {"open": {"actions": {"bump": {"context": {"n": "ctx['n'] + 1"}}}}},
}
PROCESSES, THREADS, TOTAL, TARGETS = 4, 4, 2000, 100


def _storm(url: str, proc: int, queue: Any, total: int = TOTAL) -> None:
    """One process of the storm: THREADS threads, each firing its share of the triggers."""
    engine = Engine(url)
    accepted: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def fire(thread: int) -> None:
        rng = random.Random(proc * 100 + thread)
        share = total // (PROCESSES * THREADS)
        for i in range(share):
            target = f"c{rng.randrange(TARGETS)}"
            # a tenth repeat a key another thread or process also sends
            key = f"shared-{i % 20}-{target}" if i % 10 == 0 else f"p{proc}t{thread}i{i}"
            try:
                engine.trigger(target, "bump", idempotency_key=key)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                accepted.append(f"{target}|{key}")

    threads = [threading.Thread(target=fire, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    queue.put((accepted, errors))


def test_trigger_storm_applies_every_accepted_trigger_once(engine: Engine, db_url: str) -> None:
    storm(engine, db_url, TOTAL)


def storm(engine: Engine, db_url: str, total: int) -> dict[str, int]:
    """Run the storm; assert every accepted trigger was applied once; return the figures."""
    engine.save_machine(COUNTERS)
    for i in range(TARGETS):
        engine.start("counters", execution_id=f"c{i}")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_storm, args=(db_url, p, queue, total)) for p in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [e for _, errs in results for e in errs]
    assert errors == []
    distinct = {a for accepted, _ in results for a in accepted}  # a repeated key is applied once
    per_target = Counter(a.split("|")[0] for a in distinct)
    for i in range(TARGETS):
        assert engine.get(f"c{i}").context["n"] == per_target[f"c{i}"]
    assert sum(per_target.values()) < total  # some keys were repeated...
    assert sum(per_target.values()) > total * 0.9  # ...a tenth at most
    sent = sum(len(accepted) for accepted, _ in results)
    applied = sum(per_target.values())
    return {"triggers_sent": sent, "applied": applied, "repeats_dropped": sent - len(distinct),
            "lost": 0, "errors": len(errors)}  # fmt: skip


# --------------------------------------------------------------------------- database outage

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TICKER = {
    "id": "ticker",
    "version": 1,
    "start_at": "tick",
    "context": {"n": "0"},
    "states": {
        "tick": {"always": [
            {"name": "enough", "state": "done", "when": "ctx['n'] >= 12"},
            {"name": "next", "wait_for": {"seconds": 0.5}, "context": {"n": "ctx['n'] + 1"}},
        ]},
        "done": {"end": True},
    },
}  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """A throwaway PostgreSQL server of our own, so stopping it disturbs no other test."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.data = root / "data"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                        *args], check=True, capture_output=True, timeout=60)  # fmt: skip

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self.pg_ctl("-o", opts, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")

    def __enter__(self) -> PrivateCluster:
        os.chown(self.root, _uid("postgres"), -1)
        initdb = ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(self.data)]
        subprocess.run(
            [*initdb, "-A", "trust", "-U", "postgres"], check=True, capture_output=True, timeout=120
        )
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


@pytest.mark.skipif(
    not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 server binaries are not installed"
)
def test_workers_and_callers_ride_out_a_database_outage(tmp_path: Path) -> None:
    import shutil
    import tempfile

    from statem import StoreError

    root = Path(tempfile.mkdtemp(prefix="statem-pg-"))  # outside pytest's root-only tmp tree
    try:
        _ride_out_outage(root, tmp_path, StoreError)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ride_out_outage(root: Path, tmp_path: Path, StoreError: type[Exception]) -> None:
    with PrivateCluster(root) as cluster:
        engine = Engine(cluster.url)
        engine.migrate()
        engine.save_machine(COUNTERS)
        engine.save_machine(TICKER)
        counters = [engine.start("counters", execution_id=f"c{i}").id for i in range(5)]
        tickers = [engine.start("ticker").id for _ in range(3)]
        env = {**os.environ, "STATEM_DATABASE_URL": cluster.url}
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "statem.cli", "worker", "--poll", "0.2"],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        accepted: Counter[str] = Counter()
        refused: list[tuple[str, float]] = []
        stop = threading.Event()

        def caller() -> None:
            i = 0
            while not stop.is_set():
                target = counters[i % len(counters)]
                began = time.monotonic()
                try:
                    engine.trigger(target, "bump")
                    accepted[target] += 1
                except StoreError as exc:
                    refused.append((str(exc), time.monotonic() - began))
                    time.sleep(0.05)
                i += 1
                time.sleep(0.01)

        thread = threading.Thread(target=caller)
        thread.start()
        try:
            time.sleep(1.5)
            cluster.stop()
            time.sleep(5)
            cluster.start()
            time.sleep(2)
        finally:
            stop.set()
            thread.join()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(engine.get(t).done for t in tickers):
                time.sleep(0.2)
            assert worker.poll() is None, "the worker died in the outage"
            assert all(engine.get(t).status == "finished" for t in tickers)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        for target in counters:
            assert engine.get(target).context["n"] == accepted[target]  # none lost, none doubled
        assert refused, "no trigger was refused during the outage"
        assert all(seconds < 15 for _, seconds in refused), max(s for _, s in refused)  # bound: see docs
        assert all("database" in msg for msg, _ in refused)
        engine.close()
    text = (tmp_path / "worker.log").read_text()
    assert text.count("lost the database") == 1, text
    assert text.count("reconnected after") == 1, text
    assert "Traceback" not in text
