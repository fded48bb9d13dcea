"""The differences between SQLite and PostgreSQL in how statem connects and locks.

(The statement-level differences are in :mod:`statem.store`, next to the statements:
``FOR UPDATE SKIP LOCKED`` in claims, and the PostgreSQL forms that do in one statement
what SQLite does in two.)

* Row locks: PostgreSQL locks an execution row with ``SELECT ... FOR UPDATE``; SQLite
  has no row locks, so every writing transaction starts with ``BEGIN IMMEDIATE`` and
  holds the database's single write lock (readers go on, thanks to WAL).
* Claims: PostgreSQL skips rows other workers hold (``FOR UPDATE SKIP LOCKED``).
* Wake-ups: PostgreSQL ``NOTIFY``s workers when new tasks are armed.
* Stale connections: a pooled PostgreSQL connection that sat idle is pinged before use
  (one round trip); one in steady use is not. A server restarted in between costs at
  most one failed transaction per process (StoreError; the pool is then replaced),
  which nothing half-applies: the transaction rolls back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError

from .errors import StoreError
from .settings import DB_TIMEOUT_SECONDS, PING_IDLE_SECONDS

#: The PostgreSQL channel workers LISTEN on for new tasks.
NOTIFY_CHANNEL = "statem_tasks"


def is_sqlite(conn: Connection | Engine) -> bool:
    """True on SQLite."""
    return conn.dialect.name == "sqlite"


def notify(conn: Connection) -> None:
    """Wake listening workers when this transaction commits (PostgreSQL only)."""
    if not is_sqlite(conn):
        conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL statem connects with: ``postgres://`` and ``postgresql://`` (the
    forms libpq, Heroku and most hosting dashboards print) become ``postgresql+psycopg://``
    (psycopg 3, the driver statem installs); ``postgres+DRIVER://`` becomes
    ``postgresql+DRIVER://``; any other URL is returned unchanged.

    >>> sqlalchemy_url("postgres://app:secret@db:5432/orders")
    'postgresql+psycopg://app:secret@db:5432/orders'
    """
    u = make_url(url)
    backend, _, driver = u.drivername.partition("+")
    if backend not in ("postgres", "postgresql"):
        return url
    return u.set(drivername=f"postgresql+{driver or 'psycopg'}").render_as_string(hide_password=False)


def make_engine(url: str, **kw: Any) -> Engine:
    """A SQLAlchemy engine set up for statem on SQLite or PostgreSQL (URL forms: see
    :func:`sqlalchemy_url`)."""
    url = sqlalchemy_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kw)
    connect_args = kw.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", int(DB_TIMEOUT_SECONDS))
    engine = create_engine(url, connect_args=connect_args, **kw)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, but only for connections idle longer than PING_IDLE_SECONDS.

    ``pool_pre_ping=True`` costs a round trip on every checkout, a large share of a short
    transaction; a connection checked in a moment ago is as alive as the ping would show.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["statem_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("statem_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_SECONDS:
            return  # new, or used a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection is dead")


_BEGIN = {"IMMEDIATE": "BEGIN IMMEDIATE", "DEFERRED": "BEGIN DEFERRED"}


def _sqlite_engine(url: str, **kw: Any) -> Engine:
    engine = create_engine(
        url, connect_args={"timeout": DB_TIMEOUT_SECONDS, "check_same_thread": False}, **kw
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(DB_TIMEOUT_SECONDS * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        # straight to the driver: this runs once per transaction, and a full SQLAlchemy
        # execution costs more than the BEGIN itself
        conn.connection.driver_connection.execute(_BEGIN[mode])  # type: ignore[union-attr]

    return engine


# --------------------------------------------------------------------------- transactions


@contextmanager
def transaction(db: Engine, *, write: bool = True) -> Iterator[Connection]:
    """One transaction on a connection from ``db``'s pool; database failures surface as
    StoreError (an IntegrityError passes through: callers resolve races with it).

    A read-only one (``write=False``) on SQLite begins DEFERRED, so it takes no write lock.
    """
    try:
        with db.connect() as conn:
            if not write and is_sqlite(conn):
                conn = conn.execution_options(sqlite_begin="DEFERRED")
            with conn.begin():
                yield conn
    except IntegrityError:
        raise
    except DBAPIError as exc:
        raise store_error(exc) from exc


@contextmanager
def transaction_on(conn: Connection) -> Iterator[Connection]:
    """One transaction on a connection the caller holds (an inline run keeps one for all
    its steps); failures surface as in :func:`transaction`."""
    try:
        with conn.begin():
            yield conn
    except IntegrityError:
        raise
    except DBAPIError as exc:
        raise store_error(exc) from exc


def store_error(exc: DBAPIError) -> StoreError:
    """A database error as a one-line StoreError, with a hint when the schema is missing."""
    msg = first_line(exc.orig or exc)
    if "no such table: statem_" in msg or ('relation "statem_' in msg and "does not exist" in msg):
        return StoreError(f"the database has no statem tables ({msg}); run `statem db upgrade` first")
    return StoreError(f"database error: {msg}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
