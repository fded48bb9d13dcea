"""Concurrent triggers on one execution: serialized, none lost, none applied twice."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest

from statem import Engine

COUNTER = {
    "id": "tally",
    "version": 1,
    "start_at": "open",
    "context": {"n": "0", "seen": "[]"},
    "states": {
        "open": {
            "actions": {
                "inc": {"context": {"n": "ctx['n'] + 1", "seen": "ctx['seen'] + [input['who']]"}},
            }
        }
    },
}
THREADS = 8
PER_WORKER = 15


def _hammer(url: str, eid: str, who: str, errors: list[str]) -> None:
    engine = Engine(url)
    try:
        for i in range(PER_WORKER):
            engine.trigger(eid, "inc", {"who": f"{who}-{i}"})
    except Exception as exc:  # collected and asserted on by the test
        errors.append(f"{who}: {type(exc).__name__}: {exc}")
    finally:
        engine.close()


def _check(engine: Engine, eid: str, expected: int) -> None:
    ex = engine.get(eid)
    assert ex.context["n"] == expected
    assert len(ex.context["seen"]) == expected == len(set(ex.context["seen"]))
    steps = engine.history(eid)
    assert [s.seq for s in steps] == list(range(1, expected + 2))
    assert [s.context["n"] for s in steps] == list(range(expected + 1))  # type: ignore[index]


def test_threads_trigger_one_execution(engine: Engine, db_url: str) -> None:
    engine.save_machine(COUNTER)
    eid = engine.start("tally").id
    errors: list[str] = []
    threads = [threading.Thread(target=_hammer, args=(db_url, eid, f"t{i}", errors)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _check(engine, eid, THREADS * PER_WORKER)


def _proc(url: str, eid: str, who: str, queue: Any) -> None:
    errors: list[str] = []
    _hammer(url, eid, who, errors)
    queue.put(errors)


@pytest.mark.slow
def test_processes_trigger_one_execution(engine: Engine, db_url: str) -> None:
    engine.save_machine(COUNTER)
    eid = engine.start("tally").id
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_proc, args=(db_url, eid, f"p{i}", queue)) for i in range(THREADS)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [e for r in results for e in r] == []
    _check(engine, eid, THREADS * PER_WORKER)


def test_concurrent_idempotency_keys_apply_once(engine: Engine, db_url: str) -> None:
    engine.save_machine(COUNTER)
    eid = engine.start("tally").id
    errors: list[str] = []

    def same_key(i: int) -> None:
        e = Engine(db_url)
        try:
            for k in range(10):
                e.trigger(eid, "inc", {"who": k}, idempotency_key=f"key-{k}")  # one request per key
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            e.close()

    threads = [threading.Thread(target=same_key, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert engine.get(eid).context["n"] == 10
