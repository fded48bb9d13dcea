"""Worker processes: sharing work, SIGKILL recovery, clean shutdown (real `statem worker` subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statem import Engine

from .conftest import ROOT
from .helpers import effect_machine

pytestmark = pytest.mark.slow
STATEM = [sys.executable, "-m", "statem.cli"]


class Workers:
    """Start and stop `statem worker` subprocesses for one database."""

    def __init__(self, url: str, calls: Path, tmp: Path) -> None:
        self.url, self.calls, self.tmp = url, calls, tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "STATEM_DATABASE_URL": self.url, "FX_CALLS": str(self.calls)}
        with (self.tmp / f"worker{len(self.procs)}.log").open("wb") as log:
            p = subprocess.Popen(
                [*STATEM, "--app", "tests.apps.fxapp:make", "worker", "--poll", "0.2", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    def logs(self) -> str:
        return "\n".join(f.read_text(errors="replace") for f in sorted(self.tmp.glob("worker*.log")))


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(db_url, tmp_path / "calls.txt", tmp_path)
    yield w
    w.stop_all()


def _wait_all(engine: Engine, ids: list[str], timeout: float, workers: Workers) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(engine.get(i).done for i in ids):
            return
        time.sleep(0.1)
    states = Counter(engine.get(i).status for i in ids)
    pytest.fail(f"executions not done after {timeout}s: {dict(states)}\n{workers.logs()[-3000:]}")


def _one_result_each(engine: Engine, ids: list[str]) -> list[Any]:
    outputs = []
    for eid in ids:
        steps = engine.history(eid)
        assert [s.seq for s in steps] == list(range(1, len(steps) + 1))
        assert [s.kind for s in steps].count("result") == 1, [s.kind for s in steps]
        ex = engine.get(eid)
        assert ex.status == "finished", ex.error
        outputs.append(ex.output)
    return outputs


def test_two_workers_share_the_work(engine: Engine, workers: Workers) -> None:
    engine.save_machine(effect_machine("slow", input="{'sleep': 0.05}"))
    ids = [engine.start("fx").id for _ in range(40)]
    workers.start("--concurrency", "2")
    workers.start("--concurrency", "2")
    _wait_all(engine, ids, 60, workers)
    outputs = _one_result_each(engine, ids)
    pids = {o["pid"] for o in outputs}
    assert len(pids) == 2, f"one worker did everything: {pids}"
    keys = Counter(line.split()[0] for line in workers.calls.read_text().splitlines())
    assert set(keys) == {f"{i}:{n}" for n, i in enumerate(ids, 1)}  # every key called...
    assert max(keys.values()) == 1  # ...and, with no crash, exactly once


def test_sigkilled_worker_is_recovered_by_lease_expiry(engine: Engine, workers: Workers) -> None:
    # the killed worker's claim is an attempt: a second one re-runs the effect
    engine.save_machine(effect_machine("slow", input="{'sleep': 1.5}", retry={"max_attempts": 2}))
    ids = [engine.start("fx").id for _ in range(4)]
    victim = workers.start("--concurrency", "4", "--lease", "2")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        not workers.calls.exists() or not workers.calls.read_text().strip()
    ):
        time.sleep(0.05)
    assert workers.calls.exists(), workers.logs()
    victim.send_signal(signal.SIGKILL)  # mid-task: effects started, no result committed
    victim.wait(timeout=10)
    assert not any(engine.get(i).done for i in ids)
    workers.start("--concurrency", "4", "--lease", "2")
    _wait_all(engine, ids, 60, workers)
    _one_result_each(engine, ids)
    keys = Counter(line.split()[0] for line in workers.calls.read_text().splitlines())
    assert len(keys) == 4 and min(keys.values()) >= 1


def test_sigterm_finishes_in_flight_work(engine: Engine, workers: Workers) -> None:
    engine.save_machine(effect_machine("slow", input="{'sleep': 1.0}"))
    ids = [engine.start("fx").id for _ in range(2)]
    w = workers.start("--concurrency", "2")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        not workers.calls.exists() or len(workers.calls.read_text().splitlines()) < 2
    ):
        time.sleep(0.05)
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=20) == 0
    _one_result_each(engine, ids)
    assert "stopped after 2 tasks" in workers.logs()


def test_a_foreground_worker_tunes_the_gc_of_its_own_process() -> None:
    """``statem worker`` (run_forever) freezes start-up objects and raises the young
    generation's threshold; run in a child process, since it changes process-wide state."""
    import subprocess
    import sys

    code = (
        "import gc; from statem.worker import tune_gc, GC_GEN0_THRESHOLD; before = gc.get_freeze_count(); "
        "tune_gc(); assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD, gc.get_threshold(); "
        "assert gc.get_freeze_count() > before; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
