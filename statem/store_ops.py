"""The SQL of the operator operations (pause, resume, retry, move, upgrade): named
SQLAlchemy Core statements taking an open connection, like :mod:`statem.store` (kept
apart so that module stays the hot path's).

Task statuses beyond pending/claimed/waiting: ``held`` (armed work of a paused
execution; the claim query only takes pending tasks, so workers never poll it) and
``kept`` (an event that arrived while it was paused, applied after resume in order of
arrival: ``due_at`` is when it arrived, a timer's due time for a timer). Task kinds beyond
timer/effect/child/resume: ``trigger`` (a kept trigger), ``enter`` (a move while paused:
its state's always are tried on resume) and ``drain`` (applies the kept events one by one).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update

from .schema import executions, steps, tasks
from .semantics import TaskSpec
from .store import _task_rows, _unclaim

IN_FLIGHT_KINDS = ("effect", "child", "resume", "drain", "trigger", "enter")


def hold_tasks(conn: Connection, execution_id: str) -> None:
    """Pause: the execution's pending tasks become ``held`` (workers skip them); a pending
    kept-event drain is dropped (resume arms a new one)."""
    conn.execute(delete(tasks).where(tasks.c.execution_id == execution_id, tasks.c.kind == "drain"))
    conn.execute(
        update(tasks)
        .where(tasks.c.execution_id == execution_id, tasks.c.status == "pending")
        .values(status="held")
    )


def hold_claimed_task(conn: Connection, task_id: int, claim: str) -> bool:
    """Fenced: put a claimed task of a paused execution back, held (not run, no attempt used)."""
    return _unclaim(conn, task_id, claim, status="held", attempts=tasks.c.attempts - 1)


def hold_pending_task(conn: Connection, task_id: int) -> None:
    """A task put back as pending (an effect's next attempt) while paused: hold it."""
    conn.execute(
        update(tasks).where(tasks.c.id == task_id, tasks.c.status == "pending").values(status="held")
    )


def keep_task(
    conn: Connection, task: Row[Any], arrived_at: dt.datetime, result: dict[str, Any] | None
) -> bool:
    """Fenced: a claimed task whose event arrived while its execution is paused becomes
    ``kept`` (``result``: the effect's ``{ok, output}``, kept with it). False if the claim
    is no longer ours."""
    payload = dict(task.payload) if result is None else {**task.payload, "result": result}
    return _unclaim(conn, task.id, task.claim, status="kept", due_at=arrived_at, payload=payload)


def release_held(conn: Connection, execution_id: str, now: dt.datetime) -> None:
    """Resume: held timers already due become kept events (arriving at their due time);
    every other held task is pending again."""
    conn.execute(
        update(tasks)
        .where(
            tasks.c.execution_id == execution_id,
            tasks.c.status == "held",
            tasks.c.kind == "timer",
            tasks.c.due_at <= now,
        )
        .values(status="kept")
    )
    conn.execute(
        update(tasks)
        .where(tasks.c.execution_id == execution_id, tasks.c.status == "held")
        .values(status="pending")
    )


def insert_kept(
    conn: Connection, execution_id: str, kind: str, payload: dict[str, Any], arrived_at: dt.datetime
) -> None:
    """Keep an event (a trigger, a state to enter) for after resume."""
    conn.execute(
        insert(tasks).values(
            execution_id=execution_id, kind=kind, status="kept", due_at=arrived_at, payload=payload,
            attempts=0, created_at=arrived_at,
        )
    )  # fmt: skip


def kept_triggers(conn: Connection, execution_id: str) -> Sequence[Row[Any]]:
    """The triggers kept for an execution, in order of arrival."""
    return conn.execute(
        select(tasks)
        .where(tasks.c.execution_id == execution_id, tasks.c.kind == "trigger")
        .order_by(tasks.c.due_at, tasks.c.id)
    ).all()


_HAS_KEPT_TRIGGER = (
    select(tasks.c.id).where(tasks.c.execution_id == bindparam("p_id"), tasks.c.kind == "trigger").limit(1)
)


def has_kept_trigger(conn: Connection, execution_id: str) -> bool:
    """True while triggers kept for an execution wait to be applied."""
    return conn.execute(_HAS_KEPT_TRIGGER, {"p_id": execution_id}).first() is not None


def next_kept(conn: Connection, execution_id: str) -> Row[Any] | None:
    """The execution's earliest kept event (by arrival, then by id)."""
    return conn.execute(
        select(tasks)
        .where(tasks.c.execution_id == execution_id, tasks.c.status == "kept")
        .order_by(tasks.c.due_at, tasks.c.id)
        .limit(1)
    ).first()


def has_kept(conn: Connection, execution_id: str) -> bool:
    """True if the execution has kept events left to apply."""
    q = select(tasks.c.id).where(tasks.c.execution_id == execution_id, tasks.c.status == "kept").limit(1)
    return conn.execute(q).first() is not None


def has_work_in_flight(conn: Connection, execution_id: str) -> bool:
    """True if the execution has an effect, a child, a result or kept events pending."""
    q = (
        select(tasks.c.id)
        .where(tasks.c.execution_id == execution_id, tasks.c.kind.in_(IN_FLIGHT_KINDS))
        .limit(1)
    )
    return conn.execute(q).first() is not None


def delete_task(conn: Connection, task_id: int) -> None:
    """Delete a task row (a kept event being applied)."""
    conn.execute(delete(tasks).where(tasks.c.id == task_id))


def insert_task_with_id(
    conn: Connection, task_id: int, execution_id: str, spec: TaskSpec, now: dt.datetime
) -> None:
    """Arm a task under a given id: an effect retried by an operator keeps its id, and so
    its idempotency key (``<execution_id>:<task_id>``)."""
    conn.execute(insert(tasks).values(id=task_id, **_task_rows(execution_id, [spec], now, None)[0]))


def set_armed(conn: Connection, execution_id: str) -> None:
    """Mark an execution as possibly having tasks (after inserting one beside a step)."""
    conn.execute(update(executions).where(executions.c.id == execution_id).values(armed=True))


def children_with_status(conn: Connection, execution_id: str, statuses: Sequence[str]) -> list[str]:
    """Ids of an execution's children in one of ``statuses``."""
    rows = conn.execute(
        select(executions.c.id).where(
            executions.c.parent_id == execution_id, executions.c.status.in_(statuses)
        )
    )
    return [r.id for r in rows]


def last_failure(conn: Connection, execution_id: str) -> Row[Any] | None:
    """The latest step that failed applying an event (a timer or a result), with its event."""
    return conn.execute(
        select(steps)
        .where(
            steps.c.execution_id == execution_id,
            steps.c.kind.in_(("timer", "result")),
            steps.c.error.is_not(None),
        )
        .order_by(steps.c.seq.desc())
        .limit(1)
    ).first()


_EVENTS: Any = (
    select(
        steps.c.seq, steps.c.kind, steps.c.name, steps.c.to_state, steps.c.error, steps.c.event, steps.c.input
    )
    .where(steps.c.execution_id == bindparam("p_id"))
    .order_by(steps.c.seq)
)


def events(conn: Connection, execution_id: str) -> Sequence[Row[Any]]:
    """An execution's steps as a replay reads them (seq, kind, name, to_state, error,
    event, input), by seq: the steps that began a chain carry its event."""
    return conn.execute(_EVENTS, {"p_id": execution_id}).all()


def events_of_many(conn: Connection, execution_ids: Sequence[str]) -> Sequence[Row[Any]]:
    """:func:`events` (with ``execution_id``) of several executions, by execution then seq."""
    cols = [steps.c.execution_id, steps.c.seq, steps.c.kind, steps.c.name, steps.c.to_state, steps.c.error,
            steps.c.event, steps.c.input]  # fmt: skip
    q = select(*cols).where(steps.c.execution_id.in_(execution_ids))
    return conn.execute(q.order_by(steps.c.execution_id, steps.c.seq)).all()


def tasks_of_many(conn: Connection, execution_ids: Sequence[str]) -> Sequence[Row[Any]]:
    """Every task row of several executions, by id."""
    return conn.execute(
        select(tasks).where(tasks.c.execution_id.in_(execution_ids)).order_by(tasks.c.id)
    ).all()


def executions_by_id(conn: Connection, execution_ids: Sequence[str]) -> Sequence[Row[Any]]:
    """The execution rows with these ids (those that exist)."""
    return conn.execute(select(executions).where(executions.c.id.in_(execution_ids))).all()


_TASKS_OF = select(tasks).where(tasks.c.execution_id == bindparam("p_id")).order_by(tasks.c.id)


def tasks_of(conn: Connection, execution_id: str) -> Sequence[Row[Any]]:
    """Every task row of an execution, by id."""
    return conn.execute(_TASKS_OF, {"p_id": execution_id}).all()


_UNFINISHED = ("running", "waiting", "paused", "failed")


def _candidates(machine_id: str, to_version: int, from_version: int | None) -> Any:
    q = select(executions.c.id).where(
        executions.c.machine_id == machine_id,
        executions.c.status.in_(_UNFINISHED),
        executions.c.machine_version != to_version,
    )
    if from_version is not None:
        q = q.where(executions.c.machine_version == from_version)
    return q


def upgrade_candidates(
    conn: Connection, machine_id: str, to_version: int, from_version: int | None, after: str, limit: int
) -> list[str]:
    """The next ``limit`` ids (keyset: ids after ``after``) of the machine's unfinished
    executions not on ``to_version`` (only those on ``from_version`` when given)."""
    q = _candidates(machine_id, to_version, from_version).where(executions.c.id > after)
    return [r.id for r in conn.execute(q.order_by(executions.c.id).limit(limit))]


def count_upgrade_candidates(
    conn: Connection, machine_id: str, to_version: int, from_version: int | None
) -> int:
    """How many executions :func:`upgrade_candidates` will list."""
    n: int = conn.execute(
        select(func.count()).select_from(_candidates(machine_id, to_version, from_version).subquery())
    ).scalar_one()
    return n


def delete_tasks(conn: Connection, task_ids: Sequence[int]) -> Sequence[Row[Any]]:
    """Delete tasks by id; returns the rows deleted."""
    if not task_ids:
        return []
    return conn.execute(delete(tasks).where(tasks.c.id.in_(task_ids)).returning(*tasks.c)).all()


_SET_PAYLOAD = (
    update(tasks)
    .where(tasks.c.id == bindparam("p_task"))
    .values(payload=bindparam("p_payload", type_=tasks.c.payload.type))
)


def set_task_payload(conn: Connection, task_id: int, payload: dict[str, Any]) -> None:
    """Re-point a task (an upgrade keeps it for the new version's transition)."""
    conn.execute(_SET_PAYLOAD, {"p_task": task_id, "p_payload": payload})


_SET_VERSION = (
    update(executions)
    .where(executions.c.id == bindparam("p_id"))
    .values(machine_version=bindparam("p_version"))
)


def set_machine_version(conn: Connection, execution_id: str, version: int) -> None:
    """Pin an execution to another version of its machine (inside its upgrade step)."""
    conn.execute(_SET_VERSION, {"p_id": execution_id, "p_version": version})
