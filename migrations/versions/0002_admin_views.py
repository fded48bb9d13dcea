"""Admin views for the common questions (stuck, failed, path, counts, pending work).

Each view has the same columns on SQLite and PostgreSQL, so the README's cookbook runs
verbatim on both; only the time arithmetic and JSON access differ underneath.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
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


def _views(dialect: str) -> dict[str, str]:
    age = AGE[dialect].format
    js = JSON_TEXT[dialect].format
    return {
        # Executions not final, with how long since they last moved.
        "statem_active": f"""
            SELECT id, machine_id, machine_version, state, status, parent_id, created_at, updated_at,
                   {age(col="updated_at")} AS idle_seconds
            FROM statem_executions
            WHERE status IN ('running', 'waiting')""",
        # Failed executions with the error and the step that failed them.
        "statem_failures": f"""
            SELECT e.id, e.machine_id, e.machine_version, e.state, e.error, e.updated_at AS failed_at,
                   s.seq AS failed_seq, s.kind AS failed_kind, s.name AS failed_step,
                   {age(col="e.updated_at")} AS age_seconds
            FROM statem_executions e
            JOIN statem_steps s ON s.execution_id = e.id AND s.seq = e.seq
            WHERE e.status = 'failed'""",
        # Every step of every execution, without the context blobs: the path taken.
        "statem_path": """
            SELECT s.execution_id, e.machine_id, s.seq, s.at, s.kind, s.name,
                   s.from_state, s.to_state, s.error
            FROM statem_steps s JOIN statem_executions e ON e.id = s.execution_id""",
        # How many executions per machine version, state and status.
        "statem_counts": """
            SELECT machine_id, machine_version, state, status, COUNT(*) AS executions
            FROM statem_executions
            GROUP BY machine_id, machine_version, state, status""",
        # Armed work: timers, effect calls, children, child results; who holds them.
        "statem_pending_work": f"""
            SELECT t.id AS task_id, t.execution_id, e.machine_id, e.state, t.kind, t.status,
                   {js(col="t.payload", key="name")} AS name,
                   {js(col="t.payload", key="effect")} AS effect,
                   t.due_at, t.attempts, t.owner, t.lease_expires_at, t.child_id, t.last_error,
                   -{age(col="t.due_at")} AS due_in_seconds
            FROM statem_tasks t JOIN statem_executions e ON e.id = t.execution_id""",
    }


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, body in _views(dialect).items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(list(_views(op.get_bind().dialect.name))):
        op.execute(f"DROP VIEW IF EXISTS {name}")
