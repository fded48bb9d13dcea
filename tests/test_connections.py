"""Pooled PostgreSQL connections: pinged only after sitting idle, replaced when dead.

The server ends a pooled connection (``pg_terminate_backend``, as a restart or a
failover would): after a pause longer than PING_IDLE_SECONDS the next call pings it,
finds it dead and runs on a fresh one; right away, the next call fails with a one-line
StoreError that applies nothing, and the call after it runs on a fresh connection.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from statem import Engine, StoreError
from statem.settings import PING_IDLE_SECONDS

from .helpers import timer_machine


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    from .conftest import _truncate

    _truncate(pg_url)
    engine = Engine(pg_url)
    engine.save_machine(timer_machine(seconds=60))
    yield engine
    engine.close()


def _kill_pooled_connections(engine: Engine) -> int:
    """Terminate every server backend of ``engine``'s pool; returns how many."""
    with engine.db.connect() as conn:
        mine = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    admin = create_engine(engine.db.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid = :pid"
                ),
                {"pid": mine},
            ).scalar()
    finally:
        admin.dispose()
    return int(killed or 0)


def test_an_idle_dead_connection_is_pinged_and_replaced(pg_engine: Engine) -> None:
    ex = pg_engine.start("t")
    assert _kill_pooled_connections(pg_engine) == 1
    time.sleep(PING_IDLE_SECONDS + 0.2)
    assert pg_engine.get(ex.id).status == "waiting"  # no error: the ping found it dead


def test_a_connection_killed_while_in_steady_use_fails_one_call_then_recovers(pg_engine: Engine) -> None:
    ex = pg_engine.start("t")
    assert _kill_pooled_connections(pg_engine) == 1
    with pytest.raises(StoreError, match="database error"):
        pg_engine.cancel(ex.id, reason="first try")  # checked out at once: not pinged
    assert pg_engine.get(ex.id).status == "waiting"  # the failed call applied nothing
    assert pg_engine.cancel(ex.id, reason="second try").status == "canceled"


def test_a_lease_transaction_does_not_wait_for_the_wal_flush_and_a_step_does(pg_url: str) -> None:
    """Claims and renewals commit with synchronous_commit off, for their own transaction
    only; every other transaction (a step) keeps the server's setting."""
    from statem import dialects

    db = dialects.make_engine(pg_url)
    try:
        with dialects.transaction(db) as conn:
            dialects.lease_only(conn)
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "off"
        with dialects.transaction(db) as conn:  # the same pooled connection, a new transaction
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
    finally:
        db.dispose()


def test_timestamps_come_back_in_utc_whatever_the_sessions_zone(pg_url: str) -> None:
    """statem's connections set their session zone to UTC (psycopg then returns
    ``datetime.timezone.utc``, kept as is); a connection in another zone (a pooler that
    dropped the setting) still reads the same instants, converted."""
    from sqlalchemy import select
    from sqlalchemy.engine import make_url

    from statem.schema import executions

    from .conftest import _truncate

    _truncate(pg_url)
    kolkata = make_url(pg_url).update_query_dict({"options": "-c TimeZone=Asia/Kolkata"})
    engine = Engine(kolkata.render_as_string(hide_password=False))
    try:
        engine.save_machine(timer_machine(seconds=60))
        eid = engine.start("t").id
        with engine.db.connect() as conn:
            assert conn.execute(text("SHOW TimeZone")).scalar() == "UTC"
            created = conn.execute(select(executions.c.created_at).where(executions.c.id == eid)).scalar_one()
            assert created.tzinfo is dt.UTC
            conn.execute(text("SET TIME ZONE 'Asia/Kolkata'"))
            assert (
                conn.execute(text("SELECT CAST(created_at AS text) FROM statem_executions"))
                .scalar_one()
                .endswith("+05:30")
            )
            again = conn.execute(select(executions.c.created_at).where(executions.c.id == eid)).scalar_one()
            assert again.tzinfo is dt.UTC and again == created
        step = engine.history(eid)[0]
        assert step.at.tzinfo is dt.UTC and step.at.isoformat().endswith("+00:00")
    finally:
        engine.close()
