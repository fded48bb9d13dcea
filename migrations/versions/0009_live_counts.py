"""The cookbook's counts and failures at any size: bounded live counts, failing steps by index.

``statem_counts`` counts every row of a group (exact, and read by the README cookbook until
now): with a million executions, a quarter of them unfinished, it reads 250,000 index
entries on every call (227-262 ms on the loaded 2-core machine; issue 14's target is 50 ms),
and it grows with the live set. This revision adds:

* ``ix_statem_executions_live`` on ``statem_executions (machine_id, machine_version,
  state, status) WHERE status NOT IN ('finished', 'canceled')``: the unfinished
  executions in group order. Partial, so it is as small as the live set (a finished
  execution leaves it).
* ``statem_live_counts``: one row per group of unfinished executions, ``executions``
  counted up to LIVE_COUNT_CAP (1,000) and ``capped`` true when the group has more. The
  groups are found by a skip scan of that index (a recursive query: from one group, one
  index descent per column finds the next), and each group is counted through the same
  index, reading at most LIVE_COUNT_CAP + 1 entries. Its cost is the number of groups
  times at most the cap, whatever the size of the table. ``statem_counts`` is unchanged
  (exact; for totals by status, ``statem stats``).
* ``ix_statem_steps_failed`` on ``statem_steps (execution_id, seq, kind, name) WHERE
  error IS NOT NULL AND kind IN ('timer', 'result')``: the steps that failed an
  execution (a handful of rows: a step that succeeds never enters it, so it costs the
  hot path nothing).
* ``statem_failures`` finds each failed execution's failing step through that index
  (scalar subqueries on the execution, the latest such step), instead of a join whose
  condition held a subquery: PostgreSQL planned it as a hash join over the whole history
  (13.6 s with ten million steps for the cookbook's failures by error, 2.2 s for the
  latest 100 failures). Same rows, same columns.
* ``ix_statem_steps_operator`` on ``statem_steps (at) WHERE`` the condition of
  ``statem_operations`` (pause, resume, move, upgrade, an operator's retry): the operator
  steps, newest first, without reading the history (the cookbook's "who paused what" read
  all ten million steps: 1.4 s). Operator steps are rare, so this index is small and no
  ordinary step writes to it.

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
#: A group of more unfinished executions than this shows this many, with ``capped`` true
#: (the console's per-state counts stop at the same figure).
LIVE_COUNT_CAP = 1_000
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


FAILED_INDEX = "ix_statem_steps_failed"
FAILING = "error IS NOT NULL AND kind IN ('timer', 'result')"
AGE = {
    "sqlite": "CAST((julianday('now') - julianday({col})) * 86400.0 AS REAL)",
    "postgresql": "CAST(EXTRACT(EPOCH FROM (now() - {col})) AS DOUBLE PRECISION)",
}


def failures(dialect: str) -> str:
    """``statem_failures``: each failed execution with the latest timer or result step that
    recorded an error (as in 0006), looked up per execution in ``ix_statem_steps_failed``.

    The filter is a scalar subquery, not ``EXISTS``: PostgreSQL turns an ``EXISTS`` into a
    semi-join from the index (every failed execution, then sorted), where this one is
    checked row by row as the executions are read newest first, so a ``LIMIT`` stops it."""
    failing = "x.execution_id = e.id AND x.error IS NOT NULL AND x.kind IN ('timer', 'result')"

    def latest(col: str) -> str:
        return f"(SELECT x.{col} FROM statem_steps x WHERE {failing} ORDER BY x.seq DESC LIMIT 1)"

    return f"""
            SELECT e.id, e.machine_id, e.machine_version, e.state, e.error, e.updated_at AS failed_at,
                   {latest("seq")} AS failed_seq, {latest("kind")} AS failed_kind,
                   {latest("name")} AS failed_step,
                   {AGE[dialect].format(col="e.updated_at")} AS age_seconds
            FROM statem_executions e
            WHERE e.status = 'failed' AND {latest("seq")} IS NOT NULL"""


def failures_0006(dialect: str) -> str:
    """``statem_failures`` as migration 0006 made it (the downgrade)."""
    seq = (
        "(SELECT MAX(x.seq) FROM statem_steps x WHERE x.execution_id = e.id AND x.error IS NOT NULL"
        " AND x.kind IN ('timer', 'result'))"
    )
    return f"""
            SELECT e.id, e.machine_id, e.machine_version, e.state, e.error, e.updated_at AS failed_at,
                   s.seq AS failed_seq, s.kind AS failed_kind, s.name AS failed_step,
                   {AGE[dialect].format(col="e.updated_at")} AS age_seconds
            FROM statem_executions e
            JOIN statem_steps s ON s.execution_id = e.id AND s.seq = {seq}
            WHERE e.status = 'failed'"""


OPERATOR_INDEX = "ix_statem_steps_operator"
#: The WHERE of the statem_operations view (0006), word for word: SQLite uses a partial
#: index only for a query whose WHERE holds the index's condition as written.
OPERATOR_STEP = "kind IN ('pause', 'resume', 'move', 'upgrade') OR (kind = 'retry' AND input IS NOT NULL)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_index(
        OPERATOR_INDEX,
        "statem_steps",
        ["at"],
        postgresql_where=sa.text(OPERATOR_STEP),
        sqlite_where=sa.text(OPERATOR_STEP),
    )
    op.create_index(
        INDEX,
        "statem_executions",
        list(GROUP),
        postgresql_where=sa.text(UNFINISHED),
        sqlite_where=sa.text(UNFINISHED),
    )
    op.execute(f"CREATE VIEW {VIEW} AS {live_counts(dialect)}")
    op.create_index(
        FAILED_INDEX,
        "statem_steps",
        ["execution_id", "seq", "kind", "name"],
        postgresql_where=sa.text(FAILING),
        sqlite_where=sa.text(FAILING),
    )
    op.execute("DROP VIEW IF EXISTS statem_failures")
    op.execute(f"CREATE VIEW statem_failures AS {failures(dialect)}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS statem_failures")
    op.execute(f"CREATE VIEW statem_failures AS {failures_0006(dialect)}")
    op.drop_index(FAILED_INDEX, table_name="statem_steps")
    op.execute(f"DROP VIEW IF EXISTS {VIEW}")
    op.drop_index(INDEX, table_name="statem_executions")
    op.drop_index(OPERATOR_INDEX, table_name="statem_steps")
