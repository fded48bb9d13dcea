"""Crash torture with an operator: workers SIGKILLed at random while executions are paused,
resumed and upgraded in a loop. Nothing lost, nothing applied twice, every final context
as in a crash-free run, every execution on the version it was last upgraded to."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from statem import Engine, OperationNotAllowed

from .apps.torture_app import MACHINE
from .conftest import ROOT
from .test_faults import STATEM, check, drive, reference

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def version(n: int) -> dict[str, Any]:
    """The torture machine as version ``n`` (same behaviour, a different description)."""
    return {**MACHINE, "version": n, "description": f"release {n}"}


def torture_with_operator(
    db_url: str, tmp_path: Path, workers: int, n: int, seconds: float
) -> dict[str, int]:
    engine = Engine(db_url)
    engine.save_machine(MACHINE)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "STATEM_DATABASE_URL": db_url, "FX_CALLS": str(calls)}
    args = [*STATEM, "--poll", "0.1", "--lease", "1", "--concurrency", "4"]
    stop = threading.Event()
    spawned = 0
    kills = operations = 0
    errors: list[BaseException] = []
    ids: list[str] = []

    def spawn() -> tuple[subprocess.Popen[bytes], Path]:
        nonlocal spawned
        spawned += 1
        path = tmp_path / f"worker-{spawned}.log"
        with path.open("wb") as out:
            return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT), path

    procs = [spawn() for _ in range(workers)]

    def killer() -> None:
        """Kill a worker some time after it said it was up (so each gets to run work first,
        however slowly the machine starts a Python process), then start another."""
        nonlocal kills
        rng = random.Random(11)
        while not stop.is_set():
            k = rng.randrange(len(procs))
            proc, path = procs[k]
            deadline = time.monotonic() + 30
            while (
                b" started (" not in path.read_bytes() and time.monotonic() < deadline and not stop.is_set()
            ):
                time.sleep(0.02)
            if stop.wait(rng.uniform(0.2, 0.8)):
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            procs[k] = spawn()

    def operator() -> None:
        nonlocal operations
        rng = random.Random(5)
        next_version = 2
        try:
            while not stop.is_set():
                known = list(ids)
                if known:
                    eid = rng.choice(known)
                    try:
                        engine.pause(eid, reason="torture")
                    except OperationNotAllowed:
                        pass  # it finished meanwhile
                    else:
                        time.sleep(rng.uniform(0.0, 0.1))
                        engine.resume(eid, reason="torture")
                        operations += 2
                if rng.random() < 0.2:
                    engine.save_machine(version(next_version))
                    engine.upgrade("torture", next_version, apply=True, reason="torture")
                    next_version += 1
                    operations += 1
                time.sleep(rng.uniform(0.0, 0.05))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=killer), threading.Thread(target=operator)]
    for t in threads:
        t.start()
    try:
        for i in range(n):
            time.sleep(8.0 / n)  # work keeps arriving while workers die
            ids.extend(drive(engine, 1, pace=0.0) if i == 0 else [_one(engine, i)])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not all(engine.get(i).done for i in ids):
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for proc, _path in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    try:
        assert not errors, errors
        figures = check(engine, ids, reference(tmp_path, n), calls)
        started_on = _start_versions(db_url)
        for eid in ids:
            # on the version of its last upgrade, else on the one it started on (the latest then)
            upgrades = [s for s in engine.history(eid) if s.kind == "upgrade"]
            expected = upgrades[-1].input["to_version"] if upgrades else started_on[eid]  # type: ignore[index]
            assert engine.get(eid).machine_version == expected, eid
            pauses = [s.kind for s in engine.history(eid) if s.kind in ("pause", "resume")]
            assert pauses == ["pause", "resume"] * (len(pauses) // 2), eid
    finally:
        engine.close()
    figures.update(kills=kills, operations=operations)
    print(f"operator torture figures: {figures}")
    assert kills >= 1 and operations >= 10, figures
    return figures


def _start_versions(db_url: str) -> dict[str, int]:
    """The version each execution started on, as its start step's event records it."""
    db = create_engine(db_url)
    try:
        with db.connect() as conn:
            rows = conn.execute(text("SELECT execution_id, event FROM statem_steps WHERE seq = 1")).all()
    finally:
        db.dispose()
    events = {eid: e if isinstance(e, dict) else json.loads(e) for eid, e in rows}
    return {eid: int(e["version"]) for eid, e in events.items()}


def _one(engine: Engine, i: int) -> str:
    """drive() for execution number ``i`` (the same inputs and keys)."""
    eid = engine.start("torture", {"n": i}, execution_id=f"t{i}").id
    for sku in ("a", "b")[: 1 + i % 2]:
        engine.trigger(eid, "add", {"sku": sku}, idempotency_key=f"{eid}-{sku}")
    engine.trigger(eid, "close", idempotency_key=f"{eid}-close")
    return eid


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_operator_torture_two_workers_postgresql(db_url: str, tmp_path: Path) -> None:
    torture_with_operator(db_url, tmp_path, workers=2, n=30, seconds=120)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_operator_torture_one_worker_sqlite(db_url: str, tmp_path: Path) -> None:
    torture_with_operator(db_url, tmp_path, workers=1, n=20, seconds=120)
