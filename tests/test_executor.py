"""The executor: effects, retries, timeouts, child machines, timers, fencing, sync mode."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from statem import Engine
from statem.testing import FakeClock, run_until_idle

from .helpers import effect_machine, http_server, timer_machine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fengine(db_url: str, clock: FakeClock) -> Any:
    """An engine with a fake clock on both databases."""
    e = Engine(db_url, clock=clock)
    yield e
    e.close()


def test_effect_success_takes_success_branch(fengine: Engine) -> None:
    keys: list[str] = []

    @fengine.effect("work")
    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        keys.append(idempotency_key)
        return {"doubled": input["n"] * 2}

    fengine.save_machine(effect_machine())
    ex = fengine.start("fx", {"n": 21})
    assert (ex.state, ex.status) == ("go", "running")
    assert run_until_idle(fengine) == 1
    ex = fengine.get(ex.id)
    assert (ex.state, ex.status, ex.output) == ("done", "finished", {"doubled": 42})
    assert keys == [f"{ex.id}:1"]
    kinds = [(s.kind, s.name) for s in fengine.history(ex.id)]
    assert kinds == [("start", None), ("invoke", "call"), ("result", "call")]


def test_effect_retries_with_backoff_and_a_stable_key(fengine: Engine, clock: FakeClock) -> None:
    keys: list[str] = []

    @fengine.effect("work")
    def flaky(input: dict[str, Any], *, idempotency_key: str) -> Any:
        keys.append(idempotency_key)
        if len(keys) < 3:
            raise ConnectionError("service down")
        return "ok"

    fengine.save_machine(effect_machine(retry={"max_attempts": 3, "initial_seconds": 10, "multiplier": 2}))
    ex = fengine.start("fx")
    assert run_until_idle(fengine) == 1  # first attempt fails; retry due in 10 s
    assert run_until_idle(fengine) == 0
    clock.advance(9.9)
    assert run_until_idle(fengine) == 0
    clock.advance(1.1)  # retry delays are jittered by up to +10%
    assert run_until_idle(fengine) == 1  # second attempt fails; retry due in 20-22 s
    clock.advance(22)
    run_until_idle(fengine)
    ex = fengine.get(ex.id)
    assert (ex.state, ex.output) == ("done", "ok")
    assert len(keys) == 3 and len(set(keys)) == 1
    retries = [s for s in fengine.history(ex.id) if s.kind == "retry"]
    assert [s.error for s in retries] == ["ConnectionError: service down"] * 2


def test_effect_error_after_retries_takes_error_branch(fengine: Engine, clock: FakeClock) -> None:
    @fengine.effect("work")
    def broken(input: dict[str, Any], *, idempotency_key: str) -> Any:
        raise ValueError("bad card")

    fengine.save_machine(effect_machine(retry={"max_attempts": 2, "initial_seconds": 1}))
    ex = fengine.start("fx")
    run_until_idle(fengine)
    clock.advance(1.1)  # the retry delay, jittered by up to +10%
    run_until_idle(fengine)
    ex = fengine.get(ex.id)
    assert ex.state == "broken"
    assert ex.context["why"] == {"type": "ValueError", "message": "bad card"}


def test_effect_error_without_error_branch_fails_execution(fengine: Engine) -> None:
    @fengine.effect("work")
    def broken(input: dict[str, Any], *, idempotency_key: str) -> Any:
        raise ValueError("bad card")

    fengine.save_machine(effect_machine(error=None))
    ex = fengine.start("fx")
    run_until_idle(fengine)
    ex = fengine.get(ex.id)
    assert (ex.status, ex.state) == ("failed", "go")
    assert "no error branch" in (ex.error or "") and "bad card" in (ex.error or "")
    assert fengine.history(ex.id)[-1].error == ex.error


def test_effect_non_json_result_is_an_error(fengine: Engine) -> None:
    fengine.effects.register("work", lambda input, *, idempotency_key: {1, 2})
    fengine.save_machine(effect_machine())
    ex = fengine.start("fx")
    run_until_idle(fengine)
    ex = fengine.get(ex.id)
    assert ex.state == "broken" and ex.context["why"]["type"] == "InputError"


def test_an_effect_no_process_has_waits_for_one_that_has_it(
    fengine: Engine, clock: FakeClock, db_url: str
) -> None:
    """Issue 10 item 1: a process claims only the effect tasks whose effect it has; the
    others wait (never failed as unknown), and stats() names them after a while."""
    fengine.save_machine(effect_machine(effect="sleepy"))
    ex = fengine.start("fx")
    assert run_until_idle(fengine) == 0  # nothing this process can run
    (task,) = fengine.pending(ex.id)
    assert (task.effect, task.status, task.attempts) == ("sleepy", "pending", 0)
    assert fengine.stats()["database"]["warnings"] == []  # not yet: workers may be busy
    clock.advance(3 * fengine.worker_settings.lease_seconds + 1)
    db = fengine.stats()["database"]
    assert db["unclaimed_effects"]["sleepy"]["tasks"] == 1
    assert db["warnings"] == [
        "effect 'sleepy': no worker has it (1 task ready for 91s, never claimed); "
        "run a worker whose --app registers it"
    ]
    assert fengine.get(ex.id).status == "running"
    other = Engine(db_url, clock=clock)  # a process that has the effect takes it
    other.effects.register("sleepy", lambda input, *, idempotency_key: {"slept": True})
    try:
        assert run_until_idle(other) == 1
    finally:
        other.close()
    done = fengine.get(ex.id)
    assert (done.state, done.output) == ("done", {"slept": True})
    assert fengine.stats()["database"]["warnings"] == []


def test_a_sync_caller_without_the_effect_leaves_it_to_workers(fengine: Engine, db_url: str) -> None:
    fengine.save_machine({**effect_machine(effect="sleepy"), "execution_mode": "sync"})
    ex = fengine.start("fx")  # the caller lacks the effect: not failed, left for a worker
    assert (ex.status, ex.state) == ("running", "go")
    assert [t.status for t in fengine.pending(ex.id)] == ["pending"]
    other = Engine(db_url, clock=fengine.clock)
    other.effects.register("sleepy", lambda input, *, idempotency_key: 7)
    try:
        run_until_idle(other)
    finally:
        other.close()
    assert (fengine.get(ex.id).state, fengine.get(ex.id).output) == ("done", 7)


def test_effect_timeout(fengine: Engine) -> None:
    release = threading.Event()

    @fengine.effect("work")
    def slow(input: dict[str, Any], *, idempotency_key: str) -> Any:
        release.wait(5)
        return "late"

    fengine.save_machine(effect_machine(timeout_seconds=0.2))
    ex = fengine.start("fx")
    run_until_idle(fengine)
    release.set()
    ex = fengine.get(ex.id)
    assert ex.state == "broken" and ex.context["why"]["type"] == "EffectTimeout"


def test_if_picks_then_or_else_and_missing_else_fails(fengine: Engine) -> None:
    fengine.effects.register("work", lambda input, *, idempotency_key: {"code": input["n"]})
    fengine.save_machine(effect_machine(**{"if": "output['code'] == 1"}))
    assert _run(fengine, "fx", {"n": 1}).state == "done"
    assert _run(fengine, "fx", {"n": 2}).state == "broken"
    m = effect_machine(**{"if": "output['code'] == 1", "error": None})
    m["version"] = 2
    fengine.save_machine(m)
    ex = _run(fengine, "fx", {"n": 2})
    assert ex.status == "failed" and "`if` is false" in (ex.error or "")


def _run(engine: Engine, machine: str, data: dict[str, Any]) -> Any:
    ex = engine.start(machine, data)
    run_until_idle(engine)
    return engine.get(ex.id)


def test_http_effect_against_a_real_server(fengine: Engine, clock: FakeClock) -> None:
    def respond(path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        if path == "/fail":
            return 503, {"error": "busy"}
        return 200, {"echo": body, "key": headers.get("Idempotency-Key")}

    with http_server(respond) as (base, calls):
        fengine.env["base"] = base
        m = effect_machine(
            effect="http.request.json",
            input="{'method': 'POST', 'url': env['base'] + input.get('path', '/ok'), "
            "'json': {'n': ctx['n']}}",
            **{"if": "output['status'] == 200"},
        )
        m["context"]["path"] = "input.get('path', '/ok')"
        fengine.save_machine(m)
        ok = _run(fengine, "fx", {"n": 7})
        assert ok.state == "done"
        assert ok.output["status"] == 200
        assert ok.output["json"] == {"echo": {"n": 7}, "key": f"{ok.id}:1"}
        assert calls[0]["headers"]["Idempotency-Key"] == f"{ok.id}:1"
        bad = _run(fengine, "fx", {"n": 1, "path": "/fail"})
        assert bad.state == "broken" and bad.context["why"]["status"] == 503
    # the server is gone: a connection error raises, and takes the error branch
    down = _run(fengine, "fx", {"n": 1})
    assert down.state == "broken" and down.context["why"]["type"] == "ConnectError"


def test_timer_fires_when_due(fengine: Engine, clock: FakeClock) -> None:
    fengine.save_machine(
        {
            "id": "t",
            "version": 1,
            "start_at": "wait",
            "states": {
                "wait": {
                    "always": [
                        {
                            "name": "later",
                            "state": "done",
                            "wait_for": {"minutes": 1},
                            "context": {"fired": "True"},
                        }
                    ],
                    "actions": {"hurry": {"state": "done"}},
                },
                "done": {"end": True},
            },
        }
    )
    ex = fengine.start("t")
    assert (ex.state, ex.status) == ("wait", "waiting")
    assert fengine.history(ex.id)[-1].kind == "wait"
    clock.advance(59)
    assert run_until_idle(fengine) == 0
    clock.advance(1)
    assert run_until_idle(fengine) == 1
    ex = fengine.get(ex.id)
    assert (ex.state, ex.status, ex.context) == ("done", "finished", {"fired": True})
    assert fengine.history(ex.id)[-1].kind == "timer"
    # a later action wins: the armed timer is discarded and recorded
    ex2 = fengine.start("t")
    fengine.trigger(ex2.id, "hurry")
    clock.advance(120)
    assert run_until_idle(fengine) == 0
    kinds = [s.kind for s in fengine.history(ex2.id)]
    assert kinds == ["start", "wait", "action", "discard"]
    assert fengine.get(ex2.id).context == {}


def test_timer_until_expression(fengine: Engine, clock: FakeClock) -> None:
    fengine.save_machine(
        {
            "id": "until",
            "version": 1,
            "start_at": "w",
            "states": {
                "w": {"always": [{"state": "done", "wait_for": {"until": "input['at']"}}]},
                "done": {"end": True},
            },
        }
    )
    due = clock().replace(year=2031)
    ex = fengine.start("until", {"at": due.isoformat()})
    clock.advance(days=364)
    assert run_until_idle(fengine) == 0
    clock.advance(days=2)
    run_until_idle(fengine)
    assert fengine.get(ex.id).status == "finished"


def test_timer_survives_restart(db_url: str) -> None:
    clock = FakeClock()
    first = Engine(db_url, clock=clock)
    first.save_machine(timer_machine(hours=1))
    ex = first.start("t")
    first.close()
    clock.advance(hours=2)
    second = Engine(db_url, clock=clock)
    try:
        assert run_until_idle(second) == 1
        assert second.get(ex.id).status == "finished"
    finally:
        second.close()


def child_machines(engine: Engine, child_end: str = "ok") -> None:
    engine.save_machine(
        {
            "id": "child",
            "version": 1,
            "start_at": "begin",
            "context": {"x": "input['x']"},
            "states": {
                "begin": {
                    "always": [{"state": "ok", "when": "ctx['x'] > 0"}],
                    "actions": {"finish": {"state": "ok"}, "crash": {"context": {"y": "1 / 0"}}},
                },
                "ok": {"end": True, "return": "{'x2': ctx['x'] * 2}"},
            },
        }
    )
    engine.save_machine(
        {
            "id": "parent",
            "version": 1,
            "start_at": "spawn",
            "states": {
                "spawn": {
                    "always": [
                        {
                            "name": "run-child",
                            "invoke": {
                                "machine": ["child"],
                                "input": "{'x': input['x']}",
                                "success": {"state": "done", "context": {"got": "output"}},
                                "error": {
                                    "name": "child-failed",
                                    "state": "failed",
                                    "context": {"why": "output"},
                                },
                            },
                        }
                    ],
                    "actions": {"abort": {"state": "failed"}},
                },
                "done": {"end": True, "return": "ctx['got']"},
                "failed": {"end": True},
            },
        }
    )


def test_child_success(fengine: Engine) -> None:
    child_machines(fengine)
    ex = fengine.start("parent", {"x": 5})
    run_until_idle(fengine)
    ex = fengine.get(ex.id)
    assert (ex.state, ex.output) == ("done", {"x2": 10})
    child = fengine.executions(parent_id=ex.id)[0]
    assert child.status == "finished" and child.parent_id == ex.id


def test_child_cancel_takes_error_branch_and_parent_cancel_cascades(fengine: Engine) -> None:
    child_machines(fengine)
    ex = fengine.start("parent", {"x": 0})  # the child waits for an action
    run_until_idle(fengine)
    child = fengine.executions(parent_id=ex.id)[0]
    assert child.status == "waiting" and fengine.get(ex.id).status == "running"
    fengine.cancel(child.id, reason="ops")
    run_until_idle(fengine)
    parent = fengine.get(ex.id)
    assert parent.state == "failed" and parent.context["why"] == {
        "type": "canceled",
        "message": "ops",
    }

    ex = fengine.start("parent", {"x": 0})
    run_until_idle(fengine)
    child = fengine.executions(parent_id=ex.id)[0]
    fengine.cancel(ex.id, reason="customer")
    assert fengine.get(child.id).status == "canceled"
    assert run_until_idle(fengine) == 0


def test_failed_child_and_parent_moving_on(fengine: Engine) -> None:
    child_machines(fengine)
    ex = fengine.start("parent", {"x": 0})
    run_until_idle(fengine)
    child = fengine.executions(parent_id=ex.id)[0]
    with pytest.raises(Exception, match="division"):
        fengine.trigger(child.id, "crash")  # a trigger error applies nothing
    fengine.trigger(ex.id, "abort")  # the parent moves on: the child left behind is canceled
    assert fengine.get(child.id).status == "canceled"
    assert [s.kind for s in fengine.history(ex.id)][-2:] == ["action", "discard"]


def test_missing_child_machine_takes_error_branch(fengine: Engine) -> None:
    fengine.save_machine(
        {
            "id": "p",
            "version": 1,
            "start_at": "s",
            "states": {
                "s": {
                    "always": [
                        {
                            "invoke": {
                                "machine": ["ghost", 3],
                                "success": {"state": "e"},
                                "error": {"state": "e", "context": {"why": "output['type']"}},
                            }
                        }
                    ]
                },
                "e": {"end": True},
            },
        }
    )
    ex = fengine.start("p")
    run_until_idle(fengine)
    assert fengine.get(ex.id).context == {"why": "MachineNotFound"}


def test_nested_children(fengine: Engine) -> None:
    for depth in range(3, 0, -1):
        inner: dict[str, Any]
        if depth == 3:
            inner = {"always": [{"state": "end", "context": {"v": "input['v'] + 1"}}]}
        else:
            inner = {
                "always": [
                    {
                        "invoke": {
                            "machine": [f"n{depth + 1}", 1],
                            "input": "{'v': input['v'] + 1}",
                            "success": {"state": "end", "context": {"v": "output"}},
                        }
                    }
                ]
            }
        fengine.save_machine(
            {
                "id": f"n{depth}",
                "version": 1,
                "start_at": "s",
                "states": {"s": inner, "end": {"end": True, "return": "ctx['v']"}},
            }
        )
    ex = fengine.start("n1", {"v": 0})
    run_until_idle(fengine)
    assert fengine.get(ex.id).output == 3


def test_sync_mode_runs_effects_inline(fengine: Engine) -> None:
    fengine.effects.register("work", lambda input, *, idempotency_key: input["n"] + 1)
    m = effect_machine()
    m["execution_mode"] = "sync"
    fengine.save_machine(m)
    ex = fengine.start("fx", {"n": 1})
    assert (ex.state, ex.output) == ("done", 2)


def test_fencing_a_zombie_cannot_apply_twice(fengine: Engine, clock: FakeClock) -> None:
    calls: list[str] = []
    fengine.effects.register("work", lambda input, *, idempotency_key: calls.append(idempotency_key) or "ok")
    fengine.save_machine(effect_machine(retry={"max_attempts": 2}))  # the zombie's claim is an attempt
    ex = fengine.start("fx")
    ex_ = fengine._executor  # internal: the test plays two workers by hand
    zombie = ex_.claim("zombie", 10, lease_seconds=30)
    assert len(zombie) == 1
    assert ex_.claim("other", 10, lease_seconds=30) == []  # leased
    clock.advance(31)  # the zombie's lease expires; another worker takes over
    fresh = ex_.claim("other", 10, lease_seconds=30)
    assert len(fresh) == 1 and fresh[0].claim != zombie[0].claim
    ex_.run(fresh[0])
    ex_.run(zombie[0])  # wakes up late: its result is dropped
    steps = fengine.history(ex.id)
    assert [s.kind for s in steps].count("result") == 1
    assert calls == [f"{ex.id}:1", f"{ex.id}:1"]  # at-least-once, same key


def test_worker_threads_and_wait(db_url: str, tmp_path: Path) -> None:
    engine = Engine(db_url)
    engine.effects.register("work", lambda input, *, idempotency_key: input["n"] * 10)
    engine.save_machine(effect_machine())
    engine.save_machine(
        {
            "id": "tick",
            "version": 1,
            "start_at": "w",
            "states": {
                "w": {"always": [{"state": "done", "wait_for": {"seconds": 0.3}}]},
                "done": {"end": True},
            },
        }
    )
    try:
        from statem import WorkerSettings

        with engine.worker(WorkerSettings(concurrency=2, poll_seconds=0.5)):
            ids = [engine.start("fx", {"n": i}).id for i in range(5)]
            t0 = time.monotonic()
            tick = engine.start("tick")
            for i, eid in enumerate(ids):
                assert engine.wait(eid, timeout=10).output == i * 10
            done = engine.wait(tick.id, timeout=10)
            late = time.monotonic() - t0
            assert done.status == "finished" and late >= 0.3
        with pytest.raises(TimeoutError):
            engine.wait(engine.start("fx").id, timeout=0.2)  # no worker running any more
    finally:
        engine.close()


def test_work_armed_now_is_polled_for_without_a_scheduler_job(db_url: str) -> None:
    """A start that arms an effect wakes the worker's poll thread at once: the work runs
    well before the (long) poll interval, and no scheduler job is added to run now; the
    jobs added are wake-ups for later (a timer, a lease that would lapse)."""
    import datetime as dt

    from apscheduler.events import EVENT_JOB_ADDED, JobEvent

    from statem import WorkerSettings

    engine = Engine(db_url)
    engine.effects.register("work", lambda input, *, idempotency_key: input["n"] * 10)
    engine.save_machine(effect_machine())
    engine.save_machine(
        {"id": "tick", "version": 1, "start_at": "w",
         "states": {"w": {"always": [{"state": "done", "wait_for": {"seconds": 0.5}}]},
                    "done": {"end": True}}}
    )  # fmt: skip
    ahead: list[float] = []  # per job added: how far ahead of its adding it is due (seconds)
    try:
        with engine.worker(WorkerSettings(concurrency=2, poll_seconds=60)) as worker:

            def added(event: JobEvent) -> None:
                job = worker._scheduler.get_job(event.job_id)
                if job is not None and job.next_run_time is not None:
                    ahead.append((job.next_run_time - dt.datetime.now(dt.UTC)).total_seconds())

            worker._scheduler.add_listener(added, EVENT_JOB_ADDED)
            for i in range(10):
                assert engine.wait(engine.start("fx", {"n": i}).id, timeout=10).output == i * 10
            tick = engine.start("tick")
            assert engine.wait(tick.id, timeout=10).status == "finished"
        assert ahead, "the timer's wake-up is a scheduler job"
        assert min(ahead) > 0, f"a job was added to run at once: {ahead}"
    finally:
        engine.close()


def test_a_busy_worker_claims_what_waits_as_its_threads_free_up(db_url: str) -> None:
    """More ready tasks than threads, and no poll for a minute: the claim that finds every
    thread busy leaves a note, so each thread that finishes claims the next task itself
    (child tasks and their results, which no effect result's transaction hands over);
    once all are claimed, finishing threads stop polling, and new work still wakes it."""
    from statem import WorkerSettings

    engine = Engine(db_url)
    child_machines(engine)
    try:
        with engine.worker(WorkerSettings(concurrency=2, poll_seconds=60)) as worker:
            ids = [engine.start("parent", {"x": n}).id for n in range(1, 31)]
            for n, eid in enumerate(ids, start=1):
                assert engine.wait(eid, timeout=20).output == {"x2": 2 * n}
            deadline = time.monotonic() + 10  # the last thread's poll finds nothing left
            while worker._more and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not worker._more
            late = engine.start("parent", {"x": 100})
            assert engine.wait(late.id, timeout=10).output == {"x2": 200}
    finally:
        engine.close()


def test_task_for_a_machine_that_no_longer_validates_fails_the_execution(db_url: str) -> None:
    from sqlalchemy import text

    clock = FakeClock()
    first = Engine(db_url, clock=clock)
    first.save_machine(timer_machine(seconds=5))
    ex = first.start("t")
    with first.db.begin() as conn:  # someone edits the stored definition by hand
        conn.execute(text('UPDATE statem_machines SET definition = \'{"id": "t"}\''))
    first.close()
    clock.advance(10)
    fresh = Engine(db_url, clock=clock)  # a new process: nothing cached
    try:
        assert run_until_idle(fresh) == 1
        failed = fresh.get(ex.id)
        assert failed.status == "failed" and failed.state == "w"
        assert "no longer validates" in (failed.error or "")
        assert fresh.history(ex.id)[-1].error == failed.error
    finally:
        fresh.close()


def test_strict_effects_rejects_unknown_effect_names_at_save(db_url: str) -> None:
    from statem import DefinitionError

    engine = Engine(db_url, strict_effects=True)
    try:
        with pytest.raises(DefinitionError, match="unknown effect 'work'"):
            engine.save_machine(effect_machine())
        assert engine.machines() == []
        engine.effects.register("work", lambda input, *, idempotency_key: None)
        engine.save_machine(effect_machine())
        assert [m.id for m in engine.machines()] == ["fx"]
    finally:
        engine.close()


def test_sync_parent_runs_a_sync_child_and_its_effects_inline(fengine: Engine) -> None:
    fengine.effects.register("work", lambda input, *, idempotency_key: input["n"] * 3)
    child = effect_machine()
    child["execution_mode"] = "sync"
    fengine.save_machine(child)
    fengine.save_machine(
        {"id": "boss", "version": 1, "start_at": "s", "execution_mode": "sync", "states": {
            "s": {"always": [{"invoke": {"machine": ["fx", 1], "input": "{'n': input['n']}",
                                         "success": {"state": "t", "context": {"got": "output"}}}}]},
            "t": {"always": [{"invoke": {"effect": "work", "input": "{'n': ctx['got']}",
                                         "success": {"state": "done", "context": {"final": "output"}}}}]},
            "done": {"end": True, "return": "ctx['final']"}}}
    )  # fmt: skip
    ex = fengine.start("boss", {"n": 2})
    assert (ex.status, ex.output) == ("finished", 18)  # child: 2*3 = 6; parent's effect: 6*3 = 18
    assert run_until_idle(fengine) == 0


def chain_of_effects(n: int, **invoke: Any) -> dict[str, Any]:
    """A sync machine of ``n`` states, each invoking ``work``; ``skip`` from any of them."""
    states: dict[str, Any] = {
        f"s{i}": {
            "always": [{"name": f"call{i}", "invoke": {
                "effect": "work", "input": f"{{'i': {i}}}",
                "success": {"state": f"s{i + 1}", "context": {f"k{i}": "output"}}, **invoke,
            }}],
            "actions": {"skip": {"state": "skipped"}},
        }
        for i in range(n)
    }  # fmt: skip
    states[f"s{n}"] = {"end": True, "return": "ctx"}
    states["skipped"] = {"end": True}
    return {"id": "chain", "version": 1, "start_at": "s0", "execution_mode": "sync", "states": states}


def test_sync_run_history_and_returned_execution_match_the_database(fengine: Engine) -> None:
    fengine.effects.register("work", lambda input, *, idempotency_key: input["i"] * 10)
    fengine.save_machine(chain_of_effects(3))
    ex = fengine.start("chain", execution_id="c1")
    assert (ex.status, ex.output) == ("finished", {"k0": 0, "k1": 10, "k2": 20})
    assert ex == fengine.get("c1")  # what start() returns is what was committed
    steps = fengine.history("c1")
    assert [s.kind for s in steps] == ["start", "invoke", "result", "invoke", "result", "invoke", "result"]
    assert [s.seq for s in steps] == list(range(1, 8))
    assert run_until_idle(fengine) == 0  # nothing was left behind for workers


def test_sync_run_yields_to_a_trigger_that_lands_between_its_steps(fengine: Engine) -> None:
    calls: list[str] = []

    def work(input: Any, *, idempotency_key: str) -> Any:
        calls.append(idempotency_key)
        if input["i"] == 1:  # someone else moves the execution while its effect runs
            assert fengine.trigger("c1", "skip").state == "skipped"
        return input["i"]

    fengine.effects.register("work", work)
    fengine.save_machine(chain_of_effects(3))
    ex = fengine.start("chain", execution_id="c1")
    assert (ex.state, ex.status) == ("skipped", "finished")
    assert ex.context == {"k0": 0}  # the effect's late result was not applied...
    steps = fengine.history("c1")
    assert [s.kind for s in steps] == ["start", "invoke", "result", "invoke", "action", "discard", "discard"]
    late = steps[-1]  # ...but it is recorded (issue 10 item 5), after the discard of its task
    assert late.output == {"task": "effect", "effect": "work", "late": True, "output": 1}
    assert "late result" in (late.error or "")
    assert len(calls) == 2
    assert fengine.metrics.snapshot()["tasks"].get("stale") == 1


def test_a_sync_caller_that_dies_mid_effect_leaves_its_task_to_a_worker(
    fengine: Engine, clock: FakeClock
) -> None:
    keys: list[str] = []

    def work(input: Any, *, idempotency_key: str) -> Any:
        keys.append(idempotency_key)
        if len(keys) == 2:
            raise KeyboardInterrupt  # the caller's process is going down in the middle
        return input["i"]

    fengine.effects.register("work", work)
    fengine.save_machine(chain_of_effects(3, retry={"max_attempts": 2}))  # the dead caller's attempt counts
    with pytest.raises(KeyboardInterrupt):
        fengine.start("chain", execution_id="c1")
    assert fengine.get("c1").state == "s1"  # the first result was committed
    assert run_until_idle(fengine) == 0  # the second effect is still claimed by the dead caller
    clock.advance(fengine.worker_settings.lease_seconds + 1)
    assert run_until_idle(fengine) == 2  # its claim lapsed: a worker runs it, then the third
    done = fengine.get("c1")
    assert (done.status, done.output) == ("finished", {"k0": 0, "k1": 1, "k2": 2})
    assert keys[1] == keys[2]  # the retried call has the same idempotency key
    assert [s.kind for s in fengine.history("c1")].count("result") == 3


def test_successive_effects_of_one_execution_get_distinct_idempotency_keys(fengine: Engine) -> None:
    """A task id is never handed out twice (on SQLite the highest id used to come back once
    its row was deleted, so every effect of a sync chain was called with the same key)."""
    keys: list[str] = []
    fengine.effects.register("work", lambda input, *, idempotency_key: keys.append(idempotency_key))
    fengine.save_machine(chain_of_effects(3))
    fengine.start("chain", execution_id="c1")
    fengine.start("chain", execution_id="c2")
    assert len(keys) == 6 and len(set(keys)) == 6, keys
    assert [k.split(":")[0] for k in keys] == ["c1"] * 3 + ["c2"] * 3


def test_a_long_inline_effect_keeps_its_claim_leased(db_url: str) -> None:
    """A sync caller renews its claim while the effect runs: no worker takes it over."""
    from statem import WorkerSettings

    engine = Engine(db_url, worker_settings=WorkerSettings(lease_seconds=0.6))
    calls: list[str] = []
    taken: list[int] = []

    def slow(input: Any, *, idempotency_key: str) -> Any:
        calls.append(idempotency_key)
        time.sleep(1.5)  # 2.5 leases
        return input["i"]

    def meanwhile() -> None:
        time.sleep(1.0)  # the first lease ran out 0.4 s ago unless it was renewed
        taken.append(engine.run_once())

    try:
        engine.effects.register("work", slow)
        engine.save_machine(chain_of_effects(1))
        other = threading.Thread(target=meanwhile)
        other.start()
        ex = engine.start("chain", execution_id="long")
        other.join()
        assert (ex.status, ex.output) == ("finished", {"k0": 0})
        assert taken == [0] and len(calls) == 1  # nothing was claimed behind the caller's back
    finally:
        engine.close()


def test_a_worker_wakes_for_other_processes_notifies_but_not_its_own_engines(pg_url: str) -> None:
    """PostgreSQL: a commit of the worker's own engine that arms work wakes it in-process,
    and its NOTIFY (from one of the engine's own connections) is skipped; a NOTIFY from
    another engine (another process) still wakes it, with no poll for a minute."""
    import datetime as dt
    import time

    from statem import WorkerSettings
    from statem.dialects import own_backends

    from .conftest import _truncate

    _truncate(pg_url)
    engine, other = Engine(pg_url), Engine(pg_url)
    engine.effects.register("work", lambda input, *, idempotency_key: input["n"] * 10)
    engine.save_machine(effect_machine())
    try:
        worker = engine.worker(WorkerSettings(concurrency=2, poll_seconds=60))
        wakes: list[dt.datetime | None] = []
        woken = worker.wake
        worker.wake = lambda at=None: (wakes.append(at), woken(at))  # type: ignore[method-assign]
        with worker:
            time.sleep(0.5)  # the LISTEN connection is up
            wakes.clear()

            assert engine.wait(engine.start("fx", {"n": 1}).id, timeout=10).output == 10
            time.sleep(0.5)  # a NOTIFY of its own would have arrived by now
            assert wakes.count(None) == 1, wakes  # the in-process wake-up only

            wakes.clear()
            assert engine.wait(other.start("fx", {"n": 2}).id, timeout=10).output == 20
            assert wakes.count(None) >= 1  # the other engine's NOTIFY
            with engine.db.connect() as conn:
                pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            assert pid in own_backends(engine.db) and pid not in own_backends(other.db)
    finally:
        engine.close()
        other.close()
    assert own_backends(engine.db) == set()  # closed with the pool
