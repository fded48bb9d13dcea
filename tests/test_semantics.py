"""The step rules on their own: ``statem.semantics`` is pure (no database, no clock), so
these tests build a compiled machine and call ``start``, ``action``, ``fire_timer`` and
``apply_result`` directly, checking the Outcome each returns."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from statem import ActionNotAllowed, ExpressionError, LoopError
from statem import semantics as sem
from statem.definition import CompiledMachine, compile_machine, load_definition
from statem.kinds import FINAL_STATUSES, INLINE_KINDS, Status, TaskKind
from statem.semantics import InvokeFailed, Outcome, Snapshot
from statem.settings import MAX_ALWAYS_CHAIN

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
ENV = {"limit": 10}


def compiled(definition: dict[str, Any]) -> CompiledMachine:
    return compile_machine(load_definition({"id": "m", "version": 1, **definition}))


def snap(cm: CompiledMachine, o: Outcome, eid: str = "e1") -> Snapshot:
    """The execution as a committed ``o`` would leave it."""
    return Snapshot(eid, cm.machine.id, cm.machine.version, o.state, o.status, o.context)


ORDER = compiled(
    {
        "start_at": "cart",
        "context": {"items": "0", "limit": "env['limit']"},
        "states": {
            "cart": {
                "actions": {
                    "add": {"context": {"items": "ctx['items'] + input['qty']"}},
                    "checkout": {"state": "paying", "when": "ctx['items'] > 0"},
                    "hold": {"name": "hold-it", "wait_for": {"seconds": 30}, "state": "expired"},
                },
                "always": [{"state": "full", "when": "ctx['items'] >= ctx['limit']"}],
            },
            "full": {"actions": {"checkout": {"state": "paying"}}},
            "paying": {
                "always": [
                    {
                        "name": "charge",
                        "invoke": {
                            "effect": "charge-card",
                            "input": "{'amount': ctx['items'] * 5}",
                            "success": {"state": "paid", "context": {"receipt": "output['id']"}},
                            "error": {"state": "cart", "context": {"declined": "output['message']"}},
                        },
                    }
                ]
            },
            "paid": {"end": True, "return": "{'items': ctx['items'], 'receipt': ctx['receipt']}"},
            "expired": {"end": True},
        },
    }
)


def test_start_enters_start_at_and_evaluates_the_context() -> None:
    o = sem.start(ORDER, "e1", {}, ENV, NOW)
    assert (o.state, o.status, o.context) == ("cart", Status.waiting, {"items": 0, "limit": 10})
    assert [(s.kind, s.from_state, s.to_state) for s in o.steps] == [("start", None, "cart")]
    assert o.tasks == [] and o.output is None and o.error is None


def test_an_action_and_the_always_chain_that_follows_in_one_outcome() -> None:
    o = sem.start(ORDER, "e1", {}, ENV, NOW)
    o = sem.action(ORDER, snap(ORDER, o), "add", {"qty": 4}, ENV, NOW)
    assert (o.state, o.context["items"]) == ("cart", 4)
    o = sem.action(ORDER, snap(ORDER, o), "add", {"qty": 7}, ENV, NOW)
    # items reached the limit: the always-transition to `full` is taken in the same step
    assert (o.state, o.status, o.context["items"]) == ("full", Status.waiting, 11)
    assert [(s.kind, s.name, s.to_state) for s in o.steps] == [
        ("action", "add", "cart"),
        ("always", None, "full"),
    ]
    assert o.steps[0].input == {"qty": 7}


def test_a_rejected_action_raises_and_names_what_is_allowed() -> None:
    s0 = snap(ORDER, sem.start(ORDER, "e1", {}, ENV, NOW))
    with pytest.raises(ActionNotAllowed) as exc:
        sem.action(ORDER, s0, "pay", {}, ENV, NOW)
    assert exc.value.allowed == ["add", "checkout", "hold"]
    with pytest.raises(ActionNotAllowed, match="guard is false"):
        sem.action(ORDER, s0, "checkout", {}, ENV, NOW)  # no items yet
    done = Snapshot("e1", "m", 1, "paid", Status.finished, {})
    with pytest.raises(ActionNotAllowed, match="finished"):
        sem.action(ORDER, done, "add", {"qty": 1}, ENV, NOW)
    assert sem.allowed_actions(ORDER, "full") == ["checkout"]


def test_an_invoke_arms_an_effect_task_and_the_result_takes_a_branch() -> None:
    o = sem.start(ORDER, "e1", {}, ENV, NOW)
    o = sem.action(ORDER, snap(ORDER, o), "add", {"qty": 2}, ENV, NOW)
    o = sem.action(ORDER, snap(ORDER, o), "checkout", {}, ENV, NOW)
    assert (o.state, o.status) == ("paying", Status.running)
    [task] = o.tasks
    assert (task.kind, task.due_at) == (TaskKind.effect, NOW)
    assert task.payload["effect"] == "charge-card" and task.payload["input"] == {"amount": 10}
    assert task.payload["pin"] == ["m", 1] and task.payload["name"] == "charge"
    assert o.steps[-1].kind == "invoke"

    paid = sem.apply_result(ORDER, snap(ORDER, o), task.payload, True, {"id": "r-1"}, ENV, NOW)
    assert (paid.state, paid.status, paid.output) == ("paid", Status.finished, {"items": 2, "receipt": "r-1"})
    assert paid.steps[0].kind == "result" and paid.steps[0].output == {"id": "r-1"}

    failed = {"type": "HTTPError", "message": "card declined"}
    back = sem.apply_result(ORDER, snap(ORDER, o), task.payload, False, failed, ENV, NOW)
    assert (back.state, back.status, back.context["declined"]) == ("cart", Status.waiting, "card declined")


def test_an_invoke_with_no_branch_for_the_result_fails() -> None:
    cm = compiled(
        {
            "start_at": "a",
            "states": {
                "a": {"always": [{"invoke": {"effect": "fx", "success": {"state": "b"}}}]},
                "b": {"end": True},
            },
        }
    )
    o = sem.start(cm, "e1", {}, ENV, NOW)
    with pytest.raises(InvokeFailed, match="no error branch: boom"):
        sem.apply_result(
            cm, snap(cm, o), o.tasks[0].payload, False, {"type": "X", "message": "boom"}, ENV, NOW
        )
    f = sem.failure(snap(cm, o), "result", None, "boom")
    assert (f.state, f.status, f.error, f.context) == ("a", Status.failed, "boom", o.context)
    assert [(s.kind, s.error) for s in f.steps] == [("result", "boom")]


def test_a_wait_for_arms_a_timer_and_firing_it_takes_the_transition() -> None:
    o = sem.start(ORDER, "e1", {}, ENV, NOW)
    o = sem.action(ORDER, snap(ORDER, o), "hold", {}, ENV, NOW)
    assert (o.state, o.status) == ("cart", Status.waiting)
    [timer] = o.tasks
    assert (timer.kind, timer.due_at) == (TaskKind.timer, NOW + dt.timedelta(seconds=30))
    assert o.steps[-1].kind == "wait" and o.steps[-1].output["target"] == "expired"
    later = NOW + dt.timedelta(seconds=31)
    fired = sem.fire_timer(ORDER, snap(ORDER, o), timer.payload, ENV, later)
    assert (fired.state, fired.status) == ("expired", Status.finished)
    assert [(s.kind, s.name) for s in fired.steps] == [("timer", "hold-it")]


def test_a_child_invoke_arms_a_child_task() -> None:
    cm = compiled(
        {
            "start_at": "a",
            "states": {
                "a": {
                    "always": [
                        {"invoke": {"machine": ["kid", 2], "input": "{'x': 1}", "success": {"state": "b"}}}
                    ]
                },
                "b": {"end": True, "return": "output"},
            },
        }
    )
    o = sem.start(cm, "e1", {}, ENV, NOW)
    [task] = o.tasks
    assert task.kind == TaskKind.child and task.payload["machine"] == ["kid", 2]
    assert task.payload["input"] == {"x": 1}
    assert o.steps[-1].output == {"invoke": "machine kid v2", "input": {"x": 1}}
    done = sem.apply_result(cm, snap(cm, o), task.payload, True, {"y": 2}, ENV, NOW)
    assert (done.status, done.output) == (Status.finished, {"y": 2})


def test_an_always_loop_is_a_loop_error() -> None:
    cm = compiled(
        {
            "start_at": "a",
            "context": {"n": "0"},
            "states": {
                "a": {"always": [{"state": "b", "context": {"n": "ctx['n'] + 1"}}]},
                "b": {"always": [{"state": "a"}]},
            },
        }
    )
    with pytest.raises(LoopError) as exc:
        sem.start(cm, "e1", {}, ENV, NOW)
    assert set(exc.value.loop) == {"a", "b"}
    assert str(MAX_ALWAYS_CHAIN) in str(exc.value)


def test_a_failing_expression_raises_and_names_its_path() -> None:
    cm = compiled(
        {
            "start_at": "a",
            "states": {"a": {"actions": {"go": {"context": {"n": "input['missing']"}}}}},
        }
    )
    o = sem.start(cm, "e1", {}, ENV, NOW)
    with pytest.raises(ExpressionError) as exc:
        sem.action(cm, snap(cm, o), "go", {}, ENV, NOW)
    assert "states.a.actions.go" in str(exc.value)


def test_semantics_is_pure_the_same_event_gives_the_same_outcome() -> None:
    s0 = snap(ORDER, sem.start(ORDER, "e1", {}, ENV, NOW))
    a = sem.action(ORDER, s0, "add", {"qty": 3}, ENV, NOW)
    b = sem.action(ORDER, s0, "add", {"qty": 3}, ENV, NOW)
    assert a == b
    assert s0.context == {"items": 0, "limit": 10}  # the snapshot it was given is untouched


def test_statuses_and_kinds_are_their_stored_strings() -> None:
    assert Status.finished == "finished" and f"{Status.waiting}" == "waiting"
    assert {"finished", "failed", "canceled"} == FINAL_STATUSES
    assert {"effect", "child", "resume"} == INLINE_KINDS and TaskKind.timer not in INLINE_KINDS
