"""The differences between SQLite and PostgreSQL in how statem connects and locks.

(The statement-level differences are in :mod:`statem.store`, next to the statements:
``FOR UPDATE SKIP LOCKED`` in claims, and the PostgreSQL forms that do in one statement
what SQLite does in two.)

* Row locks: PostgreSQL locks an execution row with ``SELECT ... FOR UPDATE``; SQLite
  has no row locks, so every writing transaction starts with ``BEGIN IMMEDIATE`` and
  holds the database's single write lock (readers go on, thanks to WAL). The writers of
  one process queue for it on a process-local lock first (:mod:`statem.writelock`), taken
  before ``BEGIN IMMEDIATE`` and handed on at ``COMMIT``/``ROLLBACK``: they wake at once,
  in order, instead of sleeping in SQLite's busy handler (which still arbitrates between
  processes).
* Claims: PostgreSQL skips rows other workers hold (``FOR UPDATE SKIP LOCKED``).
* Wake-ups: PostgreSQL ``NOTIFY``s workers when new tasks are armed.
* WAL checkpoints (SQLite): a background thread per engine copies the WAL back into the
  database file (``PRAGMA wal_checkpoint(PASSIVE)``, every CHECKPOINT_SECONDS while there
  is something to copy), so a caller's commit does not pay for it; SQLite's own
  auto-checkpoint stays on only as a backstop, at CHECKPOINT_BACKSTOP_PAGES. See
  :class:`Checkpointer`.
* Stale connections: a pooled PostgreSQL connection that sat idle is pinged before use
  (one round trip); one in steady use is not. A server restarted in between costs at
  most one failed transaction per process (StoreError; the pool is then replaced),
  which nothing half-applies: the transaction rolls back.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError

from . import jsoncodec, writelock
from .errors import StoreError
from .settings import DB_TIMEOUT_SECONDS, PING_IDLE_SECONDS

#: The PostgreSQL channel workers LISTEN on for new tasks.
NOTIFY_CHANNEL = "statem_tasks"
#: SQLite: seconds between two background WAL checkpoints (each one a no-op when nothing
#: was written since the last).
CHECKPOINT_SECONDS = 0.05
#: SQLite: WAL pages after which a committing connection checkpoints by itself anyway
#: (SQLite's auto-checkpoint, default 1,000), should the background thread fall behind.
CHECKPOINT_BACKSTOP_PAGES = 20_000

log = logging.getLogger("statem")


def is_sqlite(conn: Connection | Engine) -> bool:
    """True on SQLite."""
    return conn.dialect.name == "sqlite"


def notify(conn: Connection) -> None:
    """Wake listening workers when this transaction commits (PostgreSQL only)."""
    if not is_sqlite(conn):
        conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


def lease_only(conn: Connection, *, claim: bool = False) -> None:
    """PostgreSQL: this transaction writes only leases (a claim, a renewal), so its commit
    need not wait for the WAL flush (``synchronous_commit`` off for this transaction).

    Atomicity and isolation are unchanged; only durability across a *server* crash is
    relaxed, and that is safe for a lease: a claim lost with the last fraction of a second
    of WAL leaves its task pending as before the claim, and the claimant's result step is
    then refused by the claim fence (another worker runs the task: effects are at least
    once). A step committed after the claim flushes the WAL up to and past it, so a step
    never outlives its claim. Steps themselves always commit synchronously.

    ``claim``: the transaction is a claim (:func:`statem.claims.claim_tasks`), whose one
    good plan is an ordered walk of the partial index of its status, stopped at the
    limit. Ready tasks come and go faster than statistics follow (``ANALYZE`` mostly
    sees none due), so the planner, trusting them, would fetch and sort every ready task
    (a bitmap scan) or the whole table (a sequential scan) to keep a few: measured, 0.9 ms
    of server time per claim with 4,000 ready tasks, growing with the backlog. Both are
    switched off for this transaction only (the same single round trip).
    """
    if not is_sqlite(conn):
        conn.execute(_CLAIM_SETTINGS if claim else _ASYNC_COMMIT)


def claim_plan(conn: Connection) -> None:
    """PostgreSQL: the rest of this transaction plans a claim as :func:`lease_only` does
    with ``claim`` (the ordered index walk), its commit unchanged: for a claim made at the
    end of a step's transaction (:class:`statem.batch.GroupCommit`)."""
    if not is_sqlite(conn):
        conn.execute(_CLAIM_PLAN)


_ASYNC_COMMIT = text("SET LOCAL synchronous_commit TO OFF")
_PLAN = "set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)"
_CLAIM_SETTINGS = text(f"SELECT set_config('synchronous_commit', 'off', true), {_PLAN}")
_CLAIM_PLAN = text(f"SELECT {_PLAN}")


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
    kw.setdefault("json_serializer", jsoncodec.dumps)
    kw.setdefault("json_deserializer", jsoncodec.loads)
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kw)
    connect_args = kw.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", int(DB_TIMEOUT_SECONDS))
    engine = create_engine(url, connect_args=connect_args, **kw)
    _ping_when_idle(engine)
    _on_pg_connections(engine)
    return engine


#: PostgreSQL: the server process ids of each statem engine's pooled connections.
_BACKENDS: weakref.WeakKeyDictionary[Engine, set[int]] = weakref.WeakKeyDictionary()
_BACKEND_PID = "statem_backend_pid"


def own_backends(engine: Engine) -> set[int]:
    """The server process ids of ``engine``'s open connections (PostgreSQL; a live set,
    kept by the pool's events), so its workers can tell their own engine's ``NOTIFY``s
    from other processes': every commit here that arms work already wakes this engine's
    workers in-process (:meth:`statem.runtime.Runtime.wake`), and its NOTIFY arriving a
    moment later only made them claim again, for nothing (in ``bench.executor``, 2.0 of
    the 3.9 claims per order came back empty; 1.5 of 3.3 once these are skipped)."""
    return _BACKENDS.setdefault(engine, set())


def _on_pg_connections(engine: Engine) -> None:
    """Set up each new PostgreSQL connection of ``engine``, and keep :func:`own_backends`.

    A new connection's session time zone becomes UTC, whatever the server's: psycopg
    returns a ``timestamptz`` in the session's zone, and with the server's (often
    ``Etc/UTC``, a ZoneInfo) every value read needed ``astimezone(UTC)``, about 3 µs each,
    eight per timer step; in UTC it comes as ``datetime.timezone.utc``, which
    :class:`statem.schema.UTCDateTime` keeps as it is. Instants compare the same in any
    zone, and statem's SQL formats none, so nothing else changes; a pooler that drops the
    setting only costs the conversion back.
    """
    pids = own_backends(engine)

    @event.listens_for(engine, "connect")
    def _opened(dbapi_conn: Any, record: Any) -> None:
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        try:
            cur = dbapi_conn.cursor()
            cur.execute("SET TIME ZONE 'UTC'")
            cur.close()
        finally:
            dbapi_conn.autocommit = autocommit
        pid = int(dbapi_conn.info.backend_pid)  # psycopg 3, the driver statem installs
        record.info[_BACKEND_PID] = pid
        pids.add(pid)

    def _closed(_dbapi_conn: Any, record: Any, *_rest: Any) -> None:
        if record is not None:
            pids.discard(record.info.pop(_BACKEND_PID, -1))

    for name in ("close", "invalidate"):
        event.listen(engine, name, _closed)


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
#: The connection info key a read-only transaction sets to begin DEFERRED (no write lock). Not
#: a "begin" listener reading an execution option: any connection event listener makes
#: SQLAlchemy (and statem.fastsql) look its event collections up on every statement.
_BEGIN_MODE = "statem_begin"
#: The connection info key naming the thread whose entry of the write lock a connection holds.
_WRITER = "statem_writer"


def _sqlite_engine(url: str, **kw: Any) -> Engine:
    engine = create_engine(
        url, connect_args={"timeout": DB_TIMEOUT_SECONDS, "check_same_thread": False}, **kw
    )
    path = _file_path(url)
    checkpointer = Checkpointer(path) if path is not None else None
    lock = writelock.for_path(path) if path is not None else None

    @event.listens_for(engine, "engine_disposed")
    def _on_dispose(_engine: Engine) -> None:
        if checkpointer is not None:
            checkpointer.stop()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        if path is not None:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(DB_TIMEOUT_SECONDS * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        if checkpointer is not None:
            cur.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_BACKSTOP_PAGES}")
            checkpointer.ensure_running()
        cur.close()

    def release(info: dict[Any, Any] | None) -> None:
        """Hand on the write lock this connection holds, if it holds it."""
        owner = info.pop(_WRITER, None) if info is not None else None
        if owner is not None and lock is not None:
            lock.release(owner)

    def do_begin(proxied: Any) -> None:
        # The BEGIN itself is sent here, in the dialect's do_begin, not in the listener:
        # SQLAlchemy wraps what do_begin raises (a lock held past the busy timeout is then
        # an OperationalError, which the engine reports as StoreError) and keeps the
        # connection's state straight; an error raised by a listener escapes unwrapped.
        # Straight to the driver: a full SQLAlchemy execution costs more than the BEGIN.
        mode = proxied.info.pop(_BEGIN_MODE, "IMMEDIATE")
        if mode == "IMMEDIATE" and lock is not None:
            if not lock.acquire(DB_TIMEOUT_SECONDS):
                raise sqlite3.OperationalError(
                    f"database is locked (another thread of this process held it for over "
                    f"{DB_TIMEOUT_SECONDS:g}s)"
                )
            proxied.info[_WRITER] = threading.get_ident()
        try:
            proxied.driver_connection.execute(_BEGIN[mode])
        except BaseException:
            release(proxied.info)
            raise

    def do_commit(proxied: Any) -> None:
        proxied.commit()
        if not proxied.driver_connection.in_transaction:
            release(_info(proxied))
        # else the COMMIT failed and left the transaction open: its ROLLBACK releases

    def do_rollback(proxied: Any) -> None:
        try:
            proxied.rollback()
        finally:
            release(_info(proxied))

    if lock is not None:
        for name in ("close", "invalidate"):  # a connection gone mid-transaction

            def _gone(_dbapi_conn: Any, record: Any, *_rest: Any) -> None:
                if record is not None:
                    release(record.info)

            event.listen(engine, name, _gone)

    dialect = engine.dialect  # this engine's own dialect instance
    setattr(dialect, "do_begin", do_begin)  # noqa: B010
    setattr(dialect, "do_commit", do_commit)  # noqa: B010
    setattr(dialect, "do_rollback", do_rollback)  # noqa: B010
    # Last, after every listener above: any connection-event listener (engine_disposed
    # is one) sets this flag, and with it SQLAlchemy (and fastsql) look the event
    # collections up around every BEGIN, statement and COMMIT: about 10 microseconds of a
    # 180-microsecond trigger(). ``dispose()`` dispatches engine_disposed whatever the flag
    # says, and a listener added later (a benchmark's statement counter) sets it again.
    engine._has_events = False
    return engine


def _info(proxied: Any) -> dict[Any, Any] | None:
    """A pooled connection's info; None for the bare connection SQLAlchemy sets the dialect
    up on (it has none, and never began a transaction here)."""
    try:
        info: dict[Any, Any] = proxied.info
    except NotImplementedError:
        return None
    return info


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
                conn.connection.info[_BEGIN_MODE] = "DEFERRED"  # read by do_begin, once
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
    return StoreError(f"database error: {msg}", outage=is_outage(exc))


def is_outage(exc: BaseException) -> bool:
    """True if ``exc`` says the database was away, locked or busy, not that it refused the
    data: then the step may succeed later, and a worker backs off instead of failing it."""
    if isinstance(exc, StoreError):
        return exc.outage
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return False


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# --------------------------------------------------------------------------- WAL checkpoints (SQLite)


def _file_path(url: str) -> str | None:
    """The database file of a SQLite URL; None for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return database


class Checkpointer:
    """A daemon thread that keeps an SQLite database's WAL short, off the callers' path.

    With SQLite's default, the commit that pushes the WAL past 1,000 pages copies them all
    into the database file and syncs it before it returns: one caller in a few hundred
    waits many times longer than the others (the p99 of ``trigger()``). Here a thread
    runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of its own every
    CHECKPOINT_SECONDS: a passive checkpoint never waits for readers or writers (they go
    on while it copies), and once it has copied everything the next writer starts the WAL
    over from the beginning. Started with the engine's first connection (again after a
    fork or a dispose), stopped when the engine is disposed (``Engine.close()``).
    """

    def __init__(self, path: str, interval: float = CHECKPOINT_SECONDS) -> None:
        self.path = path
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        """Start the thread unless it is running in this process."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._loop, args=(self._stop,), name="statem-wal-checkpoint", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (its last checkpoint finishes first)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self, stop: threading.Event) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not stop.wait(self.interval):
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=0, check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the file went away, or is locked: try again later
                    log.debug("statem: background WAL checkpoint of %s: %s", self.path, exc)
                    if conn is not None:
                        conn.close()
                        conn = None
        finally:
            if conn is not None:
                conn.close()
