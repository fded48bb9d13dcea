"""Upgrading running executions and the replay check (DESIGN.md section 9), on both databases."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from statem import Engine
from statem.errors import ExpressionError, MachineNotFound, StateNotFound
from statem.testing import FakeClock, run_until_idle


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fengine(db_url: str, clock: FakeClock) -> Iterator[Engine]:
    e = Engine(db_url, clock=clock)
    calls: list[str] = []

    @e.effect("charge")
    def charge(input: dict[str, Any], *, idempotency_key: str) -> Any:
        calls.append(idempotency_key)
        return {"paid": input.get("amount", 0)}

    e.calls = calls  # type: ignore[attr-defined]
    yield e
    e.close()


def order_v1() -> dict[str, Any]:
    return {
        "id": "order",
        "version": 1,
        "start_at": "cart",
        "context": {"items": "0"},
        "states": {
            "cart": {
                "actions": {
                    "add": {"context": {"items": "ctx['items'] + input.get('qty', 1)"}},
                    "place": {"state": "pay", "when": "ctx['items'] > 0"},
                }
            },
            "pay": {
                "always": [
                    {
                        "name": "charge",
                        "invoke": {
                            "effect": "charge",
                            "input": "{'amount': ctx['items'] * 10}",
                            "success": {"state": "paid", "context": {"receipt": "output"}},
                            "error": {"state": "cart"},
                        },
                    }
                ]
            },
            "paid": {
                "always": [{"name": "remind", "state": "reminded", "wait_for": {"seconds": 60}}],
                "actions": {"ship": {"state": "shipped"}},
            },
            "reminded": {"actions": {"ship": {"state": "shipped"}}},
            "shipped": {"end": True},
        },
    }


def order_v2() -> dict[str, Any]:
    """'paid' renamed 'settled'; the charge's success also records the version."""
    m = copy.deepcopy(order_v1())
    m["version"] = 2
    states = m["states"]
    states["settled"] = states.pop("paid")
    success = states["pay"]["always"][0]["invoke"]["success"]
    success["state"] = "settled"
    success["context"]["by"] = "'v2'"
    return m


def order_v3() -> dict[str, Any]:
    """No charge effect any more (pay goes straight on), no reminder timer; place needs 2 items."""
    m = copy.deepcopy(order_v1())
    m["version"] = 3
    m["states"]["pay"] = {"always": [{"name": "free", "state": "paid"}]}
    m["states"]["paid"]["always"] = []
    m["states"]["paid"]["actions"]["remind"] = {"state": "reminded"}
    m["states"]["cart"]["actions"]["place"]["when"] = "ctx['items'] > 1"
    return m


def rows(engine: Engine, eid: str) -> list[Any]:
    """Every stored row of an execution (execution, steps, tasks), as text: for byte-for-byte checks."""
    raw = create_engine(engine.db.url.render_as_string(hide_password=False))
    out: list[Any] = []
    with raw.connect() as conn:
        for table, col, order in (
            ("statem_executions", "id", "id"),
            ("statem_steps", "execution_id", "seq"),
            ("statem_tasks", "execution_id", "id"),
        ):
            q = text(f"SELECT * FROM {table} WHERE {col} = :e ORDER BY {order}")
            out += [tuple(str(v) for v in r) for r in conn.execute(q, {"e": eid})]
    raw.dispose()
    return out


def setup_orders(engine: Engine, clock: FakeClock) -> None:
    """o-cart (1 item, in cart), o-pay (effect in flight), o-paid (reminder armed), o-fail (failed)."""
    engine.save_machine(order_v1())
    engine.start("order", execution_id="o-cart")
    engine.trigger("o-cart", "add")
    engine.start("order", execution_id="o-paid")
    engine.trigger("o-paid", "add", {"qty": 2})
    engine.trigger("o-paid", "place")
    run_until_idle(engine)
    assert engine.get("o-paid").state == "paid"
    engine.start("order", execution_id="o-pay")
    engine.trigger("o-pay", "add")
    engine.trigger("o-pay", "place")  # the charge is armed, not run yet
    assert [t.kind for t in engine.pending("o-pay")] == ["effect"]


def test_dry_run_reports_and_writes_nothing(fengine: Engine, clock: FakeClock) -> None:
    setup_orders(fengine, clock)
    fengine.save_machine(order_v2())
    before = {e: rows(fengine, e) for e in ("o-cart", "o-pay", "o-paid")}
    report = fengine.upgrade("order", 2, states={"paid": "settled"})
    assert report.counts == {"upgraded": 0, "would_upgrade": 3, "refused": 0, "skipped": 0}
    by_id = {i.execution_id: i for i in report.items}
    assert [i.execution_id for i in report.items] == ["o-cart", "o-paid", "o-pay"]
    assert (by_id["o-paid"].from_state, by_id["o-paid"].to_state) == ("paid", "settled")
    assert all(i.replay == "same" for i in report.items), [i.replay_detail for i in report.items]
    assert {e: rows(fengine, e) for e in before} == before
    assert report.to_json()["counts"]["would_upgrade"] == 3


def test_apply_keeps_timers_and_in_flight_effects(fengine: Engine, clock: FakeClock) -> None:
    setup_orders(fengine, clock)
    [timer] = fengine.pending("o-paid")
    [effect] = fengine.pending("o-pay")
    fengine.save_machine(order_v2())
    report = fengine.upgrade("order", 2, states={"paid": "settled"}, apply=True, reason="fix receipts")
    assert report.counts["upgraded"] == 3
    paid = fengine.get("o-paid")
    assert (paid.machine_version, paid.state, paid.status) == (2, "settled", "waiting")
    [kept] = fengine.pending("o-paid")
    assert (kept.id, kept.due_at) == (timer.id, timer.due_at)  # the same timer, same due time
    step = fengine.history("o-paid")[-1]
    assert (step.kind, step.from_state, step.to_state) == ("upgrade", "paid", "settled")
    assert step.input is not None and step.input["reason"] == "fix receipts"
    assert (step.input["from_version"], step.input["to_version"]) == (1, 2)
    assert step.input["states"] == {"paid": "settled"}
    # the in-flight charge is kept (same task, same idempotency key) and applied by version 2
    assert [t.id for t in fengine.pending("o-pay")] == [effect.id]
    run_until_idle(fengine)
    pay = fengine.get("o-pay")
    assert (pay.state, pay.context["by"]) == ("settled", "v2")
    assert fengine.calls[-1] == f"o-pay:{effect.id}"  # type: ignore[attr-defined]
    # the kept timer fires the version 2 transition
    clock.advance(seconds=61)
    run_until_idle(fengine)
    assert fengine.get("o-paid").state == "reminded"
    # a second run finds nothing left on another version
    assert fengine.upgrade("order", 2, apply=True).items == []


def test_refusals_leave_executions_byte_for_byte_unchanged(fengine: Engine, clock: FakeClock) -> None:
    setup_orders(fengine, clock)
    fengine.save_machine(order_v2())
    before = {e: rows(fengine, e) for e in ("o-cart", "o-pay", "o-paid")}
    # no map: 'paid' is not in version 2
    report = fengine.upgrade(
        "order", 2, apply=True, context="{'n': 10 / ctx['items'] if state != 'cart' else 1}"
    )
    by_id = {i.execution_id: i for i in report.items}
    assert by_id["o-paid"].outcome == "refused" and "state 'paid' is not in version 2" in (
        by_id["o-paid"].reason or ""
    )
    assert by_id["o-cart"].outcome == "upgraded"
    assert by_id["o-pay"].outcome == "upgraded"
    assert rows(fengine, "o-paid") == before["o-paid"]
    # version 3 has no charge effect: the in-flight one has no counterpart
    fengine.save_machine(order_v3())
    before = {e: rows(fengine, e) for e in ("o-cart", "o-pay", "o-paid")}
    report = fengine.upgrade("order", 3, apply=True, context="{'k': 1 / (0 if state == 'cart' else 1)}")
    by_id = {i.execution_id: i for i in report.items}
    assert by_id["o-pay"].outcome == "refused"
    assert "effect task" in (by_id["o-pay"].reason or "") and "'charge'" in (by_id["o-pay"].reason or "")
    assert by_id["o-cart"].outcome == "refused" and "context expression failed" in (
        by_id["o-cart"].reason or ""
    )
    assert by_id["o-paid"].outcome == "upgraded"  # its reminder is discarded (version 3 has none)
    for e in ("o-cart", "o-pay"):
        assert rows(fengine, e) == before[e]
    assert fengine.pending("o-paid") == []
    assert [s.kind for s in fengine.history("o-paid")][-2:] == ["upgrade", "discard"]


def test_bad_requests_raise_and_change_nothing(fengine: Engine, clock: FakeClock) -> None:
    setup_orders(fengine, clock)
    fengine.save_machine(order_v2())
    before = rows(fengine, "o-cart")
    with pytest.raises(MachineNotFound):
        fengine.upgrade("order", 9, apply=True)
    with pytest.raises(StateNotFound, match="no state 'nowhere'"):
        fengine.upgrade("order", 2, states={"paid": "nowhere"}, apply=True)
    with pytest.raises(ExpressionError):
        fengine.upgrade("order", 2, context="{'a': ", apply=True)
    assert rows(fengine, "o-cart") == before


def test_replay_diverges_with_guards_and_only_if_replays_skips(fengine: Engine, clock: FakeClock) -> None:
    setup_orders(fengine, clock)
    fengine.save_machine(order_v3())
    report = fengine.upgrade("order", 3)
    by_id = {i.execution_id: i for i in report.items}
    # o-paid placed with 2 items: v3's guard (> 1) holds; the free path reaches 'paid'; but
    # the recorded charge result has no counterpart: it diverges there
    assert by_id["o-paid"].replay == "diverges"
    assert "seq" in (by_id["o-paid"].replay_detail or "")
    # o-cart: 1 item, never placed: the same under v3
    assert by_id["o-cart"].replay == "same"
    # o-pay placed with 1 item: v3's guard rejects the place
    assert by_id["o-pay"].replay == "diverges"
    assert "rejects action 'place'" in (by_id["o-pay"].replay_detail or "")
    applied = fengine.upgrade("order", 3, only_if_replays=True, apply=True)
    by_id = {i.execution_id: i for i in applied.items}
    assert by_id["o-cart"].outcome == "upgraded"
    assert by_id["o-paid"].outcome == "skipped" and by_id["o-paid"].reason == "replay diverges"
    assert fengine.get("o-paid").machine_version == 1


def test_failed_stays_failed_paused_stays_paused_and_the_repair_workflow(
    fengine: Engine, clock: FakeClock
) -> None:
    broken = copy.deepcopy(order_v1())
    broken["states"]["pay"]["always"][0]["invoke"]["success"]["context"] = {"receipt": "output['missing']"}
    fengine.save_machine(broken)
    fengine.start("order", execution_id="f1")
    fengine.trigger("f1", "add")
    fengine.trigger("f1", "place")
    run_until_idle(fengine)
    assert fengine.get("f1").status == "failed"
    fengine.start("order", execution_id="p1")
    fengine.pause("p1")
    fixed = order_v2()
    fengine.save_machine(fixed)
    report = fengine.upgrade("order", 2, only_if_replays=True, apply=True, reason="receipt fix")
    by_id = {i.execution_id: i for i in report.items}
    assert by_id["f1"].replay == "same" and by_id["f1"].outcome == "upgraded"
    assert by_id["p1"].outcome == "upgraded"
    assert (fengine.get("f1").status, fengine.get("f1").machine_version) == ("failed", 2)
    assert (fengine.get("p1").status, fengine.get("p1").machine_version) == ("paused", 2)
    ex = fengine.retry("f1", reason="after the upgrade")
    assert ex.status == "waiting" and ex.state == "settled" and ex.context["by"] == "v2"


def test_a_waiting_execution_left_with_nothing_armed_enters_its_new_state(fengine: Engine) -> None:
    v1 = {
        "id": "w",
        "version": 1,
        "start_at": "idle",
        "states": {"idle": {"actions": {"go": {"state": "done"}}}, "done": {"end": True}},
    }
    v2 = copy.deepcopy(v1)
    v2["version"] = 2
    v2["states"]["idle"]["always"] = [{"name": "auto", "state": "done", "when": "ctx.get('auto', False)"}]
    fengine.save_machine(v1)
    fengine.save_machine(v2)
    fengine.start("w", version=1, execution_id="w1")
    report = fengine.upgrade("w", 2, context="{'auto': True}", apply=True)
    assert report.counts["upgraded"] == 1
    ex = fengine.get("w1")
    assert (ex.state, ex.status, ex.machine_version) == ("done", "finished", 2)
    assert [s.kind for s in fengine.history("w1")][-2:] == ["upgrade", "always"]


def test_replay_through_children_and_timers(fengine: Engine, clock: FakeClock) -> None:
    kid = {
        "id": "kid",
        "version": 1,
        "start_at": "k",
        "states": {"k": {"actions": {"done": {"state": "end"}}}, "end": {"end": True, "return": "7"}},
    }
    mom = {
        "id": "mom",
        "version": 1,
        "start_at": "wait",
        "states": {
            "wait": {"always": [{"name": "nap", "state": "spawn", "wait_for": {"seconds": 5}}]},
            "spawn": {
                "always": [
                    {
                        "name": "kid",
                        "invoke": {
                            "machine": ["kid", 1],
                            "success": {"state": "ok", "context": {"got": "output"}},
                            "error": {"state": "ko"},
                        },
                    }
                ],
            },
            "ok": {"actions": {"close": {"state": "closed"}}},
            "ko": {"end": True},
            "closed": {"end": True},
        },
    }
    fengine.save_machine(kid)
    fengine.save_machine(mom)
    fengine.start("mom", execution_id="m")
    clock.advance(seconds=6)
    run_until_idle(fengine)
    [child] = fengine.executions(parent_id="m")
    fengine.trigger(child.id, "done")
    run_until_idle(fengine)
    assert fengine.get("m").state == "ok"
    same = copy.deepcopy(mom)
    same["version"] = 2
    other = copy.deepcopy(mom)
    other["version"] = 3
    other["states"]["spawn"]["always"][0]["invoke"]["success"]["state"] = "ko"
    other["states"]["ko"] = {"actions": {"close": {"state": "ok"}}}
    fengine.save_machine(same)
    fengine.save_machine(other)
    [item] = fengine.upgrade("mom", 2).items
    assert item.replay == "same", item.replay_detail
    [item] = fengine.upgrade("mom", 3).items
    assert item.replay == "diverges"
    assert "version 3 went to 'ko', version 1 to 'ok'" in (item.replay_detail or "")


def test_graph_shows_the_path_across_an_upgrade(fengine: Engine, clock: FakeClock) -> None:
    setup_orders(fengine, clock)
    fengine.save_machine(order_v2())
    fengine.upgrade("order", 2, states={"paid": "settled"}, apply=True)
    kinds = [(s.kind, s.to_state) for s in fengine.history("o-paid")]
    assert ("upgrade", "settled") in kinds


def test_an_effect_running_at_a_worker_during_the_upgrade_is_applied_by_the_new_version(
    fengine: Engine, clock: FakeClock
) -> None:
    setup_orders(fengine, clock)
    [task] = fengine._executor.claim("w1", 10, 30)  # the charge of o-pay is running
    assert task.execution_id == "o-pay"
    v2 = order_v2()
    # version 2 puts another transition first: the kept charge moves to always[1]
    v2["states"]["pay"]["always"].insert(0, {"name": "audit", "state": "pay", "when": "False"})
    fengine.save_machine(v2)
    report = fengine.upgrade("order", 2, states={"paid": "settled"}, execution_ids=["o-pay"], apply=True)
    assert report.counts["upgraded"] == 1
    fengine._executor.run(task)  # the worker finishes with the payload it claimed under v1
    pay = fengine.get("o-pay")
    assert (pay.state, pay.context.get("by"), pay.status) == ("settled", "v2", "waiting")
