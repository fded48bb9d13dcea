"""Counting the unfinished executions per machine, state and status at any size.

``statem_counts`` counts every row of a group (exact, and read by the README cookbook until
now): with a million executions, a quarter of them unfinished, it reads 250,000 index
entries on every call (227 ms on the loaded 2-core machine; issue 14's target is 50 ms),
and it grows with the live set. This revision adds:

* ``ix_statem_executions_live`` on ``statem_executions (machine_id, machine_version,
  state, status) WHERE status NOT IN ('finished', 'canceled')``: the unfinished
  executions in group order. Partial, so it is as small as the live set (a finished
  execution leaves it).
* ``statem_live_counts``: one row per group of unfinished executions, ``executions``
  counted up to LIVE_COUNT_CAP (10,000) and ``capped`` true when the group has more. The
  groups are found by a skip scan of that index (a recursive query: from one group, one
  index descent per column finds the next), and each group is counted through the same
  index, reading at most LIVE_COUNT_CAP + 1 entries. Its cost is the number of groups
  times at most the cap, whatever the size of the table. ``statem_counts`` is unchanged
  (exact; for totals by status, ``statem stats``).

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None

UNFINISHED = "status NOT IN ('finished', 'canceled')"
INDEX = "ix_statem_executions_live"
VIEW = "statem_live_counts"
#: A group of more unfinished executions than this shows this many, with ``capped`` true.
LIVE_COUNT_CAP = 10_000
GROUP = ("machine_id", "machine_version", "state", "status")
#: Keeps the counted subquery from being merged into the outer one (which would count
#: each group twice, once per use of ``n``): PostgreSQL refuses ``LIMIT -1``, SQLite needs a LIMIT.
FENCE = {"postgresql": "OFFSET 0", "sqlite": "LIMIT -1 OFFSET 0"}


def _live(alias: str) -> str:
    return f"{alias}.{UNFINISHED}"


def _cols(alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in GROUP)


def live_counts(dialect: str) -> str:
    """The body of ``statem_live_counts`` (the same SQL on both databases, but the fence)."""
    # The group after grp: the least of four index descents (a greater machine_id; the same
    # machine_id and a greater version; ... the same first three and a greater status).
    arms = []
    for i, col in enumerate(GROUP):
        a = f"n{i}"
        where = " AND ".join([_live(a), *(f"{a}.{c} = grp.{c}" for c in GROUP[:i]), f"{a}.{col} > grp.{col}"])
        arms.append(
            f"SELECT * FROM (SELECT {_cols(a)}, {a}.id FROM statem_executions {a} "
            f"WHERE {where} ORDER BY {_cols(a)} LIMIT 1) AS a{i}"
        )
    following = "\n                UNION ALL ".join(arms)
    same_group = " AND ".join(f"c.{col} = grp.{col}" for col in GROUP)
    return f"""
            WITH RECURSIVE grp ({", ".join(GROUP)}) AS (
              SELECT * FROM (SELECT {_cols("f")} FROM statem_executions f WHERE {_live("f")}
                             ORDER BY {_cols("f")} LIMIT 1) AS first_group
              UNION ALL
              SELECT {_cols("e")} FROM grp JOIN statem_executions e ON e.id = (
                SELECT nx.id FROM (
                {following}) AS nx
                ORDER BY {_cols("nx")} LIMIT 1)
            )
            SELECT {", ".join(GROUP)},
                   CASE WHEN n > {LIVE_COUNT_CAP} THEN {LIVE_COUNT_CAP} ELSE n END AS executions,
                   n > {LIVE_COUNT_CAP} AS capped
            FROM (
              SELECT {_cols("grp")}, (SELECT COUNT(*) FROM (
                  SELECT 1 FROM statem_executions c WHERE {_live("c")} AND {same_group}
                  LIMIT {LIVE_COUNT_CAP + 1}) AS bounded) AS n
              FROM grp {FENCE[dialect]}) AS counted"""


def upgrade() -> None:
    op.create_index(
        INDEX,
        "statem_executions",
        list(GROUP),
        postgresql_where=sa.text(UNFINISHED),
        sqlite_where=sa.text(UNFINISHED),
    )
    op.execute(f"CREATE VIEW {VIEW} AS {live_counts(op.get_bind().dialect.name)}")


def downgrade() -> None:
    op.execute(f"DROP VIEW IF EXISTS {VIEW}")
    op.drop_index(INDEX, table_name="statem_executions")
