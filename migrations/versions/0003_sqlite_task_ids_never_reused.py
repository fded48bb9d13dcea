"""SQLite: task ids are never reused (AUTOINCREMENT).

A task's id is half of its effect's idempotency key (``<execution_id>:<task_id>``). On
SQLite a plain ``INTEGER PRIMARY KEY`` hands the highest id out again once its row is
deleted, so successive effects of one execution could share a key, and a service that
deduplicates on ``Idempotency-Key`` would drop all but the first. AUTOINCREMENT keeps a
high-water mark instead. PostgreSQL's identity sequence never reuses a value: nothing to
do there. (Ids already reused before this upgrade cannot be told apart afterwards; the
mark starts at the highest id still stored.)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # the admin views name statem_tasks: with the legacy rename, SQLite leaves them be
    # while the table is copied, dropped and renamed into place
    op.execute("PRAGMA legacy_alter_table=ON")
    with op.batch_alter_table(
        "statem_tasks", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass
    op.execute("PRAGMA legacy_alter_table=OFF")


def upgrade() -> None:
    _recreate(autoincrement=True)


def downgrade() -> None:
    _recreate(autoincrement=False)
