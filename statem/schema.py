"""The database schema, as SQLAlchemy Core tables: the one truth the migrations must produce.

Tables (all prefixed ``statem_`` so they can live beside an application's own):

* ``statem_machines``   one row per (machine_id, version), the definition as JSON.
* ``statem_executions`` one row per execution: current state, status, context.
* ``statem_steps``      the history, one row per step, append-only (never updated or deleted).
* ``statem_tasks``      pending work: timers, effect calls, child starts and child results,
  with due time, attempts and the owner/lease of the worker running it. A task row is
  deleted when its result is applied or when a later step discards it.
* ``statem_services``   one row per (service_id, version) of an HTTP service, the definition as JSON.
* ``statem_fanouts``    one row per running ``map``/``all`` fan-out (its id is its
  ``fanout`` task's): the element counts and the template of its element tasks.
* ``statem_elements``   one row per element of a fan-out: status, input, result. The
  join reads the results from here in index order; both are deleted by the join or by
  the step that discards the fan-out.

All timestamps are UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

#: The Alembic version table, named so it cannot clash with an application's own.
VERSION_TABLE = "statem_alembic_version"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime in Python; ``timestamptz`` on PostgreSQL, ISO text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("statem stores aware datetimes only")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        zone = value.tzinfo
        if zone is dt.UTC:  # PostgreSQL: statem's connections speak UTC (statem.dialects)
            return value
        return value.replace(tzinfo=dt.UTC) if zone is None else value.astimezone(dt.UTC)


#: The partial index of unfinished executions by last move covers rows matching this.
UNFINISHED = "status NOT IN ('finished', 'canceled')"
#: The history rows with an idempotency key (a keyed trigger's first row).
KEYED = "idempotency_key IS NOT NULL"
#: The operator steps (the statem_operations view's WHERE, as written there).
OPERATOR_STEP = "kind IN ('pause', 'resume', 'move', 'upgrade') OR (kind = 'retry' AND input IS NOT NULL)"
#: The partial indexes a claim reads: tasks pending (by due time) and claimed (by lease).
TASK_PENDING = "status = 'pending'"
TASK_CLAIMED = "status = 'claimed'"

ID = String(200)
BigID = BigInteger().with_variant(Integer, "sqlite")

machines = Table(
    "statem_machines",
    metadata,
    Column("machine_id", ID, nullable=False),
    Column("version", Integer, nullable=False),
    Column("definition", JSON, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("machine_id", "version"),
)

services = Table(
    "statem_services",
    metadata,
    Column("service_id", ID, nullable=False),
    Column("version", Integer, nullable=False),
    Column("definition", JSON, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("service_id", "version"),
)

executions = Table(
    "statem_executions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("machine_id", ID, nullable=False),
    Column("machine_version", Integer, nullable=False),
    Column("state", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("context", JSON, nullable=False),
    Column("input", JSON, nullable=False),
    Column("output", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("parent_id", ID, nullable=True),
    Column("parent_task_id", BigID, nullable=True),
    Column("seq", Integer, nullable=False, comment="seq of the last history step"),
    Column("version", Integer, nullable=False, comment="optimistic lock, +1 per write"),
    Column("armed", Boolean, nullable=False, comment="may have tasks: false only when none can exist"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    ForeignKeyConstraint(
        ["machine_id", "machine_version"], ["statem_machines.machine_id", "statem_machines.version"]
    ),
    Index(None, "machine_id", "status"),
    Index(None, "status", "updated_at"),
    Index(None, "state"),
    Index(None, "parent_id"),
    # statem list (newest first) and the admin reads at scale (migration 0005)
    Index(None, "created_at"),
    # unfinished only, longest idle first; carries what statem_counts groups by, so counting
    # the live executions reads this index alone
    Index(
        "ix_statem_executions_unfinished",  # the conventional name is past PostgreSQL's 63 characters
        "updated_at",
        "machine_id",
        "machine_version",
        "state",
        "status",
        postgresql_where=text(UNFINISHED),
        sqlite_where=text(UNFINISHED),
    ),
    # unfinished only, in group order: statem_live_counts finds each group and counts it
    # (bounded) from this index (migration 0009)
    Index(
        "ix_statem_executions_live",
        "machine_id",
        "machine_version",
        "state",
        "status",
        postgresql_where=text(UNFINISHED),
        sqlite_where=text(UNFINISHED),
    ),
)

steps = Table(
    "statem_steps",
    metadata,
    Column("execution_id", ID, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("name", String(200), nullable=True),
    Column("from_state", String(200), nullable=True),
    Column("to_state", String(200), nullable=True),
    Column("input", JSON, nullable=True),
    Column("output", JSON, nullable=True),
    Column("context", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Column(
        "event",
        JSON(none_as_null=True),
        nullable=True,
        comment="the event that began this chain of steps (replay, retry)",
    ),
    PrimaryKeyConstraint("execution_id", "seq"),
    ForeignKeyConstraint(["execution_id"], ["statem_executions.id"]),
    # the keyed triggers' steps only (migration 0011): a step without a key writes no entry
    Index(
        "ix_statem_steps_idempotency_key",
        "execution_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text(KEYED),
        sqlite_where=text(KEYED),
    ),
    Index(None, "at"),
    # the steps that failed an execution, for statem_failures (migration 0009)
    Index(
        "ix_statem_steps_failed",
        "execution_id",
        "seq",
        "kind",
        "name",
        postgresql_where=text("error IS NOT NULL AND kind IN ('timer', 'result')"),
        sqlite_where=text("error IS NOT NULL AND kind IN ('timer', 'result')"),
    ),
    # the operator steps, newest first, for statem_operations (migration 0009)
    Index(
        "ix_statem_steps_operator",
        "at",
        postgresql_where=text(OPERATOR_STEP),
        sqlite_where=text(OPERATOR_STEP),
    ),
)

tasks = Table(
    "statem_tasks",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=True),
    Column("execution_id", ID, nullable=False),
    Column("kind", String(16), nullable=False, comment="timer | effect | child | resume"),
    Column("status", String(16), nullable=False, comment="pending | claimed | waiting"),
    Column("due_at", UTCDateTime, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("claim", String(64), nullable=True, comment="fencing token of the current claim"),
    Column("owner", String(200), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("child_id", ID, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("effect", String(200), nullable=True, comment="an effect task's effect: who may claim it"),
    ForeignKeyConstraint(["execution_id"], ["statem_executions.id"]),
    # what a claim reads, each in its own order (migration 0010): pending by due time,
    # claimed by lease (a dead worker's lapsed claims); the queries spell the status out
    Index(
        "ix_statem_tasks_pending",
        "due_at",
        postgresql_where=text(TASK_PENDING),
        sqlite_where=text(TASK_PENDING),
    ),
    Index(
        "ix_statem_tasks_claimed",
        "lease_expires_at",
        postgresql_where=text(TASK_CLAIMED),
        sqlite_where=text(TASK_CLAIMED),
    ),
    Index(None, "execution_id"),
    Index(None, "due_at"),  # the pending work, soonest first (migration 0005)
    # an id is half of an effect's idempotency key: SQLite must never hand one out again
    sqlite_autoincrement=True,
)

fanouts = Table(
    "statem_fanouts",
    metadata,
    Column("id", BigID, primary_key=True, autoincrement=False, comment="the id of its fanout task"),
    Column("execution_id", ID, nullable=False),
    Column("kind", String(8), nullable=False, comment="map | all"),
    Column("total", Integer, nullable=False),
    Column("armed", Integer, nullable=False, comment="elements started so far (index order)"),
    Column("running", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("max_concurrency", Integer, nullable=True),
    Column("tolerated", Integer, nullable=False, comment="failed elements tolerated"),
    Column("joining", Boolean, nullable=False, comment="its join task is armed"),
    Column("spec", JSON, nullable=False, comment="the element task payload, less input and index"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    ForeignKeyConstraint(["execution_id"], ["statem_executions.id"]),
    Index(None, "execution_id"),
)

elements = Table(
    "statem_elements",
    metadata,
    Column("fanout_id", BigID, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("branch", String(200), nullable=True, comment="the branch name of an all"),
    Column("status", String(16), nullable=False, comment="pending | running | done | failed"),
    Column("input", JSON, nullable=True),
    Column("output", JSON, nullable=True),
    Column("error", JSON, nullable=True, comment="{type, message} of a failed element"),
    PrimaryKeyConstraint("fanout_id", "idx"),
)
