"""Operating live executions: the event each step applied, and the operator-step view.

* ``statem_steps.event``: the event that began a chain of steps (a start with its input,
  an action with its name and input, a timer, an effect or child result with ``ok`` and
  the output), recorded on the chain's first step. The replay check (``Engine.upgrade``)
  re-runs these events through another version, and ``Engine.retry`` re-runs the event
  of the step that failed an execution. NULL on steps recorded before this revision and
  on steps that begin no chain.
* ``statem_active`` also lists ``paused`` executions (status ``paused`` is new; task
  statuses ``held`` and ``kept`` are new values of the existing column).
* ``statem_failures`` names the step that failed the execution (the latest timer or
  result step with an error), not its last step: an upgrade or a rejected trigger may
  follow it now.
* ``statem_operations``: the operator steps (pause, resume, retry, move, upgrade) with
  their reason, for the README cookbook ("who paused what, and why").

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0007"
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
JSON_INT = {
    "sqlite": "CAST(json_extract({col}, '$.{key}') AS INTEGER)",
    "postgresql": "CAST(({col} ->> '{key}') AS INTEGER)",
}


def _active(dialect: str, statuses: str) -> str:
    age = AGE[dialect].format
    return f"""
            SELECT id, machine_id, machine_version, state, status, parent_id, created_at, updated_at,
                   {age(col="updated_at")} AS idle_seconds
            FROM statem_executions
            WHERE status IN ({statuses})"""


def _operations(dialect: str) -> str:
    js, ji = JSON_TEXT[dialect].format, JSON_INT[dialect].format
    return f"""
            SELECT s.execution_id, e.machine_id, e.machine_version, s.seq, s.at, s.kind AS operation,
                   {js(col="s.input", key="reason")} AS reason,
                   s.from_state, s.to_state,
                   {ji(col="s.input", key="from_version")} AS from_version,
                   {ji(col="s.input", key="to_version")} AS to_version,
                   e.status
            FROM statem_steps s JOIN statem_executions e ON e.id = s.execution_id
            WHERE s.kind IN ('pause', 'resume', 'move', 'upgrade')
               OR (s.kind = 'retry' AND s.input IS NOT NULL)"""


def _failures(dialect: str, latest_failure: bool) -> str:
    age = AGE[dialect].format
    # since 0006 steps may follow the one that failed it (an upgrade, a rejected trigger):
    # the failing step is the latest timer or result step with an error
    seq = (
        "(SELECT MAX(x.seq) FROM statem_steps x WHERE x.execution_id = e.id AND x.error IS NOT NULL"
        " AND x.kind IN ('timer', 'result'))"
        if latest_failure
        else "e.seq"
    )
    return f"""
            SELECT e.id, e.machine_id, e.machine_version, e.state, e.error, e.updated_at AS failed_at,
                   s.seq AS failed_seq, s.kind AS failed_kind, s.name AS failed_step,
                   {age(col="e.updated_at")} AS age_seconds
            FROM statem_executions e
            JOIN statem_steps s ON s.execution_id = e.id AND s.seq = {seq}
            WHERE e.status = 'failed'"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS statem_failures")
    op.execute("CREATE VIEW statem_failures AS " + _failures(dialect, latest_failure=True))
    op.add_column("statem_steps", sa.Column(
            "event",
            sa.JSON(),
            nullable=True,
            comment="the event that began this chain of steps (replay, retry)",
        ),)
    op.execute("DROP VIEW IF EXISTS statem_active")
    op.execute("CREATE VIEW statem_active AS " + _active(dialect, "'running', 'waiting', 'paused'"))
    op.execute("CREATE VIEW statem_operations AS " + _operations(dialect))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS statem_operations")
    op.execute("DROP VIEW IF EXISTS statem_active")
    op.execute("CREATE VIEW statem_active AS " + _active(dialect, "'running', 'waiting'"))
    op.execute("DROP VIEW IF EXISTS statem_failures")
    op.execute("CREATE VIEW statem_failures AS " + _failures(dialect, latest_failure=False))
    sqlite = dialect == "sqlite"
    if sqlite:  # the admin views name statem_steps: SQLite leaves them be while it is rebuilt
        op.execute("PRAGMA legacy_alter_table=ON")
    with op.batch_alter_table("statem_steps") as batch:
        batch.drop_column("event")
    if sqlite:
        op.execute("PRAGMA legacy_alter_table=OFF")
