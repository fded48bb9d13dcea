"""Operating live executions (DESIGN.md section 8): pause, resume, retry, move, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from statem import ActionNotAllowed, Engine, StatemError
from statem.errors import ExecutionNotFound, InputError, OperationNotAllowed, StateNotFound
from statem.testing import FakeClock, run_until_idle

from .helpers import effect_machine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fengine(db_url: str, clock: FakeClock) -> Iterator[Engine]:
    e = Engine(db_url, clock=clock)
    yield e
    e.close()


def steps_machine() -> dict[str, Any]:
    """a -next-> b -next-> c; a timer in b (60 s) to t; 'note' stays and records input."""
    return {
        "id": "steps",
        "version": 1,
        "start_at": "a",
        "context": {"notes": "[]"},
        "states": {
            "a": {
                "actions": {
                    "next": {"state": "b"},
                    "note": {"context": {"notes": "ctx['notes'] + [input['n']]"}},
                }
            },
            "b": {
                "always": [{"name": "tick", "state": "t", "wait_for": {"seconds": 60}}],
                "actions": {
                    "next": {"state": "c"},
                    "note": {"context": {"notes": "ctx['notes'] + [input['n']]"}},
                },
            },
            "c": {"actions": {"finish": {"state": "end"}}},
            "t": {"actions": {"finish": {"state": "end"}}},
            "end": {"end": True},
        },
    }


def kinds(engine: Engine, eid: str) -> list[str]:
    return [s.kind for s in engine.history(eid)]


def task_statuses(engine: Engine, eid: str) -> list[tuple[str, str]]:
    return [(t.kind, t.status) for t in engine.pending(eid)]


# --------------------------------------------------------------------------- pause / resume


def test_pause_holds_a_due_timer_and_resume_fires_it(fengine: Engine, clock: FakeClock) -> None:
    fengine.save_machine(steps_machine())
    ex = fengine.start("steps", execution_id="e1")
    fengine.trigger("e1", "next")
    paused = fengine.pause("e1", reason="incident 42")
    assert (paused.status, paused.state) == ("paused", "b")
    assert task_statuses(fengine, "e1") == [("timer", "held")]
    clock.advance(seconds=120)
    assert run_until_idle(fengine) == 0  # held: no worker claims (nor polls) it
    assert fengine.get("e1").status == "paused"
    assert fengine.wait("e1", timeout=1).status == "paused"  # paused counts as at rest
    before = kinds(fengine, "e1")
    assert before[-1] == "pause"
    assert fengine.history("e1")[-1].input == {"reason": "incident 42"}
    resumed = fengine.resume("e1", reason="incident over")
    assert resumed.status in ("running", "waiting") and resumed.state == "b"
    run_until_idle(fengine)
    ex = fengine.get(ex.id)
    assert (ex.state, ex.status) == ("t", "waiting")
    assert kinds(fengine, "e1")[len(before) :] == ["resume", "timer"]


def test_pause_and_resume_rules(fengine: Engine) -> None:
    fengine.save_machine(steps_machine())
    fengine.start("steps", execution_id="e1")
    with pytest.raises(OperationNotAllowed, match="it is waiting, not paused") as err:
        fengine.resume("e1")
    assert isinstance(err.value, ActionNotAllowed) and err.value.status == "waiting"
    fengine.pause("e1")
    n = len(fengine.history("e1"))
    again = fengine.pause("e1", reason="twice")
    assert again.status == "paused" and len(fengine.history("e1")) == n  # a no-op, no step
    assert fengine.executions(status="paused")[0].id == "e1"
    fengine.resume("e1")
    assert fengine.get("e1").status == "waiting"
    fengine.trigger("e1", "next")
    fengine.trigger("e1", "next")
    fengine.trigger("e1", "finish")
    with pytest.raises(OperationNotAllowed, match="it is finished"):
        fengine.pause("e1")
    with pytest.raises(ExecutionNotFound):
        fengine.pause("nope")
    with pytest.raises(ExecutionNotFound):
        fengine.resume("nope")


def test_triggers_are_kept_in_order_and_applied_after_resume(fengine: Engine) -> None:
    fengine.save_machine(steps_machine())
    fengine.start("steps", execution_id="e1")
    fengine.pause("e1")
    n = len(fengine.history("e1"))
    for i, (action, data) in enumerate(
        [("note", {"n": 1}), ("next", {}), ("note", {"n": 2}), ("finish", {})]
    ):
        ex = fengine.trigger("e1", action, data, idempotency_key=f"k{i}")
        assert (ex.status, ex.state) == ("paused", "a")
    assert fengine.trigger("e1", "note", {"n": 1}, idempotency_key="k0").status == "paused"  # dropped
    assert len(fengine.history("e1")) == n  # a kept trigger records no step until applied
    fengine.resume("e1")
    run_until_idle(fengine)
    ex = fengine.get("e1")
    assert ex.state == "b" and ex.context["notes"] == [1, 2]
    steps = fengine.history("e1")[n:]
    assert [(s.kind, s.name) for s in steps] == [
        ("resume", None),
        ("action", "note"),
        ("action", "next"),
        ("wait", "tick"),
        ("action", "note"),
        ("discard", "tick"),
        ("wait", "tick"),
        ("rejected", "finish"),
    ]
    assert "not allowed" in (steps[-1].error or "") and steps[-1].to_state == "b"
    # the repeated key is still dropped after resume
    assert fengine.trigger("e1", "note", {"n": 1}, idempotency_key="k0").context["notes"] == [1, 2]
    assert ex.status == "waiting"


def test_kept_triggers_survive_a_restart_and_are_applied_once(db_url: str) -> None:
    clock = FakeClock()
    e1 = Engine(db_url, clock=clock)
    e1.save_machine(steps_machine())
    e1.start("steps", execution_id="e1")
    e1.pause("e1")
    for n in range(5):
        e1.trigger("e1", "note", {"n": n})
    e1.close()
    e2 = Engine(db_url, clock=clock)  # every process restarted
    assert e2.get("e1").status == "paused"
    e2.resume("e1")
    e2.close()
    e3 = Engine(db_url, clock=clock)  # and again, before any worker applied them
    run_until_idle(e3)
    run_until_idle(e3)
    ex = e3.get("e1")
    assert ex.context["notes"] == [0, 1, 2, 3, 4]
    assert kinds(e3, "e1").count("action") == 5
    assert e3.pending("e1") == []
    e3.close()


def test_an_effect_result_that_lands_while_paused_is_kept(fengine: Engine) -> None:
    calls: list[str] = []

    @fengine.effect("work")
    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        calls.append(idempotency_key)
        return {"doubled": input["n"] * 2}

    fengine.save_machine(effect_machine())
    fengine.start("fx", {"n": 4}, execution_id="e1")
    [task] = fengine._executor.claim("w1", 10, 30)  # a worker has taken the effect...
    fengine.pause("e1")  # ...when the pause lands
    fengine._executor.run(task)  # the effect finishes: its result is kept
    assert calls == ["e1:1"]
    ex = fengine.get("e1")
    assert (ex.status, ex.state) == ("paused", "go")
    assert task_statuses(fengine, "e1") == [("effect", "kept")]
    assert run_until_idle(fengine) == 0
    fengine.resume("e1")
    run_until_idle(fengine)
    ex = fengine.get("e1")
    assert (ex.state, ex.status, ex.output) == ("done", "finished", {"doubled": 8})
    assert calls == ["e1:1"]  # applied, not called again
    assert kinds(fengine, "e1")[-3:] == ["pause", "resume", "result"]


def test_a_due_timer_claimed_as_the_pause_lands_is_kept(fengine: Engine, clock: FakeClock) -> None:
    fengine.save_machine(steps_machine())
    fengine.start("steps", execution_id="e1")
    fengine.trigger("e1", "next")
    clock.advance(seconds=61)
    [task] = fengine._executor.claim("w1", 10, 30)
    fengine.pause("e1")
    fengine.trigger("e1", "note", {"n": 7})  # arrives after the timer's due time
    fengine._executor.run(task)
    assert fengine.get("e1").state == "b"
    assert sorted(task_statuses(fengine, "e1")) == [("timer", "kept"), ("trigger", "kept")]
    fengine.resume("e1")
    run_until_idle(fengine)
    # the timer arrived first (at its due time): it moved to t, where 'note' is not allowed
    ex = fengine.get("e1")
    assert ex.state == "t" and ex.context["notes"] == []
    assert kinds(fengine, "e1")[-3:] == ["resume", "timer", "rejected"]


def test_an_effect_not_yet_started_is_held_and_runs_after_resume(fengine: Engine) -> None:
    calls: list[str] = []

    @fengine.effect("work")
    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        calls.append(idempotency_key)
        return 1

    fengine.save_machine(effect_machine())
    fengine.start("fx", {"n": 4}, execution_id="e1")
    fengine.pause("e1")
    assert run_until_idle(fengine) == 0 and calls == []
    fengine.resume("e1")
    assert fengine.get("e1").status == "running"
    run_until_idle(fengine)
    assert fengine.get("e1").status == "finished" and calls == ["e1:1"]


def parent_child(engine: Engine) -> None:
    engine.save_machine(
        {
            "id": "kid",
            "version": 1,
            "start_at": "idle",
            "states": {
                "idle": {"actions": {"done": {"state": "over"}}},
                "over": {"end": True, "return": "1"},
            },
        }
    )
    engine.save_machine(
        {
            "id": "mom",
            "version": 1,
            "start_at": "spawn",
            "states": {
                "spawn": {
                    "always": [
                        {
                            "name": "kid",
                            "invoke": {
                                "machine": ["kid", 1],
                                "success": {"state": "ok"},
                                "error": {"state": "ko"},
                            },
                        }
                    ],
                    "actions": {"skip": {"state": "ko"}},
                },
                "ok": {"end": True},
                "ko": {"end": True},
            },
        }
    )


def test_pausing_a_parent_pauses_its_children_and_resume_resumes_them(fengine: Engine) -> None:
    parent_child(fengine)
    fengine.start("mom", execution_id="m")
    run_until_idle(fengine)
    [kid] = fengine.executions(parent_id="m")
    assert kid.status == "waiting"
    fengine.pause("m", reason="hold the family")
    assert fengine.get(kid.id).status == "paused"
    assert fengine.history(kid.id)[-1].input == {"reason": "hold the family", "parent": "m"}
    fengine.trigger(kid.id, "done")  # kept
    run_until_idle(fengine)
    assert fengine.get(kid.id).status == "paused" and fengine.get("m").status == "paused"
    fengine.resume("m")
    assert fengine.get(kid.id).status == "running"  # its kept trigger is queued
    run_until_idle(fengine)
    assert fengine.get(kid.id).status == "finished"
    assert (fengine.get("m").state, fengine.get("m").status) == ("ok", "finished")


def test_a_child_result_that_arrives_while_the_parent_is_paused_is_kept(fengine: Engine) -> None:
    parent_child(fengine)
    fengine.start("mom", execution_id="m")
    run_until_idle(fengine)
    [kid] = fengine.executions(parent_id="m")
    fengine.pause("m")
    fengine.resume(kid.id)  # the operator lets the child go on alone
    fengine.trigger(kid.id, "done")
    run_until_idle(fengine)
    assert fengine.get(kid.id).status == "finished"
    assert fengine.get("m").status == "paused"
    assert ("resume", "kept") in task_statuses(fengine, "m")
    fengine.resume("m")
    run_until_idle(fengine)
    assert (fengine.get("m").state, fengine.get("m").status) == ("ok", "finished")


def test_cancel_of_a_paused_execution_rejects_its_kept_triggers(fengine: Engine) -> None:
    fengine.save_machine(steps_machine())
    fengine.start("steps", execution_id="e1")
    fengine.pause("e1")
    fengine.trigger("e1", "next")
    fengine.cancel("e1", reason="no longer needed")
    run_until_idle(fengine)
    assert fengine.get("e1").status == "canceled"
    assert kinds(fengine, "e1")[-2:] == ["cancel", "rejected"]
    assert fengine.pending("e1") == []


# --------------------------------------------------------------------------- failed and retry


def no_error_branch_machine() -> dict[str, Any]:
    m = effect_machine()
    del m["states"]["go"]["always"][0]["invoke"]["error"]
    return m


def test_failed_is_not_final_triggers_are_rejected_naming_the_status(fengine: Engine) -> None:
    @fengine.effect("work")
    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        raise RuntimeError("card declined")

    fengine.save_machine(no_error_branch_machine())
    fengine.start("fx", {"n": 1}, execution_id="e1")
    run_until_idle(fengine)
    ex = fengine.get("e1")
    assert ex.status == "failed" and "card declined" in (ex.error or "")
    with pytest.raises(ActionNotAllowed, match="failed"):
        fengine.trigger("e1", "skip")
    with pytest.raises(OperationNotAllowed, match="it is failed"):
        fengine.pause("e1")
    with pytest.raises(OperationNotAllowed, match="it is failed, not paused"):
        fengine.resume("e1")


def test_retry_after_the_effect_is_fixed_uses_the_same_idempotency_key(fengine: Engine) -> None:
    keys: list[str] = []
    broken = [True]

    @fengine.effect("work")
    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        keys.append(idempotency_key)
        if broken[0]:
            raise RuntimeError("service down")
        return {"n": input["n"]}

    fengine.save_machine(no_error_branch_machine())
    fengine.start("fx", {"n": 3}, execution_id="e1")
    run_until_idle(fengine)
    assert fengine.get("e1").status == "failed"
    broken[0] = False  # the effect is fixed
    ex = fengine.retry("e1", reason="service back")
    assert (ex.status, ex.state) == ("running", "go")
    run_until_idle(fengine)
    ex = fengine.get("e1")
    assert (ex.status, ex.state, ex.output) == ("finished", "done", {"n": 3})
    assert keys == ["e1:1", "e1:1"]  # invoked again under the same idempotency key
    steps = fengine.history("e1")
    retry = [s for s in steps if s.kind == "retry"]
    assert retry[-1].input is not None and retry[-1].input["reason"] == "service back"
    assert [s.kind for s in steps][-3:] == ["result", "retry", "result"]
    with pytest.raises(OperationNotAllowed, match="it is finished, not failed"):
        fengine.retry("e1")


def test_retry_evaluates_a_failed_timer_step_again_with_the_same_event(db_url: str) -> None:
    clock = FakeClock()
    machine = {
        "id": "tm",
        "version": 1,
        "start_at": "w",
        "states": {
            "w": {
                "always": [
                    {
                        "name": "late",
                        "state": "done",
                        "wait_for": {"seconds": 5},
                        "context": {"where": "env['region']"},
                    }
                ]
            },
            "done": {"end": True, "return": "ctx['where']"},
        },
    }
    e1 = Engine(db_url, clock=clock)  # env lacks 'region': the timer step fails
    e1.save_machine(machine)
    e1.start("tm", execution_id="e1")
    clock.advance(seconds=6)
    run_until_idle(e1)
    ex = e1.get("e1")
    assert ex.status == "failed" and "region" in (ex.error or "")
    failed_step = e1.history("e1")[-1]
    assert failed_step.kind == "timer" and failed_step.error
    e1.close()
    e2 = Engine(db_url, clock=clock, env={"region": "eu"})  # the host is fixed
    ex = e2.retry("e1")
    assert (ex.status, ex.output) == ("finished", "eu")
    assert [s.kind for s in e2.history("e1")][-2:] == ["retry", "timer"]
    e2.close()


def test_retry_that_fails_again_leaves_it_failed_with_the_new_error(fengine: Engine) -> None:
    @fengine.effect("work")
    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        return {"n": 1}

    m = effect_machine(success={"state": "done", "context": {"result": "output['missing']"}})
    fengine.save_machine(m)
    fengine.start("fx", {"n": 3}, execution_id="e1")
    run_until_idle(fengine)
    assert fengine.get("e1").status == "failed"
    ex = fengine.retry("e1")
    assert ex.status == "failed" and "missing" in (ex.error or "")
    assert kinds(fengine, "e1")[-2:] == ["retry", "result"]


def test_cancel_a_failed_execution(fengine: Engine) -> None:
    @fengine.effect("work")
    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        raise RuntimeError("no")

    fengine.save_machine(no_error_branch_machine())
    fengine.start("fx", execution_id="e1")
    run_until_idle(fengine)
    assert fengine.cancel("e1", reason="give up").status == "canceled"


# --------------------------------------------------------------------------- move


def test_move_merges_context_discards_armed_work_and_enters_the_state(fengine: Engine) -> None:
    fengine.save_machine(steps_machine())
    fengine.start("steps", execution_id="e1")
    fengine.trigger("e1", "next")
    assert task_statuses(fengine, "e1") == [("timer", "pending")]
    ex = fengine.move("e1", "c", context={"notes": ["moved"], "extra": {"a": 1}}, reason="ops ticket 9")
    assert (ex.state, ex.status) == ("c", "waiting")
    assert ex.context == {"notes": ["moved"], "extra": {"a": 1}}
    assert fengine.pending("e1") == []
    steps = fengine.history("e1")
    move = next(s for s in steps if s.kind == "move")
    assert move.input == {
        "reason": "ops ticket 9",
        "state": "c",
        "context": {"notes": ["moved"], "extra": {"a": 1}},
    }
    assert "discard" in [s.kind for s in steps]
    # entering a state runs its always (the timer is armed again)
    ex = fengine.move("e1", "b")
    assert task_statuses(fengine, "e1") == [("timer", "pending")] and ex.state == "b"
    ex = fengine.move("e1", "end")
    assert ex.status == "finished"
    with pytest.raises(OperationNotAllowed, match="it is finished"):
        fengine.move("e1", "a")


def test_move_refuses_an_unknown_state_and_bad_context(fengine: Engine) -> None:
    fengine.save_machine(steps_machine())
    fengine.start("steps", execution_id="e1")
    n = len(fengine.history("e1"))
    with pytest.raises(StateNotFound, match="no state 'zz'") as err:
        fengine.move("e1", "zz")
    assert isinstance(err.value, StatemError)
    with pytest.raises(InputError):
        fengine.move("e1", "b", context={"x": object()})  # type: ignore[dict-item]
    assert len(fengine.history("e1")) == n and fengine.get("e1").state == "a"


def test_move_a_failed_execution_and_a_paused_one(fengine: Engine, clock: FakeClock) -> None:
    @fengine.effect("work")
    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        raise RuntimeError("no")

    fengine.save_machine(no_error_branch_machine())
    fengine.start("fx", execution_id="e1")
    run_until_idle(fengine)
    ex = fengine.move("e1", "skipped", reason="skip the payment")
    assert (ex.status, ex.error) == ("finished", None)

    fengine.save_machine(steps_machine())
    fengine.start("steps", execution_id="e2")
    fengine.pause("e2")
    ex = fengine.move("e2", "b")
    assert (ex.status, ex.state) == ("paused", "b")
    assert fengine.pending("e2") == [] or all(t.status == "kept" for t in fengine.pending("e2"))
    fengine.resume("e2")
    run_until_idle(fengine)
    # b's always were tried on resume: its timer is armed
    assert task_statuses(fengine, "e2") == [("timer", "pending")]
    clock.advance(seconds=61)
    run_until_idle(fengine)
    assert fengine.get("e2").state == "t"


def test_move_cancels_children(fengine: Engine) -> None:
    parent_child(fengine)
    fengine.start("mom", execution_id="m")
    run_until_idle(fengine)
    [kid] = fengine.executions(parent_id="m")
    fengine.move("m", "ko", reason="stop waiting")
    assert fengine.get(kid.id).status == "canceled"
    assert fengine.get("m").status == "finished"


# --------------------------------------------------------------------------- history records the events


def test_history_records_every_event_a_replay_needs(fengine: Engine, clock: FakeClock) -> None:
    @fengine.effect("work")
    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        return {"n": input["n"]}

    fengine.save_machine(steps_machine())
    fengine.start("steps", {"x": 1}, execution_id="e1")
    fengine.trigger("e1", "note", {"n": 5})
    fengine.trigger("e1", "next")
    clock.advance(seconds=61)
    run_until_idle(fengine)
    fengine.save_machine(effect_machine())
    fengine.start("fx", {"n": 2}, execution_id="e2")
    run_until_idle(fengine)
    url = fengine.db.url.render_as_string(hide_password=False)
    raw = create_engine(url)
    with raw.connect() as conn:
        rows = conn.execute(
            text("SELECT execution_id, seq, event FROM statem_steps WHERE event IS NOT NULL")
        ).all()
    raw.dispose()
    events = {(r[0], r[1]): r[2] if isinstance(r[2], dict) else __import__("json").loads(r[2]) for r in rows}
    got = [(eid, e["type"]) for (eid, _), e in sorted(events.items())]
    assert got == [
        ("e1", "start"),
        ("e1", "action"),
        ("e1", "action"),
        ("e1", "timer"),
        ("e2", "start"),
        ("e2", "result"),
    ]
    e1 = [e for (eid, _), e in sorted(events.items()) if eid == "e1"]
    assert e1[0]["input"] == {"x": 1}
    assert e1[1] == {"type": "action", "version": 1, "action": "note", "input": {"n": 5}}
    assert e1[3]["transition"] == "states.b.always[0]"
    e2 = [e for (eid, _), e in sorted(events.items()) if eid == "e2"]
    assert e2[1]["ok"] is True and e2[1]["output"] == {"n": 2}
