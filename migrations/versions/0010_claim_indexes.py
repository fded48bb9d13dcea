"""Claim indexes that stay right whatever the statistics say: pending by due time, claimed by lease.

The claim asked for ``(status = 'pending' AND due_at <= now) OR (status = 'claimed' AND
lease_expires_at < now)``, soonest due first, through ``ix_statem_tasks_status_due_at``.
An OR over two index ranges cannot be read in ``due_at`` order, so PostgreSQL planned a
bitmap scan of EVERY ready task, sorted them and kept the first few: measured with
``auto_explain`` in ``bench.executor`` (4,000 ready effect tasks), 3,366 rows fetched
and sorted per claim of one task, 0.9 ms of server time per claim, the largest single
cost of an effect task. Claimed rows are short-lived, so the table's statistics mostly
say "no claimed rows" and the planner cannot see its mistake.

This revision replaces that index by two partial ones, each read in its own order by
one arm of the claim (:func:`statem.store.claim_tasks`):

* ``ix_statem_tasks_pending`` on ``statem_tasks (due_at) WHERE status = 'pending'``: the
  claim, the next due time and the overdue count walk it soonest first and stop at the
  limit (an ordered index scan: the cost of a claim no longer grows with the backlog);
* ``ix_statem_tasks_claimed`` on ``statem_tasks (lease_expires_at) WHERE status =
  'claimed'``: claims whose lease lapsed (a dead worker's), as small as the work in
  flight.

A held, waiting or kept task is in neither (they are read by execution id). The queries
spell the status as a literal: a partial index serves only a query whose condition
implies the index's, and a bound parameter (a generic plan on PostgreSQL, any plan on
SQLite) implies nothing.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PENDING = "status = 'pending'"
CLAIMED = "status = 'claimed'"


def upgrade() -> None:
    op.create_index(
        "ix_statem_tasks_pending",
        "statem_tasks",
        ["due_at"],
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )
    op.create_index(
        "ix_statem_tasks_claimed",
        "statem_tasks",
        ["lease_expires_at"],
        postgresql_where=sa.text(CLAIMED),
        sqlite_where=sa.text(CLAIMED),
    )
    op.drop_index("ix_statem_tasks_status_due_at", table_name="statem_tasks")


def downgrade() -> None:
    op.create_index("ix_statem_tasks_status_due_at", "statem_tasks", ["status", "due_at"])
    op.drop_index("ix_statem_tasks_claimed", table_name="statem_tasks")
    op.drop_index("ix_statem_tasks_pending", table_name="statem_tasks")
