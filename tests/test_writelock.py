"""SQLite: the writers of one process queue on a process-local write lock (statem.writelock).

Taken before ``BEGIN IMMEDIATE``, handed on at ``COMMIT``/``ROLLBACK`` (and when a
connection is invalidated or returned mid-transaction); first come, first served;
reentrant per thread; a wait past its timeout raises StoreError like SQLite's busy
timeout; read-only transactions do not take it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from statem import Engine, StoreError, dialects, writelock

from .helpers import effect_machine


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "statem.db")


@pytest.fixture
def lite(db_path: str) -> Iterator[Engine]:
    e = Engine(f"sqlite:///{db_path}")
    e.migrate()
    e.save_machine(
        {
            "id": "counter",
            "version": 1,
            "start_at": "on",
            "context": {"n": "0"},
            "states": {"on": {"actions": {"bump": {"state": "on", "context": {"n": "ctx['n'] + 1"}}}}},
        }
    )
    yield e
    e.close()


def _holding(engine: Engine, entered: threading.Event, leave: threading.Event) -> threading.Thread:
    """A thread that opens a write transaction, says so, and holds it until ``leave``."""

    def hold() -> None:
        with dialects.transaction(engine.db) as conn:
            conn.execute(text("SELECT 1"))
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(5)
    return thread


# --------------------------------------------------------------------------- the lock itself


def test_the_lock_is_reentrant_for_its_holder_and_free_after_the_last_release() -> None:
    lock = writelock.WriteLock()
    me = threading.get_ident()
    assert lock.acquire(1) and lock.acquire(1)
    lock.release(me)
    assert lock.held_by(me)
    got: list[bool] = []
    other = threading.Thread(target=lambda: got.append(lock.acquire(0.05)))
    other.start()
    other.join()
    assert got == [False]  # still held once
    lock.release(me)
    assert not lock.held_by(me)
    other = threading.Thread(target=lambda: got.append(lock.acquire(1)))
    other.start()
    other.join()
    assert got == [False, True]


def test_waiters_are_served_in_order_of_arrival() -> None:
    lock = writelock.WriteLock()
    me = threading.get_ident()
    assert lock.acquire(1)
    order: list[int] = []

    def waiter(i: int) -> None:
        assert lock.acquire(5)
        order.append(i)
        lock.release(threading.get_ident())

    threads = []
    for i in range(5):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        while len(lock._waiters) < i + 1:  # the next one arrives only once this one waits
            time.sleep(0.001)
    lock.release(me)
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_a_wait_that_runs_out_leaves_no_trace() -> None:
    lock = writelock.WriteLock()
    me = threading.get_ident()
    assert lock.acquire(1)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(0.05)))
    t.start()
    t.join()
    assert got == [False] and not lock._waiters
    lock.release(me)
    t = threading.Thread(target=lambda: got.append(lock.acquire(0.05)))
    t.start()
    t.join()
    assert got == [False, True]


def test_one_lock_per_database_file(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    assert writelock.for_path(a) is writelock.for_path(str(tmp_path / "." / "a.db"))
    assert writelock.for_path(a) is not writelock.for_path(b)


# --------------------------------------------------------------------------- on an engine


def test_a_write_transaction_holds_the_lock_and_a_read_does_not(lite: Engine, db_path: str) -> None:
    lock = writelock.for_path(db_path)
    me = threading.get_ident()
    with dialects.transaction(lite.db, write=False) as conn:
        conn.execute(text("SELECT 1"))
        assert not lock.held_by(me)
    with dialects.transaction(lite.db) as conn:
        conn.execute(text("SELECT 1"))
        assert lock.held_by(me)
    assert not lock.held_by(me)
    with pytest.raises(ZeroDivisionError), dialects.transaction(lite.db) as conn:  # rolled back
        conn.execute(text("SELECT 1"))
        1 / 0  # noqa: B018
    assert not lock.held_by(me)


def test_threads_writing_at_once_all_commit(lite: Engine) -> None:
    ids = [lite.start("counter").id for _ in range(4)]
    errors: list[BaseException] = []

    def bump(eid: str) -> None:
        try:
            for _ in range(50):
                lite.trigger(eid, "bump")
                lite.start("counter")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(ids[i % 4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert [lite.get(eid).context["n"] for eid in ids] == [100, 100, 100, 100]
    assert len(lite.history(ids[0])) == 1 + 100  # one row per step, seq contiguous
    assert [s.seq for s in lite.history(ids[0])] == list(range(1, 102))
    assert len(lite.executions(machine_id="counter", limit=1000)) == 4 + 8 * 50


def test_a_reader_goes_on_while_another_thread_writes(lite: Engine) -> None:
    eid = lite.start("counter").id
    entered, leave = threading.Event(), threading.Event()
    holder = _holding(lite, entered, leave)
    try:
        assert lite.get(eid).context == {"n": 0}
    finally:
        leave.set()
        holder.join()


def test_a_writer_waits_for_the_holder_then_commits(lite: Engine) -> None:
    eid = lite.start("counter").id
    entered, leave = threading.Event(), threading.Event()
    holder = _holding(lite, entered, leave)
    threading.Timer(0.2, leave.set).start()
    try:
        assert lite.trigger(eid, "bump").context == {"n": 1}
    finally:
        leave.set()
        holder.join()


def test_a_wait_past_the_timeout_raises_store_error_and_applies_nothing(
    lite: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = lite.start("counter").id
    monkeypatch.setattr(dialects, "DB_TIMEOUT_SECONDS", 0.2)
    entered, leave = threading.Event(), threading.Event()
    holder = _holding(lite, entered, leave)
    try:
        with pytest.raises(StoreError, match="locked") as caught:
            lite.trigger(eid, "bump")
        assert caught.value.outage  # a worker backs off, as on SQLite's busy timeout
    finally:
        leave.set()
        holder.join()
    assert lite.get(eid).context == {"n": 0}
    assert lite.trigger(eid, "bump").context == {"n": 1}  # and the lock is free again


def test_an_invalidated_connection_hands_the_lock_on(lite: Engine, db_path: str) -> None:
    lock = writelock.for_path(db_path)
    with lite.db.connect() as conn:
        conn.begin()
        conn.execute(text("SELECT 1"))
        assert lock.held_by(threading.get_ident())
        conn.invalidate()
    assert not lock.held_by(threading.get_ident())
    eid = lite.start("counter").id  # another thread would not wait either
    done: list[Any] = []
    t = threading.Thread(target=lambda: done.append(lite.trigger(eid, "bump").context))
    t.start()
    t.join(5)
    assert done == [{"n": 1}]


def test_a_sync_machine_whose_effect_starts_and_triggers_does_not_deadlock(lite: Engine) -> None:
    started: list[str] = []

    def work(input: dict[str, Any], *, idempotency_key: str) -> Any:
        eid = lite.start("counter").id  # a write from inside the caller's inline run
        lite.trigger(eid, "bump")
        started.append(eid)
        return input["n"] + 1

    lite.effects.register("work", work)
    lite.save_machine({**effect_machine(), "execution_mode": "sync"})
    ex = lite.start("fx", {"n": 1})
    assert (ex.state, ex.output) == ("done", 2)
    assert lite.get(started[0]).context == {"n": 1}
