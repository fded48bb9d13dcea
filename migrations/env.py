"""Alembic environment for statem: runs on SQLite and PostgreSQL alike.

Used both by the ``alembic`` command in a checkout and by ``statem.migrate`` (which
hands over an open connection in ``config.attributes["connection"]``).
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from statem.schema import VERSION_TABLE, metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    return os.environ.get("STATEM_DATABASE_URL") or config.get_main_option("sqlalchemy.url") or ""


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
