"""What the API returns: immutable views of an execution, a step and a saved machine."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row

from .expressions import JSON


@dataclass(frozen=True)
class Execution:
    """An execution as stored: where it is, what it holds, how it ended."""

    id: str
    machine_id: str
    machine_version: int
    state: str
    status: str
    context: dict[str, Any]
    input: JSON
    output: JSON
    error: str | None
    parent_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    #: True when ``start``/``trigger`` applied nothing because the request repeated one
    #: already applied (same execution id, or same idempotency key); not compared by ``==``
    replayed: bool = field(default=False, compare=False)

    @property
    def done(self) -> bool:
        """True once the execution is finished, failed or canceled."""
        return self.status in ("finished", "failed", "canceled")

    @classmethod
    def from_row(cls, row: Row[Any], *, replayed: bool = False) -> Execution:
        """Build from a ``statem_executions`` row."""
        m = row._mapping
        return cls(
            id=m["id"],
            machine_id=m["machine_id"],
            machine_version=m["machine_version"],
            state=m["state"],
            status=m["status"],
            context=m["context"],
            input=m["input"],
            output=m["output"],
            error=m["error"],
            parent_id=m["parent_id"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            replayed=replayed,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (timestamps as ISO strings)."""
        data = self.__dict__.copy()
        data["created_at"] = self.created_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        return data


@dataclass(frozen=True)
class Step:
    """One row of an execution's history."""

    seq: int
    at: dt.datetime
    kind: str
    name: str | None
    from_state: str | None
    to_state: str | None
    input: JSON
    output: JSON
    context: dict[str, Any] | None
    error: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Step:
        """Build from a ``statem_steps`` row."""
        m = row._mapping
        return cls(
            seq=m["seq"],
            at=m["at"],
            kind=m["kind"],
            name=m["name"],
            from_state=m["from_state"],
            to_state=m["to_state"],
            input=m["input"],
            output=m["output"],
            context=m["context"],
            error=m["error"],
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (timestamp as an ISO string)."""
        data = self.__dict__.copy()
        data["at"] = self.at.isoformat()
        return data


@dataclass(frozen=True)
class MachineInfo:
    """A saved machine version, as listed."""

    id: str
    version: int
    content_hash: str
    created_at: dt.datetime
    states: int


@dataclass(frozen=True)
class Task:
    """One piece of an execution's pending work: an armed timer, an effect call, a child
    execution being started or awaited, or a child's result waiting to be applied."""

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
    #: a fan-out's progress (``12/30 done, 1 failed, 5 running``) on its ``fanout`` task
    progress: str | None = None

    @classmethod
    def from_row(cls, row: Row[Any], progress: str | None = None) -> Task:
        """Build from a ``statem_tasks`` row (and a fan-out's progress)."""
        m = row._mapping
        payload = m["payload"] or {}
        return cls(
            id=m["id"],
            execution_id=m["execution_id"],
            kind=m["kind"],
            status=m["status"],
            name=payload.get("name"),
            due_at=m["due_at"],
            attempts=m["attempts"],
            effect=payload.get("effect"),
            child_id=m["child_id"],
            owner=m["owner"],
            lease_expires_at=m["lease_expires_at"],
            last_error=m["last_error"],
            created_at=m["created_at"],
            progress=progress,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (timestamps as ISO strings)."""
        data = self.__dict__.copy()
        for key in ("due_at", "lease_expires_at", "created_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data
