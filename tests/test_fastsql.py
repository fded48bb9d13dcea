"""SQLite: the step statements run straight on the driver (statem.fastsql) store and read
exactly what SQLAlchemy's ``conn.execute`` does, raise SQLAlchemy's wrapped errors, and
are seen by cursor listeners."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from statem import Engine, store
from statem.fastsql import Prepared
from statem.schema import executions, steps, tasks
from statem.semantics import TaskSpec


def _values(eid: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": eid, "machine_id": "m", "machine_version": 1, "state": "s", "status": "waiting",
        "context": {"n": 1, "nested": [1, "two", None], "none": None}, "input": {}, "output": None,
        "error": None, "parent_id": None, "parent_task_id": None, "seq": 1, "version": 1, "armed": False,
        "created_at": now, "updated_at": now,
    }  # fmt: skip


def _raw_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as raw:
        return list(raw.execute(f"SELECT * FROM {table} ORDER BY 1"))


@pytest.fixture
def lite(tmp_path: Path) -> Any:
    e = Engine(f"sqlite:///{tmp_path / 'statem.db'}")
    e.migrate()
    e.save_machine({"id": "m", "version": 1, "start_at": "s", "states": {"s": {"end": True}}})
    yield e, tmp_path / "statem.db"
    e.close()


def test_rows_stored_and_read_as_sqlalchemy_stores_and_reads_them(lite: Any) -> None:
    engine, path = lite
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    with engine.db.begin() as conn:
        conn.execute(sa.insert(executions), _values("by-sqlalchemy", now))
        store.insert_execution(conn, **_values("by-driver", now))
    stored = {row[0]: row[1:] for row in _raw_rows(path, "statem_executions")}
    assert stored["by-driver"] == stored["by-sqlalchemy"]  # the same text, the same JSON, the same time
    with engine.db.begin() as conn:
        read = conn.execute(sa.select(executions).where(executions.c.id == "by-sqlalchemy")).one()
        fast = store.get_execution(conn, "by-sqlalchemy")
        locked, kept = store.lock_for_trigger(conn, "by-sqlalchemy")
    assert fast is not None and locked is not None
    assert tuple(fast) == tuple(read) == tuple(locked)
    assert fast.updated_at == now and fast.context == _values("x", now)["context"]
    assert kept is False


def test_history_rows_match_sqlalchemy_rows(lite: Any) -> None:
    engine, path = lite
    now = dt.datetime.now(dt.UTC)
    row = {"seq": 1, "at": now, "kind": "trigger", "name": "go", "from_state": "a", "to_state": "b",
           "input": {"x": [1, 2]}, "output": None, "context": {"n": 2}, "error": None,
           "idempotency_key": "k", "event": None}  # fmt: skip
    with engine.db.begin() as conn:
        store.insert_execution(conn, **_values("a", now))
        store.insert_execution(conn, **_values("b", now))
        conn.execute(sa.insert(steps), {**row, "execution_id": "a"})
        fast = Prepared(sa.insert(steps), ["execution_id", *row])
        fast.execute(conn, {**row, "execution_id": "b"})
    rows = {r[0]: r[1:] for r in _raw_rows(path, "statem_steps")}
    assert rows["a"] == rows["b"]


def test_a_duplicate_is_sqlalchemys_integrity_error(lite: Any) -> None:
    engine, _ = lite
    now = dt.datetime.now(dt.UTC)
    with engine.db.begin() as conn:
        store.insert_execution(conn, **_values("dup", now))
    with pytest.raises(IntegrityError), engine.db.begin() as conn:
        store.insert_execution(conn, **_values("dup", now))


def test_cursor_listeners_see_every_statement(lite: Any) -> None:
    engine, _ = lite
    engine.save_machine(
        {"id": "c", "version": 1, "start_at": "on", "context": {"n": "0"},
         "states": {"on": {"actions": {"bump": {"state": "on", "context": {"n": "ctx['n'] + 1"}}}}}}
    )  # fmt: skip
    eid = engine.start("c").id
    seen: list[str] = []
    done: list[str] = []
    sa.event.listen(engine.db, "before_cursor_execute", lambda c, cur, sql, *a: seen.append(sql.split()[0]))
    sa.event.listen(engine.db, "after_cursor_execute", lambda c, cur, sql, *a: done.append(sql.split()[0]))
    engine.trigger(eid, "bump")
    assert seen == done == ["SELECT", "UPDATE", "INSERT"]


def test_a_step_that_keeps_its_state_and_status_assigns_neither(lite: Any) -> None:
    """SQLite rewrites every index on a column an UPDATE assigns, changed or not: a step
    that stays where it was leaves state and status out of its UPDATE; one that moves
    assigns them. The indexes stay right either way."""
    engine, path = lite
    engine.save_machine(
        {"id": "c", "version": 1, "start_at": "on", "context": {"n": "0"},
         "states": {"on": {"actions": {"bump": {"state": "on", "context": {"n": "ctx['n'] + 1"}},
                                       "stop": {"state": "off"}}},
                    "off": {"end": True}}}
    )  # fmt: skip
    eid = engine.start("c").id
    updates: list[str] = []
    sa.event.listen(
        engine.db,
        "before_cursor_execute",
        lambda c, cur, sql, *a: updates.append(sql) if sql.startswith("UPDATE statem_executions") else None,
    )
    engine.trigger(eid, "bump")
    engine.trigger(eid, "bump")
    engine.trigger(eid, "stop")
    stays, moves = updates[0].split(" WHERE ")[0], updates[2].split(" WHERE ")[0]
    assert "state=" not in stays and "status=" not in stays and "updated_at=" in stays
    assert "state=" in moves and "status=" in moves
    ex = engine.get(eid)
    assert (ex.state, ex.status, ex.context) == ("off", "finished", {"n": 2})
    assert [s.seq for s in engine.history(eid)] == [1, 2, 3, 4]
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM statem_executions").fetchone() == (4,)
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        by_state = (
            "SELECT count(*) FROM statem_executions INDEXED BY ix_statem_executions_state WHERE state = 'off'"
        )
        assert raw.execute(by_state).fetchone() == (1,)


def test_events_are_dispatched_only_once_someone_listens(lite: Any) -> None:
    """statem's own SQLite engine registers no per-statement listener, so SQLAlchemy skips
    its event dispatch; a listener added later is still called. (Its engine_disposed hook
    still stops the checkpointer: test_checkpoint.)"""
    engine, _ = lite
    assert engine.db._has_events is False
    seen: list[str] = []
    sa.event.listen(engine.db, "commit", lambda conn: seen.append("commit"))
    assert engine.db._has_events is True
    engine.start("m")
    assert seen == ["commit"]


def test_task_rows_inserted_and_read_as_sqlalchemy_does(lite: Any) -> None:
    engine, path = lite
    now = dt.datetime.now(dt.UTC)
    spec = TaskSpec("effect", now, {"effect": "work", "input": {"n": [1, None]}})
    claim = store.Claim("me", "token", now + dt.timedelta(seconds=30))
    with engine.db.begin() as conn:
        store.insert_execution(conn, **_values("a", now))
        store.insert_execution(conn, **_values("b", now))
        store.insert_tasks(conn, "a", [spec, spec], now)  # executemany
        [held] = store.insert_claimed_tasks(conn, "a", [spec], now, claim)  # the driver's rowid
        conn.execute(sa.insert(tasks), store._task_rows("b", [spec], now, None))
        conn.execute(sa.insert(tasks), store._task_rows("b", [spec], now, claim))
    rows = _raw_rows(path, "statem_tasks")  # by id: a's two pending, a's held, b's pending, b's held
    assert [r[1] for r in rows] == ["a", "a", "a", "b", "b"]
    tails = [r[2:] for r in rows]
    assert tails[0] == tails[1] == tails[3] and tails[2] == tails[4]
    with engine.db.begin() as conn:
        assert store.get_task(conn, held.id) == held  # the row built at insert is the row stored
        assert store.hold_task(conn, held.id, "token", "child")
        assert store.take_waiting_task(conn, held.id) is not None
        assert store.get_task(conn, held.id) is None


def test_statements_with_expanding_parameters_are_refused(lite: Any) -> None:
    engine, _ = lite
    with engine.db.connect() as conn, pytest.raises(ValueError, match="expanding"):
        Prepared(sa.select(tasks).where(tasks.c.kind.in_(["a", "b"]))).first(conn, {})


def test_a_statement_on_a_connection_without_a_transaction_begins_one(lite: Any) -> None:
    engine, _ = lite
    now = dt.datetime.now(dt.UTC)
    with engine.db.connect() as conn:
        store.insert_execution(conn, **_values("autobegun", now))
        assert conn.in_transaction()
        conn.rollback()  # as after conn.execute: nothing was committed on its own
    with engine.db.connect() as conn:
        assert store.get_execution(conn, "autobegun") is None
