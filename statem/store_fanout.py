"""The fan-out's SQL: its counts row (``statem_fanouts``) and its element rows
(``statem_elements``), as named statements taking an open connection.

An element's end is a few small statements on fixed-size rows (its own element row, the
counts, the next element's task), so nothing grows with the number of elements but the
element rows themselves; the join reads the results back ordered by index.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from . import dialects
from .expressions import JSON
from .kinds import TaskKind, TaskStatus
from .schema import elements, executions, fanouts, tasks
from .semantics import Counts, ElementSpec

#: Element rows inserted per statement when a fan-out is armed (bounds a statement's size).
INSERT_BATCH = 1000

_GET_FANOUT = select(fanouts).where(fanouts.c.id == bindparam("p_id"))
_LOCK_FANOUT = _GET_FANOUT.with_for_update()
_INSERT_ELEMENTS = insert(elements)
_END_ELEMENT = (
    update(elements)
    .where(
        elements.c.fanout_id == bindparam("p_id"),
        elements.c.idx == bindparam("p_idx"),
        elements.c.status == "running",
    )
    .values(
        status=bindparam("p_status"),
        output=bindparam("p_output", type_=elements.c.output.type),
        error=bindparam("p_error", type_=elements.c.error.type),
        input=None,  # spent: the join needs only the results
    )
)
_WRITE_COUNTS = (
    update(fanouts)
    .where(fanouts.c.id == bindparam("p_id"))
    .values(
        armed=bindparam("p_armed"),
        running=bindparam("p_running"),
        done=bindparam("p_done"),
        failed=bindparam("p_failed"),
        joining=bindparam("p_joining"),
        updated_at=bindparam("p_now", type_=fanouts.c.updated_at.type),
    )
)
_START_ELEMENTS = (
    update(elements)
    .where(
        elements.c.fanout_id == bindparam("p_id"),
        elements.c.idx >= bindparam("p_from"),
        elements.c.idx < bindparam("p_to"),
    )
    .values(status="running")
    .returning(elements.c.idx, elements.c.input)
)
_RESULTS = select(elements).where(elements.c.fanout_id == bindparam("p_id")).order_by(elements.c.idx)


def counts(row: Row[Any]) -> Counts:
    """The progress of a ``statem_fanouts`` row."""
    return Counts(row.total, row.armed, row.running, row.done, row.failed)


def insert_fanout_task(conn: Connection, execution_id: str, payload: dict[str, Any], now: dt.datetime) -> int:
    """Insert a fan-out's own task (``waiting``: never claimed; its id is the fan-out's)."""
    values = {"execution_id": execution_id, "kind": TaskKind.fanout, "status": TaskStatus.waiting,
              "due_at": now, "payload": payload, "attempts": 0, "created_at": now}  # fmt: skip
    task_id = conn.execute(insert(tasks).returning(tasks.c.id), values).scalar_one()
    return int(task_id)


def insert_fanout(
    conn: Connection,
    fanout_id: int,
    execution_id: str,
    payload: dict[str, Any],
    spec: dict[str, Any],
    items: Sequence[ElementSpec],
    armed: int,
    now: dt.datetime,
) -> None:
    """Insert a fan-out's counts row and its element rows (in batches of
    :data:`INSERT_BATCH`); the first ``armed`` elements are marked running."""
    conn.execute(
        insert(fanouts).values(
            id=fanout_id, execution_id=execution_id, kind=payload["fanout"], total=len(items), armed=armed,
            running=armed, done=0, failed=0, max_concurrency=payload.get("max_concurrency"),
            tolerated=payload["tolerated"], joining=False, spec=spec, created_at=now, updated_at=now,
        )
    )  # fmt: skip
    for start in range(0, len(items), INSERT_BATCH):
        batch = items[start : start + INSERT_BATCH]
        conn.execute(
            _INSERT_ELEMENTS,
            [
                {"fanout_id": fanout_id, "idx": e.index, "branch": e.branch,
                 "status": "running" if e.index < armed else "pending", "input": e.input,
                 "output": None, "error": None}
                for e in batch
            ],
        )  # fmt: skip


_SHARE_EXECUTION = (
    select(executions.c.id)
    .where(executions.c.id == bindparam("p_id"))
    .with_for_update(read=True, key_share=True)
)


def share_execution(conn: Connection, execution_id: str) -> bool:
    """PostgreSQL: take ``FOR KEY SHARE`` on the execution row (False if it is gone).

    An element's end inserts tasks, whose foreign key takes this lock anyway; taking it
    first keeps the lock order of every step (execution, fan-out, tasks), so an element's
    end waits for a step holding the execution (and vice versa) instead of deadlocking
    with it. Element ends do not block each other: the lock is shared. SQLite: nothing
    to do (its writers are serialized)."""
    if dialects.is_sqlite(conn):
        return True
    return conn.execute(_SHARE_EXECUTION, {"p_id": execution_id}).first() is not None


def lock_fanout(conn: Connection, fanout_id: int) -> Row[Any] | None:
    """The counts row of a fan-out, locked until the transaction ends (SQLite: its
    writing transaction holds the database lock); None once joined or discarded."""
    q = _GET_FANOUT if dialects.is_sqlite(conn) else _LOCK_FANOUT
    return conn.execute(q, {"p_id": fanout_id}).first()


def get_fanouts(conn: Connection, ids: Iterable[int]) -> dict[int, Row[Any]]:
    """The counts rows of these fan-outs, by id (for progress displays)."""
    wanted = list(ids)
    if not wanted:
        return {}
    return {r.id: r for r in conn.execute(select(fanouts).where(fanouts.c.id.in_(wanted)))}


def end_element(conn: Connection, fanout_id: int, index: int, ok: bool, output: JSON, error: JSON) -> bool:
    """Record a running element's end in its own row; False if it was not running."""
    params = {"p_id": fanout_id, "p_idx": index, "p_status": "done" if ok else "failed",
              "p_output": output, "p_error": error}  # fmt: skip
    return conn.execute(_END_ELEMENT, params).rowcount == 1


def write_counts(conn: Connection, fanout_id: int, c: Counts, joining: bool, now: dt.datetime) -> None:
    """Write a fan-out's counts back (its row is locked)."""
    conn.execute(
        _WRITE_COUNTS,
        {"p_id": fanout_id, "p_armed": c.armed, "p_running": c.running, "p_done": c.done,
         "p_failed": c.failed, "p_joining": joining, "p_now": now},
    )  # fmt: skip


def start_elements(conn: Connection, fanout_id: int, first: int, end: int) -> list[tuple[int, JSON]]:
    """Mark elements ``first`` to ``end - 1`` running (one statement); returns their
    (index, input) in index order."""
    params = {"p_id": fanout_id, "p_from": first, "p_to": end}
    return sorted((int(r.idx), r.input) for r in conn.execute(_START_ELEMENTS, params))


def results(conn: Connection, fanout_id: int) -> Sequence[Row[Any]]:
    """Every element row (idx, branch, status, output, error...), in index order."""
    return conn.execute(_RESULTS, {"p_id": fanout_id}).all()


def delete_fanouts_of(conn: Connection, execution_id: str) -> dict[int, Row[Any]]:
    """Delete every fan-out of an execution with its elements; returns their counts rows.

    A step that discards armed work runs this BEFORE deleting the tasks: an element's end
    locks its fan-out row before it arms the next element's task, so once this statement
    has the rows, no element task can appear that the task delete would not see."""
    q = delete(fanouts).where(fanouts.c.execution_id == execution_id).returning(*fanouts.c)
    gone = {r.id: r for r in conn.execute(q)}
    if gone:
        conn.execute(delete(elements).where(elements.c.fanout_id.in_(list(gone))))
    return gone


def delete_fanouts(conn: Connection, ids: Sequence[int]) -> dict[int, Row[Any]]:
    """Delete fan-outs with their elements (joined or discarded); returns their counts rows."""
    if not ids:
        return {}
    gone = {r.id: r for r in conn.execute(delete(fanouts).where(fanouts.c.id.in_(ids)).returning(*fanouts.c))}
    conn.execute(delete(elements).where(elements.c.fanout_id.in_(ids)))
    return gone
