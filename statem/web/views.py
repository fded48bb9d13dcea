"""What the console's pages show, computed from records: readable JSON, context diffs,
relative times, which operator buttons apply."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from ..records import Execution, Step

FINAL = ("finished", "canceled")
MISSING = object()


def pretty(value: Any) -> str:
    """JSON, indented, keys in their stored order."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def compact(value: Any, limit: int = 120) -> str:
    """JSON on one line, cut to ``limit`` characters."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Change:
    """One difference between two contexts: ``op`` is ``+`` added, ``-`` removed, ``~`` changed."""

    op: str
    path: str
    old: str
    new: str


def diff(before: Any, after: Any, path: str = "") -> list[Change]:
    """What changed from ``before`` to ``after``, into nested mappings, by dotted path."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[Change] = []
        for key in list(after) + [k for k in before if k not in after]:
            sub = f"{path}.{key}" if path else str(key)
            old, new = before.get(key, MISSING), after.get(key, MISSING)
            if old is MISSING:
                out.append(Change("+", sub, "", compact(new)))
            elif new is MISSING:
                out.append(Change("-", sub, compact(old), ""))
            elif old != new:
                out.extend(diff(old, new, sub))
        return out
    if before == after:
        return []
    return [Change("~", path or "(context)", compact(before), compact(after))]


@dataclass(frozen=True)
class StepView:
    """A history row as the timeline shows it."""

    step: Step
    changes: list[Change]


def timeline(steps: list[Step]) -> list[StepView]:
    """Each step with its context diff from the step before (the first from an empty context)."""
    out: list[StepView] = []
    previous: dict[str, Any] = {}
    for step in steps:
        changes = diff(previous, step.context) if step.context is not None else []
        out.append(StepView(step, changes))
        if step.context is not None:
            previous = step.context
    return out


def ago(when: dt.datetime | None, now: dt.datetime) -> str:
    """``3m ago`` / ``in 5s``: a short relative time."""
    if when is None:
        return ""
    seconds = (now - when).total_seconds()
    future = seconds < 0
    s = abs(seconds)
    if s < 60:
        text = f"{s:.0f}s"
    elif s < 3600:
        text = f"{s / 60:.0f}m"
    elif s < 86400:
        text = f"{s / 3600:.1f}h"
    else:
        text = f"{s / 86400:.1f}d"
    return f"in {text}" if future else f"{text} ago"


def operations(ex: Execution) -> list[str]:
    """The operator operations that apply to the execution now."""
    ops: list[str] = []
    if ex.status in ("running", "waiting"):
        ops.append("pause")
    if ex.status == "paused":
        ops.append("resume")
    if ex.status == "failed":
        ops.append("retry")
    if ex.status not in FINAL:
        ops.append("cancel")
    return ops


AGES = {"": "any age", "15m": "idle 15 min+", "1h": "idle 1 hour+", "1d": "idle 1 day+", "7d": "idle 7 days+"}
STATUSES = ("running", "waiting", "paused", "failed", "finished", "canceled")
