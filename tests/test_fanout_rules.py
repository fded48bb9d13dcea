"""The fan-out rules without a database: definitions of ``map``/``all`` (validation with
paths), the tolerated-failure arithmetic, when elements start and the join comes, the
join's output (results in input order, ``MapFailed``), and the invoke step's elements."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from statem.definition import compile_machine, load_definition
from statem.errors import DefinitionError
from statem.kinds import Status, TaskKind
from statem.semantics import Counts, ElementResult, initial_batch, join, next_move, start, tolerated

NOW = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)


def machine(invoke: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "fan",
        "version": 1,
        "start_at": "go",
        "context": {"xs": "input.get('xs', [])"},
        "states": {
            "go": {"always": [{"name": "each", "invoke": {"success": {"state": "done"}, **invoke}}]},
            "done": {"end": True, "return": "output"},
            **extra,
        },
    }


def problems(invoke: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as err:
        load_definition(machine(invoke))
    return err.value.problems


P = "states.go.always[0].invoke"


def test_valid_map_and_all_definitions_load() -> None:
    m = load_definition(
        machine({"map": "ctx['xs']", "effect": "e", "input": "{'x': item, 'i': index}",
                 "max_concurrency": 5, "tolerated_failures": "10%"})
    )  # fmt: skip
    inv = m.states["go"].always[0].invoke
    assert inv is not None and inv.fanout == "map" and inv.max_concurrency == 5
    m = load_definition(machine({"all": {"dhl": {"effect": "q.dhl"}, "ups": {"machine": ["u", 2]}}}))
    inv = m.states["go"].always[0].invoke
    assert inv is not None and inv.fanout == "all" and inv.all is not None
    assert inv.all["ups"].child == ("u", 2)
    assert compile_machine(m).effects() == {"q.dhl"}


@pytest.mark.parametrize(
    ("invoke", "expected"),
    [
        ({"map": "ctx['xs']"}, (P, "give exactly one of machine or effect, not neither")),
        ({"map": "ctx['xs']", "effect": "e", "machine": "m"}, (P, "not both")),
        ({"all": {"a": {"effect": "e"}}, "effect": "e"}, (P, "drop effect")),
        ({"all": {"a": {"effect": "e", "machine": "m"}}}, (f"{P}.all.a", "not both")),
        ({"all": {"a b": {"effect": "e"}}}, (f"{P}.all.a b", "a branch name must match")),
        ({"all": {}}, (f"{P}.all", "at least one named branch")),
        ({"all": {"a": {"effect": "e"}}, "max_concurrency": 2}, (f"{P}.max_concurrency", "applies to map")),
        ({"effect": "e", "tolerated_failures": 1}, (f"{P}.tolerated_failures", "applies to a fan-out")),
        ({"effect": "e", "max_concurrency": 1}, (f"{P}.max_concurrency", "applies to a fan-out")),
        (
            {"map": "ctx['xs']", "effect": "e", "tolerated_failures": "150%"},
            (f"{P}.tolerated_failures", "100%"),
        ),
        (
            {"map": "ctx['xs']", "effect": "e", "tolerated_failures": "ten"},
            (f"{P}.tolerated_failures", "count"),
        ),
        ({"map": "ctx['xs']", "effect": "e", "tolerated_failures": -1}, (f"{P}.tolerated_failures", "count")),
        ({"map": "ctx['xs']", "effect": "e", "max_concurrency": 0}, (f"{P}.max_concurrency", "greater")),
        ({"map": "ctx[", "effect": "e"}, (f"{P}.map", "does not parse")),
        ({"effect": "e", "input": "item"}, (f"{P}.input", "name 'item' is not defined")),
        ({"all": {"a": {"effect": "e", "input": "index"}}}, (f"{P}.all.a.input", "'index' is not defined")),
        ({"all": {"a": {"machine": "m"}}, "retry": {"max_attempts": 2}}, (f"{P}.retry", "every branch")),
    ],
)
def test_invalid_fanouts_are_named_with_their_path(invoke: dict[str, Any], expected: tuple[str, str]) -> None:
    found = problems(invoke)
    assert any(path == expected[0] and expected[1] in msg for path, msg in found), found


def test_tolerated_failures_arithmetic() -> None:
    assert tolerated(None, 10) == 0
    assert tolerated(3, 10) == 3
    assert tolerated("10%", 30) == 3
    assert tolerated("10%", 25) == 2  # rounded down
    assert tolerated("2.5%", 200) == 5
    assert tolerated("100%", 7) == 7
    assert tolerated("0%", 1000) == 0
    assert tolerated("33.3%", 3) == 0


def test_next_move_starts_within_the_limit_and_joins_at_the_end_or_past_the_bound() -> None:
    assert initial_batch(10, 3) == 3 and initial_batch(2, 5) == 2 and initial_batch(4, None) == 4
    # one of three running ended; two left unstarted: start one more
    assert next_move(Counts(total=5, armed=3, running=2, done=1, failed=0), 0, 3) == (1, False)
    # all started: nothing to start, not over yet
    assert next_move(Counts(total=5, armed=5, running=2, done=3, failed=0), 0, 3) == (0, False)
    # every element ended: join
    assert next_move(Counts(total=5, armed=5, running=0, done=4, failed=1), 1, 3) == (0, True)
    # failures past the bound: join now, start nothing more
    assert next_move(Counts(total=9, armed=3, running=1, done=0, failed=2), 1, 3) == (0, True)
    # within the bound: go on
    assert next_move(Counts(total=9, armed=3, running=1, done=0, failed=1), 1, 3) == (2, False)
    assert Counts(30, 18, 5, 12, 1).describe() == "12/30 done, 1 failed, 5 running"


def r(
    i: int, ok: bool = True, out: Any = None, ended: bool = True, branch: str | None = None
) -> ElementResult:
    error = None if ok else {"type": "ValueError", "message": f"bad {i}"}
    return ElementResult(i, branch, ended, ok, out if ok else None, error)


def test_map_join_orders_results_and_marks_failed_elements_none() -> None:
    ok, out = join("map", [r(2, out="c"), r(0, out="a"), r(1, ok=False)], 1)
    assert ok and out == ["a", None, "c"]
    ok, out = join("map", [r(0, out="a"), r(1, ok=False), r(2, ok=False)], 1)
    assert not ok
    assert out == {
        "type": "MapFailed",
        "message": "2 of 3 elements failed (1 tolerated)",
        "failed": [{"index": 1, "error": {"type": "ValueError", "message": "bad 1"}},
                   {"index": 2, "error": {"type": "ValueError", "message": "bad 2"}}],
        "results": ["a", None, None],
    }  # fmt: skip
    ok, out = join("map", [r(0, ok=False), r(1, ended=False, ok=False)], 0)
    assert not ok and isinstance(out, dict) and "1 not run to their end" in out["message"]
    assert join("map", [], 0) == (True, [])


def test_all_join_is_a_dict_by_name_and_fails_on_any_branch() -> None:
    assert join("all", [r(1, out=2, branch="ups"), r(0, out=1, branch="dhl")], 0) == (
        True,
        {"dhl": 1, "ups": 2},
    )
    ok, out = join("all", [r(0, out=1, branch="dhl"), r(1, ok=False, branch="ups")], 0)
    assert not ok and isinstance(out, dict)
    assert out["failed"] == [{"branch": "ups", "error": {"type": "ValueError", "message": "bad 1"}}]
    assert out["results"] == {"dhl": 1, "ups": None} and out["type"] == "MapFailed"


def test_the_invoke_step_arms_one_fanout_task_with_every_element_input() -> None:
    cm = compile_machine(
        load_definition(machine({"map": "ctx['xs']", "effect": "e", "input": "{'x': item * 10, 'i': index}",
                                 "max_concurrency": 2, "tolerated_failures": "50%"}))
    )  # fmt: skip
    outcome = start(cm, "ex1", {"xs": [1, 2, 3]}, {}, NOW)
    assert outcome.status == Status.running
    [task] = outcome.tasks
    assert task.kind == TaskKind.fanout
    assert (
        task.payload["total"] == 3 and task.payload["tolerated"] == 1 and task.payload["max_concurrency"] == 2
    )
    assert [(e.index, e.input, e.effect) for e in outcome.elements] == [
        (0, {"x": 10, "i": 0}, "e"), (1, {"x": 20, "i": 1}, "e"), (2, {"x": 30, "i": 2}, "e"),
    ]  # fmt: skip
    invoke = outcome.steps[-1]
    assert invoke.kind == "invoke" and invoke.output == {
        "invoke": "map", "elements": 3, "target": "e", "max_concurrency": 2, "tolerated_failures": 1,
    }  # fmt: skip


def test_an_empty_map_takes_success_with_an_empty_list_at_once() -> None:
    cm = compile_machine(load_definition(machine({"map": "ctx['xs']", "effect": "e"})))
    outcome = start(cm, "ex1", {"xs": []}, {}, NOW)
    assert outcome.status == Status.finished and outcome.output == []
    assert [s.kind for s in outcome.steps] == ["start", "invoke", "result"] and not outcome.tasks


def test_map_over_a_non_list_fails_the_step_with_the_path() -> None:
    from statem.errors import ExpressionError

    cm = compile_machine(load_definition(machine({"map": "ctx['xs']", "effect": "e"})))
    with pytest.raises(ExpressionError, match="map must yield a list, not dict"):
        start(cm, "ex1", {"xs": {"a": 1}}, {}, NOW)


def test_graph_draws_fanouts_as_a_fork_join_note() -> None:
    from statem.graph import render

    m = load_definition(
        machine({"map": "ctx['xs']", "effect": "pick", "max_concurrency": 5, "tolerated_failures": "10%"})
    )
    mermaid = render(m)
    assert "go --> done : each#58; map effect pick ✓" in mermaid
    assert (
        "note right of go : fork/join each#58; effect pick per item of ctx['xs'], 5 at once, 10#37; failures"
        in mermaid
    )
    dot = render(m, "dot")
    assert '"[fan-out 0]" [shape=note' in dot and '"[fan-out 0]" -> "go" [style=dashed' in dot
    m = load_definition(machine({"all": {"dhl": {"effect": "q"}, "own": {"machine": ["kid", 2]}}}))
    mermaid = render(m)
    assert "each#58; all(dhl, own) ✓" in mermaid
    assert "all of dhl = effect q#59; own = machine kid v2#59; fails on the first failed branch" in mermaid
    plain = load_definition(machine({"effect": "pick"}))
    assert "note" not in render(plain) and "fan-out" not in render(plain, "dot")
