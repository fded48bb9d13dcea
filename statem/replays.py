"""Idempotent replays: when a repeated ``start`` or ``trigger`` is the same request.

An execution id (in ``start``) and an idempotency key (in ``trigger``) each name one
request, as in the IETF Idempotency-Key draft: repeating the request returns the
execution as it is now (``replayed=True``) and applies nothing; reusing the id or key for
a different request raises :class:`~statem.errors.IdempotencyConflict` naming what
differs, and applies nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from .definition import CompiledMachine
from .errors import IdempotencyConflict
from .expressions import JSON
from .records import Execution


def replayed_start(row: Row[Any], machine_id: str, version: int | None, data: JSON) -> Execution:
    """The existing execution a repeated start names, if the request is the same one."""
    differences: dict[str, tuple[object, object]] = {}
    if row.machine_id != machine_id:
        differences["machine"] = (row.machine_id, machine_id)
    if version is not None and row.machine_version != version:
        differences["version"] = (row.machine_version, version)
    if row.input != data:
        differences["input"] = (row.input, data)
    if differences:
        raise IdempotencyConflict(row.id, None, differences)
    return Execution.from_row(row, replayed=True)


def same_trigger(
    cm: CompiledMachine, first: Row[Any], execution_id: str, key: str, action: str, data: JSON
) -> None:
    """Raise IdempotencyConflict unless the step ``key`` applied was this action with this input.

    The step's history row holds the action's step name (the transition's ``name``, else
    the action's) and the input; the action is recognised by its step name in the state
    the step left.
    """
    differences: dict[str, tuple[object, object]] = {}
    state = cm.machine.states.get(first.from_state or "")
    t = state.actions.get(action) if state is not None else None
    if t is None or (t.name or action) != first.name:
        differences["action"] = (first.name, action)
    if first.input != data:
        differences["input"] = (first.input, data)
    if differences:
        raise IdempotencyConflict(execution_id, key, differences)
