"""Timers fired in batches: one transaction, a savepoint per step (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from statem import Engine
from statem.executor import run_timers
from statem.testing import FakeClock

MACHINE: dict[str, Any] = {
    "id": "nag",
    "version": 1,
    "start_at": "wait",
    "context": {"bad": "input.get('bad', False)"},
    "states": {
        "wait": {
            "always": [
                {
                    "name": "late",
                    "state": "late",
                    "wait_for": {"hours": 1},
                    "context": {"x": "1 / 0 if ctx['bad'] else 1"},
                }
            ],
            "actions": {"skip": {"state": "skipped"}},
        },
        "late": {"end": True},
        "skipped": {"end": True},
    },
}

QUICK: dict[str, Any] = {
    "id": "quick",
    "version": 1,
    "start_at": "wait",
    "states": {
        "wait": {"always": [{"name": "late", "state": "late", "wait_for": {"seconds": 1}}]},
        "late": {"end": True},
    },
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fengine(db_url: str, clock: FakeClock) -> Iterator[Engine]:
    e = Engine(db_url, clock=clock)
    e.save_machine(MACHINE)
    yield e
    e.close()


def contiguous(engine: Engine, eid: str) -> bool:
    return [s.seq for s in engine.history(eid)] == list(range(1, len(engine.history(eid)) + 1))


def test_a_batch_commits_every_step_but_the_stale_and_records_the_failed(
    fengine: Engine, clock: FakeClock
) -> None:
    ok = [fengine.start("nag").id for _ in range(5)]
    bad = fengine.start("nag", {"bad": True}).id
    moved = fengine.start("nag").id
    clock.advance(hours=2)
    claimed = fengine._executor.claim("test", 100, 30.0)
    assert len(claimed) == 7 and {t.kind for t in claimed} == {"timer"}
    fengine.trigger(moved, "skip")  # discards its timer: that claim is now stale

    run_timers(fengine._executor, claimed)

    for eid in ok:
        ex = fengine.get(eid)
        assert (ex.state, ex.status, ex.context["x"]) == ("late", "finished", 1)
        assert [s.kind for s in fengine.history(eid)] == ["start", "wait", "timer"]
    failed = fengine.get(bad)
    assert failed.status == "failed" and "division by zero" in (failed.error or "")
    assert fengine.get(moved).state == "skipped"  # the trigger's step stands; no timer step
    assert "timer" not in [s.kind for s in fengine.history(moved)]
    assert all(contiguous(fengine, e) for e in [*ok, bad, moved])
    assert fengine.run_once() == 0  # nothing left claimed or pending
    assert fengine.stats()["process"]["tasks"].get("stale") == 1


def test_a_batch_of_one_runs_as_a_single_task(fengine: Engine, clock: FakeClock) -> None:
    eid = fengine.start("nag").id
    clock.advance(hours=2)
    run_timers(fengine._executor, fengine._executor.claim("test", 10, 30.0))
    assert fengine.get(eid).status == "finished"


def test_a_worker_fires_many_due_timers_in_batches(db_url: str) -> None:
    engine = Engine(db_url)
    try:
        engine.save_machine(QUICK)
        ids = [engine.start("quick").id for _ in range(300)]
        time.sleep(1.1)  # all due before the worker starts: its claims come back full
        with engine.worker() as worker:
            for eid in ids:
                engine.wait(eid, timeout=60)
            largest = worker.largest_batch
        assert all(engine.get(e).status == "finished" for e in ids)
        assert all([s.kind for s in engine.history(e)] == ["start", "wait", "timer"] for e in ids)
        assert all(contiguous(engine, e) for e in ids)
        assert largest > 1  # the batch grew under load
    finally:
        engine.close()
