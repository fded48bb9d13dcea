"""statem.graph: the edges drawn match the definition, in Mermaid and in DOT.

The emitted text is parsed back (``A --> B : label`` and ``"a" -> "b" [label=...]``) and
compared with edges written out by hand from each definition.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from statem.definition import Machine, load_definition
from statem.graph import render, shorten, to_dot, to_mermaid
from statem.records import Step

MACHINES = Path(__file__).resolve().parent.parent / "machines"
EdgeT = tuple[str, str, str | None]

ORDER_EDGES: list[EdgeT] = [
    ("[*]", "create", None),
    ("create", "cart", "always: created"),
    ("cart", "cart", "add"),
    ("cart", "submitted", "place [len(ctx['order']['line_items']) > 0]"),
    ("cart", "canceled", "cancel"),
    ("submitted", "released", "fraud-approve"),
    ("submitted", "canceled", "fraud-reject"),
    ("released", "shipped", "ship: machine shipment v1 ✓ [if output['delivered']]"),
    ("released", "canceled", "ship: machine shipment v1 ✗"),
    ("shipped", "[*]", None),
    ("canceled", "[*]", None),
]
SHIPMENT_EDGES: list[EdgeT] = [
    ("[*]", "outstanding", None),
    ("outstanding", "booked", "book-pickup: effect shipping.create-shipment ✓"),
    ("outstanding", "failed", "book-pickup: effect shipping.create-shipment ✗"),
    ("failed", "undeliverable", "always: give-up [ctx['attempts'] >= 5]"),
    ("failed", "outstanding", "always: retry-later after 1s"),
    ("booked", "delivered", "always: handed-over"),
    ("delivered", "[*]", None),
    ("undeliverable", "[*]", None),
]

LONG_GUARD = "ctx['n'] > 0 and input.get('force', False) or len(ctx['items']) > 100"
ODD_GUARD = "ctx['t'] != '#x: y; 5%' or ctx['n']<3"
FEATURES: dict[str, Any] = {
    "id": "kitchen-sink",
    "version": 2,
    "start-at": "idle",
    "states": {
        "idle": {
            "actions": {
                "go-now": {"state": "busy-state", "when": LONG_GUARD},
                "poke": {},
                "later": {"state": "done", "wait-for": {"until": "input['at']"}},
                "reset": {"state": "default"},
                "alt": {"state": "busy_state"},
                "ask": {"invoke": {"machine": "helper", "success": {"name": "answered"}}},
            }
        },
        "busy-state": {
            "always": [
                {"name": "check", "state": "done", "when": ODD_GUARD},
                {"name": "nap", "state": "idle", "wait_for": {"minutes": 1.5, "seconds": 10}},
                {
                    "name": "fetch",
                    "when": "ctx['go']",
                    "invoke": {
                        "effect": "http.request.json",
                        "input": "{}",
                        "if": "output['status'] == 200",
                        "then": {"state": "done"},
                        "else": {"name": "fetch-failed", "state": "failed-hard"},
                    },
                },
            ]
        },
        "failed-hard": {
            "always": [
                {"invoke": {"state_machine": ["helper", 3], "success": {"state": "done"}, "error": {}}},
            ]
        },
        "done": {"end": True, "return": "{'ok': True}"},
        "default": {"end": True},
        "busy_state": {"end": True},
    },
}
FEATURE_EDGES: list[EdgeT] = [
    ("[*]", "idle", None),
    ("idle", "busy-state", f"go-now [{shorten(LONG_GUARD)}]"),
    ("idle", "idle", "poke"),
    ("idle", "done", "later until input['at']"),
    ("idle", "default", "reset"),
    ("idle", "busy_state", "alt"),
    ("idle", "idle", "ask: machine helper ✓"),
    ("busy-state", "done", f"always: check [{ODD_GUARD}]"),
    ("busy-state", "idle", "always: nap after 1.5m 10s"),
    ("busy-state", "done", "fetch: effect http.request.json ✓ [ctx['go']] [if output['status'] == 200]"),
    ("busy-state", "failed-hard", "fetch: effect http.request.json ✗ [ctx['go']]"),
    ("failed-hard", "done", "always: machine helper v3 ✓"),
    ("failed-hard", "failed-hard", "always: machine helper v3 ✗"),
    ("done", "[*]", None),
    ("default", "[*]", None),
    ("busy_state", "[*]", None),
]

MERMAID_EDGE = re.compile(r"^ {4}(\S+) --> (\S+)(?: : (.+))?$")
MERMAID_ALIAS = re.compile(r'^ {4}state "([^"]+)" as (\w+)$')
DOT_STRING = r'"((?:[^"\\]|\\.)*)"'
DOT_EDGE = re.compile(rf"^ {{4}}{DOT_STRING} -> {DOT_STRING}(?: \[(.*)\])?;$")
DOT_NODE = re.compile(rf"^ {{4}}{DOT_STRING}(?: \[(.*)\])?;$")


def _unescape_dot(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def mermaid_edges(text: str) -> list[EdgeT]:
    """Edges of a Mermaid state diagram, with state ids mapped back to names."""
    lines = text.splitlines()
    names = {m[2]: m[1] for m in map(MERMAID_ALIAS.match, lines) if m}
    out = []
    for m in filter(None, map(MERMAID_EDGE.match, lines)):
        label = re.sub(r"#(\d+);", lambda e: chr(int(e[1])), m[3]) if m[3] else None
        out.append((names.get(m[1], m[1]), names.get(m[2], m[2]), label))
    return out


def dot_edges(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """Edges of a DOT digraph as ``(src, dst, attributes)``, the entry point written ``[*]``."""
    out = []
    for m in filter(None, map(DOT_EDGE.match, text.splitlines())):
        attrs = {k: _unescape_dot(v) for k, v in re.findall(rf"(\w+)={DOT_STRING}", m[3] or "")}
        attrs |= dict(re.findall(r"(\w+)=([\w.]+)", m[3] or ""))
        src = "[*]" if m[1] == "[start]" else _unescape_dot(m[1])
        out.append((src, _unescape_dot(m[2]), attrs))
    return out


def dot_nodes(text: str) -> dict[str, str]:
    return {_unescape_dot(m[1]): m[2] or "" for m in map(DOT_NODE.match, text.splitlines()) if m}


def dot_as_edges(text: str, machine: Machine) -> list[EdgeT]:
    """DOT edges in the Mermaid shape: final states get an edge to ``[*]``."""
    finals = [(s, "[*]", None) for s, st in machine.states.items() if st.end]
    return [(s, d, a.get("label")) for s, d, a in dot_edges(text)] + finals


def step(seq: int, kind: str, name: str | None, src: str | None, dst: str | None) -> Step:
    return Step(seq, datetime.now(UTC), kind, name, src, dst, None, None, {}, None)


@pytest.fixture(params=["order", "shipment", "features"])
def case(request: pytest.FixtureRequest) -> tuple[Machine, list[EdgeT]]:
    if request.param == "features":
        return load_definition(FEATURES), FEATURE_EDGES
    expected = ORDER_EDGES if request.param == "order" else SHIPMENT_EDGES
    return load_definition(MACHINES / f"{request.param}.yaml"), expected


def test_mermaid_edges_match_the_definition(case: tuple[Machine, list[EdgeT]]) -> None:
    machine, expected = case
    text = to_mermaid(machine)
    assert text.startswith("stateDiagram-v2\n")
    assert Counter(mermaid_edges(text)) == Counter(expected)
    assert render(machine) == text == to_mermaid(machine)  # default format, deterministic


def test_dot_edges_match_the_definition(case: tuple[Machine, list[EdgeT]]) -> None:
    machine, expected = case
    text = to_dot(machine)
    assert text.startswith(f'digraph "{machine.id}_v{machine.version}" {{\n    rankdir=LR;\n')
    assert text.rstrip().endswith("}")
    assert Counter(dot_as_edges(text, machine)) == Counter(expected)
    nodes = dot_nodes(text)
    assert set(nodes) == {*machine.states, "[start]"}
    for name, st in machine.states.items():
        assert ("doublecircle" in nodes[name]) == st.end
    assert render(machine, "dot") == text


def test_output_is_clean(case: tuple[Machine, list[EdgeT]]) -> None:
    machine, _ = case
    for text in (to_mermaid(machine), to_dot(machine)):
        assert text.endswith("\n") and not text.endswith("\n\n")
        assert all(line == line.rstrip() for line in text.splitlines())


def test_mermaid_ids_are_safe_and_labels_escaped() -> None:
    text = to_mermaid(load_definition(FEATURES))
    aliases = {m[1]: m[2] for m in map(MERMAID_ALIAS.match, text.splitlines()) if m}
    assert aliases["busy-state"] == "busy_state"
    assert aliases["busy_state"] == "busy_state_2"  # no clash after sanitising
    assert aliases["default"] == "s_default"  # `default` is a Mermaid keyword
    assert aliases["failed-hard"] == "failed_hard"
    assert "idle" not in aliases  # only names that need it
    for m in filter(None, map(MERMAID_EDGE.match, text.splitlines())):
        for ident in m[1], m[2]:
            assert ident == "[*]" or re.fullmatch(r"\w+", ident)
        # nothing in a label may end it or open a comment, an entity or a tag
        assert not re.search(r"[:;%<]|#(?!\d+;)", re.sub(r"#\d+;", "", m[3] or ""))


def test_dot_quotes_are_escaped() -> None:
    data = {**FEATURES, "states": {**FEATURES["states"]}}
    data["states"]["idle"] = {"actions": {**FEATURES["states"]["idle"]["actions"]}}
    data["states"]["idle"]["actions"]["poke"] = {"when": 'ctx["q"] == "a\\\\b"'}
    text = to_dot(load_definition(data))
    assert '[label="poke [ctx[\\"q\\"] == \\"a\\\\\\\\b\\"]"]' in text
    assert ("idle", "idle", 'poke [ctx["q"] == "a\\\\b"]') in dot_as_edges(text, load_definition(data))


def test_render_rejects_unknown_formats() -> None:
    with pytest.raises(ValueError, match="png"):
        render(load_definition(FEATURES), "png")


ORDER_PATH = [
    step(1, "start", None, None, "create"),
    step(2, "always", "created", "create", "cart"),
    step(3, "action", "add", "cart", "cart"),
    step(4, "action", "add", "cart", "cart"),
    step(5, "action", "place", "cart", "submitted"),
    step(6, "action", "fraud-approve", "submitted", "released"),
    step(7, "invoke", "ship", "released", "released"),
    step(8, "result", "undeliverable", "released", "canceled"),
]


def test_mermaid_highlights_the_path() -> None:
    machine = load_definition(MACHINES / "order.yaml")
    text = to_mermaid(machine, ORDER_PATH, "canceled")
    lines = text.splitlines()
    assert "    classDef visited fill:#e7f5ff,stroke:#1c7ed6" in lines
    assert any(line.startswith("    classDef current ") for line in lines)
    assert "    class create,cart,submitted,released visited" in lines
    assert "    class canceled current" in lines
    taken = {(s, d, label) for s, d, label in mermaid_edges(text) if label and label.startswith("(")}
    assert taken == {
        ("create", "cart", "(2) always: created"),
        ("cart", "cart", "(3,4) add"),
        ("cart", "submitted", "(5) place [len(ctx['order']['line_items']) > 0]"),
        ("submitted", "released", "(6) fraud-approve"),
        ("released", "canceled", "(8) ship: machine shipment v1 ✗"),
    }
    assert "linkStyle" not in text  # stateDiagram-v2 has no linkStyle: it would not parse


def test_dot_highlights_the_path() -> None:
    machine = load_definition(MACHINES / "order.yaml")
    text = to_dot(machine, ORDER_PATH, "canceled")
    taken = {(s, d) for s, d, a in dot_edges(text) if "penwidth" in a}
    assert taken == {
        ("[*]", "create"),
        ("create", "cart"),
        ("cart", "cart"),
        ("cart", "submitted"),
        ("submitted", "released"),
        ("released", "canceled"),
    }
    nodes = dot_nodes(text)
    assert "#ffe066" in nodes["canceled"] and "doublecircle" in nodes["canceled"]
    for name in ("create", "cart", "submitted", "released"):
        assert "#e7f5ff" in nodes[name] and "filled" in nodes[name]
    assert "fillcolor" not in nodes["shipped"]
    assert render(machine, "dot", ORDER_PATH, "canceled") == text


def test_steps_pick_edges_by_kind_and_name() -> None:
    machine = load_definition(FEATURES)
    path = [
        step(1, "start", None, None, "idle"),
        step(2, "action", "go-now", "idle", "busy-state"),
        step(3, "wait", "nap", "busy-state", "busy-state"),
        step(4, "timer", "nap", "busy-state", "idle"),
        step(5, "action", "poke", "idle", "idle"),
        step(6, "result", "answered", "idle", "idle"),
        step(7, "discard", "nap", "busy-state", "idle"),  # not a move: never marks an edge
    ]
    taken = {label for _, _, label in mermaid_edges(to_mermaid(machine, path, "idle")) if label}
    taken = {label for label in taken if label.startswith("(")}
    assert taken == {
        f"(2) go-now [{shorten(LONG_GUARD)}]",
        "(4) always: nap after 1.5m 10s",
        "(5) poke",
        "(6) ask: machine helper ✓",
    }
    text = to_mermaid(machine, path, "idle")
    assert "    class busy_state visited" in text.splitlines()
    assert "    class idle current" in text.splitlines()


def test_no_highlight_without_a_path() -> None:
    machine = load_definition(MACHINES / "order.yaml")
    assert "classDef" not in to_mermaid(machine)
    assert "fillcolor" not in to_dot(machine) and "penwidth" not in to_dot(machine)


@pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz `dot` is not installed, so the DOT output cannot be rendered to SVG here",
)
@pytest.mark.parametrize("highlight", [False, True])
def test_dot_renders_with_graphviz(case: tuple[Machine, list[EdgeT]], highlight: bool) -> None:
    machine, _ = case
    steps = [step(1, "start", None, None, machine.start_at)] if highlight else None
    text = to_dot(machine, steps, machine.start_at if highlight else None)
    result = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "<svg" in result.stdout
