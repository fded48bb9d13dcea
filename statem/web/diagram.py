"""A machine's diagram as an SVG picture, drawn here (no JavaScript, no network).

States are laid out in columns by their distance from ``start_at`` (a breadth-first
layering, definition order within a column); edges come from :func:`statem.graph.edges`,
one arrow per (from, to) pair with its transitions' names as the label (the full labels
are the arrow's tooltip). Given an execution's history, the arrows it took are drawn
thick and blue, the states it visited blue, its current state yellow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from ..definition import Machine
from ..graph import Edge, edges, shorten
from ..records import Step

NODE_H = 36
ROW_GAP = 34
COL_GAP = 110
MARGIN = 30
CHAR_W = 7.4
LABEL_MAX = 28

STYLE = """
.sm-node rect{fill:#fff;stroke:#495057;stroke-width:1.5}
.sm-node.visited rect{fill:#e7f5ff;stroke:#1c7ed6}
.sm-node.current rect{fill:#ffe066;stroke:#b35c00;stroke-width:3}
.sm-node text{font:13px sans-serif;fill:#212529}
.sm-edge path{fill:none;stroke:#868e96;stroke-width:1.3}
.sm-edge.taken path{stroke:#1c7ed6;stroke-width:3}
.sm-edge text{font:11px sans-serif;fill:#495057;paint-order:stroke;stroke:#fff;stroke-width:4px}
.sm-edge.taken text{fill:#1864ab;font-weight:bold}
.sm-start{fill:#212529}
"""


@dataclass
class Box:
    """A state's place in the picture."""

    name: str
    col: int
    x: float
    y: float
    w: float
    end: bool

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + NODE_H / 2


def layers(machine: Machine, es: Sequence[Edge]) -> list[list[str]]:
    """States in columns by breadth-first distance from ``start_at``; unreached ones last."""
    out_edges: dict[str, list[str]] = {}
    for e in es:
        out_edges.setdefault(e.src, []).append(e.dst)
    col = {machine.start_at: 0}
    queue = [machine.start_at]
    while queue:
        state = queue.pop(0)
        for dst in out_edges.get(state, []):
            if dst not in col:
                col[dst] = col[state] + 1
                queue.append(dst)
    last = max(col.values(), default=0)
    for name in machine.states:
        col.setdefault(name, last + 1)
    columns: list[list[str]] = [[] for _ in range(max(col.values()) + 1)]
    for name in machine.states:
        columns[col[name]].append(name)
    return [c for c in columns if c]


def place(machine: Machine, columns: list[list[str]]) -> tuple[dict[str, Box], float, float]:
    """Boxes for every state, and the picture's width and height."""
    tallest = max(len(c) for c in columns)
    height = MARGIN * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP + 60
    boxes: dict[str, Box] = {}
    x = MARGIN + 24.0
    for i, names in enumerate(columns):
        widths = [max(80.0, CHAR_W * len(n) + 26) for n in names]
        colw = max(widths)
        used = len(names) * NODE_H + (len(names) - 1) * ROW_GAP
        y = MARGIN + 20 + (tallest * NODE_H + (tallest - 1) * ROW_GAP - used) / 2
        for name, w in zip(names, widths, strict=True):
            boxes[name] = Box(name, i, x + (colw - w) / 2, y, w, machine.states[name].end)
            y += NODE_H + ROW_GAP
        x += colw + COL_GAP
    return boxes, x - COL_GAP + MARGIN, height


def _mid(
    p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], p3: tuple[float, float]
) -> tuple[float, float]:
    return ((p0[0] + 3 * p1[0] + 3 * p2[0] + p3[0]) / 8, (p0[1] + 3 * p1[1] + 3 * p2[1] + p3[1]) / 8)


def _path(a: Box, b: Box, bend: int) -> tuple[str, tuple[float, float]]:
    """An SVG path from box ``a`` to box ``b`` and where its label goes."""
    if a.name == b.name:
        x, top = a.cx, a.y
        d = (
            f"M{x - 12:.1f},{top:.1f} C{x - 34:.1f},{top - 42:.1f} "
            f"{x + 34:.1f},{top - 42:.1f} {x + 12:.1f},{top:.1f}"
        )
        return d, (x, top - 36)
    if b.col > a.col:
        p0, p3 = (a.x + a.w, a.cy), (b.x, b.cy)
        dx = (p3[0] - p0[0]) / 2
        p1, p2 = (p0[0] + dx, p0[1]), (p3[0] - dx, p3[1])
    elif b.col == a.col:  # within a column: bulge out to the right
        p0, p3 = (a.x + a.w, a.cy), (b.x + b.w, b.cy)
        reach = max(p0[0], p3[0]) + 40 + 10 * bend
        p1, p2 = (reach, p0[1]), (reach, p3[1])
    else:  # backwards: loop under the boxes
        drop = 46 + 16 * bend
        p0, p3 = (a.cx, a.y + NODE_H), (b.cx, b.y + NODE_H)
        p1, p2 = (p0[0], p0[1] + drop), (p3[0], p3[1] + drop)
    d = f"M{p0[0]:.1f},{p0[1]:.1f} C{p1[0]:.1f},{p1[1]:.1f} {p2[0]:.1f},{p2[1]:.1f} {p3[0]:.1f},{p3[1]:.1f}"
    return d, _mid(p0, p1, p2, p3)


def render_svg(machine: Machine, steps: Sequence[Step] | None = None, current: str | None = None) -> str:
    """The machine as a standalone SVG document, an execution's path highlighted if given."""
    es = edges(machine, steps)
    boxes, width, height = place(machine, layers(machine, es))
    visited = {s for step in steps or () for s in (step.from_state, step.to_state) if s is not None}
    pairs: dict[tuple[str, str], list[Edge]] = {}
    for e in es:
        pairs.setdefault((e.src, e.dst), []).append(e)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sm-diagram" role="img" '
        f'aria-labelledby="sm-title sm-desc" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}">',
        f'<title id="sm-title">Diagram of machine {escape(machine.id)} version {machine.version}</title>',
        f'<desc id="sm-desc">{escape(describe(machine, steps, current))}</desc>',
        f"<style>{STYLE}</style>",
        "<defs>" + _marker("sm-arrow", "#495057", 10) + _marker("sm-arrow-taken", "#1c7ed6", 11) + "</defs>",
    ]
    start = boxes[machine.start_at]
    out.append(f'<circle class="sm-start" cx="{start.x - 20:.1f}" cy="{start.cy:.1f}" r="6"/>')
    out.append(
        f'<path d="M{start.x - 14:.1f},{start.cy:.1f} L{start.x - 1:.1f},{start.cy:.1f}" '
        f'stroke="#212529" stroke-width="1.5" marker-end="url(#sm-arrow)"/>'
    )
    back = 0
    for (src, dst), group in pairs.items():
        a, b = boxes[src], boxes[dst]
        taken = any(e.seqs for e in group)
        if b.col <= a.col and src != dst:
            back += 1
        d, (lx, ly) = _path(a, b, back)
        names = sorted({e.name or e.kind for e in group}, key=[e.name or e.kind for e in group].index)
        label = shorten(", ".join(names), LABEL_MAX)
        tip = "; ".join(e.shown() for e in group)
        cls = "sm-edge taken" if taken else "sm-edge"
        marker = "sm-arrow-taken" if taken else "sm-arrow"
        out.append(
            f'<g class="{cls}" data-from="{escape(src)}" data-to="{escape(dst)}"><title>{escape(tip)}</title>'
            f'<path d="{d}" marker-end="url(#{marker})"/>'
            f'<text x="{lx:.1f}" y="{ly - 4:.1f}" text-anchor="middle">{escape(label)}</text></g>'
        )
    for name, box in boxes.items():
        cls = "sm-node current" if name == current else "sm-node visited" if name in visited else "sm-node"
        rx = NODE_H / 2 if box.end else 8
        inner = (
            f'<rect x="{box.x + 3:.1f}" y="{box.y + 3:.1f}" width="{box.w - 6:.1f}" height="{NODE_H - 6}" '
            f'rx="{rx - 3:.1f}"/>'
            if box.end
            else ""
        )
        out.append(
            f'<g class="{cls}" data-state="{escape(name)}"><title>{escape(name)}</title>'
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" '
            f'height="{NODE_H}" rx="{rx:.1f}"/>{inner}'
            f'<text x="{box.cx:.1f}" y="{box.cy + 4.5:.1f}" text-anchor="middle">{escape(name)}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _marker(mid: str, colour: str, size: int) -> str:
    return (
        f'<marker id="{mid}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="{size}" '
        f'markerHeight="{size}" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
        f'<path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
    )


def describe(machine: Machine, steps: Sequence[Step] | None, current: str | None) -> str:
    """The picture in words, for screen readers: the states, the path taken, where it is."""
    text = f"States: {', '.join(machine.states)}. Starts at {machine.start_at}."
    path = [s.to_state for s in steps or () if s.to_state is not None]
    trail: list[str] = []
    for state in path:
        if not trail or trail[-1] != state:
            trail.append(state)
    if trail:
        text += f" Path taken: {' → '.join(trail)}."
    if current is not None:
        text += f" Current state: {current}."
    return text
