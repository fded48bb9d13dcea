"""Indexes for a million executions: newest first, unfinished by idleness, work by due time.

* ``statem_executions (created_at)``: ``statem list`` / ``Engine.executions()`` order
  newest first; without it every page sorted the whole table.
* ``statem_executions (updated_at, machine_id, machine_version, state, status) WHERE
  status NOT IN ('finished', 'canceled')``: the unfinished executions, longest idle first
  (``statem_active``, stuck-execution checks), without reading the finished majority;
  it also carries every column ``statem_counts`` groups by, so counting the live
  executions per machine and state reads this index only. Partial, so it stays as small
  as the live set.
* ``statem_tasks (due_at)``: the pending work soonest first (``statem_pending_work``)
  across every task status; the claim keeps using ``(status, due_at)``.
* PostgreSQL only: extended statistics on ``statem_tasks (kind, status)``, from which
  ``stats()`` estimates the tasks by kind and status on a big table (Alembic does not
  compare statistics objects, so ``schema.py`` does not list it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UNFINISHED = "status NOT IN ('finished', 'canceled')"
TASK_STATISTICS = "statem_tasks_kind_status"


def upgrade() -> None:
    op.create_index("ix_statem_executions_created_at", "statem_executions", ["created_at"])
    op.create_index(
        "ix_statem_executions_unfinished",
        "statem_executions",
        ["updated_at", "machine_id", "machine_version", "state", "status"],
        postgresql_where=sa.text(UNFINISHED),
        sqlite_where=sa.text(UNFINISHED),
    )
    op.create_index("ix_statem_tasks_due_at", "statem_tasks", ["due_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE STATISTICS {TASK_STATISTICS} (mcv) ON kind, status FROM statem_tasks")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP STATISTICS IF EXISTS {TASK_STATISTICS}")
    op.drop_index("ix_statem_tasks_due_at", table_name="statem_tasks")
    op.drop_index(
        "ix_statem_executions_unfinished",
        table_name="statem_executions",
    )
    op.drop_index("ix_statem_executions_created_at", table_name="statem_executions")
