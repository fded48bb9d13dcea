"""Draw a machine as a Mermaid state diagram or a Graphviz DOT digraph.

Every transition becomes one edge (an ``invoke`` becomes one edge per branch), emitted in
definition order so the output is deterministic. Given an execution's history, the states
it visited, the edges it took and its current state are highlighted.

Mermaid's ``stateDiagram-v2`` cannot style individual transitions (``linkStyle`` is a
flowchart feature; mermaid-js/mermaid#1352), so in Mermaid a taken edge is marked in its
label with the sequence numbers of the steps that took it, e.g. ``(3,4) add``. DOT gets
the same label marks plus colour and pen width.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .definition import Invoke, Machine, Transition, WaitFor
from .records import Step

__all__ = ["Edge", "Format", "edges", "fanout_notes", "render", "to_dot", "to_mermaid"]

Format = Literal["mermaid", "dot"]
#: Step kinds that move an execution along an edge of the diagram.
TAKEN_KINDS = frozenset({"action", "always", "timer", "result"})
#: Guards and ``until`` expressions are shortened to this many characters.
MAX_EXPR = 40

VISITED_STYLE = "fill:#e7f5ff,stroke:#1c7ed6"
CURRENT_STYLE = "fill:#ffe066,stroke:#f08c00,stroke-width:3px"
# Mermaid's lexer reads these (case-insensitively) as keywords at the start of a statement.
_MERMAID_KEYWORDS = ("default", "state", "note", "class", "scale", "acctitle", "accdescr", "statediagram")
# Characters that end a Mermaid transition label (":", ";"), start an entity code or comment
# ("#", "%"), or an HTML tag ("<"), written as Mermaid entity codes.
_MERMAID_ESCAPES = {c: f"#{ord(c)};" for c in "#:;%<"}
_START_NODE = "[start]"  # cannot clash with a state: state names never contain brackets


@dataclass
class Edge:
    """One arrow: from ``src`` to ``dst``, and the step ``kind``/``name`` recorded when taken."""

    src: str
    dst: str
    label: str
    kind: str
    name: str | None
    seqs: list[int] = field(default_factory=list)  # steps of the execution that took it

    def shown(self) -> str:
        """The label, prefixed with the step numbers that took this edge, if any."""
        if not self.seqs:
            return self.label
        return f"({','.join(map(str, self.seqs))}) {self.label}"


def shorten(text: str, limit: int = MAX_EXPR) -> str:
    """Collapse whitespace and cut ``text`` to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timer(w: WaitFor) -> str:
    if w.until is not None:
        return f"until {shorten(w.until)}"
    parts = [
        f"{value:g}{unit}"
        for value, unit in ((w.days, "d"), (w.hours, "h"), (w.minutes, "m"), (w.seconds, "s"))
        if value is not None
    ]
    return "after " + (" ".join(parts) or "0s")


def _target(effect: str | None, child: tuple[str, int | None] | None) -> str:
    if child is None:
        return f"effect {effect}"
    return f"machine {child[0]}" + (f" v{child[1]}" if child[1] is not None else "")


def _invoked(inv: Invoke) -> str:
    if inv.all is not None:
        return "all(" + ", ".join(inv.all) + ")"
    if inv.map is not None:
        return f"map {_target(inv.effect, inv.child)}"
    return _target(inv.effect, inv.child)


def fanout_notes(machine: Machine) -> list[tuple[str, str]]:
    """A note per fan-out, as ``(state, text)``: what runs per element or branch, how
    many at once, how many failures are tolerated. Drawn beside the state."""
    notes: list[tuple[str, str]] = []
    for sname, st in machine.states.items():
        for aname, t in [*((None, t) for t in st.always), *st.actions.items()]:
            inv = t.invoke
            if inv is None or inv.fanout is None:
                continue
            name = t.name or aname or "always"
            if inv.all is not None:
                legs = "; ".join(f"{b} = {_target(leg.effect, leg.child)}" for b, leg in inv.all.items())
                notes.append((sname, f"fork/join {name}: all of {legs}; fails on the first failed branch"))
                continue
            at_once = f"{inv.max_concurrency} at once" if inv.max_concurrency else "all at once"
            tolerated = inv.tolerated_failures or 0
            notes.append(
                (sname, f"fork/join {name}: {_target(inv.effect, inv.child)} per item of "
                 f"{shorten(inv.map or '')}, {at_once}, {tolerated} failures tolerated")
            )  # fmt: skip
    return notes


def _transition_edges(state: str, action: str | None, t: Transition) -> Iterable[Edge]:
    name = t.name or action  # the name a step taking this transition records
    guard = f" [{shorten(t.when)}]" if t.when else ""
    if t.invoke is not None:
        inv = t.invoke
        head = f"{name or 'always'}: {_invoked(inv)}"
        cond = f" [if {shorten(inv.if_)}]" if inv.if_ else ""
        for mark, branch, extra in (("✓", inv.success, cond), ("✗", inv.error, "")):
            if branch is not None:
                label = f"{head} {mark}{guard}{extra}"
                yield Edge(state, branch.state or state, label, "result", branch.name or name)
        return
    head = action if action is not None else "always" + (f": {t.name}" if t.name else "")
    timer = f" {_timer(t.wait_for)}" if t.wait_for is not None else ""
    kind = "timer" if t.wait_for is not None else "action" if action is not None else "always"
    yield Edge(state, t.state or state, f"{head}{timer}{guard}", kind, name)


def edges(machine: Machine, steps: Sequence[Step] | None = None) -> list[Edge]:
    """Every edge of the machine in definition order, marked with the ``steps`` that took it."""
    out: list[Edge] = []
    for sname, st in machine.states.items():
        for t in st.always:
            out.extend(_transition_edges(sname, None, t))
        for aname, t in st.actions.items():
            out.extend(_transition_edges(sname, aname, t))
    for step in steps or ():
        if step.kind not in TAKEN_KINDS or step.from_state is None or step.to_state is None:
            continue
        pair = [e for e in out if (e.src, e.dst) == (step.from_state, step.to_state)]
        same_kind = [e for e in pair if e.kind == step.kind] or pair
        for e in [e for e in same_kind if e.name == step.name] or same_kind:
            e.seqs.append(step.seq)
    return out


def _visited(machine: Machine, steps: Sequence[Step] | None, current: str | None) -> list[str]:
    seen = {s for step in steps or () for s in (step.from_state, step.to_state) if s is not None}
    return [s for s in machine.states if s in seen and s != current]


# --------------------------------------------------------------------------- mermaid


def _mermaid_ids(names: Iterable[str]) -> dict[str, str]:
    """A unique Mermaid-safe id (``\\w+``, not a keyword) for each state name."""
    ids: dict[str, str] = {}
    for name in names:
        base = re.sub(r"\W", "_", name)
        if base.lower().startswith(_MERMAID_KEYWORDS):
            base = f"s_{base}"
        cand, n = base, 2
        while cand in ids.values():
            cand, n = f"{base}_{n}", n + 1
        ids[name] = cand
    return ids


def _mermaid_text(text: str) -> str:
    return "".join(_MERMAID_ESCAPES.get(c, c) for c in " ".join(text.split()))


def to_mermaid(machine: Machine, path: Sequence[Step] | None = None, current: str | None = None) -> str:
    """A Mermaid ``stateDiagram-v2``; ``path``/``current`` highlight an execution (see module doc)."""
    ids = _mermaid_ids(machine.states)
    lines = ["stateDiagram-v2"]
    lines += [f'    state "{name}" as {sid}' for name, sid in ids.items() if name != sid]
    lines.append(f"    [*] --> {ids[machine.start_at]}")
    for e in edges(machine, path):
        lines.append(f"    {ids[e.src]} --> {ids[e.dst]} : {_mermaid_text(e.shown())}")
    lines += [f"    {ids[name]} --> [*]" for name, st in machine.states.items() if st.end]
    lines += [
        f"    note right of {ids[state]} : {_mermaid_text(note)}" for state, note in fanout_notes(machine)
    ]
    visited = _visited(machine, path, current)
    if visited or current in ids:
        lines += [f"    classDef visited {VISITED_STYLE}", f"    classDef current {CURRENT_STYLE}"]
    if visited:
        lines.append(f"    class {','.join(ids[s] for s in visited)} visited")
    if current is not None and current in ids:
        lines.append(f"    class {ids[current]} current")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- dot


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + " ".join(text.split()).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(pairs: dict[str, str]) -> str:
    return " [" + ", ".join(f"{k}={v}" for k, v in pairs.items()) + "]" if pairs else ""


def to_dot(machine: Machine, path: Sequence[Step] | None = None, current: str | None = None) -> str:
    """A Graphviz ``digraph``; ``path``/``current`` highlight an execution (see module doc)."""
    visited = set(_visited(machine, path, current))
    taken = {"color": '"#1c7ed6"', "penwidth": "2.5"}
    lines = [
        f"digraph {_q(f'{machine.id}_v{machine.version}')} {{",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        f'    {_q(_START_NODE)} [shape=point, width=0.15, label=""];',
    ]
    for name, st in machine.states.items():
        attrs: dict[str, str] = {"shape": "doublecircle"} if st.end else {}
        fill = "filled" if st.end else '"rounded,filled"'
        if name == current:
            attrs |= {"style": fill, "fillcolor": '"#ffe066"', "color": '"#f08c00"', "penwidth": "3"}
        elif name in visited:
            attrs |= {"style": fill, "fillcolor": '"#e7f5ff"', "color": '"#1c7ed6"'}
        lines.append(f"    {_q(name)}{_attrs(attrs)};")
    started = any(step.kind == "start" for step in path or ())
    lines.append(f"    {_q(_START_NODE)} -> {_q(machine.start_at)}{_attrs(taken if started else {})};")
    for e in edges(machine, path):
        attrs = {"label": _q(e.shown())} | (taken if e.seqs else {})
        lines.append(f"    {_q(e.src)} -> {_q(e.dst)}{_attrs(attrs)};")
    for i, (state, note) in enumerate(fanout_notes(machine)):
        lines.append(
            f'    {_q(f"[fan-out {i}]")} [shape=note, style=filled, fillcolor="#fff3bf", label={_q(note)}];'
        )
        lines.append(f"    {_q(f'[fan-out {i}]')} -> {_q(state)} [style=dashed, arrowhead=none];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(
    machine: Machine,
    fmt: Format | str = "mermaid",
    steps: Sequence[Step] | None = None,
    current: str | None = None,
) -> str:
    """Draw ``machine`` as ``"mermaid"`` or ``"dot"``, highlighting ``steps`` and ``current`` if given.

    ``fmt`` also takes a plain ``str`` (as a CLI option delivers it); anything but the two
    formats raises ``ValueError``.
    """
    if fmt == "mermaid":
        return to_mermaid(machine, steps, current)
    if fmt == "dot":
        return to_dot(machine, steps, current)
    raise ValueError(f"unknown graph format {fmt!r}; use 'mermaid' or 'dot'")
