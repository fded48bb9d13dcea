"""The SQL of saved definitions: machines and HTTP services, each versioned.

Kept apart from :mod:`statem.store` (the step protocol's hot path): these statements run
when a definition is saved, listed or first compiled, never per step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, Table, bindparam, func, insert, select

from .schema import machines, services

# --------------------------------------------------------------------------- machines


def get_machine(conn: Connection, machine_id: str, version: int) -> Row[Any] | None:
    """The machine row for (id, version); :func:`latest_version` finds the latest."""
    return conn.execute(
        select(machines).where(machines.c.machine_id == machine_id, machines.c.version == version)
    ).first()


_LATEST_VERSION = select(func.max(machines.c.version)).where(machines.c.machine_id == bindparam("p_id"))


def latest_version(conn: Connection, machine_id: str) -> int | None:
    """The highest saved version of a machine (its number only), or None."""
    version: int | None = conn.execute(_LATEST_VERSION, {"p_id": machine_id}).scalar()
    return version


def save_definition(
    conn: Connection,
    table: Table,
    key: str,
    version: int,
    definition: dict[str, Any],
    content_hash: str,
    now: dt.datetime,
) -> bool:
    """Store version ``version`` of the machine or service (``table``) ``key``, unless it is
    saved already: True when it is stored now or was saved with the same content, False
    when different content is saved under it (saved versions are immutable)."""
    key_column = table.primary_key.columns.values()[0]
    row = conn.execute(
        select(table.c.content_hash).where(key_column == key, table.c.version == version)
    ).first()
    if row is not None:
        return bool(row.content_hash == content_hash)
    conn.execute(
        insert(table).values(
            {
                key_column.name: key,
                "version": version,
                "definition": definition,
                "content_hash": content_hash,
                "created_at": now,
            }
        )
    )
    return True


def list_machines(conn: Connection) -> Sequence[Row[Any]]:
    """Every saved machine version, by id then version."""
    return conn.execute(select(machines).order_by(machines.c.machine_id, machines.c.version)).all()


# --------------------------------------------------------------------------- services


def get_service(conn: Connection, service_id: str, version: int) -> Row[Any] | None:
    """The service row for (id, version)."""
    return conn.execute(
        select(services).where(services.c.service_id == service_id, services.c.version == version)
    ).first()


def latest_service_version(
    conn: Connection, service_id: str, saved_by: dt.datetime | None = None
) -> int | None:
    """The highest saved version of a service (saved at or before ``saved_by``), or None."""
    query = select(func.max(services.c.version)).where(services.c.service_id == service_id)
    if saved_by is not None:
        query = query.where(services.c.created_at <= saved_by)
    version: int | None = conn.execute(query).scalar()
    return version


def list_services(conn: Connection) -> Sequence[Row[Any]]:
    """Every saved service version, by id then version."""
    return conn.execute(select(services).order_by(services.c.service_id, services.c.version)).all()
