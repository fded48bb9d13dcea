"""Effect tasks name their effect in a column, so a worker claims only what it can run.

``statem_tasks.effect`` holds the effect name of an ``effect`` task (NULL for timers,
children and results). A worker's claim takes an effect task only when it has that
effect registered; a task nobody running can take waits, and ``stats()`` names it.
Existing effect tasks get the name from their payload.

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None

_FROM_PAYLOAD = {
    "sqlite": "json_extract(payload, '$.effect')",
    "postgresql": "(payload ->> 'effect')",
}


def upgrade() -> None:
    # a plain ADD COLUMN (no table copy): the admin views over statem_tasks stay as they are
    op.add_column(
        "statem_tasks",
        sa.Column(
            "effect", sa.String(200), nullable=True, comment="an effect task's effect: who may claim it"
        ),
    )
    dialect = op.get_bind().dialect.name
    op.execute(f"UPDATE statem_tasks SET effect = {_FROM_PAYLOAD[dialect]} WHERE kind = 'effect'")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("PRAGMA legacy_alter_table=ON")  # keep the admin views through the copy
        with op.batch_alter_table("statem_tasks", table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.drop_column("effect")
        op.execute("PRAGMA legacy_alter_table=OFF")
    else:
        op.drop_column("statem_tasks", "effect")
