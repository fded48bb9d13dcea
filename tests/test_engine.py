"""Step semantics and the Python API, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from statem import (
    ActionNotAllowed,
    ConcurrencyError,
    DefinitionError,
    Engine,
    ExecutionNotFound,
    ExpressionError,
    IdempotencyConflict,
    InputError,
    LoopError,
    MachineNotFound,
)

from .conftest import MACHINES


def counter(**extra: Any) -> dict[str, Any]:
    """A small machine: a counter with an increment action and a guarded finish."""
    m: dict[str, Any] = {
        "id": "counter",
        "version": 1,
        "start_at": "idle",
        "context": {"n": "input.get('start', 0)"},
        "states": {
            "idle": {
                "actions": {
                    "inc": {"context": {"n": "ctx['n'] + input.get('by', 1)"}},
                    "finish": {"state": "done", "when": "ctx['n'] >= 3"},
                    "boom": {"context": {"n": "ctx['missing']"}},
                }
            },
            "done": {"end": True, "return": "{'total': ctx['n']}"},
        },
    }
    m.update(extra)
    return m


def test_start_trigger_and_finish(engine: Engine) -> None:
    engine.save_machine(counter())
    ex = engine.start("counter", {"start": 1})
    assert (ex.state, ex.status, ex.context) == ("idle", "waiting", {"n": 1})
    ex = engine.trigger(ex.id, "inc", {"by": 2})
    assert ex.context == {"n": 3}
    ex = engine.trigger(ex.id, "finish")
    assert (ex.state, ex.status, ex.output) == ("done", "finished", {"total": 3})
    stored = engine.get(ex.id)
    assert stored == ex
    steps = engine.history(ex.id)
    assert [s.seq for s in steps] == [1, 2, 3]
    assert [(s.kind, s.name, s.from_state, s.to_state) for s in steps] == [
        ("start", None, None, "idle"),
        ("action", "inc", "idle", "idle"),
        ("action", "finish", "idle", "done"),
    ]
    assert steps[1].input == {"by": 2}
    assert steps[1].context == {"n": 3}


def test_rejected_trigger_changes_nothing(engine: Engine) -> None:
    engine.save_machine(counter())
    ex = engine.start("counter")
    with pytest.raises(ActionNotAllowed) as err:
        engine.trigger(ex.id, "nope")
    assert err.value.state == "idle"
    assert err.value.allowed == ["inc", "finish", "boom"]
    assert "'nope'" in str(err.value) and "'idle'" in str(err.value)
    with pytest.raises(ActionNotAllowed, match="guard is false"):
        engine.trigger(ex.id, "finish")
    with pytest.raises(ExpressionError) as exc_info:
        engine.trigger(ex.id, "boom")
    assert exc_info.value.path == "states.idle.actions.boom.context.n"
    assert engine.get(ex.id).context == {"n": 0}
    assert len(engine.history(ex.id)) == 1


def test_trigger_on_final_execution_is_rejected(engine: Engine) -> None:
    engine.save_machine(counter())
    ex = engine.start("counter", {"start": 5})
    engine.trigger(ex.id, "finish")
    with pytest.raises(ActionNotAllowed, match="finished"):
        engine.trigger(ex.id, "inc")


def test_always_order_first_match_and_guards(engine: Engine) -> None:
    engine.save_machine(
        {
            "id": "router",
            "version": 1,
            "start_at": "route",
            "states": {
                "route": {
                    "always": [
                        {"name": "big", "state": "big", "when": "input['x'] > 10"},
                        {"name": "mid", "state": "mid", "when": "input['x'] > 5"},
                        {"name": "also-mid", "state": "big", "when": "input['x'] > 5"},
                        {"name": "small", "state": "small"},
                    ]
                },
                "big": {"end": True, "return": "'big'"},
                "mid": {"end": True, "return": "'mid'"},
                "small": {"end": True, "return": "'small'"},
            },
        }
    )
    assert engine.start("router", {"x": 11}).output == "big"
    assert engine.start("router", {"x": 7}).output == "mid"
    ex = engine.start("router", {"x": 1})
    assert ex.output == "small"
    assert [s.name for s in engine.history(ex.id)] == [None, "small"]


def test_always_chain_runs_in_one_call_with_input(engine: Engine) -> None:
    engine.save_machine(
        {
            "id": "chain",
            "version": 1,
            "start_at": "a",
            "context": {"trail": "[]"},
            "states": {
                "a": {"always": [{"state": "b", "context": {"trail": "ctx['trail'] + ['a']"}}]},
                "b": {"always": [{"state": "c", "context": {"trail": "ctx['trail'] + [input['tag']]"}}]},
                "c": {"actions": {"go": {"state": "d"}}},
                "d": {"always": [{"state": "e", "context": "{'seen': input}"}]},
                "e": {"end": True},
            },
        }
    )
    ex = engine.start("chain", {"tag": "t"})
    assert ex.state == "c" and ex.context == {"trail": ["a", "t"]}
    ex = engine.trigger(ex.id, "go", {"k": 1})
    assert ex.status == "finished" and ex.context["seen"] == {"k": 1} and ex.output is None


def test_context_merge_keeps_other_keys_and_sets_none(engine: Engine) -> None:
    engine.save_machine(
        {
            "id": "merge",
            "version": 1,
            "start_at": "s",
            "context": "{'a': 1, 'b': 2}",
            "states": {"s": {"actions": {"clear": {"context": {"a": "None"}}, "bad": {"context": "[1]"}}}},
        }
    )
    ex = engine.start("merge")
    assert engine.trigger(ex.id, "clear").context == {"a": None, "b": 2}
    with pytest.raises(ExpressionError, match="mapping"):
        engine.trigger(ex.id, "bad")


def test_staying_reruns_always_and_loop_bound(engine: Engine) -> None:
    engine.save_machine(
        {
            "id": "loop",
            "version": 1,
            "start_at": "a",
            "context": {"n": "0"},
            "states": {
                "a": {
                    "always": [{"name": "spin", "state": "b", "when": "input.get('spin', False)"}],
                    "actions": {"count": {"context": {"n": "ctx['n'] + 1"}}},
                },
                "b": {"always": [{"name": "back", "state": "a"}]},
            },
        }
    )
    ex = engine.start("loop")
    assert ex.state == "a"
    with pytest.raises(LoopError) as err:
        engine.start("loop", {"spin": True})
    assert "states.a.always[0]" in str(err.value) and "states.b.always[0]" in str(err.value)
    assert set(err.value.loop) == {"a", "b"}
    assert len(engine.executions(machine_id="loop")) == 1  # the failed start stored nothing


def test_start_with_execution_id_is_idempotent(engine: Engine) -> None:
    engine.save_machine(counter())
    a = engine.start("counter", {"start": 1}, execution_id="order-R1")
    b = engine.start("counter", {"start": 1}, execution_id="order-R1")
    assert a.id == b.id == "order-R1" and b.context == {"n": 1}
    assert (a.replayed, b.replayed) == (False, True)
    assert b == a and engine.get(a.id) == b  # replayed is not part of equality
    assert len(engine.executions()) == 1


def test_start_replay_with_a_different_request_is_a_conflict(engine: Engine) -> None:
    engine.save_machine(counter())
    engine.save_machine({**counter(), "id": "other"})
    engine.start("counter", {"start": 1}, execution_id="order-R1")
    with pytest.raises(
        IdempotencyConflict, match=r"execution id 'order-R1'.*input \{'start': 1\} then"
    ) as info:
        engine.start("counter", {"start": 9}, execution_id="order-R1")
    assert info.value.differences == {"input": ({"start": 1}, {"start": 9})} and info.value.key is None
    with pytest.raises(IdempotencyConflict, match="machine 'counter' then 'other'") as info:
        engine.start("other", {"start": 1}, execution_id="order-R1")
    assert set(info.value.differences) == {"machine"}
    with pytest.raises(IdempotencyConflict, match="version 1 then 2"):
        engine.start("counter", {"start": 1}, version=2, execution_id="order-R1")
    assert isinstance(info.value, ConcurrencyError)
    assert len(engine.executions()) == 1 and len(engine.history("order-R1")) == 1


def test_idempotency_key_applies_once(engine: Engine) -> None:
    engine.save_machine(counter())
    ex = engine.start("counter")
    first = engine.trigger(ex.id, "inc", idempotency_key="k1")
    again = engine.trigger(ex.id, "inc", idempotency_key="k1")
    assert again.context == {"n": 1} and again.state == "idle"
    assert (first.replayed, again.replayed) == (False, True)
    assert len(engine.history(ex.id)) == 2


def test_idempotency_key_with_a_different_request_is_a_conflict(engine: Engine) -> None:
    engine.save_machine(counter())
    ex = engine.start("counter")
    engine.trigger(ex.id, "inc", {"by": 2}, idempotency_key="k1")
    with pytest.raises(IdempotencyConflict, match=r"key 'k1'.*action 'inc' then 'finish'") as info:
        engine.trigger(ex.id, "finish", {"by": 2}, idempotency_key="k1")
    assert info.value.differences == {"action": ("inc", "finish")}
    with pytest.raises(IdempotencyConflict, match=r"input \{'by': 2\} then \{'by': 3\}") as info:
        engine.trigger(ex.id, "inc", {"by": 3}, idempotency_key="k1")
    assert set(info.value.differences) == {"input"}
    assert engine.get(ex.id).context == {"n": 2} and len(engine.history(ex.id)) == 2


def test_unknown_ids_and_bad_input(engine: Engine) -> None:
    engine.save_machine(counter())
    with pytest.raises(MachineNotFound):
        engine.start("nope")
    with pytest.raises(MachineNotFound, match="no version 7"):
        engine.start("counter", version=7)
    with pytest.raises(ExecutionNotFound):
        engine.trigger("missing", "inc")
    with pytest.raises(ExecutionNotFound):
        engine.get("missing")
    with pytest.raises(ExecutionNotFound):
        engine.history("missing")
    with pytest.raises(InputError):
        engine.start("counter", {"when": object()})  # type: ignore[dict-item]
    with pytest.raises(InputError, match=r"too large|bytes"):
        engine.start("counter", {"blob": "x" * 2_000_000})
    assert engine.executions() == []


def test_save_machine_versions(engine: Engine) -> None:
    m1 = engine.save_machine(counter())
    assert engine.save_machine(counter()) == m1  # same content: no-op
    with pytest.raises(DefinitionError, match="already saved with different content"):
        engine.save_machine(counter(description="changed"))
    # kebab-case aliases normalise to the same content
    kebab = counter()
    kebab["start-at"] = kebab.pop("start_at")
    engine.save_machine(kebab)
    engine.save_machine(counter(version=2, description="v2"))
    assert engine.get_machine("counter").version == 2
    assert engine.get_machine("counter", 1).description is None
    assert [(m.id, m.version) for m in engine.machines()] == [("counter", 1), ("counter", 2)]
    ex = engine.start("counter", version=1)
    assert ex.machine_version == 1


def test_execution_stays_pinned_to_its_version(engine: Engine) -> None:
    engine.save_machine(counter())
    ex = engine.start("counter")
    v2 = counter(version=2)
    v2["states"]["idle"]["actions"]["inc"]["context"]["n"] = "ctx['n'] + 100"
    engine.save_machine(v2)
    assert engine.trigger(ex.id, "inc").context == {"n": 1}
    assert engine.start("counter").machine_version == 2


def test_cancel(engine: Engine) -> None:
    engine.save_machine(counter())
    ex = engine.start("counter")
    c = engine.cancel(ex.id, reason="customer called")
    assert (c.status, c.error) == ("canceled", "customer called")
    assert engine.cancel(ex.id).error == "customer called"  # no-op on a final execution
    with pytest.raises(ActionNotAllowed, match="canceled"):
        engine.trigger(ex.id, "inc")
    assert engine.history(ex.id)[-1].kind == "cancel"


def test_executions_filters(engine: Engine) -> None:
    engine.save_machine(counter())
    a = engine.start("counter", {"start": 5})
    engine.start("counter")
    engine.trigger(a.id, "finish")
    assert [e.id for e in engine.executions(status="finished")] == [a.id]
    assert len(engine.executions(machine_id="counter", state="idle")) == 1
    assert len(engine.executions(limit=1)) == 1


def test_example_machines_validate_and_run_to_shipment(engine: Engine) -> None:
    engine.save_machine(MACHINES / "shipment.yaml")
    engine.save_machine(MACHINES / "order.yaml")
    ex = engine.start("order", {"n": 1234})
    assert ex.context["order"] == {"id": "R1234", "line_items": []}
    ex = engine.trigger(ex.id, "add", {"sku": "tea", "qty": 2})
    ex = engine.trigger(ex.id, "place")
    ex = engine.trigger(ex.id, "fraud-approve")
    assert (ex.state, ex.status) == ("released", "running")
    assert engine.history(ex.id)[-1].kind == "invoke"


def test_pending_work_and_allowed_actions(engine: Engine) -> None:
    from .helpers import effect_machine, timer_machine

    engine.save_machine(timer_machine(seconds=60))
    ex = engine.start("t")
    (timer,) = engine.pending(ex.id)
    assert (timer.kind, timer.status, timer.attempts, timer.effect) == ("timer", "pending", 0, None)
    assert 59 <= (timer.due_at - ex.updated_at).total_seconds() <= 61
    assert timer.to_json()["due_at"] == timer.due_at.isoformat()

    engine.save_machine(effect_machine())
    fx = engine.start("fx")
    (call,) = engine.pending(fx.id)
    assert (call.kind, call.name, call.effect, call.attempts) == ("effect", "call", "work", 0)
    assert engine.allowed_actions(fx.id) == ["skip", "abandon"]
    engine.trigger(fx.id, "skip")
    assert engine.pending(fx.id) == []
    assert engine.allowed_actions(fx.id) == []
    with pytest.raises(ExecutionNotFound):
        engine.pending("nope")


def test_history_reads_the_columns_of_step_in_order() -> None:
    """history() builds each Step positionally from store.HISTORY_COLUMNS."""
    import dataclasses

    from statem import store
    from statem.records import Step

    assert tuple(f.name for f in dataclasses.fields(Step)) == store.HISTORY_COLUMNS


def test_values_come_back_exactly_through_the_json_decoder(engine: Engine) -> None:
    """Integers past 64 bits, long digit runs in text, floats and escapes read back as written."""
    engine.save_machine(
        {
            "id": "keep",
            "version": 1,
            "start_at": "a",
            "context": {"v": "input['v']"},
            "states": {"a": {"actions": {"set": {"context": {"v": "input['v']"}}}}},
        }
    )
    first = {"big": 2**64, "neg": -(10**30), "i64": 2**63 - 1, "digits": "1234567890123456789012"}
    second = {"f": 0.1, "tiny": 5e-324, "neg0": -0.0, "text": 'é\n\t"\\ 漢', "deep": [[{"a": [1, 2.5]}]]}
    ex = engine.start("keep", {"v": first})
    engine.trigger(ex.id, "set", {"v": second})
    assert engine.get(ex.id).context == {"v": second}
    steps = engine.history(ex.id)
    assert steps[0].context == {"v": first} and steps[0].input == {"v": first}
    assert isinstance(steps[0].context["v"]["big"], int)  # not 1.8e19
    assert steps[1].context == {"v": second} and steps[1].input == {"v": second}
