"""All of statem's SQL, as named SQLAlchemy Core statements taking an open connection.

Every function runs inside the caller's transaction, so the engine commits a step's
state, history rows and tasks together (one transaction per step). The statements of the
hot path are built once. Where PostgreSQL can do in one statement what SQLite needs two
for (a step's history with its execution write; finishing a task with arming the next),
both forms sit side by side here; connection and locking setup is in
:mod:`statem.dialects`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Row,
    bindparam,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import result_tuple

from . import dialects
from .errors import ConcurrencyError
from .fastsql import Prepared
from .kinds import Status, TaskKind, TaskStatus
from .schema import executions, steps, tasks
from .semantics import StepRecord, TaskSpec

# --------------------------------------------------------------------------- executions


# run straight on the driver on SQLite (statem.fastsql), for every column (steps.create_execution)
_INSERT_EXECUTION = Prepared(insert(executions), [c.name for c in executions.c])

# Rows as a write left them, built here instead of read back (RETURNING costs a column
# decode per value): an INSERT stores exactly the values given, and a fenced UPDATE
# proves that every column it did not set still holds what the row it was fenced by says.
_execution_row = result_tuple([c.name for c in executions.c])
_EXECUTION_INDEX = {c.name: i for i, c in enumerate(executions.c)}
_task_row = result_tuple([c.name for c in tasks.c])


def insert_execution(conn: Connection, **values: Any) -> Row[Any]:
    """Create an execution row (every column given); returns it as stored (built here: no read)."""
    _INSERT_EXECUTION.execute(conn, values)
    return _execution_row(values[c.name] for c in executions.c)


# The statements of the hot path (one step) are built once: building a SQLAlchemy
# statement costs more than running it on SQLite.
_GET_EXECUTION = select(executions).where(executions.c.id == bindparam("p_id"))
# FOR NO KEY UPDATE, not FOR UPDATE: statem never changes an execution's id, and the
# weaker lock does not conflict with the KEY SHARE lock a foreign key check takes. A child's
# last step (holding the child's row) inserts its parent's resume task, whose foreign key
# check locks the parent's key; cancel(parent) holds the parent and waits for the child.
# With FOR UPDATE the two deadlock (child then parent, parent then child); with this one
# lock order holds everywhere: parent before child, and a key check waits for nobody.
_LOCK_EXECUTION = _GET_EXECUTION.with_for_update(key_share=True)
_FENCE = (executions.c.id == bindparam("p_id"), executions.c.version == bindparam("p_version"))
_STEP_VALUES: dict[str, Any] = {
    "version": bindparam("p_version") + 1,
    "context": bindparam("p_context", type_=executions.c.context.type),
    "output": bindparam("p_output", type_=executions.c.output.type),
    "error": bindparam("p_error"),
    "seq": bindparam("p_seq"),
    "armed": bindparam("p_armed"),
    "updated_at": bindparam("p_now", type_=executions.c.updated_at.type),
}
_WRITE_STEP = (
    update(executions)
    .where(*_FENCE)
    .values(state=bindparam("p_state"), status=bindparam("p_status"), **_STEP_VALUES)
)
# SQLite rewrites the entries of every index holding a column an UPDATE assigns, changed
# or not, and five of statem_executions' seven indexes hold state or status: a step that
# leaves both as they were (an action that only updates the context) assigns neither, and
# rewrites two indexes instead of five (measured: 10-25 us less per step). PostgreSQL
# writes a new entry in every index whatever is assigned (updated_at is indexed, so an
# update is never HOT): there it stays the one statement.
_WRITE_IN_PLACE = update(executions).where(*_FENCE).values(**_STEP_VALUES)


def _write_step_with_history() -> Any:
    """PostgreSQL: the fenced execution UPDATE and the INSERT of its history rows (the JSON
    array ``:p_rows``) as one statement. The INSERT selects only if the UPDATE matched, so
    a failed fence writes nothing (and selects no row)."""
    written = _WRITE_STEP.returning(executions.c.id).cte("written")
    names = [c.name for c in steps.c]
    rows = func.json_populate_recordset(
        literal_column("NULL::statem_steps"), bindparam("p_rows", type_=JSON)
    ).table_valued(*names)
    history = insert(steps).from_select(
        names, select(*(rows.c[n] for n in names)).where(select(written.c.id).exists())
    )
    return select(*written.c).add_cte(history.cte("history"))


_WRITE_STEP_WITH_HISTORY = _write_step_with_history()
_WRITE_SEQ = (
    update(executions)
    .where(*_FENCE)
    .values(
        version=bindparam("p_version") + 1,
        seq=bindparam("p_seq"),
        updated_at=bindparam("p_now", type_=executions.c.updated_at.type),
    )
)
_INSERT_STEPS = insert(steps)
_INSERT_TASKS = insert(tasks)
_TASK_KEYS = ["execution_id", "kind", "due_at", "payload", "effect", "created_at", "status", "attempts"]
# (straight on the driver on SQLite) the INSERT of a pending task, of a claimed one: _task_rows
_INSERT_PENDING, _INSERT_HELD = (Prepared(_INSERT_TASKS, _TASK_KEYS + extra)
                                 for extra in ([], ["claim", "owner", "lease_expires_at"]))  # fmt: skip
_INSERT_CLAIMED = insert(tasks).returning(tasks.c.id)
_INSERT_CLAIMED_MANY = insert(tasks).returning(tasks.c.id, sort_by_parameter_order=True)
_HAS_KEY = select(steps.c.seq).where(
    steps.c.execution_id == bindparam("p_id"), steps.c.idempotency_key == bindparam("p_key")
)
#: Kinds a step never discards: a trigger kept while the execution was paused, and the
#: task that applies the kept events one by one after ``resume`` (statem.operations).
INBOX_KINDS = ("trigger", "drain")
_DISCARD_TASKS = (
    delete(tasks)
    .where(tasks.c.execution_id == bindparam("p_id"), tasks.c.kind.not_in(INBOX_KINDS))
    .returning(*tasks.c)
)
_FINISH_TASK = delete(tasks).where(
    tasks.c.id == bindparam("p_task"),
    tasks.c.claim == bindparam("p_claim"),
    tasks.c.status == TaskStatus.claimed,
)


# the statements every step runs, straight on the driver on SQLite (statem.fastsql)
_FAST_GET_EXECUTION = Prepared(_GET_EXECUTION)
_FAST_WRITE_STEP, _FAST_FINISH_TASK = Prepared(_WRITE_STEP), Prepared(_FINISH_TASK)
_FAST_WRITE_IN_PLACE = Prepared(_WRITE_IN_PLACE)


def get_execution(conn: Connection, execution_id: str) -> Row[Any] | None:
    """The execution row, without locking it."""
    return _FAST_GET_EXECUTION.first(conn, {"p_id": execution_id})


def lock_execution(conn: Connection, execution_id: str) -> Row[Any] | None:
    """The execution row, locked until the transaction ends (serializes its steps).

    SQLite has no row locks: its writing transactions already hold the database lock.
    """
    if dialects.is_sqlite(conn):
        return _FAST_GET_EXECUTION.first(conn, {"p_id": execution_id})
    return conn.execute(_LOCK_EXECUTION, {"p_id": execution_id}).first()


# The execution row and whether kept triggers wait, in one statement. On SQLite its write
# transaction holds the database lock from BEGIN IMMEDIATE: the read sees every commit.
_KEPT_TRIGGER = (
    select(tasks.c.id)
    .where(tasks.c.execution_id == executions.c.id, tasks.c.kind == TaskKind.trigger)
    .exists()
    .label("statem_kept_trigger")
)
_GET_EXECUTION_KEPT = Prepared(
    select(*executions.c, _KEPT_TRIGGER).where(executions.c.id == bindparam("p_id"))
)


# PostgreSQL: the statement locks the row, and returns its latest version (it may have
# waited for the lock), but reads the EXISTS in the snapshot it started with: a trigger
# kept by the transaction it waited for would be missed. So it also reads the row's version
# in that snapshot. Triggers are kept only while the execution is paused, or while others
# wait already; every pause, resume and drain step writes the row (version + 1). If the
# locked row's version is the snapshot's, nobody wrote the row in between: the kept triggers
# are as the snapshot saw them, or the row is paused (and the trigger is kept whatever they
# are). If the versions differ, the answer is left to a query of its own
# (statem.operations.must_keep_trigger): one round trip, only when a writer just went by.
_SNAPSHOT = executions.alias("statem_snapshot")
_LOCK_FOR_TRIGGER = (
    select(
        *executions.c,
        _KEPT_TRIGGER,
        select(_SNAPSHOT.c.version).where(_SNAPSHOT.c.id == executions.c.id).scalar_subquery(),
    )
    .where(executions.c.id == bindparam("p_id"))
    .with_for_update(key_share=True, of=executions)
)


def lock_for_trigger(conn: Connection, execution_id: str) -> tuple[Row[Any] | None, bool | None]:
    """:func:`lock_execution`, and whether kept triggers wait, read by the same statement;
    None for that when it could not be told there (PostgreSQL, after waiting for a writer:
    see :func:`statem.operations.must_keep_trigger`)."""
    if dialects.is_sqlite(conn):
        found = _GET_EXECUTION_KEPT.first(conn, {"p_id": execution_id})
        return (None, None) if found is None else (_execution_row(found[:-1]), bool(found[-1]))
    locked = conn.execute(_LOCK_FOR_TRIGGER, {"p_id": execution_id}).first()
    if locked is None:
        return None, None
    *values, kept, snapshot_version = locked
    row = _execution_row(values)
    return row, bool(kept) if snapshot_version == row.version else None


def write_step(
    conn: Connection, row: Row[Any], *, history: list[dict[str, Any]] | None = None, **values: Any
) -> Row[Any]:
    """Write back an execution after a step, fenced by its optimistic version; ``values``
    as :func:`step_params` takes them.

    Raises ConcurrencyError, changing nothing, when ``row.version`` is no longer the
    stored one. Returns the row as written (built here: no read). ``history`` (PostgreSQL
    only; see :func:`record_step`) is inserted by the same statement.
    """
    params = step_params(row, **values)
    if history is not None:
        params["p_rows"] = history
        matched = len(conn.execute(_WRITE_STEP_WITH_HISTORY, params).all())
    elif params["p_state"] == row.state and params["p_status"] == row.status and dialects.is_sqlite(conn):
        # unchanged: the version fence guarantees the stored row still holds row's values
        matched = _FAST_WRITE_IN_PLACE.execute(conn, params)
    else:
        matched = _FAST_WRITE_STEP.execute(conn, params)
    _fenced(conn, row, matched)
    return as_written(row, params)


def step_params(
    row: Row[Any],
    *,
    state: str,
    status: str,
    context: Any,
    output: Any,
    error: str | None,
    seq: int,
    armed: bool,
    now: dt.datetime,
) -> dict[str, Any]:
    """The parameters of the fenced execution write of a step on ``row``."""
    return {
        "p_id": row.id, "p_version": row.version, "p_state": state, "p_status": status,
        "p_context": context, "p_output": output, "p_error": error, "p_seq": seq, "p_armed": armed,
        "p_now": now,
    }  # fmt: skip


_WRITTEN = ("state", "status", "context", "output", "error", "seq", "armed")


def as_written(row: Row[Any], params: dict[str, Any]) -> Row[Any]:
    """``row`` as the write with ``params`` (:func:`step_params`) leaves it."""
    written = list(row)
    for name in _WRITTEN:
        written[_EXECUTION_INDEX[name]] = params["p_" + name]
    written[_EXECUTION_INDEX["version"]] = row.version + 1
    written[_EXECUTION_INDEX["updated_at"]] = params["p_now"]
    return _execution_row(written)


def write_seq(conn: Connection, row: Row[Any], seq: int, now: dt.datetime) -> None:
    """Advance an execution's last seq (history rows that do not move it), fenced."""
    params = {"p_id": row.id, "p_version": row.version, "p_seq": seq, "p_now": now}
    _fenced(conn, row, conn.execute(_WRITE_SEQ, params).rowcount)


def _fenced(conn: Connection, row: Row[Any], rowcount: int) -> None:
    if rowcount != 1:
        raise ConcurrencyError(f"execution {row.id!r} was changed by another writer; retry")


def list_executions(
    conn: Connection,
    *,
    machine_id: str | None = None,
    status: str | None = None,
    state: str | None = None,
    parent_id: str | None = None,
    updated_before: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
    after: tuple[dt.datetime, str] | None = None,
) -> Sequence[Row[Any]]:
    """Executions matching every given filter, newest first.

    ``after`` is a keyset cursor, the ``(created_at, id)`` of the last row of the previous
    page: the page goes on right after it in the same order, so executions added meanwhile
    never shift a page (an offset would).
    """
    q = select(executions)
    if after is not None:
        created, eid = after
        # "<=" bounds an index scan on created_at; the OR only sorts out ties at the edge
        q = q.where(
            executions.c.created_at <= created,
            or_(executions.c.created_at < created, executions.c.id > eid),
        )
    for col, value in (
        (executions.c.machine_id, machine_id),
        (executions.c.status, status),
        (executions.c.state, state),
        (executions.c.parent_id, parent_id),
    ):
        if value is not None:
            q = q.where(col == value)
    if updated_before is not None:
        # an execution is created before it last moves: the second bound is redundant, but it
        # lets the newest-first index scan start at the cutoff instead of walking down to it
        q = q.where(executions.c.updated_at < updated_before, executions.c.created_at < updated_before)
    q = q.order_by(executions.c.created_at.desc(), executions.c.id).limit(limit).offset(offset)
    return conn.execute(q).all()


def live_children(conn: Connection, execution_id: str) -> list[str]:
    """Ids of the unfinished child executions of an execution."""
    rows = conn.execute(
        select(executions.c.id).where(
            executions.c.parent_id == execution_id,
            executions.c.status.in_((Status.running, Status.waiting, Status.paused, Status.failed)),
        )
    )
    return [r.id for r in rows]


def _depth_statement() -> Any:
    first = select(executions.c.parent_id, literal(0).label("d")).where(executions.c.id == bindparam("p_id"))
    chain = first.cte("ancestry", recursive=True)
    up = executions.alias("up")
    chain = chain.union_all(
        select(up.c.parent_id, chain.c.d + 1).where(
            up.c.id == chain.c.parent_id, chain.c.d <= bindparam("p_limit")
        )
    )
    return select(func.max(chain.c.d))


_DEPTH = Prepared(_depth_statement())  # built once: building it costs far more than running it


def depth(conn: Connection, execution_id: str, limit: int) -> int:
    """How many ancestors an execution has (0 for a root), counted up to ``limit + 1``."""
    found: int | None = _DEPTH.scalar(conn, {"p_id": execution_id, "p_limit": limit})
    return found or 0


# --------------------------------------------------------------------------- history


def _step_rows(
    execution_id: str,
    first_seq: int,
    records: Iterable[StepRecord],
    at: dt.datetime | str,
    idempotency_key: str | None,
) -> list[dict[str, Any]]:
    return [
        {"execution_id": execution_id, "seq": first_seq + i, "at": at, "kind": r.kind, "name": r.name,
         "from_state": r.from_state, "to_state": r.to_state, "input": r.input, "output": r.output,
         "context": r.context, "error": r.error, "idempotency_key": idempotency_key if i == 0 else None,
         "event": r.event}
        for i, r in enumerate(records)
    ]  # fmt: skip


#: the history INSERT (straight on the driver on SQLite), for the columns _step_rows gives
_FAST_INSERT_STEPS = Prepared(_INSERT_STEPS, [c.name for c in steps.c if c.name != "id"])


def insert_steps(
    conn: Connection,
    execution_id: str,
    first_seq: int,
    records: Sequence[StepRecord],
    now: dt.datetime,
    idempotency_key: str | None = None,
) -> int:
    """Append history rows numbered from ``first_seq``; returns the last seq written."""
    rows = _step_rows(execution_id, first_seq, records, now, idempotency_key)
    if rows:
        _FAST_INSERT_STEPS.execute(conn, rows[0] if len(rows) == 1 else rows)
    return first_seq + len(rows) - 1


def record_step(
    conn: Connection,
    row: Row[Any],
    records: Sequence[StepRecord],
    now: dt.datetime,
    *,
    idempotency_key: str | None = None,
    state: str,
    status: str,
    context: Any,
    output: Any,
    error: str | None,
    armed: bool,
) -> Row[Any]:
    """Append a step's history rows after ``row.seq`` and write back the execution, fenced
    by its version (ConcurrencyError, with nothing written, if it moved).

    On PostgreSQL this is one statement (the history INSERT rides in a ``WITH`` on the
    UPDATE, its rows passed as one JSON array): one round trip instead of two. Returns the
    execution row as written.
    """
    seq = row.seq + len(records)
    fields = {"state": state, "status": status, "context": context, "output": output, "error": error,
              "seq": seq, "armed": armed, "now": now}  # fmt: skip
    if not records or dialects.is_sqlite(conn):
        written = write_step(conn, row, **fields)  # first: the fence, before any history row
        insert_steps(conn, row.id, row.seq + 1, records, now, idempotency_key)
        return written
    rows = _step_rows(row.id, row.seq + 1, records, now.isoformat(), idempotency_key)
    return write_step(conn, row, history=rows, **fields)


def has_idempotency_key(conn: Connection, execution_id: str, key: str) -> bool:
    """True if a step of this execution was already applied under ``key``."""
    return conn.execute(_HAS_KEY, {"p_id": execution_id, "p_key": key}).first() is not None


_STEP_WITH_KEY = select(steps).where(
    steps.c.execution_id == bindparam("p_id"), steps.c.idempotency_key == bindparam("p_key")
)


def step_with_key(conn: Connection, execution_id: str, key: str) -> Row[Any] | None:
    """The first history row a step applied under ``key`` wrote (its action and input), or None."""
    return conn.execute(_STEP_WITH_KEY, {"p_id": execution_id, "p_key": key}).first()


#: The columns ``history`` reads, in the order of :class:`statem.records.Step`'s fields (not
#: the idempotency key nor the event: a long history decodes one JSON column less per row).
HISTORY_COLUMNS = (
    "seq", "at", "kind", "name", "from_state", "to_state", "input", "output", "context", "error",
)  # fmt: skip
_history = (
    select(*(steps.c[name] for name in HISTORY_COLUMNS))
    .where(steps.c.execution_id == bindparam("execution_id"))
    .order_by(steps.c.seq)
)


def history(conn: Connection, execution_id: str) -> Sequence[Row[Any]]:
    """The steps of an execution, by seq: the columns of HISTORY_COLUMNS."""
    return conn.execute(_history, {"execution_id": execution_id}).all()


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Claim:
    """A claim to take tasks under as they are armed: owner, fencing token and lease."""

    owner: str
    token: str
    lease_until: dt.datetime


def _task_rows(
    execution_id: str, specs: Iterable[TaskSpec], now: dt.datetime, claim: Claim | None
) -> list[dict[str, Any]]:
    held = (
        {"status": TaskStatus.claimed, "claim": claim.token, "owner": claim.owner,
         "lease_expires_at": claim.lease_until, "attempts": 1}
        if claim is not None
        else {"status": TaskStatus.pending, "attempts": 0}
    )  # fmt: skip
    return [
        {"execution_id": execution_id, "kind": s.kind, "due_at": s.due_at, "payload": s.payload,
         "effect": s.payload.get("effect") if s.kind == "effect" else None, "created_at": now, **held}
        for s in specs
    ]  # fmt: skip


def insert_tasks(conn: Connection, execution_id: str, specs: Sequence[TaskSpec], now: dt.datetime) -> None:
    """Arm tasks for an execution (pending, due at their due time)."""
    if specs:
        rows = _task_rows(execution_id, specs, now, None)
        _INSERT_PENDING.execute(conn, rows[0] if len(rows) == 1 else rows)


def insert_claimed_tasks(
    conn: Connection, execution_id: str, specs: Sequence[TaskSpec], now: dt.datetime, claim: Claim
) -> list[Row[Any]]:
    """Arm tasks already claimed under ``claim`` (one statement); returns their rows.

    The caller that armed them runs them after this transaction commits, with no claim
    query; if it dies first, its lease lapses and a worker takes them, as with any claim.
    """
    if not specs:
        return []
    rows = _task_rows(execution_id, specs, now, claim)
    ids: Sequence[Any]
    if len(rows) == 1 and dialects.is_sqlite(conn):  # the driver's lastrowid: no result to fetch
        ids = [_INSERT_HELD.inserted_id(conn, rows[0])]
    elif len(rows) == 1:
        ids = conn.execute(_INSERT_CLAIMED, rows[0]).scalars().all()
    else:
        ids = conn.execute(_INSERT_CLAIMED_MANY, rows).scalars().all()
    return [_as_task_row(task_id, values) for task_id, values in zip(ids, rows, strict=True)]


def _as_task_row(task_id: int, values: dict[str, Any]) -> Row[Any]:
    full = {"child_id": None, "last_error": None, **values, "id": task_id}
    return _task_row(full[c.name] for c in tasks.c)


def resume_spec(parent_task_id: int, ok: bool, output: Any, now: dt.datetime) -> TaskSpec:
    """A child's result for its parent: a ``resume`` task, ready now, naming the parent's
    waiting child task."""
    return TaskSpec(TaskKind.resume, now, {"task": parent_task_id, "ok": ok, "output": output})


def discard_tasks(conn: Connection, execution_id: str) -> Sequence[Row[Any]]:
    """Delete every armed task of an execution; returns the rows deleted."""
    return conn.execute(_DISCARD_TASKS, {"p_id": execution_id}).all()


def execution_has_tasks(conn: Connection, execution_id: str) -> bool:
    """True while an execution has armed work (timer, effect, child, result)."""
    q = select(tasks.c.id).where(tasks.c.execution_id == execution_id).limit(1)
    return conn.execute(q).first() is not None


def pending_tasks(conn: Connection, execution_id: str) -> Sequence[Row[Any]]:
    """An execution's pending work (timers, effects, children, results), soonest due first."""
    return conn.execute(
        select(tasks).where(tasks.c.execution_id == execution_id).order_by(tasks.c.due_at, tasks.c.id)
    ).all()


_GET_TASK = Prepared(select(tasks).where(tasks.c.id == bindparam("p_task")))


def get_task(conn: Connection, task_id: int) -> Row[Any] | None:
    """A task row by id."""
    return _GET_TASK.first(conn, {"p_task": task_id})


class ClaimLost(Exception):
    """A task's claim is no longer the current one (fencing): roll the step back."""


def _swap_statement() -> Any:
    """PostgreSQL: the fenced finish of one task and the insert of the next, one statement.

    The INSERT selects from the DELETE's RETURNING, so it inserts nothing when the fence
    fails (the claim is no longer current).
    """
    done = _FINISH_TASK.returning(tasks.c.id).cte("done")
    names = ["execution_id", "kind", "status", "due_at", "payload", "attempts", "claim", "owner",
             "lease_expires_at", "created_at", "effect"]  # fmt: skip
    values = select(*(bindparam(n, type_=tasks.c[n].type) for n in names)).select_from(done)
    return insert(tasks).from_select(names, values).returning(tasks.c.id)


_SWAP_TASK = _swap_statement()


def swap_task(
    conn: Connection,
    done: tuple[int, str],
    execution_id: str,
    spec: TaskSpec,
    now: dt.datetime,
    claim: Claim,
) -> Row[Any]:
    """Finish task ``done`` (id, claim), fenced, and arm ``spec`` claimed under ``claim``.

    Raises ClaimLost, inserting nothing, when ``done``'s claim is no longer current. One
    statement on PostgreSQL, two on SQLite.
    """
    if dialects.is_sqlite(conn):
        if not finish_task(conn, *done):
            raise ClaimLost
        return insert_claimed_tasks(conn, execution_id, [spec], now, claim)[0]
    values = _task_rows(execution_id, [spec], now, claim)[0]
    task_id = conn.execute(_SWAP_TASK, {"p_task": done[0], "p_claim": done[1], **values}).scalar()
    if task_id is None:
        raise ClaimLost
    return _as_task_row(task_id, values)


def finish_task(conn: Connection, task_id: int, claim: str) -> bool:
    """Fenced delete: True only if this claim is still the current one on the task."""
    return _FAST_FINISH_TASK.execute(conn, {"p_task": task_id, "p_claim": claim}) == 1


def _unclaim_statement(**values: Any) -> Prepared:
    """Fenced: drop the claim ``p_claim`` on task ``p_task`` and set ``values`` (built once)."""
    return Prepared(
        update(tasks)
        .where(
            tasks.c.id == bindparam("p_task"),
            tasks.c.claim == bindparam("p_claim"),
            tasks.c.status == TaskStatus.claimed,
        )
        .values(claim=None, owner=None, lease_expires_at=None, **values)
    )


_HOLD_TASK = _unclaim_statement(status=TaskStatus.waiting, child_id=bindparam("p_child"))
_RETRY_TASK = _unclaim_statement(
    status=TaskStatus.pending,
    due_at=bindparam("p_due", type_=tasks.c.due_at.type),
    last_error=bindparam("p_error"),
)
_RELEASE_TASK = _unclaim_statement(status=TaskStatus.pending, attempts=tasks.c.attempts - 1)


def _unclaim(conn: Connection, task_id: int, claim: str, **values: Any) -> bool:
    """Fenced: drop our claim on a task and set ``values``; False if the claim is no longer ours."""
    res = conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.claim == claim, tasks.c.status == TaskStatus.claimed)
        .values(claim=None, owner=None, lease_expires_at=None, **values)
    )
    return res.rowcount == 1


def hold_task(conn: Connection, task_id: int, claim: str, child_id: str) -> bool:
    """Fenced: mark a child task as waiting for its child's result."""
    return _HOLD_TASK.execute(conn, {"p_task": task_id, "p_claim": claim, "p_child": child_id}) == 1


def retry_task(conn: Connection, task_id: int, claim: str, due_at: dt.datetime, error: str) -> bool:
    """Fenced: put a failed attempt back as pending, due after its backoff."""
    params = {"p_task": task_id, "p_claim": claim, "p_due": due_at, "p_error": error}
    return _RETRY_TASK.execute(conn, params) == 1


def release_task(conn: Connection, task_id: int, claim: str) -> None:
    """Give a claimed task back unrun (a worker shutting down), without using an attempt."""
    _RELEASE_TASK.execute(conn, {"p_task": task_id, "p_claim": claim})


_WAITING_TASK = Prepared(select(tasks).where(tasks.c.id == bindparam("p_task"), tasks.c.status == "waiting"))
_DELETE_TASK = Prepared(delete(tasks).where(tasks.c.id == bindparam("p_task")))


def take_waiting_task(conn: Connection, task_id: int) -> Row[Any] | None:
    """Delete and return a child task still waiting for its result (None if it was discarded)."""
    row = _WAITING_TASK.first(conn, {"p_task": task_id})
    if row is not None:
        _DELETE_TASK.execute(conn, {"p_task": task_id})
    return row
