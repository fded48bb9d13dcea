"""The step protocol: how a step is written, and the only place that writes one.

A step is one transaction: the execution row's new state (fenced by its optimistic
``version``), its history rows, and the tasks it arms, together or not at all. This
module owns every way of writing one:

* :func:`create_execution` -- the first step of a start or a child start.
* :func:`commit_locked` -- a step on an execution row the caller locked: armed work left
  from earlier is discarded (each drop recorded in history, a child left behind
  canceled), then the step is written and its tasks armed.
* :func:`commit_known` -- a step on the row an inline run's previous step wrote, without
  reading it again: the write is fenced by that row's version, the finished task by its
  claim. The fast path of ``execution_mode: sync``.
* :func:`cancel` / :func:`append_history` -- a cancel (recursively, parent before
  child) and history that does not move the execution (retries).
* :func:`write_in_place` -- a step that discards nothing: the operator's ``pause`` and
  ``resume``, a kept trigger rejected after resume, an upgrade (statem.operations,
  statem.upgrade).

Arming (:func:`_arm`) is shared by all of them: tasks for workers are inserted pending
(and workers notified); the tasks an :class:`InlineRun` will run next are inserted
already claimed under its token ("claimed as armed"); an execution that ends hands its
result to its parent as a ``resume`` task.

Claims are checked here too: :func:`take_armed` (the locking path: the claimed task must
be among the armed ones it deletes) and :func:`finish` (a fenced delete).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row

from . import dialects, fanout, store, store_definitions, store_ops
from . import store_batch as sb
from . import store_fanout as sf
from .definition import CompiledMachine
from .errors import ExecutionNotFound
from .expressions import JSON
from .kinds import CLOSED_STATUSES, FINAL_STATUSES, INLINE_KINDS, Status, TaskKind, TaskStatus
from .limits import check_outcome, clean_text
from .semantics import Counts, ElementResult, Outcome, Snapshot, StepRecord, TaskSpec
from .store import ClaimLost
from .telemetry import Metrics

__all__ = [
    "Armed",
    "ClaimLost",
    "InlineRun",
    "append_history",
    "cancel",
    "commit_known",
    "commit_locked",
    "create_execution",
    "finish",
    "snapshot",
    "take_armed",
    "take_fanout",
    "write_in_place",
]


def snapshot(row: Row[Any]) -> Snapshot:
    """The semantics' view of an execution row."""
    return Snapshot(row.id, row.machine_id, row.machine_version, row.state, row.status, row.context)


@dataclass
class InlineRun:
    """The sync executions one caller runs inline, and the tasks their steps armed for it.

    A step of an execution in ``family`` inserts the effect, child and result tasks it arms
    already claimed under this run's fencing ``token`` (no claim query), and the caller
    runs them after that step commits, one transaction per result, until the queue is
    empty. If the caller dies, the claims lapse after ``lease_seconds`` and a worker takes
    the tasks, as with any claim.
    """

    token: str
    lease_seconds: float
    family: set[str]
    owner: str = "inline"
    queue: deque[Row[Any]] = field(default_factory=deque)
    #: the connection the run's steps use while it drains (one checkout, not one per step)
    conn: Connection | None = None
    #: execution id -> its row as this run's last step on it wrote it. The next step
    #: writes fenced by that row's version instead of reading the row again
    #: (:func:`commit_known`); a write elsewhere (a retry) forgets it.
    rows: dict[str, Row[Any]] = field(default_factory=dict)
    #: the effects the caller's process has: an effect task it lacks is left to a worker
    #: that has it, instead of being claimed here and failing as unknown
    effects: frozenset[str] = frozenset()

    def covers(self, execution_id: str | None) -> bool:
        """True if this run takes the inline tasks of ``execution_id``."""
        return execution_id in self.family

    def claim(self, now: dt.datetime) -> store.Claim:
        """The claim tasks armed at ``now`` are inserted under."""
        return store.Claim(self.owner, self.token, now + dt.timedelta(seconds=self.lease_seconds))

    def forget(self, execution_id: str) -> None:
        """Drop the row kept for ``execution_id`` (a step not written by :func:`commit_known`
        or :func:`commit_locked` is about to change it)."""
        self.rows.pop(execution_id, None)

    def committed(self, execution_id: str, armed: Armed) -> None:
        """After a step of ``execution_id`` committed: keep the row it wrote, queue what it
        claimed for this run."""
        self.rows[execution_id] = armed.row
        self.queue.extend(armed.ready)


@dataclass
class Armed:
    """What a committed step left: the execution row as written, the tasks claimed for
    the inline caller to run next, and whether it left work for workers (they were
    notified through the database; the caller wakes this process's own)."""

    row: Row[Any]
    ready: list[Row[Any]] = field(default_factory=list)
    for_workers: bool = False


# --------------------------------------------------------------------------- claims


def take_armed(conn: Connection, row: Row[Any], task: Row[Any]) -> list[Row[Any]]:
    """Delete every task armed on the locked execution ``row`` in one ``DELETE ...
    RETURNING``; ``task`` must be among them under its claim (ClaimLost otherwise, and the
    caller rolls back). Returns the others: the ones the coming step discards."""
    return take_armed_own(conn, row, task)[1]


def take_armed_own(conn: Connection, row: Row[Any], task: Row[Any]) -> tuple[Row[Any], list[Row[Any]]]:
    """:func:`take_armed`, also returning ``task``'s row as stored (an upgrade may have
    re-pointed its payload at the new version since it was claimed)."""
    taken = store.discard_tasks(conn, row.id)
    own = [t for t in taken if t.id == task.id and t.claim == task.claim and t.status == TaskStatus.claimed]
    if not own:
        raise ClaimLost
    return own[0], [t for t in taken if t.id != task.id]


def take_fanout(
    metrics: Metrics, conn: Connection, row: Row[Any], task: Row[Any], now: dt.datetime
) -> tuple[str, list[ElementResult], int, list[Row[Any]]]:
    """The join of a fan-out: take its ``join`` ``task`` (claimed) on the locked
    execution ``row`` with every other armed task; the fan-out's own (its ``fanout``
    task, elements still running after the failures exceeded the bound) are consumed
    here, children among them canceled. Returns the fan-out's kind, its elements' results
    in index order, the failures it tolerates, and the tasks the join step discards
    (none, in a consistent database). ClaimLost if the join task is gone (discarded)."""
    fanout_id = int(task.payload["fanout"])
    fan = sf.lock_fanout(conn, fanout_id)  # before the tasks, as an element's end locks them
    if fan is None:
        raise ClaimLost
    others = take_armed(conn, row, task)
    kind, tolerated = str(fan.kind), int(fan.tolerated)
    ended = {
        r.idx: ElementResult(
            r.idx, r.branch, r.status in ("done", "failed"), r.status == "done", r.output, r.error
        )
        for r in sf.results(conn, fanout_id)
    }
    own = [
        t for t in others if t.id == fanout_id or (fanout.is_element(t) and t.payload["fanout"] == fanout_id)
    ]
    for t in own:
        if t.kind == TaskKind.child and t.child_id:
            _abandon(metrics, conn, t.child_id, f"fan-out of {row.id!r} joined without it", now)
    fanout.discard(conn, own)
    taken = {t.id for t in own}
    return kind, [ended[i] for i in sorted(ended)], tolerated, [t for t in others if t.id not in taken]


def finish(conn: Connection, task: Row[Any]) -> None:
    """Delete ``task`` under its claim (fenced); ClaimLost if the claim is no longer current."""
    if not store.finish_task(conn, task.id, task.claim):
        raise ClaimLost


# --------------------------------------------------------------------------- steps


def create_execution(
    metrics: Metrics,
    conn: Connection,
    cm: CompiledMachine,
    eid: str,
    data: JSON,
    now: dt.datetime,
    outcome: Outcome,
    *,
    parent: tuple[str, int] | None = None,
    run: InlineRun | None = None,
) -> Armed:
    """Create an execution row as its first step (a start, or a child start under
    ``parent`` = (parent id, its child task id)) leaves it, with history and tasks.
    What it stores is checked first (statem.limits: InputError, nothing written)."""
    check_outcome(outcome, now)
    parent_id, parent_task_id = parent if parent else (None, None)
    written = store.insert_execution(
        conn,
        id=eid,
        machine_id=cm.machine.id,
        machine_version=cm.machine.version,
        state=outcome.state,
        status=outcome.status,
        context=outcome.context,
        input=data,
        output=outcome.output,
        error=outcome.error,
        parent_id=parent_id,
        parent_task_id=parent_task_id,
        seq=len(outcome.steps),
        version=1,
        armed=bool(outcome.tasks),
        created_at=now,
        updated_at=now,
    )
    store.insert_steps(conn, eid, 1, outcome.steps, now)
    return _arm(metrics, conn, written, outcome, now, _parent_of(written), run)


def commit_locked(
    metrics: Metrics,
    conn: Connection,
    row: Row[Any],
    outcome: Outcome,
    now: dt.datetime,
    *,
    idempotency_key: str | None = None,
    dropped: Sequence[Row[Any]] | None = None,
    run: InlineRun | None = None,
) -> Armed:
    """Write one step on the execution ``row`` the caller locked: history, new state,
    armed tasks.

    Tasks armed earlier are dropped (a later step wins), each recorded in history; a
    child left behind is canceled. ``dropped`` says which, when the caller has already
    deleted them (:func:`take_armed`). An execution that ends hands its result to its
    parent. With ``run``, the inline tasks the step arms are claimed for it as armed.
    """
    return _commit(metrics, conn, row, outcome, now, idempotency_key, dropped, _parent_of(row), run)


def commit_known(
    metrics: Metrics,
    conn: Connection,
    row: Row[Any],
    outcome: Outcome,
    now: dt.datetime,
    *,
    done: Row[Any],
    run: InlineRun,
) -> Armed:
    """:func:`commit_locked` on the row ``run``'s previous step wrote, without reading it
    again; ``done`` is the task (claimed for ``run``) whose result this is.

    The write (with the history rows) comes first, fenced by that row's version
    (ConcurrencyError if anything wrote the execution since), so it also takes the row
    lock. Nothing wrote it since, so no step armed anything since: the previous step armed
    exactly ``done`` (a step arms at most one task), and there is nothing to discard.
    ``done`` is then finished under its claim (ClaimLost if that is no longer current), in
    the same statement that arms the next task when there is one. Any error rolls the whole
    step back.
    """
    written = _record(conn, row, outcome, outcome.steps, now, None)
    return _arm(metrics, conn, written, outcome, now, _parent_of(row), run, done)


def batchable(outcome: Outcome, dropped: Sequence[Row[Any]]) -> bool:
    """True if :func:`commit_many` can write this step: it discards nothing (the task it
    consumes was the execution's only armed one) and arms no fan-out."""
    return not dropped and all(spec.kind != TaskKind.fanout for spec in outcome.tasks)


def commit_many(
    metrics: Metrics, conn: Connection, steps: Sequence[tuple[Row[Any], Outcome]], now: dt.datetime
) -> list[Armed]:
    """Write the steps of many executions at once, each on a row the caller locked and
    whose armed tasks it has already taken (:func:`batchable`: nothing to discard, no
    fan-out), as a few set-based statements (:mod:`statem.store_batch`). Each outcome
    must have passed :func:`statem.limits.check_outcome` (the executor's evaluation does
    that, turning what cannot be stored into the step's failure).

    Each step writes exactly what :func:`commit_locked` would: its history rows after
    the row's seq, the execution fenced by its version, its tasks pending for workers,
    and an ended child's result for its parent. Any error rolls the caller's whole
    transaction back. Returns each step's :class:`Armed`, in order.
    """
    writes: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    done: list[Armed] = []
    for row, outcome in steps:  # outcomes checked by the caller (statem.limits.check_outcome)
        for record in outcome.steps:
            record.error = clean_text(record.error)
            metrics.step(record.kind)
        params = store.step_params(
            row, state=outcome.state, status=outcome.status, context=outcome.context, output=outcome.output,
            error=clean_text(outcome.error), seq=row.seq + len(outcome.steps), armed=bool(outcome.tasks),
            now=now,
        )  # fmt: skip
        writes.append(params)
        history += sb.history_rows(row.id, row.seq + 1, outcome.steps, now)
        pending += sb.task_rows(row.id, outcome.tasks, now)
        parent = _parent_of(row)
        if outcome.status in FINAL_STATUSES and parent is not None:
            pending += sb.task_rows(parent[0], [_result_for_parent(parent[1], outcome, now)], now)
        done.append(Armed(store.as_written(row, params), [], bool(outcome.tasks) or parent is not None))
    sb.write_executions(conn, writes)  # first: the fences, before any history row
    sb.insert_history(conn, history)
    sb.insert_pending(conn, pending)
    if pending:
        dialects.notify(conn)
    return done


def append_history(conn: Connection, row: Row[Any], records: list[StepRecord], now: dt.datetime) -> None:
    """Record history rows that do not move the execution (retries, stale results)."""
    last = store.insert_steps(conn, row.id, row.seq + 1, records, now)
    store.write_seq(conn, row, last, now)


def write_in_place(
    metrics: Metrics,
    conn: Connection,
    row: Row[Any],
    records: Sequence[StepRecord],
    now: dt.datetime,
    *,
    tasks: Sequence[TaskSpec] = (),
    **changes: Any,
) -> Row[Any]:
    """Write a step on the locked ``row`` that keeps its armed work (pause, resume, an
    upgrade, a rejected kept trigger): ``records`` and the execution with ``changes``
    (``state``, ``status``, ``context``, ``output``, ``error``, ``armed``; else as they
    are), fenced by its version; ``tasks`` are armed for workers (notified)."""
    values: dict[str, Any] = {
        "state": row.state, "status": row.status, "context": row.context, "output": row.output,
        "error": row.error, "armed": row.armed or bool(tasks),
    }  # fmt: skip
    values.update(changes)
    for record in records:
        metrics.step(record.kind)
    written = store.record_step(conn, row, records, now, **values)
    if tasks:
        store.insert_tasks(conn, row.id, tasks, now)
        dialects.notify(conn)
    return written


def cancel(metrics: Metrics, conn: Connection, execution_id: str, reason: str, now: dt.datetime) -> None:
    """Cancel an execution and, recursively, its unfinished children, inside an open
    transaction; a final one is left alone. Its parent (if any) gets the cancel as the
    child's result."""
    row = store.lock_execution(conn, execution_id)
    if row is None:
        raise ExecutionNotFound(execution_id)
    _cancel(metrics, conn, row, reason, now, _parent_of(row))


def _cancel(
    metrics: Metrics,
    conn: Connection,
    row: Row[Any],
    reason: str,
    now: dt.datetime,
    parent: tuple[str, int] | None,
) -> None:
    """Cancel the locked ``row`` (parent before child, never the reverse), reporting to
    ``parent`` (None: the parent is the one moving on, it wants no result)."""
    if row.status in CLOSED_STATUSES:
        return
    if row.status == Status.paused and store_ops.has_kept_trigger(conn, row.id):  # the drain rejects them
        store.insert_tasks(conn, row.id, [TaskSpec(TaskKind.drain, now, {})], now)
    step = StepRecord("cancel", None, row.state, row.state, context=row.context, error=reason)
    outcome = Outcome(row.state, Status.canceled, row.context, error=reason, steps=[step])
    for child_id in store.live_children(conn, row.id):
        _abandon(metrics, conn, child_id, f"parent {row.id!r} canceled: {reason}", now)
    _commit(metrics, conn, row, outcome, now, None, None, parent, None)


def _abandon(metrics: Metrics, conn: Connection, child_id: str, reason: str, now: dt.datetime) -> None:
    """Cancel a child its parent no longer waits for (no result goes back)."""
    child = store.lock_execution(conn, child_id)
    if child is not None:
        _cancel(metrics, conn, child, reason, now, None)


def _parent_of(row: Row[Any]) -> tuple[str, int] | None:
    """The parent a child execution reports its end to: (parent id, its child task id)."""
    if row.parent_id is None or row.parent_task_id is None:
        return None
    return row.parent_id, row.parent_task_id


def _commit(
    metrics: Metrics,
    conn: Connection,
    row: Row[Any],
    outcome: Outcome,
    now: dt.datetime,
    idempotency_key: str | None,
    dropped: Sequence[Row[Any]] | None,
    parent: tuple[str, int] | None,
    run: InlineRun | None,
) -> Armed:
    records = list(outcome.steps)
    progress: dict[int, Counts] = {}
    if dropped is None and row.armed:
        progress = fanout.discard_all(conn, row.id)  # fan-outs first: see discard_all
        dropped = store.discard_tasks(conn, row.id)
    dropped = dropped or ()
    progress |= fanout.discard(conn, dropped)
    for task in dropped:
        if task.kind == TaskKind.child and task.child_id:
            _abandon(metrics, conn, task.child_id, f"parent {row.id!r} moved on", now)
        if fanout.is_element(task) or task.kind == TaskKind.joining:
            continue  # recorded once, with its fan-out's progress
        records.insert(1, _discard_record(task, outcome.steps[0].from_state or row.state, progress))
        metrics.step("discard")
    written = _record(conn, row, outcome, records, now, idempotency_key)
    return _arm(metrics, conn, written, outcome, now, parent, run)


def _record(
    conn: Connection,
    row: Row[Any],
    outcome: Outcome,
    records: Sequence[StepRecord],
    now: dt.datetime,
    idempotency_key: str | None,
) -> Row[Any]:
    """The step's history rows and the execution's new state, fenced by its version.

    What the step stores is checked first (statem.limits: InputError, nothing written);
    error messages are stored with any NUL or surrogate replaced.
    """
    check_outcome(outcome, now)
    for record in records:
        record.error = clean_text(record.error)
    return store.record_step(
        conn,
        row,
        records,
        now,
        idempotency_key=idempotency_key,
        state=outcome.state,
        status=outcome.status,
        context=outcome.context,
        output=outcome.output,
        error=clean_text(outcome.error),
        armed=bool(outcome.tasks),
    )


def _arm(
    metrics: Metrics,
    conn: Connection,
    written: Row[Any],
    outcome: Outcome,
    now: dt.datetime,
    parent: tuple[str, int] | None,
    run: InlineRun | None,
    done: Row[Any] | None = None,
) -> Armed:
    """Insert the tasks a step armed; an execution that ended hands its result to
    ``parent``.

    Tasks ``run`` will take are inserted already claimed under its token; the rest are
    left pending for workers, who are notified when the transaction commits. ``done``: a
    task to finish, fenced, first (see :func:`commit_known`).
    """
    eid = written.id
    for record in outcome.steps:
        metrics.step(record.kind)
    claim = run.claim(now) if run is not None else None
    mine: list[TaskSpec] = []
    theirs: list[TaskSpec] = []
    here = run is not None and run.covers(eid)
    fans: list[TaskSpec] = []
    for spec in outcome.tasks:
        if spec.kind == TaskKind.fanout:
            fans.append(spec)
            continue
        (mine if here and run is not None and _runs_inline(conn, spec, run) else theirs).append(spec)
    ready: list[Row[Any]] = []
    if done is not None:
        if claim is not None and mine:
            ready.append(store.swap_task(conn, (done.id, done.claim), eid, mine.pop(0), now, claim))
        else:
            finish(conn, done)
    store.insert_tasks(conn, eid, theirs, now)
    if claim is not None:
        ready += store.insert_claimed_tasks(conn, eid, mine, now, claim)
    for_workers = bool(theirs)
    for spec in fans:
        started = fanout.arm(conn, eid, spec, outcome.elements, now, claim if here else None)
        ready += started.ready
        for_workers |= started.for_workers
    if outcome.status in FINAL_STATUSES and parent is not None:
        parent_id, parent_task_id = parent
        resume = [_result_for_parent(parent_task_id, outcome, now)]
        if claim is not None and run is not None and run.covers(parent_id):
            ready += store.insert_claimed_tasks(conn, parent_id, resume, now, claim)
        else:
            store.insert_tasks(conn, parent_id, resume, now)
            for_workers = True
    if for_workers:
        dialects.notify(conn)
    return Armed(written, ready, for_workers)


def _result_for_parent(parent_task_id: int, outcome: Outcome, now: dt.datetime) -> TaskSpec:
    """An ended child's result, as its parent's ``resume`` task."""
    ok = outcome.status == Status.finished
    result = outcome.output if ok else {"type": outcome.status, "message": outcome.error or ""}
    return store.resume_spec(parent_task_id, ok, result, now)


def _runs_inline(conn: Connection, spec: TaskSpec, run: InlineRun) -> bool:
    """True if the inline caller runs this task: an effect only when its process has it
    registered, or it is a saved service's operation (any process runs those)."""
    if spec.kind not in INLINE_KINDS:
        return False
    if spec.kind != TaskKind.effect:
        return True
    name = str(spec.payload.get("effect"))
    if name in run.effects:
        return True
    service, dot, operation = name.partition(".")
    return (
        bool(dot and service and operation)
        and store_definitions.latest_service_version(conn, service) is not None
    )


def _discard_record(task: Row[Any], state: str, progress: dict[int, Counts]) -> StepRecord:
    what = {"task": task.kind, "armed_at": task.created_at.isoformat()}
    payload = task.payload or {}
    if task.kind == TaskKind.fanout:
        what["fanout"] = payload.get("fanout")
        if task.id in progress:
            what["progress"] = progress[task.id].describe()
    elif task.kind == TaskKind.timer:
        what["due_at"] = task.due_at.isoformat()
    elif task.kind == TaskKind.effect:
        what["effect"] = payload.get("effect")
    elif task.kind == TaskKind.child:
        what["child"] = task.child_id
    return StepRecord(
        "discard",
        payload.get("name"),
        state,
        state,
        input=None,
        output=what,
        context=None,
        error="a later step won; this armed task was dropped",
    )
