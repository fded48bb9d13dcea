"""Initial schema: machines, executions, steps (history) and tasks (pending work).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from statem.schema import BigID, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(200)


def upgrade() -> None:
    op.create_table(
        "statem_machines",
        sa.Column("machine_id", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("machine_id", "version", name="pk_statem_machines"),
    )
    op.create_table(
        "statem_executions",
        sa.Column("id", ID, nullable=False),
        sa.Column("machine_id", ID, nullable=False),
        sa.Column("machine_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("parent_id", ID, nullable=True),
        sa.Column("parent_task_id", BigID, nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False, comment="seq of the last history step"),
        sa.Column("version", sa.Integer(), nullable=False, comment="optimistic lock, +1 per write"),
        sa.Column(
            "armed", sa.Boolean(), nullable=False, comment="may have tasks: false only when none can exist"
        ),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id", "machine_version"],
            ["statem_machines.machine_id", "statem_machines.version"],
            name="fk_statem_executions_machine_id_statem_machines",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_statem_executions"),
    )
    op.create_index("ix_statem_executions_machine_id_status", "statem_executions", ["machine_id", "status"])
    op.create_index("ix_statem_executions_status_updated_at", "statem_executions", ["status", "updated_at"])
    op.create_index("ix_statem_executions_state", "statem_executions", ["state"])
    op.create_index("ix_statem_executions_parent_id", "statem_executions", ["parent_id"])
    op.create_table(
        "statem_steps",
        sa.Column("execution_id", ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("from_state", sa.String(200), nullable=True),
        sa.Column("to_state", sa.String(200), nullable=True),
        sa.Column("input", sa.JSON(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("context", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["statem_executions.id"],
            name="fk_statem_steps_execution_id_statem_executions",
        ),
        sa.PrimaryKeyConstraint("execution_id", "seq", name="pk_statem_steps"),
    )
    op.create_index(
        "ix_statem_steps_execution_id_idempotency_key",
        "statem_steps",
        ["execution_id", "idempotency_key"],
        unique=True,
    )
    op.create_index("ix_statem_steps_at", "statem_steps", ["at"])
    op.create_table(
        "statem_tasks",
        sa.Column("id", BigID, autoincrement=True, nullable=False),
        sa.Column("execution_id", ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, comment="timer | effect | child | resume"),
        sa.Column("status", sa.String(16), nullable=False, comment="pending | claimed | waiting"),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("claim", sa.String(64), nullable=True, comment="fencing token of the current claim"),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("child_id", ID, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["statem_executions.id"],
            name="fk_statem_tasks_execution_id_statem_executions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_statem_tasks"),
    )
    op.create_index("ix_statem_tasks_status_due_at", "statem_tasks", ["status", "due_at"])
    op.create_index("ix_statem_tasks_execution_id", "statem_tasks", ["execution_id"])


def downgrade() -> None:
    op.drop_table("statem_tasks")
    op.drop_table("statem_steps")
    op.drop_table("statem_executions")
    op.drop_table("statem_machines")
