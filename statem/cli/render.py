"""How the ``statem`` command prints executions, histories and machines as tables."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from ..records import Execution, Step


def ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def as_yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip()


def short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def context_diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """What changed between two contexts, one ``+key``/``-key``/``~key`` line each."""
    if after is None:
        return ""
    before = before or {}
    lines = []
    for key in sorted(set(before) | set(after)):
        if key not in after:
            lines.append(f"-{key}")
        elif key not in before:
            lines.append(f"+{key} = {short(after[key])}")
        elif before[key] != after[key]:
            lines.append(f"~{key} = {short(after[key])}")
    return "\n".join(lines)


def history_table(steps: Sequence[Step], title: str = "") -> Table:
    """The readable history: seq, time, kind, name, from -> to, context changes, error."""
    t = Table("#", "at (UTC)", "kind", "name", "from → to", "context changes", "note", title=title)
    ctx: dict[str, Any] | None = None
    for s in steps:
        move = s.to_state or "" if s.from_state in (None, s.to_state) else f"{s.from_state} → {s.to_state}"
        t.add_row(
            str(s.seq),
            ts(s.at)[11:],
            s.kind,
            s.name or "",
            move,
            context_diff(ctx, s.context),
            step_note(s),
        )
        if s.context is not None:
            ctx = s.context
    return t


def step_note(s: Step) -> str:
    """The one thing worth knowing about a step beyond its move and context change."""
    out = s.output if isinstance(s.output, dict) else {}
    if s.error:
        return s.error
    if s.kind == "invoke":
        return f"{out.get('invoke')} {short(out.get('input'), 50)}"
    if s.kind == "wait":
        return f"timer due {out.get('due_at', '')} → {out.get('target', '')}"
    if s.kind == "result" and isinstance(s.output, dict) and "status" in s.output:
        return f"HTTP {s.output['status']}"
    if s.kind == "result":
        return short(s.output, 50)
    return ""


def execution_table(ex: Execution) -> Table:
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for key, value in (
        ("execution", ex.id),
        ("machine", f"{ex.machine_id} v{ex.machine_version}"),
        ("state", ex.state),
        ("status", ex.status),
        ("context", json.dumps(ex.context)),
        ("output", json.dumps(ex.output)),
        ("error", ex.error or ""),
        ("parent", ex.parent_id or ""),
        ("updated", ts(ex.updated_at)),
    ):
        t.add_row(key, value)
    return t
