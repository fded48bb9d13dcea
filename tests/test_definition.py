"""Definition validation (DESIGN.md section 1): every rule, its path and message, nothing stored.

Each invalid definition is a mutation of one valid machine (``BASE``), so a failure can
only come from the mutation. Every case checks the exact set of dotted paths reported,
a fragment of each message, the machine id on the error, and that ``save_machine``
stored nothing, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statem import DefinitionError, Engine, Machine, load_definition

ROOT = Path(__file__).resolve().parent.parent
MACHINES = ROOT / "machines"

Defn = dict[str, Any]

#: A valid machine using every construct, so each mutation below has something to break.
BASE: Defn = {
    "id": "shop",
    "version": 1,
    "description": "a cart that is placed, shipped by an effect, retried by a timer",
    "start_at": "cart",
    "execution_mode": "async",
    "context": {"order": "{'items': [], 'n': input.get('n', 1)}"},
    "states": {
        "cart": {
            "actions": {
                "add": {
                    "state": "cart",
                    "context": {"order": "{**ctx['order'], 'items': ctx['order']['items'] + [input['sku']]}"},
                },
                "place": {"state": "placed", "when": "len(ctx['order']['items']) > 0"},
                "abandon": {"state": "done"},
                "give-up": {"state": "failed"},
            }
        },
        "placed": {
            "always": [
                {
                    "name": "ship",
                    "invoke": {
                        "effect": "http.request.json",
                        "input": "{'method': 'GET', 'url': 'http://127.0.0.1:9/'}",
                        "retry": {"max_attempts": 2, "initial_seconds": 0.1},
                        "timeout_seconds": 5,
                        "if": "output['status'] == 200",
                        "success": {"state": "done", "context": {"r": "output['json']"}},
                        "error": {"name": "refused", "state": "failed"},
                    },
                }
            ]
        },
        "failed": {"always": [{"name": "retry", "state": "placed", "wait_for": {"seconds": 5}}]},
        "done": {"end": True, "return": "ctx['order']"},
    },
}

INVOKE = ("states", "placed", "always", 0, "invoke")
WAIT = ("states", "failed", "always", 0)


def mutate(*edits: tuple[tuple[Any, ...], Any]) -> Defn:
    """A deep copy of BASE with each ``(path, value)`` set; the value ``DELETE`` removes the key."""
    d = copy.deepcopy(BASE)
    for path, value in edits:
        node: Any = d
        for part in path[:-1]:
            node = node[part]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return d


DELETE = object()
BAD_SYNTAX = ["1 +", "((", "ctx[", "{'a': ", "if x", "a b c", "1 +* 2", "[1, 2"]

# (case id, definition, expected machine id on the error, [(exact path, message fragment)])
CASES: list[tuple[str, Defn, str | None, list[tuple[str, str]]]] = [
    # unknown keys, at every level
    ("unknown-key-machine", mutate((("bogus",), 1)), "shop", [("bogus", "unknown key")]),
    (
        "unknown-key-state",
        mutate((("states", "cart", "bogus"), 1)),
        "shop",
        [("states.cart.bogus", "unknown key")],
    ),
    (
        "unknown-key-action-transition",
        mutate((("states", "cart", "actions", "add", "bogus"), 1)),
        "shop",
        [("states.cart.actions.add.bogus", "unknown key")],
    ),
    (
        "unknown-key-always-transition",
        mutate(((*WAIT, "bogus"), 1)),
        "shop",
        [("states.failed.always[0].bogus", "unknown key")],
    ),
    (
        "unknown-key-invoke",
        mutate(((*INVOKE, "bogus"), 1)),
        "shop",
        [("states.placed.always[0].invoke.bogus", "unknown key")],
    ),
    (
        "unknown-key-wait_for",
        mutate(((*WAIT, "wait_for", "bogus"), 1)),
        "shop",
        [("states.failed.always[0].wait_for.bogus", "unknown key")],
    ),
    (
        "unknown-key-retry",
        mutate(((*INVOKE, "retry", "bogus"), 1)),
        "shop",
        [("states.placed.always[0].invoke.retry.bogus", "unknown key")],
    ),
    (
        "unknown-key-success-branch",
        mutate(((*INVOKE, "success", "bogus"), 1)),
        "shop",
        [("states.placed.always[0].invoke.success.bogus", "unknown key")],
    ),
    (
        "unknown-key-error-branch",
        mutate(((*INVOKE, "error", "bogus"), 1)),
        "shop",
        [("states.placed.always[0].invoke.error.bogus", "unknown key")],
    ),
    # unknown target states
    (
        "unknown-target-action",
        mutate((("states", "cart", "actions", "add", "state"), "nowhere")),
        "shop",
        [("states.cart.actions.add.state", "unknown target state 'nowhere'")],
    ),
    (
        "unknown-target-always",
        mutate(((*WAIT, "state"), "nowhere")),
        "shop",
        [("states.failed.always[0].state", "unknown target state 'nowhere'")],
    ),
    (
        "unknown-target-invoke-success",
        mutate(((*INVOKE, "success", "state"), "nowhere")),
        "shop",
        [("states.placed.always[0].invoke.success.state", "unknown target state 'nowhere'")],
    ),
    (
        "unknown-target-invoke-error",
        mutate(((*INVOKE, "error", "state"), "nowhere")),
        "shop",
        [("states.placed.always[0].invoke.error.state", "unknown target state 'nowhere'")],
    ),
    # reachability and start_at
    (
        "unreachable-state",
        mutate((("states", "orphan"), {"end": True})),
        "shop",
        [("states.orphan", "unreachable")],
    ),
    (
        "unreachable-cycle",
        mutate(
            (("states", "island"), {"actions": {"hop": {"state": "islet"}}}),
            (("states", "islet"), {"always": [{"state": "island"}]}),
        ),
        "shop",
        [("states.island", "unreachable"), ("states.islet", "unreachable")],
    ),
    ("missing-start_at", mutate((("start_at",), DELETE)), "shop", [("start_at", "missing")]),
    (
        "unknown-start_at",
        mutate((("start_at",), "nowhere")),
        "shop",
        [("start_at", "unknown state 'nowhere'")],
    ),
    # expressions that do not parse, wherever they sit
    (
        "expr-guard",
        mutate((("states", "cart", "actions", "place", "when"), BAD_SYNTAX[0])),
        "shop",
        [("states.cart.actions.place.when", "does not parse")],
    ),
    (
        "expr-context-key",
        mutate((("states", "cart", "actions", "add", "context", "order"), BAD_SYNTAX[1])),
        "shop",
        [("states.cart.actions.add.context.order", "does not parse")],
    ),
    (
        "expr-context-whole",
        mutate((("states", "cart", "actions", "add", "context"), BAD_SYNTAX[3])),
        "shop",
        [("states.cart.actions.add.context", "does not parse")],
    ),
    (
        "expr-machine-context-key",
        mutate((("context", "order"), BAD_SYNTAX[2])),
        "shop",
        [("context.order", "does not parse")],
    ),
    (
        "expr-machine-context-whole",
        mutate((("context",), BAD_SYNTAX[7])),
        "shop",
        [("context", "does not parse")],
    ),
    (
        "expr-invoke-input",
        mutate(((*INVOKE, "input"), BAD_SYNTAX[4])),
        "shop",
        [("states.placed.always[0].invoke.input", "does not parse")],
    ),
    (
        "expr-invoke-if",
        mutate(((*INVOKE, "if"), BAD_SYNTAX[5])),
        "shop",
        [("states.placed.always[0].invoke.if", "does not parse")],
    ),
    (
        "expr-branch-context",
        mutate(((*INVOKE, "success", "context", "r"), BAD_SYNTAX[6])),
        "shop",
        [("states.placed.always[0].invoke.success.context.r", "does not parse")],
    ),
    (
        "expr-return",
        mutate((("states", "done", "return"), BAD_SYNTAX[0])),
        "shop",
        [("states.done.return", "does not parse")],
    ),
    (
        "expr-wait_for-until",
        mutate(((*WAIT, "wait_for"), {"until": BAD_SYNTAX[1]})),
        "shop",
        [("states.failed.always[0].wait_for.until", "does not parse")],
    ),
    # invoke shape
    (
        "invoke-machine-and-effect",
        mutate(((*INVOKE, "machine"), ["courier", 1]), ((*INVOKE, "retry"), DELETE)),
        "shop",
        [("states.placed.always[0].invoke", "exactly one of machine or effect")],
    ),
    (
        "invoke-neither",
        mutate(((*INVOKE, "effect"), DELETE)),
        "shop",
        [("states.placed.always[0].invoke", "exactly one of machine or effect")],
    ),
    (
        "invoke-without-success",
        mutate(((*INVOKE, "success"), DELETE), (("states", "cart", "actions", "abandon", "state"), "done")),
        "shop",
        [("states.placed.always[0].invoke", "success")],
    ),
    (
        "invoke-with-state-on-transition",
        mutate((("states", "placed", "always", 0, "state"), "done")),
        "shop",
        [("states.placed.always[0]", "takes its state and context from success/error")],
    ),
    (
        "invoke-with-context-on-transition",
        mutate((("states", "placed", "always", 0, "context"), {"x": "1"})),
        "shop",
        [("states.placed.always[0]", "takes its state and context from success/error")],
    ),
    (
        "invoke-with-wait_for",
        mutate((("states", "placed", "always", 0, "wait_for"), {"seconds": 1})),
        "shop",
        [("states.placed.always[0]", "cannot both wait_for and invoke")],
    ),
    (
        "invoke-retry-on-child",
        mutate(((*INVOKE, "effect"), DELETE), ((*INVOKE, "machine"), ["courier", 1])),
        "shop",
        [("states.placed.always[0].invoke.retry", "retry applies to effects")],
    ),
    (
        "invoke-child-version-0",
        mutate(((*INVOKE, "effect"), DELETE), ((*INVOKE, "retry"), DELETE), ((*INVOKE, "machine"), ["c", 0])),
        "shop",
        [("states.placed.always[0].invoke.machine", "positive")],
    ),
    (
        "invoke-retry-max_attempts-0",
        mutate(((*INVOKE, "retry", "max_attempts"), 0)),
        "shop",
        [("states.placed.always[0].invoke.retry.max_attempts", "greater than or equal to 1")],
    ),
    (
        "invoke-timeout-0",
        mutate(((*INVOKE, "timeout_seconds"), 0)),
        "shop",
        [("states.placed.always[0].invoke.timeout_seconds", "greater than 0")],
    ),
    # final states
    (
        "final-with-always",
        mutate((("states", "done", "always"), [{"state": "done"}])),
        "shop",
        [("states.done", "final state")],
    ),
    (
        "final-with-actions",
        mutate((("states", "done", "actions"), {"reopen": {"state": "cart"}})),
        "shop",
        [("states.done", "final state")],
    ),
    (
        "return-on-non-final",
        mutate((("states", "cart", "return"), "ctx")),
        "shop",
        [("states.cart.return", "only a final state")],
    ),
    # version: a JSON integer > 0, never coerced
    ("version-string", mutate((("version",), "1")), "shop", [("version", "valid integer")]),
    ("version-zero", mutate((("version",), 0)), "shop", [("version", "greater than 0")]),
    ("version-negative", mutate((("version",), -1)), "shop", [("version", "greater than 0")]),
    ("version-fraction", mutate((("version",), 1.5)), "shop", [("version", "valid integer")]),
    ("version-integral-float", mutate((("version",), 1.0)), "shop", [("version", "valid integer")]),
    ("version-bool", mutate((("version",), True)), "shop", [("version", "valid integer")]),
    ("version-null", mutate((("version",), None)), "shop", [("version", "valid integer")]),
    ("version-missing", mutate((("version",), DELETE)), "shop", [("version", "missing")]),
    # wait_for shape
    (
        "wait_for-empty",
        mutate(((*WAIT, "wait_for"), {})),
        "shop",
        [("states.failed.always[0].wait_for", "give a duration")],
    ),
    (
        "wait_for-until-and-seconds",
        mutate(((*WAIT, "wait_for"), {"until": "now()", "seconds": 3})),
        "shop",
        [("states.failed.always[0].wait_for", "until cannot be combined")],
    ),
    (
        "wait_for-negative",
        mutate(((*WAIT, "wait_for", "seconds"), -1)),
        "shop",
        [("states.failed.always[0].wait_for.seconds", "greater than or equal to 0")],
    ),
    # names, ids, modes, shape of the whole
    ("id-missing", mutate((("id",), DELETE)), None, [("id", "missing")]),
    ("id-not-a-string", mutate((("id",), 7)), None, [("id", "valid string")]),
    ("id-not-a-name", mutate((("id",), "my shop")), "my shop", [("id", "must match")]),
    (
        "state-name-not-a-name",
        mutate((("states", "cart", "actions", "add", "state"), "a b"), (("states", "a b"), {"end": True})),
        "shop",
        [("states.a b", "state name must match")],
    ),
    (
        "action-name-not-a-name",
        mutate((("states", "cart", "actions", "x y"), {"state": "cart"})),
        "shop",
        [("states.cart.actions.x y", "action name must match")],
    ),
    ("execution_mode-unknown", mutate((("execution_mode",), "fast")), "shop", [("execution_mode", "sync")]),
    (
        "states-empty",
        mutate((("states",), {})),
        "shop",
        [("states", "at least one state"), ("start_at", "unknown state 'cart'")],
    ),
    ("states-missing", mutate((("states",), DELETE)), "shop", [("states", "missing")]),
    (
        "state-not-a-mapping",
        mutate((("states", "cart"), ["add"])),
        "shop",
        [("states.cart", "valid dictionary")],
    ),
]


def assert_problems(exc: DefinitionError, machine: str | None, expected: list[tuple[str, str]]) -> None:
    """The error names ``machine`` and exactly the expected paths, each message with its fragment."""
    assert exc.machine == machine
    got = sorted(exc.problems)
    assert sorted(path for path, _ in got) == sorted(path for path, _ in expected), got
    for path, fragment in expected:
        messages = [msg for p, msg in got if p == path]
        assert any(fragment in msg for msg in messages), (path, fragment, messages)
        # the exception text names the machine and the path too
        assert path in str(exc)
    if machine is not None:
        assert repr(machine) in str(exc)


def test_base_is_valid_and_stores(engine: Engine) -> None:
    """The unmutated BASE saves: every failure below comes from its mutation alone."""
    m = engine.save_machine(copy.deepcopy(BASE))
    assert (m.id, m.version) == ("shop", 1)
    assert [(i.id, i.version) for i in engine.machines()] == [("shop", 1)]


@pytest.mark.parametrize(
    ("defn", "machine", "expected"),
    [pytest.param(d, m, e, id=cid) for cid, d, m, e in CASES],
)
def test_invalid_definition_is_rejected_and_nothing_stored(
    engine: Engine, defn: Defn, machine: str | None, expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(copy.deepcopy(defn))
    assert_problems(info.value, machine, expected)
    with pytest.raises(DefinitionError) as saved:
        engine.save_machine(copy.deepcopy(defn))
    assert saved.value.problems == info.value.problems
    assert engine.machines() == []


def test_multiple_structural_problems_are_all_reported(engine: Engine) -> None:
    defn = mutate(
        (("bogus",), 1),
        (("version",), "1"),
        (("states", "cart", "colour"), "red"),
        ((*WAIT, "wait_for", "weeks"), 2),
        ((*INVOKE, "retry", "max_attempts"), 0),
    )
    with pytest.raises(DefinitionError) as info:
        engine.save_machine(defn)
    assert_problems(
        info.value,
        "shop",
        [
            ("bogus", "unknown key"),
            ("version", "valid integer"),
            ("states.cart.colour", "unknown key"),
            ("states.failed.always[0].wait_for.weeks", "unknown key"),
            ("states.placed.always[0].invoke.retry.max_attempts", "greater than or equal to 1"),
        ],
    )
    assert "5 problems" in str(info.value)
    assert engine.machines() == []


def test_multiple_graph_and_expression_problems_are_all_reported(engine: Engine) -> None:
    defn = mutate(
        (("states", "cart", "actions", "add", "state"), "nowhere"),
        (("states", "cart", "actions", "place", "when"), "1 +"),
        (("states", "done", "always"), [{"state": "cart"}]),
        (("states", "orphan"), {"end": True, "return": "(("}),
        (("states", "cart", "return"), "1"),
        ((*INVOKE, "effect"), DELETE),
        ((*WAIT, "wait_for"), {}),
    )
    with pytest.raises(DefinitionError) as info:
        engine.save_machine(defn)
    assert_problems(
        info.value,
        "shop",
        [
            ("states.cart.actions.add.state", "unknown target state 'nowhere'"),
            ("states.cart.actions.place.when", "does not parse"),
            ("states.done", "final state"),
            ("states.orphan", "unreachable"),
            ("states.orphan.return", "does not parse"),
            ("states.cart.return", "only a final state"),
            ("states.placed.always[0].invoke", "exactly one of machine or effect"),
            ("states.failed.always[0].wait_for", "give a duration"),
        ],
    )
    assert engine.machines() == []


def test_structural_and_graph_problems_are_reported_together() -> None:
    defn = mutate((("bogus",), 1), (("states", "cart", "actions", "add", "state"), "nowhere"))
    with pytest.raises(DefinitionError) as info:
        load_definition(defn)
    paths = {p for p, _ in info.value.problems}
    assert paths == {"bogus", "states.cart.actions.add.state"}


@pytest.mark.parametrize("name", ["stream", "strict", "string-check"])
def test_path_keeps_state_names_that_start_with_str(name: str) -> None:
    defn = mutate(
        (("states", "cart", "actions", "add", "state"), name),
        (("states", name), {"end": True, "bogus": 1}),
    )
    with pytest.raises(DefinitionError) as info:
        load_definition(defn)
    assert info.value.problems == [(f"states.{name}.bogus", "unknown key")]


def test_path_of_non_string_context_value_has_no_union_tag() -> None:
    defn = mutate((("states", "cart", "actions", "add", "context", "order"), 5))
    with pytest.raises(DefinitionError) as info:
        load_definition(defn)
    paths = [p for p, _ in info.value.problems]
    assert "states.cart.actions.add.context.order" in paths
    assert not any("[str" in p for p in paths), paths


@pytest.mark.parametrize(
    ("edits", "path"),
    [
        pytest.param(((("version",), 2**31),), "version", id="version-over-int32"),
        pytest.param(((("id",), "x" * 201),), "id", id="id-over-200-chars"),
        pytest.param(
            (
                (("states", "cart", "actions", "add", "state"), "s" * 201),
                (("states", "s" * 201), {"end": True}),
            ),
            "states." + "s" * 201,
            id="state-name-over-200-chars",
        ),
    ],
)
def test_values_too_large_for_the_columns_are_definition_errors(
    engine: Engine, edits: tuple[tuple[tuple[Any, ...], Any], ...], path: str
) -> None:
    with pytest.raises(DefinitionError) as info:
        engine.save_machine(mutate(*edits))
    assert path in {p for p, _ in info.value.problems}
    assert engine.machines() == []


# --------------------------------------------------------------------------- aliases

KEBAB: Defn = {
    "id": "aliases",
    "version": 3,
    "start-at": "a",
    "execution-mode": "sync",
    "states": {
        "a": {
            "always": [
                {
                    "name": "call",
                    "invoke": {
                        "effect": "work",
                        "input": "{'n': 1}",
                        "retry": {"max-attempts": 4, "initial-seconds": 0.5, "max-seconds": 9},
                        "timeout-seconds": 3,
                        "if": "output['ok']",
                        "then": {"name": "ok", "state": "b", "context": {"r": "output"}},
                        "else": {"state": "c"},
                    },
                }
            ]
        },
        "b": {
            "always": [
                {
                    "name": "child",
                    "invoke": {"state-machine": ["kid", 2], "then": {"state": "c"}, "else": {"state": "c"}},
                }
            ]
        },
        "c": {"always": [{"name": "nap", "state": "d", "wait-for": {"seconds": 1.5}}]},
        "d": {"end": True, "return": "ctx"},
    },
}


def _snake(machine_key: str) -> Defn:
    inv_a = {
        "effect": "work",
        "input": "{'n': 1}",
        "retry": {"max_attempts": 4, "initial_seconds": 0.5, "max_seconds": 9},
        "timeout_seconds": 3,
        "if": "output['ok']",
        "success": {"name": "ok", "state": "b", "context": {"r": "output"}},
        "error": {"state": "c"},
    }
    return {
        "id": "aliases",
        "version": 3,
        "start_at": "a",
        "execution_mode": "sync",
        "states": {
            "a": {"always": [{"name": "call", "invoke": inv_a}]},
            "b": {
                "always": [
                    {
                        "name": "child",
                        "invoke": {
                            machine_key: ["kid", 2],
                            "success": {"state": "c"},
                            "error": {"state": "c"},
                        },
                    }
                ]
            },
            "c": {"always": [{"name": "nap", "state": "d", "wait_for": {"seconds": 1.5}}]},
            "d": {"end": True, "return": "ctx"},
        },
    }


@pytest.mark.parametrize("machine_key", ["machine", "state_machine"])
def test_kebab_case_aliases_normalise_to_the_snake_case_form(machine_key: str) -> None:
    kebab = load_definition(copy.deepcopy(KEBAB))
    snake = load_definition(_snake(machine_key))
    assert kebab.content_hash() == snake.content_hash()
    assert kebab.to_json() == snake.to_json()
    data = kebab.to_json()
    # the canonical form uses the snake_case names, whatever the spelling
    assert data["start_at"] == "a" and "start-at" not in data
    assert data["execution_mode"] == "sync"
    inv = data["states"]["a"]["always"][0]["invoke"]
    assert inv["retry"] == {"max_attempts": 4, "initial_seconds": 0.5, "max_seconds": 9}
    assert inv["timeout_seconds"] == 3
    assert inv["success"]["state"] == "b" and inv["error"] == {"state": "c"}
    assert "then" not in inv and "else" not in inv
    assert data["states"]["b"]["always"][0]["invoke"]["machine"] == ["kid", 2]
    assert data["states"]["c"]["always"][0]["wait_for"] == {"seconds": 1.5}
    # the model sees the same values through either spelling
    assert kebab.states["b"].always[0].invoke is not None
    assert kebab.states["b"].always[0].invoke.child == ("kid", 2)
    assert kebab.states["c"].always[0].wait_for is not None
    assert kebab.states["c"].always[0].wait_for.duration() == 1.5


def test_content_hash_changes_with_content() -> None:
    """The hash is not trivially constant: one changed value changes it."""
    changed = copy.deepcopy(KEBAB)
    changed["states"]["a"]["always"][0]["invoke"]["retry"]["max-attempts"] = 5
    assert load_definition(changed).content_hash() != load_definition(copy.deepcopy(KEBAB)).content_hash()


def test_same_content_in_other_spelling_is_a_no_op_save(engine: Engine) -> None:
    first = engine.save_machine(copy.deepcopy(KEBAB))
    again = engine.save_machine(_snake("machine"))
    assert again.content_hash() == first.content_hash()
    infos = engine.machines()
    assert [(i.id, i.version, i.content_hash) for i in infos] == [("aliases", 3, first.content_hash())]


def test_both_spellings_of_one_key_are_rejected() -> None:
    defn = mutate((("start-at",), "placed"))
    with pytest.raises(DefinitionError) as info:
        load_definition(defn)
    assert info.value.problems == [("start-at", "unknown key")]


# --------------------------------------------------------------------------- files


def test_yaml_and_json_files_load_to_the_same_machine(tmp_path: Path) -> None:
    y = tmp_path / "shop.yaml"
    y.write_text(yaml.safe_dump(BASE, sort_keys=False), encoding="utf-8")
    yml = tmp_path / "shop.yml"
    yml.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    j = tmp_path / "shop.json"
    j.write_text(json.dumps(BASE, indent=2), encoding="utf-8")
    machines = [load_definition(p) for p in (y, yml, j)] + [load_definition(str(j))]
    assert {m.content_hash() for m in machines} == {load_definition(copy.deepcopy(BASE)).content_hash()}
    assert all(isinstance(m, Machine) and m.id == "shop" for m in machines)


def test_file_with_kebab_keys_loads(tmp_path: Path) -> None:
    p = tmp_path / "aliases.yaml"
    p.write_text(yaml.safe_dump(KEBAB), encoding="utf-8")
    assert load_definition(p).content_hash() == load_definition(_snake("machine")).content_hash()


FILE_ERRORS = [
    pytest.param("bad.yaml", "id: shop\nstates: [unclosed\n", "not valid YAML/JSON", id="malformed-yaml"),
    pytest.param(
        "bad.yaml", "id: shop\n  version: 1\n bad: indent\n", "not valid YAML/JSON", id="bad-indent"
    ),
    pytest.param("bad.json", '{"id": "shop", "version": 1,', "not valid YAML/JSON", id="malformed-json"),
    pytest.param("bad.json", "id: shop\nversion: 1\n", "not valid YAML/JSON", id="yaml-in-a-json-file"),
]


@pytest.mark.parametrize(("name", "text", "fragment"), FILE_ERRORS)
def test_malformed_file_is_a_definition_error_naming_the_file(
    engine: Engine, tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    assert str(path) in str(info.value)
    assert any(fragment in msg and str(path) in msg for _, msg in info.value.problems)
    with pytest.raises(DefinitionError):
        engine.save_machine(path)
    assert engine.machines() == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("- id: shop\n- version: 1\n", id="list"),
        pytest.param("just a string\n", id="scalar"),
        pytest.param("", id="empty"),
    ],
)
def test_yaml_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    assert info.value.problems == [("", "a definition must be a mapping of keys to values")]


def test_missing_file_is_a_definition_error_naming_the_path(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "nope" / "missing.yaml"
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    assert info.value.machine is None
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)
    with pytest.raises(DefinitionError):
        engine.save_machine(str(path))
    assert engine.machines() == []


@pytest.mark.parametrize("value", [pytest.param([BASE], id="list"), pytest.param(42, id="int")])
def test_non_mapping_python_value_is_a_definition_error(value: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(value)
    assert info.value.problems == [("", "a definition must be a mapping of keys to values")]


@pytest.mark.parametrize("name", ["order", "shipment"])
def test_shipped_machines_validate(name: str) -> None:
    m = load_definition(MACHINES / f"{name}.yaml")
    assert m.id == name and m.version == 1
    assert m.start_at in m.states
    # the canonical form is a fixed point: loading it again changes nothing
    again = load_definition(m.to_json())
    assert again == m
    assert again.content_hash() == m.content_hash()
    assert load_definition(m) is m


def test_shipped_machines_use_aliases_that_normalise() -> None:
    shipment = load_definition(MACHINES / "shipment.yaml")
    inv = shipment.states["outstanding"].always[0].invoke
    assert inv is not None and inv.success is not None and inv.error is not None  # then / else
    assert inv.success.state == "booked" and inv.error.state == "failed"
    order = load_definition(MACHINES / "order.yaml")
    ship = order.states["released"].always[0].invoke
    assert ship is not None and ship.child == ("shipment", 1)
    assert ship.error is not None and ship.error.name == "undeliverable"  # else


# --------------------------------------------------------------------------- properties

ACTION_NAMES = ["go", "back", "x-1", "y_2"]
MISSING = ["nope", "s9"]  # at most s0..s5 exist, so these never do


@st.composite
def random_machines(draw: st.DrawFn) -> Defn:
    n = draw(st.integers(1, 6))
    names = [f"s{i}" for i in range(n)]
    target = st.one_of(st.none(), st.sampled_from(names), st.sampled_from(MISSING))

    def transition() -> dict[str, Any]:
        t: dict[str, Any] = {}
        goal = draw(target)
        if goal is not None:
            t["state"] = goal
        if draw(st.booleans()):
            t["when"] = "ctx.get('k', 0) > 1"
        return t

    states: dict[str, Any] = {}
    for name in names:
        always = [transition() for _ in range(draw(st.integers(0, 2)))]
        actions = {
            a: transition() for a in draw(st.lists(st.sampled_from(ACTION_NAMES), max_size=3, unique=True))
        }
        state: dict[str, Any] = {}
        if always:
            state["always"] = always
        if actions:
            state["actions"] = actions
        if not always and not actions and draw(st.booleans()):
            state["end"] = True
        states[name] = state
    return {"id": "rand", "version": 1, "start_at": "s0", "states": states}


def reference_problems(defn: Defn) -> set[str]:
    """Independently: paths of unknown targets and of states unreachable from start_at."""
    states: dict[str, Any] = defn["states"]
    bad: set[str] = set()
    edges: dict[str, set[str]] = {s: set() for s in states}
    for sname, st_ in states.items():
        trans = [(f"states.{sname}.always[{i}]", t) for i, t in enumerate(st_.get("always", []))]
        trans += [(f"states.{sname}.actions.{a}", t) for a, t in st_.get("actions", {}).items()]
        for path, t in trans:
            goal = t.get("state", sname)
            if goal in states:
                edges[sname].add(goal)
            else:
                bad.add(f"{path}.state")
    seen = {defn["start_at"]}
    todo = deque(seen)
    while todo:
        for nxt in edges[todo.popleft()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    bad |= {f"states.{s}" for s in states if s not in seen}
    return bad


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_machines())
def test_random_machines_fail_iff_unknown_target_or_unreachable(defn: Defn) -> None:
    expected = reference_problems(defn)
    try:
        m = load_definition(defn)
    except DefinitionError as exc:
        assert exc.machine == "rand"
        assert expected, f"rejected a valid machine: {exc.problems}"
        assert {p for p, _ in exc.problems} == expected
        for path, msg in exc.problems:
            assert ("unknown target state" in msg) if path.endswith(".state") else ("unreachable" in msg)
    else:
        assert not expected, f"accepted a machine with problems at {sorted(expected)}"
        assert set(m.states) == set(defn["states"])


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = _paths(BASE)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_PATHS), JSONISH, st.sampled_from(["replace", "add-key"]))
def test_garbage_anywhere_is_a_definition_error_or_valid(path: tuple[Any, ...], value: Any, how: str) -> None:
    """Any JSON value anywhere in a definition: a Machine or a DefinitionError, never a crash."""
    if how == "add-key":
        defn = (
            mutate(((*path, "extra"), value)) if isinstance(_at(BASE, path), dict) else mutate((path, value))
        )
    else:
        defn = mutate((path, value))
    try:
        m = load_definition(defn)
    except DefinitionError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and isinstance(msg, str) and msg for p, msg in exc.problems)
    else:
        assert isinstance(m, Machine)
        assert load_definition(m.to_json()).content_hash() == m.content_hash()


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def test_mutate_helper_leaves_base_untouched() -> None:
    before = json.dumps(BASE, sort_keys=True)
    mutate((("states", "cart", "bogus"), 1), (("version",), DELETE))
    assert json.dumps(BASE, sort_keys=True) == before


@pytest.mark.parametrize("machine", [["courier", 2], ["courier"], "courier"], ids=["pinned", "list", "name"])
def test_child_machine_need_not_exist_when_the_parent_is_saved(engine: Engine, machine: Any) -> None:
    defn = mutate(
        ((*INVOKE, "effect"), DELETE), ((*INVOKE, "retry"), DELETE), ((*INVOKE, "machine"), machine)
    )
    saved = engine.save_machine(defn)
    inv = saved.states["placed"].always[0].invoke
    assert inv is not None
    assert inv.child == ("courier", 2 if machine == ["courier", 2] else None)
    assert [(i.id, i.version) for i in engine.machines()] == [("shop", 1)]


def test_saved_version_is_immutable(engine: Engine) -> None:
    first = engine.save_machine(copy.deepcopy(BASE))
    changed = mutate((("states", "cart", "actions", "place", "when"), "True"))
    with pytest.raises(DefinitionError) as info:
        engine.save_machine(changed)
    assert info.value.machine == "shop"
    assert [p for p, _ in info.value.problems] == ["version"]
    assert "already saved with different content" in info.value.problems[0][1]
    assert [i.content_hash for i in engine.machines()] == [first.content_hash()]
    assert engine.get_machine("shop", 1) == first
    # the change is welcome as a new version
    engine.save_machine(mutate((("version",), 2), (("states", "cart", "actions", "place", "when"), "True")))
    assert [(i.id, i.version) for i in engine.machines()] == [("shop", 1), ("shop", 2)]


LONE_SURROGATE = json.loads('"ctx[\\"\\ud800\\"]"')  # what json.load gives for "\\ud800"


@pytest.mark.parametrize(
    ("source", "verdict"),
    [
        pytest.param("a\x00b", "does not parse", id="nul-byte"),
        pytest.param(LONE_SURROGATE, "does not parse", id="lone-surrogate-from-json"),
        pytest.param(
            "(" * 400 + "1" + ")" * 400,
            "does not parse: invalid syntax at line 1, column 201",
            id="deep-nesting",
        ),
        pytest.param("[" * 60 + "]" * 60, "is not allowed: expression nests deeper than 50", id="deep-lists"),
        pytest.param("1 + " * 100_000 + "1", "is not allowed: expression is 400001 characters", id="huge"),
        pytest.param("", "does not parse", id="empty"),
        pytest.param("   ", "does not parse", id="blank"),
        pytest.param("x = 1", "does not parse: invalid syntax at line 1", id="assignment"),
        pytest.param("import os", "does not parse: invalid syntax at line 1, column 1", id="import"),
        pytest.param("1; 2", "does not parse: invalid syntax at line 1, column 2", id="two-statements"),
        pytest.param("lambda: 1", "is not allowed: lambda is not allowed", id="lambda"),
        pytest.param(
            "ctx.__class__", "is not allowed: attribute '__class__' is not allowed", id="dunder-attribute"
        ),
    ],
)
def test_hostile_expression_source_is_a_definition_error(source: str, verdict: str) -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(mutate((("states", "cart", "actions", "place", "when"), source)))
    assert [p for p, _ in info.value.problems] == ["states.cart.actions.place.when"]
    assert f"expression {verdict}" in info.value.problems[0][1]
    assert "invalid syntax: invalid syntax" not in info.value.problems[0][1]


# ---------------------------------------------------------------------- issue 10, item 15

#: A 9-level "billion laughs" under a key the model does not know (the report's 477 bytes).
ALIAS_BOMB = """\
id: bomb
version: 1
start_at: a
states: {a: {end: true}}
unknown: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]
l1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]
l2: &l2 [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]
l3: &l3 [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]
l4: &l4 [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3]
l5: &l5 [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4]
l6: &l6 [*l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5]
l7: &l7 [*l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6]
l8: &l8 [*l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7]
"""

SMALL = "id: m\nversion: 1\nstart_at: a\n"


def load_text(tmp_path: Path, text: str, name: str = "m.yaml") -> Machine:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_definition(path)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    import tracemalloc

    assert len(ALIAS_BOMB) < 600
    tracemalloc.start()
    try:
        with pytest.raises(DefinitionError) as info:
            load_text(tmp_path, ALIAS_BOMB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "expands to more than 100000 values through its aliases" in str(info.value)
    assert peak < 20_000_000, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(
            SMALL + "x: &a [*a]\nstates: {a: {end: true}}\n",
            "m.yaml:4: a YAML alias refers to a node that contains it",
            id="cycle",
        ),
        pytest.param(
            SMALL + "states: {a: {end: true}}\nx: &a 1\ny: [" + ", ".join(["*a"] * 101) + "]\n",
            "m.yaml:6: more than 100 YAML aliases",
            id="too-many-aliases",
        ),
    ],
)
def test_yaml_aliases_are_bounded(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(DefinitionError, match=fragment):
        load_text(tmp_path, text)


def test_a_few_yaml_anchors_still_work(tmp_path: Path) -> None:
    text = """\
id: m
version: 1
start_at: a
states:
  a:
    always:
      - name: call
        invoke:
          effect: pay
          retry: &retry {max_attempts: 5, multiplier: 3}
          success: {state: b}
  b:
    always:
      - name: again
        invoke: {effect: pay, retry: *retry, success: {state: c}}
  c: {end: true}
"""
    m = load_text(tmp_path, text)
    assert m.states["b"].always[0].invoke is not None
    assert m.states["b"].always[0].invoke.retry == m.states["a"].always[0].invoke.retry  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param("deep.yaml", SMALL + "x: " + "[" * 5000 + "]" * 5000 + "\n", id="yaml-flow"),
        pytest.param("deep.yaml", SMALL + "".join(f"{'  ' * i}k{i}:\n" for i in range(200)), id="yaml-block"),
        pytest.param("deep.json", '{"id": "m", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", id="json"),
    ],
)
def test_deep_nesting_is_a_definition_error(tmp_path: Path, name: str, text: str) -> None:
    """Not a RecursionError (nor a quadratic wait in the YAML scanner)."""
    with pytest.raises(DefinitionError, match="nested deeper than 50 levels"):
        load_text(tmp_path, text, name)


def test_deep_or_huge_python_data_is_a_definition_error() -> None:
    deep: Any = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(DefinitionError, match="nested deeper than 50 levels"):
        load_definition({**BASE, "x": deep})
    shared = [list(range(1000))] * 1000
    with pytest.raises(DefinitionError, match="holds more than 100000 values"):
        load_definition({**BASE, "x": shared})


@pytest.mark.parametrize(
    ("where", "value", "path"),
    [
        ("state", "cart\n", "states.cart\n"),
        ("action", "add\n", "states.cart.actions.add\n"),
        ("id", "shop\n", "id"),
    ],
)
def test_a_name_with_a_trailing_newline_is_refused(where: str, value: str, path: str) -> None:
    """``re.match('...$')`` accepted 'a\\n'; names are matched in full."""
    data = copy.deepcopy(BASE)
    if where == "state":
        data["states"][value] = data["states"].pop("cart")
    elif where == "action":
        data["states"]["cart"]["actions"][value] = data["states"]["cart"]["actions"].pop("add")
    else:
        data["id"] = value
    with pytest.raises(DefinitionError) as info:
        load_definition(data)
    assert path in [p for p, _ in info.value.problems]


def test_duplicate_yaml_keys_name_the_key_and_the_line(tmp_path: Path) -> None:
    text = SMALL + "states:\n  a: {always: [{state: b}]}\n  b: {end: true}\n  b: {always: [{state: a}]}\n"
    with pytest.raises(DefinitionError) as info:
        load_text(tmp_path, text)
    [(path, message)] = info.value.problems
    assert path == "states.b"
    assert message.endswith("m.yaml:7: duplicate key 'b' (first at line 6); the last one would silently win")
    with pytest.raises(DefinitionError, match="duplicate key 'version'"):
        load_text(tmp_path, '{"id": "m", "version": 1, "version": 2}', "m.json")


def test_yaml_1_1_booleans_say_what_yaml_did(tmp_path: Path) -> None:
    text = (
        SMALL
        + "context: {flag: yes}\nstates:\n  a:\n    actions:\n      on: {state: off}\n  b: {end: true}\n"
    )
    with pytest.raises(DefinitionError) as info:
        load_text(tmp_path, text)
    assert [(p, m.removeprefix(f"{tmp_path}/")) for p, m in info.value.problems] == [
        (
            "context.flag",
            "m.yaml:4: value 'yes' was read by YAML as the boolean True; "
            "quote it ('yes') if you meant the text",
        ),
        ("states.a.actions", "m.yaml:8: key 'on' was read by YAML as the boolean True; quote it ('on')"),
        (
            "states.a.actions.True.state",
            "m.yaml:8: value 'off' was read by YAML as the boolean False; "
            "quote it ('off') if you meant the text",
        ),
    ]


def test_quoted_yaml_words_and_end_yes_are_fine(tmp_path: Path) -> None:
    m = load_text(tmp_path, SMALL + "states:\n  a: {actions: {'on': {state: 'off'}}}\n  'off': {end: yes}\n")
    assert m.states["a"].actions["on"].state == "off" and m.states["off"].end is True


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (
            "context: {count: 0}\nstates: {a: {end: true}}\n",
            "context.count",
            "got the number 0; an expression is text: quote it ('0')",
        ),
        (
            "states: {a: {always: [{state: a, when: true}]}}\n",
            "states.a.always[0].when",
            "got the boolean True (YAML reads unquoted true/false, yes/no and on/off as booleans)",
        ),
        ("states: {a: {end: true}, true: {end: true}}\n", "states.True", "key True is a boolean, not a name"),
        ("context: {count: }\nstates: {a: {end: true}}\n", "context.count", "got null (an empty value)"),
    ],
)
def test_scalars_where_text_is_needed_say_what_yaml_read(
    tmp_path: Path, text: str, path: str, fragment: str
) -> None:
    with pytest.raises(DefinitionError) as info:
        load_text(tmp_path, SMALL + text)
    messages = [m for p, m in info.value.problems if p == path]
    assert messages and fragment in messages[0], info.value.problems
