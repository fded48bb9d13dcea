"""The API's request and response bodies, as pydantic models (they make the OpenAPI document).

Responses are built from statem's records by the ``*_json`` helpers here and returned as
JSON directly; the models describe them, and the tests validate real responses against
them, so the OpenAPI document stays accurate.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ..errors import InputError
from ..records import Execution, MachineInfo, Step, Task


class StartRequest(BaseModel):
    """Start an execution of a machine."""

    model_config = ConfigDict(extra="forbid")

    machine: str = Field(min_length=1, max_length=200, description="The machine id.")
    version: StrictInt | None = Field(default=None, gt=0, description="Default: the latest version.")
    input: Any = Field(default=None, description="Any JSON value; what expressions see as `input`.")
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="An execution id: makes the start idempotent (200 with the existing execution).",
    )


class ReasonRequest(BaseModel):
    """An operator's reason, recorded in the history step."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=10_000)


class MoveRequest(BaseModel):
    """Put an execution in a state (an operator override)."""

    model_config = ConfigDict(extra="forbid")

    state: str = Field(min_length=1, max_length=200)
    context: dict[str, Any] | None = Field(default=None, description="JSON values merged into the context.")
    reason: str | None = Field(default=None, max_length=10_000)


class ExecutionOut(BaseModel):
    """An execution as stored."""

    id: str
    machine_id: str
    machine_version: int
    state: str
    status: str = Field(description="running | waiting | paused | finished | failed | canceled")
    context: dict[str, Any]
    input: Any
    output: Any
    error: str | None
    parent_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ExecutionPage(BaseModel):
    """One page of executions, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[ExecutionOut]
    next_cursor: str | None


class StepOut(BaseModel):
    """One step of an execution's history."""

    seq: int
    at: dt.datetime
    kind: str
    name: str | None
    from_state: str | None
    to_state: str | None
    input: Any
    output: Any
    context: dict[str, Any] | None
    error: str | None


class TaskOut(BaseModel):
    """One piece of pending work: a timer, an effect call, a child execution, a child's result."""

    id: int
    execution_id: str
    kind: str
    status: str
    name: str | None
    due_at: dt.datetime
    attempts: int
    effect: str | None
    child_id: str | None
    owner: str | None
    lease_expires_at: dt.datetime | None
    last_error: str | None
    created_at: dt.datetime


class MachineVersionOut(BaseModel):
    """A saved machine version, as listed."""

    id: str
    version: int
    content_hash: str
    created_at: dt.datetime
    states: int


class MachineOut(BaseModel):
    """A saved machine version with its definition (after validation and alias normalisation)."""

    id: str
    version: int
    definition: dict[str, Any]
    versions: list[int] = Field(description="Every saved version of this machine id.")


class Health(BaseModel):
    """Up or down; nothing more."""

    status: str = Field(description="ok | down")


def execution_json(ex: Execution) -> dict[str, Any]:
    """An Execution as the API returns it."""
    return ex.to_json()


def step_json(step: Step) -> dict[str, Any]:
    """A Step as the API returns it."""
    return step.to_json()


def task_json(task: Task) -> dict[str, Any]:
    """A Task as the API returns it."""
    return task.to_json()


def machine_version_json(info: MachineInfo) -> dict[str, Any]:
    """A MachineInfo as the API returns it."""
    return {
        "id": info.id,
        "version": info.version,
        "content_hash": info.content_hash,
        "created_at": info.created_at.isoformat(),
        "states": info.states,
    }


def encode_cursor(ex: Execution) -> str:
    """The opaque cursor that continues a page after ``ex``."""
    raw = json.dumps([ex.created_at.isoformat(), ex.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """The ``(created_at, id)`` a cursor names; InputError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, eid = json.loads(raw)
        when = dt.datetime.fromisoformat(created)
        if not isinstance(eid, str) or when.tzinfo is None:
            raise ValueError("not a cursor")
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InputError(f"cursor {cursor[:60]!r} is not a cursor this API returned") from None
    return when, eid


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> dt.timedelta:
    """``15m``, ``2h``, ``7d``, ``30s`` (or plain seconds) as a timedelta; InputError otherwise."""
    value = text.strip()
    unit = value[-1:].lower()
    number = value[:-1] if unit in DURATION_UNITS else value
    try:
        seconds = float(number) * DURATION_UNITS.get(unit, 1)
    except ValueError:
        seconds = -1.0
    if not (0 <= seconds < 1e9):
        raise InputError(f"older_than {text!r}: use a number with s, m, h or d (e.g. 15m)")
    return dt.timedelta(seconds=seconds)
