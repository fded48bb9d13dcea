"""Fan-out: the ``statem_fanouts`` and ``statem_elements`` tables, and fan-out progress
in the ``statem_pending_work`` view.

A running ``map``/``all`` keeps one row of counts (``statem_fanouts``, its id the id of
its ``fanout`` task) and one row per element (``statem_elements``: status, input,
result); an element's result updates its own row and the counts, never a growing
document, and the join reads the results back in index order. The pending-work view
gains a ``progress`` column (``12/30 done, 1 failed, 5 running`` on a fan-out's task).

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from statem.schema import BigID, UTCDateTime

revision = "0007"
down_revision = "0008"
branch_labels = None
depends_on = None

AGE = {
    "sqlite": "CAST((julianday('now') - julianday({col})) * 86400.0 AS REAL)",
    "postgresql": "CAST(EXTRACT(EPOCH FROM (now() - {col})) AS DOUBLE PRECISION)",
}
JSON_TEXT = {
    "sqlite": "json_extract({col}, '$.{key}')",
    "postgresql": "({col} ->> '{key}')",
}


def _pending_work(dialect: str, progress: bool) -> str:
    age = AGE[dialect].format
    js = JSON_TEXT[dialect].format
    extra, join = "", ""
    if progress:
        extra = """,
                   CASE WHEN f.id IS NULL THEN NULL ELSE
                     CAST(f.done AS TEXT) || '/' || CAST(f.total AS TEXT) || ' done, ' ||
                     CAST(f.failed AS TEXT) || ' failed, ' || CAST(f.running AS TEXT) || ' running'
                   END AS progress"""
        join = " LEFT JOIN statem_fanouts f ON f.id = t.id"
    return f"""
            SELECT t.id AS task_id, t.execution_id, e.machine_id, e.state, t.kind, t.status,
                   {js(col="t.payload", key="name")} AS name,
                   {js(col="t.payload", key="effect")} AS effect,
                   t.due_at, t.attempts, t.owner, t.lease_expires_at, t.child_id, t.last_error,
                   -{age(col="t.due_at")} AS due_in_seconds{extra}
            FROM statem_tasks t JOIN statem_executions e ON e.id = t.execution_id{join}"""


def upgrade() -> None:
    op.create_table(
        "statem_fanouts",
        sa.Column("id", BigID, autoincrement=False, nullable=False, comment="the id of its fanout task"),
        sa.Column("execution_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False, comment="map | all"),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("armed", sa.Integer(), nullable=False, comment="elements started so far (index order)"),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("tolerated", sa.Integer(), nullable=False, comment="failed elements tolerated"),
        sa.Column("joining", sa.Boolean(), nullable=False, comment="its join task is armed"),
        sa.Column(
            "spec", sa.JSON(), nullable=False, comment="the element task payload, less input and index"
        ),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["statem_executions.id"],
            name="fk_statem_fanouts_execution_id_statem_executions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_statem_fanouts"),
    )
    op.create_index("ix_statem_fanouts_execution_id", "statem_fanouts", ["execution_id"])
    op.create_table(
        "statem_elements",
        sa.Column("fanout_id", BigID, nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("branch", sa.String(200), nullable=True, comment="the branch name of an all"),
        sa.Column("status", sa.String(16), nullable=False, comment="pending | running | done | failed"),
        sa.Column("input", sa.JSON(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True, comment="{type, message} of a failed element"),
        sa.PrimaryKeyConstraint("fanout_id", "idx", name="pk_statem_elements"),
    )
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS statem_pending_work")
    op.execute(f"CREATE VIEW statem_pending_work AS {_pending_work(dialect, progress=True)}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS statem_pending_work")
    op.execute(f"CREATE VIEW statem_pending_work AS {_pending_work(dialect, progress=False)}")
    op.drop_table("statem_elements")
    op.drop_index("ix_statem_fanouts_execution_id", table_name="statem_fanouts")
    op.drop_table("statem_fanouts")
