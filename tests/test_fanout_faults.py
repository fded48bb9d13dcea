"""Fan-out under fire: ``statem worker`` subprocesses SIGKILLed mid-fan-out.

Every element's key is called (at least once; an element killed mid-call is called again
under the same key), the join happens exactly once per execution, and the results are
complete and in order.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from statem import Engine

from .apps.fanout_app import MACHINE
from .conftest import ROOT

pytestmark = pytest.mark.slow
STATEM = [sys.executable, "-m", "statem.cli", "--app", "tests.apps.fanout_app:make", "worker"]


def test_workers_killed_mid_fanout(db_url: str, tmp_path: Path) -> None:
    engine = Engine(db_url)
    engine.save_machine(MACHINE)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "STATEM_DATABASE_URL": db_url, "FX_CALLS": str(calls)}
    args = [*STATEM, "--poll", "0.1", "--lease", "1", "--concurrency", "4"]
    logs: list[Path] = []

    def spawn() -> subprocess.Popen[bytes]:
        path = tmp_path / f"worker-{len(logs)}.log"
        logs.append(path)
        with path.open("wb") as out:
            return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    ids = [engine.start("fanout-torture", {"n": n}).id for n in range(8)]
    procs = [spawn(), spawn()]
    kills = 0
    rng = random.Random(12)
    stop = threading.Event()

    def killer() -> None:
        nonlocal kills
        while not stop.is_set():
            k = rng.randrange(len(procs))
            deadline = time.monotonic() + 30
            while b" started (" not in logs[-1].read_bytes() and time.monotonic() < deadline:
                time.sleep(0.02)
            if stop.wait(rng.uniform(0.2, 0.5)):
                break
            procs[k].send_signal(signal.SIGKILL)
            procs[k].wait()
            kills += 1
            procs[k] = spawn()

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(engine.get(i).done for i in ids):
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    keys: dict[str, set[str]] = defaultdict(set)
    for line in calls.read_text().split():
        eid, _, task = line.rpartition(":")
        keys[eid].add(task)
    for n, eid in enumerate(ids):
        ex = engine.get(eid)
        assert (ex.state, ex.status) == ("done", "finished"), (eid, ex.error)
        assert ex.output == [n * 100 + i for i in range(20)]  # complete and in order
        assert [s.kind for s in engine.history(eid)] == ["start", "invoke", "result"]  # one join
        assert len(keys[eid]) == 20  # every element's key called, one key per element
    engine.close()
    print(f"fan-out torture: {kills} kills, {sum(1 for _ in calls.read_text().split())} calls")
    assert kills >= 2
