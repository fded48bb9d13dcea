"""Typed effects: input checked before the call, output after; a mismatch takes the error
branch at once (never retried); save-time checks of input keys and output chains; effect
signatures and async effects at registration; the timed-attempt bound."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from statem import DefinitionError, Engine
from statem.effects import EffectRegistry, EffectTimeout, jittered
from statem.testing import FakeClock, run_until_idle

from .helpers import effect_machine


class ChargeIn(BaseModel):
    n: int
    currency: str = "EUR"


class ChargeOut(BaseModel):
    charged: int
    receipt: str


CHARGE_OUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["charged", "receipt"],
    "properties": {"charged": {"type": "integer"}, "receipt": {"type": "string"}},
}
RETRY = {"max_attempts": 3, "initial_seconds": 0}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fengine(db_url: str, clock: FakeClock) -> Any:
    e = Engine(db_url, clock=clock)
    yield e
    e.close()


def machine(**invoke: Any) -> dict[str, Any]:
    """fx: go -(call 'work')-> done | broken, keeping the output as result / why."""
    return effect_machine("work", **invoke)


def run(engine: Engine, n: Any = 1) -> Any:
    engine.save_machine(machine(retry=RETRY))
    ex = engine.start("fx", {"n": n})
    run_until_idle(engine)
    return engine.get(ex.id)


# --------------------------------------------------------------------------- at run time


def test_pydantic_models_validate_input_and_output(fengine: Engine) -> None:
    seen: list[Any] = []

    @fengine.effect("work", input=ChargeIn, output=ChargeOut)
    def charge(input: ChargeIn, *, idempotency_key: str) -> ChargeOut:
        seen.append(input)
        return ChargeOut(charged=input.n * 100, receipt=f"r-{input.currency}")

    ex = run(fengine, 7)
    assert (ex.state, ex.status) == ("done", "finished")
    assert ex.output == {"charged": 700, "receipt": "r-EUR"}
    assert seen == [ChargeIn(n=7)]  # the function is handed the model instance


def test_an_effect_typed_by_input_only_may_return_a_model(fengine: Engine) -> None:
    @fengine.effect("work", input=ChargeIn)
    def charge(input: ChargeIn, *, idempotency_key: str) -> ChargeOut:
        return ChargeOut(charged=input.n, receipt="r")

    assert run(fengine, 4).output == {"charged": 4, "receipt": "r"}


def test_input_mismatch_takes_the_error_branch_without_calling_or_retrying(fengine: Engine) -> None:
    calls: list[Any] = []

    @fengine.effect("work", input=ChargeIn, output=ChargeOut)
    def charge(input: ChargeIn, *, idempotency_key: str) -> Any:
        calls.append(input)
        return {"charged": 1, "receipt": "x"}

    ex = run(fengine, "seven")
    assert (ex.state, ex.status) == ("broken", "finished")
    why = ex.context["why"]
    assert why["type"] == "InputError"
    assert why["field"] == "input.n" and "input.n" in why["message"] and "'work'" in why["message"]
    assert calls == []
    assert [s.kind for s in fengine.history(ex.id)].count("retry") == 0


def test_output_mismatch_is_an_output_error_called_once(fengine: Engine) -> None:
    calls: list[int] = []

    @fengine.effect("work", input=ChargeIn, output=CHARGE_OUT_SCHEMA)
    def charge(input: ChargeIn, *, idempotency_key: str) -> Any:
        calls.append(1)
        return {"charged": "lots", "receipt": "x"}

    ex = run(fengine)
    assert ex.state == "broken"
    why = ex.context["why"]
    assert why["type"] == "OutputError" and why["field"] == "output.charged"
    assert "'lots' is not of type 'integer'" in why["message"]
    assert calls == [1]  # never retried, although the invoke allows 3 attempts
    assert not [s for s in fengine.history(ex.id) if s.kind == "retry"]


def test_a_missing_required_output_key_names_it(fengine: Engine) -> None:
    @fengine.effect("work", output=CHARGE_OUT_SCHEMA)
    def charge(input: Any, *, idempotency_key: str) -> Any:
        return {"charged": 1}

    ex = run(fengine)
    assert ex.context["why"]["type"] == "OutputError"
    assert "'receipt' is a required property" in ex.context["why"]["message"]


def test_json_schema_input_and_other_failures_still_retry(fengine: Engine) -> None:
    calls: list[int] = []

    @fengine.effect(
        "work", input={"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    )
    def flaky(input: dict[str, Any], *, idempotency_key: str) -> Any:
        calls.append(input["n"])
        if len(calls) < 3:
            raise ConnectionError("down")
        return {"ok": True}

    ex = run(fengine, 5)
    assert (ex.state, ex.output) == ("done", {"ok": True})
    assert calls == [5, 5, 5]
    assert [s.kind for s in fengine.history(ex.id)].count("retry") == 2


def test_retry_delays_are_jittered_upwards_only() -> None:
    samples = [jittered(10.0) for _ in range(200)]
    assert all(10.0 <= s <= 11.0 for s in samples)
    assert len(set(samples)) > 100


# --------------------------------------------------------------------------- at save time


def typed(engine: Engine) -> None:
    @engine.effect("work", input=ChargeIn, output=ChargeOut)
    def charge(input: ChargeIn, *, idempotency_key: str) -> ChargeOut:
        return ChargeOut(charged=1, receipt="r")


def test_save_checks_output_chains_with_a_hint(engine: Engine) -> None:
    typed(engine)
    bad = machine(success={"state": "done", "context": {"result": "output['recipt']"}})
    with pytest.raises(DefinitionError) as err:
        engine.save_machine(bad)
    text = str(err.value)
    assert "states.go.always[0].invoke.success.context.result" in text
    assert "output['recipt']: 'recipt' is not in the output schema of effect 'work'" in text
    assert "did you mean 'receipt'?" in text
    assert engine.machines() == []  # nothing stored
    engine.save_machine(machine(success={"state": "done", "context": {"result": "output['receipt']"}}))


def test_save_checks_input_literal_keys(engine: Engine) -> None:
    typed(engine)
    with pytest.raises(DefinitionError, match=r"invoke.input: required key 'n' is missing from the input of"):
        engine.save_machine(machine(input="{'currency': 'EUR'}"))
    # a merge of other keys may bring the required ones: not reported
    engine.save_machine(machine(input="{**ctx, 'currency': 'EUR'}"))


def test_save_rejects_unknown_input_keys_when_the_schema_is_closed(engine: Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "amount": {"type": "integer"}},
        "additionalProperties": False,
    }
    engine.effects.register("work", lambda input, *, idempotency_key: {}, input=schema)
    with pytest.raises(
        DefinitionError,
        match=r"key 'amout' is not in the input schema of effect 'work'; did you mean 'amount'",
    ):
        engine.save_machine(machine(input="{'n': 1, 'amout': 2}"))


def test_error_branch_chains_are_checked_against_the_error_keys(engine: Engine) -> None:
    typed(engine)
    bad = machine(error={"state": "broken", "context": {"why": "output['mesage']"}})
    with pytest.raises(
        DefinitionError, match=r"'mesage' is not in the error output of effect 'work'; did you mean 'message'"
    ):
        engine.save_machine(bad)
    engine.save_machine(machine(error={"state": "broken", "context": {"why": "output['message']"}}))


def test_untyped_effects_are_not_checked(engine: Engine) -> None:
    engine.effects.register("work", lambda input, *, idempotency_key: {})
    engine.save_machine(
        machine(success={"state": "done", "context": {"result": "output['anything']['at'][0]"}})
    )


def test_nested_models_are_checked_through_their_references(engine: Engine) -> None:
    class Address(BaseModel):
        city: str

    class Out(BaseModel):
        address: Address

    engine.effects.register("work", lambda input, *, idempotency_key: {}, output=Out)
    with pytest.raises(
        DefinitionError, match=r"output\['address'\]\['cty'\]: 'cty' is not in .*did you mean 'city'"
    ):
        engine.save_machine(
            machine(success={"state": "done", "context": {"result": "output['address']['cty']"}})
        )
    engine.save_machine(
        machine(success={"state": "done", "context": {"result": "output.get('address')['city']"}})
    )


# --------------------------------------------------------------------------- registration


def test_registration_checks_the_signature() -> None:
    reg = EffectRegistry()
    with pytest.raises(
        TypeError, match=r"effect 'bad'.*cannot be called as fn\(input, \*, idempotency_key=...\)"
    ):
        reg.register("bad", lambda x: x)  # type: ignore[arg-type,misc]
    with pytest.raises(TypeError, match="is not callable"):
        reg.register("bad", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pydantic model class or a JSON Schema dict"):
        reg.register("bad", lambda input, *, idempotency_key: 1, input=int)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only local references"):
        reg.register("bad", lambda input, *, idempotency_key: 1, input={"$ref": "https://example.com/s.json"})
    reg.register("good", lambda input, **kw: 1)


def test_async_effects_run_on_an_event_loop(fengine: Engine) -> None:
    @fengine.effect("work", output=CHARGE_OUT_SCHEMA)
    async def charge(input: Any, *, idempotency_key: str) -> Any:
        await asyncio.sleep(0)
        return {"charged": input["n"], "receipt": idempotency_key}

    ex = run(fengine, 3)
    assert ex.state == "done"
    assert ex.output["charged"] == 3 and ex.output["receipt"].endswith(":1")


def test_async_effect_called_from_inside_a_running_loop() -> None:
    reg = EffectRegistry()

    async def work(input: Any, *, idempotency_key: str) -> Any:
        return {"n": input["n"] + 1}

    reg.register("work", work)

    async def caller() -> Any:  # a sync API called from async code: the loop is busy
        return reg.call(reg.get("work"), {"n": 1}, "k", None)

    assert asyncio.run(caller()) == {"n": 2}


# --------------------------------------------------------------------------- timed attempts


def test_timed_attempts_are_bounded_and_never_time_out_before_they_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = EffectRegistry(threads=2)
    release = threading.Event()
    started: list[str] = []

    def hang(input: Any, *, idempotency_key: str) -> Any:
        started.append(idempotency_key)
        release.wait(10)
        return "late"

    def quick(input: Any, *, idempotency_key: str) -> Any:
        started.append(idempotency_key)
        return "quick"

    with caplog.at_level(logging.WARNING, logger="statem.effects"):
        for key in ("a", "b"):
            with pytest.raises(EffectTimeout):
                reg.call(hang, None, key, 0.05)
        assert (reg.timed.live, reg.timed.abandoned) == (2, 2)
        assert sum("abandoned after" in r.message for r in caplog.records) == 2
        # the bound is reached: the next timed attempt waits to start, then runs in full
        result: list[Any] = []
        waiter = threading.Thread(target=lambda: result.append(reg.call(quick, None, "c", 0.05)))
        waiter.start()
        time.sleep(0.3)  # far past its timeout: it has not started, so it has not timed out
        assert started == ["a", "b"] and result == []
        assert any("waits for one to end" in r.message for r in caplog.records)
        release.set()
        waiter.join(5)
    assert result == ["quick"]
    assert started == ["a", "b", "c"]
    deadline = time.monotonic() + 5
    while reg.timed.live and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (reg.timed.live, reg.timed.abandoned) == (0, 0)


def test_abandoned_attempts_show_in_stats(fengine: Engine) -> None:
    release = threading.Event()

    @fengine.effect("work")
    def hang(input: Any, *, idempotency_key: str) -> Any:
        release.wait(10)
        return "late"

    fengine.save_machine(machine(timeout_seconds=0.05))
    ex = fengine.start("fx")
    run_until_idle(fengine)
    assert fengine.stats()["process"]["timed_effects"] == {"alive": 1, "abandoned": 1, "bound": 32}
    release.set()
    assert fengine.get(ex.id).context["why"]["type"] == "EffectTimeout"
    assert fengine.stats()["process"]["tasks"]["abandoned"] == 1
