"""How the ``statem`` command prints executions, histories and machines as tables.

Every cell built from stored data goes through :func:`plain`: a :class:`rich.text.Text`
holding the characters as they are (no markup, no emoji codes), with control characters
shown escaped, so nothing stored can style, link or move the operator's terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

import yaml
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..errors import DefinitionError
from ..records import Execution, Step, Task

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(value: Any) -> Text:
    """``value`` (a string, or anything ``str()`` turns into one) as a verbatim table cell."""
    text = value if isinstance(value, str) else str(value)
    return Text(_CONTROL.sub(lambda m: repr(m.group())[1:-1], text))


def ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def delta(seconds: float) -> str:
    """A duration, short: ``0.004s``, ``12.5s``, ``3m07s``, ``2h05m``, ``3d04h``."""
    if seconds < 60:
        return f"{seconds:.3f}s" if seconds < 10 else f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def as_yaml(data: Any) -> str:
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
    """The readable history: seq, time (with the date when the steps span more than a
    day), the time since the previous step, kind, name, from -> to, context changes, error."""
    spans_days = bool(steps) and (steps[-1].at - steps[0].at) > dt.timedelta(days=1)
    when = "at (UTC)" if spans_days else "time (UTC)"
    t = Table("#", when, "+Δ", "kind", "name", "from → to", "context changes", "note", title=plain(title))
    ctx: dict[str, Any] | None = None
    previous: dt.datetime | None = None
    for s in steps:
        move = s.to_state or "" if s.from_state in (None, s.to_state) else f"{s.from_state} → {s.to_state}"
        gap = "" if previous is None else "+" + delta(max((s.at - previous).total_seconds(), 0.0))
        t.add_row(
            str(s.seq),
            ts(s.at) if spans_days else ts(s.at)[11:],
            gap,
            s.kind,
            plain(s.name or ""),
            plain(move),
            plain(context_diff(ctx, s.context)),
            plain(step_note(s)),
        )
        if s.context is not None:
            ctx = s.context
        previous = s.at
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
        t.add_row(key, plain(value))
    return t


def pending_table(tasks: Sequence[Task], now: dt.datetime) -> Table:
    """An execution's pending work: what (timer, effect, child), due when, attempts, last error."""
    headers = ("task", "kind", "what", "due (UTC)", "due in", "status", "attempts", "last error")
    t = Table(*headers, title="pending")
    for task in tasks:
        if task.kind == "effect":
            what = f"{task.name or ''} {task.effect or ''}".strip()
        elif task.kind == "child":
            what = f"{task.name or ''} → {task.child_id}" if task.child_id else task.name or ""
        else:
            what = task.name or ""
        left = (task.due_at - now).total_seconds()
        if task.status == "claimed" and task.owner:
            status = f"claimed by {task.owner}"
        else:
            status = task.status
        t.add_row(
            str(task.id),
            task.kind,
            plain(what),
            ts(task.due_at),
            delta(left) if left > 0 else ("now" if left > -1 else f"overdue {delta(-left)}"),
            plain(status),
            str(task.attempts),
            plain(task.last_error or ""),
        )
    return t


def children_table(children: Sequence[Execution]) -> Table:
    """Child executions: id, machine, state, status, error."""
    t = Table("child", "machine", "state", "status", "error", title="children")
    for c in children:
        t.add_row(
            plain(c.id),
            plain(f"{c.machine_id} v{c.machine_version}"),
            plain(c.state),
            c.status,
            plain((c.error or "")[:60]),
        )
    return t


def show_view(
    ex: Execution,
    pending: Sequence[Task],
    children: Sequence[Execution],
    actions: Sequence[str],
    now: dt.datetime,
) -> RenderableType:
    """``statem show``: the execution, then what it waits for and what can move it."""
    parts: list[RenderableType] = [execution_table(ex)]
    if pending:
        parts.append(pending_table(pending, now))
    if children:
        parts.append(children_table(children))
    if ex.done:
        parts.append(Text(f"no actions: the execution is {ex.status}"))
    else:
        listed = ", ".join(actions) + " (guards are checked on trigger)" if actions else "none"
        parts.append(plain(f"actions: {listed}"))
    return Group(*parts)


def definition_error(path: str, exc: DefinitionError) -> str:
    """A definition file's error for ``machines load``: a YAML or JSON syntax error is one
    line ``path:line:column: not valid YAML: problem``; other problems follow ``path: ``."""
    cause = exc.__context__  # the parser's error, which DefinitionError suppresses
    if isinstance(cause, yaml.MarkedYAMLError) and cause.problem_mark is not None:
        mark = cause.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}"
        problem = cause.problem or ""
        if cause.context and cause.context_mark is not None and cause.context_mark.line != mark.line:
            started = cause.context_mark
            problem += f" ({cause.context} that starts at {started.line + 1}:{started.column + 1})"
        elif cause.context:
            problem += f" ({cause.context})"
        return f"{where}: not valid YAML: {problem}"
    if isinstance(cause, yaml.reader.ReaderError):
        return f"{path}: not valid YAML: {str(cause).splitlines()[0]} (character {cause.position})"
    if isinstance(cause, json.JSONDecodeError):
        return f"{path}:{cause.lineno}:{cause.colno}: not valid JSON: {cause.msg}"
    if exc.machine is None and len(exc.problems) == 1 and not exc.problems[0][0]:
        message = exc.problems[0][1]  # a file-level problem: name the file once
        message = message.replace(f" {path}:", ":").removeprefix(f"{path}: ")
        return f"{path}: {message.splitlines()[0] if message else message}"
    return f"{path}: {exc}"
