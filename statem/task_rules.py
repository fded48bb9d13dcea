"""How a claimed task becomes a step: the rules built from task payloads, and what the
executor records and reports around them (late results, abandoned tasks, committed steps).

Pure helpers of :mod:`statem.executor`, kept apart so the executor holds only the
running of tasks.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row

from . import semantics, store
from .definition import CompiledMachine
from .errors import LimitExceeded, StatemError
from .expressions import JSON
from .limits import clean_text
from .semantics import Outcome, Snapshot, StepRecord
from .settings import MAX_CHILD_DEPTH
from .steps import Armed
from .telemetry import Metrics

log = logging.getLogger("statem.executor")

#: A step's rule: (machine, execution snapshot, now) -> outcome.
Rule = Callable[[CompiledMachine, Snapshot, dt.datetime], Outcome]
#: An effect's (ok, output), recorded if it arrives too late to be applied.
Late = tuple[bool, JSON] | None


@dataclass(frozen=True)
class Done:
    """A step written inside a transaction: the row it locked, its outcome, what failed
    the execution (if anything), and what it armed. Reported once the transaction commits."""

    row: Row[Any]
    outcome: Outcome
    failure: Exception | None
    armed: Armed


#: A rule built from a task's payload (as claimed, or as stored when the step commits: an
#: upgrade may have re-pointed it at the execution's new version in between).
PayloadRule = Callable[[dict[str, Any]], Rule]


@dataclass(frozen=True)
class Item:
    """A claimed task and the step it makes, for a batch (:mod:`statem.batch`): a due
    timer, or an effect's result with what :meth:`Executor._step` takes along (``result``
    kept if the execution is paused, ``late`` recorded if the claim was lost)."""

    task: Row[Any]
    kind: str
    rule_for: PayloadRule
    result: dict[str, Any] | None = None
    late: Late = None


def report(
    metrics: Metrics,
    task: Row[Any],
    row: Row[Any],
    kind: str,
    outcome: Outcome,
    failure: Exception | None,
    level: int = logging.INFO,
) -> None:
    """Report a committed step: the execution's failure if it failed (WARNING), then the
    step (at ``level``: DEBUG for a step of a batch, which logs one INFO line of its own)."""
    if failure is not None:
        metrics.task("failed")
        log.warning(
            "execution %s failed in %s step: %s",
            row.id,
            kind,
            failure,
            extra={"execution_id": row.id, "machine": row.machine_id, "step": kind},
        )
    log.log(
        level,
        "execution %s: %s task %s -> state %s (%s)",
        task.execution_id,
        task.kind,
        task.id,
        outcome.state,
        outcome.status,
        extra={"execution_id": task.execution_id, "task_id": task.id, "step": task.kind},
    )


def timer_rule(task: Row[Any], env: dict[str, Any]) -> PayloadRule:
    """A due timer's rule, built from its payload (as claimed, or as stored at commit)."""
    return lambda payload: lambda cm, s, now: semantics.fire_timer(cm, s, payload, env, now, task_id=task.id)


def result_rule(task: Row[Any], ok: bool, output: JSON, env: dict[str, Any]) -> PayloadRule:
    """An effect result's rule, built from the effect task's payload."""
    return lambda payload: (
        lambda cm, s, now: semantics.apply_result(cm, s, payload, ok, output, env, now, task_id=task.id)
    )


def error_of(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


class TaskAbandoned(StatemError):
    """A task was claimed more often than its bound and never finished: the workers
    running it died (an effect calling ``os._exit``, a step exhausting memory) or lost
    their lease each time."""


def used_up(task: Row[Any], bound: int) -> TaskAbandoned:
    earlier = f"; an earlier attempt failed with: {task.last_error}" if task.last_error else ""
    return TaskAbandoned(
        f"effect {task.payload.get('effect')!r} used all {bound} of its max_attempts and the last never "
        f"finished: the worker died (or lost its lease) running this effect{earlier}"
    )


def late_record(task: Row[Any], state: str, ok: bool, output: JSON) -> StepRecord:
    """The history row of an effect result that came too late to be applied."""
    what: dict[str, Any] = {"task": "effect", "effect": task.payload.get("effect"), "late": True}
    what["output" if ok else "error"] = output
    why = "late result: its task was discarded (a later step won, or the execution ended) or taken over"
    if not ok and isinstance(output, dict):
        why += f"; the effect failed: {output.get('type')}: {output.get('message')}"
    return StepRecord("discard", task.payload.get("name"), state, state, output=what, error=clean_text(why))


def check_depth(conn: Connection, parent: Row[Any]) -> None:
    """LimitExceeded if a child of ``parent`` would be deeper than MAX_CHILD_DEPTH."""
    depth = store.depth(conn, parent.id, MAX_CHILD_DEPTH) + 1
    if depth > MAX_CHILD_DEPTH:
        raise LimitExceeded(
            f"child depth limit: a child of {parent.id!r} would be at depth {depth}, "
            f"past the limit of {MAX_CHILD_DEPTH} (does machine {parent.machine_id!r} invoke itself?)",
            what="child depth",
            limit=MAX_CHILD_DEPTH,
        )
