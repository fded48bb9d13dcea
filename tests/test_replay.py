"""The pure parts of an upgrade, without a database: the replay check and the refusal rules."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from statem import semantics
from statem.definition import compile_machine, load_definition
from statem.replay import RecordedStep, Work, replay
from statem.semantics import Outcome, Snapshot, StepRecord
from statem.upgrade import Plan, Refusal, TaskView, check_request, plan

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def machine(version: int = 1, guard: str = "ctx['n'] > 0", success: str = "paid") -> dict[str, Any]:
    return {
        "id": "m",
        "version": version,
        "start_at": "cart",
        "context": {"n": "0"},
        "states": {
            "cart": {
                "actions": {
                    "add": {"context": {"n": "ctx['n'] + 1"}},
                    "place": {"state": "pay", "when": guard},
                }
            },
            "pay": {
                "always": [
                    {
                        "name": "charge",
                        "invoke": {
                            "effect": "charge",
                            "success": {"state": success},
                            "error": {"state": "cart"},
                        },
                    }
                ]
            },
            "paid": {"always": [{"name": "remind", "state": "late", "wait_for": {"seconds": 9}}]},
            "late": {"actions": {"done": {"state": "end"}, "other": {"state": "alt"}}},
            "alt": {"actions": {"done": {"state": "end"}, "back": {"state": "paid"}}},
            "end": {"end": True},
        },
    }


class Run:
    """Drive an execution with the pure semantics and keep its history as a replay reads it."""

    def __init__(self, definition: dict[str, Any]) -> None:
        self.cm = compile_machine(load_definition(definition))
        self.steps: list[RecordedStep] = []
        self.out = semantics.start(self.cm, "e", {}, {}, NOW)
        self._record(self.out.steps)

    def _record(self, records: list[StepRecord]) -> None:
        for r in records:
            seq = len(self.steps) + 1
            self.steps.append(RecordedStep(seq, r.kind, r.name, r.to_state, r.error, r.event, r.input))

    def snap(self) -> Snapshot:
        m = self.cm.machine
        return Snapshot("e", m.id, m.version, self.out.state, self.out.status, self.out.context)

    def then(self, outcome: Outcome) -> Run:
        self.out = outcome
        self._record(outcome.steps)
        return self

    def act(self, action: str) -> Run:
        return self.then(semantics.action(self.cm, self.snap(), action, {}, {}, NOW))

    def result(self, ok: bool, output: Any) -> Run:
        payload = self.out.tasks[0].payload
        return self.then(semantics.apply_result(self.cm, self.snap(), payload, ok, output, {}, NOW))

    def timer(self) -> Run:
        return self.then(semantics.fire_timer(self.cm, self.snap(), self.out.tasks[0].payload, {}, NOW))

    def work(self) -> list[Work]:
        return [Work(t.kind, t.payload.get("name")) for t in self.out.tasks]


def check(run: Run, target: dict[str, Any], states: dict[str, str] | None = None) -> Any:
    cm = compile_machine(load_definition(target))
    return replay(cm, "e", run.steps, current_state=run.out.state, current_work=run.work(), states=states)


def test_same_through_guards_effects_and_timers() -> None:
    run = Run(machine()).act("add").act("place").result(True, {"ok": 1})
    assert run.out.state == "paid" and run.work() == [Work("timer", "remind")]
    assert check(run, machine(2)).verdict == "same"
    run.timer()
    assert check(run, machine(2)).verdict == "same"


def test_diverges_names_the_first_differing_seq_and_both_states() -> None:
    run = Run(machine()).act("add").act("place").result(True, {"ok": 1})
    result = check(run, machine(2, success="alt"))
    assert result.verdict == "diverges"
    assert result.detail == "seq 5: version 2 went to 'alt', version 1 to 'paid'"
    assert result.seq == 5


def test_a_guard_that_now_rejects_diverges() -> None:
    run = Run(machine()).act("add").act("place")
    result = check(run, machine(2, guard="ctx['n'] > 5"))
    assert result.verdict == "diverges" and "rejects action 'place'" in (result.detail or "")


def test_a_state_map_is_applied_to_the_recorded_states() -> None:
    renamed = machine(2, success="settled")
    renamed["states"]["settled"] = renamed["states"].pop("paid")
    renamed["states"]["alt"]["actions"]["back"]["state"] = "settled"
    run = Run(machine()).act("add").act("place").result(True, {})
    assert check(run, renamed).verdict == "diverges"
    assert check(run, renamed, {"paid": "settled"}).verdict == "same"


def test_different_armed_work_diverges_and_a_move_is_not_replayable() -> None:
    run = Run(machine()).act("add").act("place").result(True, {})
    no_timer = machine(2)
    no_timer["states"]["paid"] = {"actions": {"done": {"state": "late"}}}
    result = check(run, no_timer)
    assert result.verdict == "diverges" and "armed" in (result.detail or "")
    moved = [
        *list(run.steps),
        RecordedStep(len(run.steps) + 1, "move", None, "late", None, None, {"reason": "x"}),
    ]
    cm = compile_machine(load_definition(machine(2)))
    result = replay(cm, "e", moved, current_state="late", current_work=[])
    assert result.verdict == "not_replayable" and "moved by an operator" in (result.detail or "")


def test_history_without_events_is_not_replayable() -> None:
    legacy = [RecordedStep(1, "start", None, "cart", None, None, {})]
    cm = compile_machine(load_definition(machine(2)))
    assert replay(cm, "e", legacy, current_state="cart", current_work=[]).verdict == "not_replayable"


# --------------------------------------------------------------------------- refusal rules


def request(target: dict[str, Any], **kw: Any) -> Any:
    cm = compile_machine(load_definition(target))
    args: dict[str, Any] = {"from_version": None, "states": None, "context": None, "execution_ids": None,
                            "apply": True, "only_if_replays": False, "reason": None}  # fmt: skip
    args.update(kw)
    return check_request(cm, **args)


def snap(state: str, context: dict[str, Any] | None = None) -> Snapshot:
    return Snapshot("e", "m", 1, state, "running", context or {"n": 1})


def effect_task(name: str = "charge", effect: str = "charge") -> TaskView:
    return TaskView(
        7, "effect", "pending", {"transition": "states.pay.always[0]", "name": name, "effect": effect}
    )


def test_plan_keeps_an_in_flight_effect_with_a_counterpart_and_repoints_it() -> None:
    target = machine(2)
    target["states"]["pay"]["always"].insert(0, {"name": "log", "state": "pay", "when": "False"})
    p = plan(request(target), snap("pay"), [effect_task()], {})
    assert isinstance(p, Plan)
    assert p.kept[7]["transition"] == "states.pay.always[1]" and p.kept[7]["pin"] == ["m", 2]


def test_plan_refuses_in_flight_work_without_a_counterpart() -> None:
    other = machine(2)
    other["states"]["pay"]["always"][0]["invoke"]["effect"] = "bill"
    p = plan(request(other), snap("pay"), [effect_task()], {})
    assert isinstance(p, Refusal) and "effect task 7" in p.reason and "'charge'" in p.reason
    renamed = machine(2)
    renamed["states"]["pay"]["always"][0]["name"] = "bill"
    assert isinstance(plan(request(renamed), snap("pay"), [effect_task()], {}), Refusal)


def test_plan_keeps_or_discards_timers_and_checks_states_and_context() -> None:
    timer = TaskView(3, "timer", "pending", {"transition": "states.paid.always[0]", "name": "remind"})
    p = plan(request(machine(2)), snap("paid"), [timer], {})
    assert isinstance(p, Plan) and 3 in p.kept and p.discarded == []
    no_timer = machine(2)
    no_timer["states"]["paid"] = {"actions": {"done": {"state": "late"}}}
    p = plan(request(no_timer), snap("paid"), [timer], {})
    assert isinstance(p, Plan) and p.discarded == [3]
    gone = copy.deepcopy(machine(2))
    del gone["states"]["alt"]
    del gone["states"]["late"]["actions"]["other"]
    p = plan(request(gone), snap("alt"), [], {})
    assert isinstance(p, Refusal) and "state 'alt' is not in version 2" in p.reason
    p = plan(request(machine(2), context="{'n2': ctx['n'] * 2}"), snap("cart"), [], {})
    assert isinstance(p, Plan) and p.context == {"n": 1, "n2": 2}
    p = plan(request(machine(2), context="[1]"), snap("cart"), [], {})
    assert isinstance(p, Refusal) and "not a mapping" in p.reason
    p = plan(request(machine(2), context="{'x': ctx['missing']}"), snap("cart"), [], {})
    assert isinstance(p, Refusal) and "context expression failed" in p.reason
