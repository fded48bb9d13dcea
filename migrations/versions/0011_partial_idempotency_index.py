"""The idempotency keys' unique index holds only the steps that have one.

``statem_steps (execution_id, idempotency_key)`` indexed every history row, although only
the first row of a ``trigger()`` given a key has one: every other step (timers, effect
results, always-chains, triggers without a key) inserted an index entry for a NULL key,
one of the four writes of each history row (its table row, the primary key, ``at``, and
this). Partial on ``idempotency_key IS NOT NULL``, it is as small as the keyed triggers,
and a step without a key writes three. Measured on SQLite, one history row per
transaction: 27-31 µs instead of 30-42.

The lookup (``execution_id = :id AND idempotency_key = :key``) implies the condition on
both databases (an equality on the column proves it is not NULL), so it reads the new
index; uniqueness is unchanged (NULL keys never collided).

On PostgreSQL the new index is built ``CONCURRENTLY`` before the old one is dropped the
same way (outside the migration's transaction): a history table of ten million rows keeps
taking writes while it builds. A concurrent build that fails leaves an INVALID index
behind: this revision drops any such leftover before it builds.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OLD = "ix_statem_steps_execution_id_idempotency_key"
NEW = "ix_statem_steps_idempotency_key"
KEYED = "idempotency_key IS NOT NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(
            NEW, "statem_steps", ["execution_id", "idempotency_key"], unique=True, sqlite_where=sa.text(KEYED)
        )
        op.drop_index(OLD, table_name="statem_steps")
        return
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NEW}")  # a failed build's leftover
        op.create_index(
            NEW,
            "statem_steps",
            ["execution_id", "idempotency_key"],
            unique=True,
            postgresql_where=sa.text(KEYED),
            postgresql_concurrently=True,
        )
        op.drop_index(OLD, table_name="statem_steps", postgresql_concurrently=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(OLD, "statem_steps", ["execution_id", "idempotency_key"], unique=True)
        op.drop_index(NEW, table_name="statem_steps")
        return
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {OLD}")
        op.create_index(
            OLD,
            "statem_steps",
            ["execution_id", "idempotency_key"],
            unique=True,
            postgresql_concurrently=True,
        )
        op.drop_index(NEW, table_name="statem_steps", postgresql_concurrently=True)
