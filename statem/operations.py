"""Operating live executions: pause, resume, retry and move (DESIGN.md section 8).

Each operation is one transaction on a locked execution, recorded as a history step
whose kind is the operation's name and whose ``input`` is ``{"reason": ..., ...details}``.
When it does not apply it raises (``ExecutionNotFound``, ``OperationNotAllowed`` naming
the status, ``StateNotFound``) and changes nothing.

While an execution is ``paused`` nothing moves it. Its pending tasks are ``held`` (the
claim query only takes ``pending`` ones, so workers never poll them); a task a worker had
already claimed finishes, and its event (a due timer, an effect's result, a child's
result) is ``kept``; triggers are kept too, as task rows of kind ``trigger``. ``resume``
turns due held timers into kept events (arriving at their due time), makes the other
held tasks pending again, and arms one ``drain`` task: the executor then applies the kept
events one per transaction, in order of arrival (:func:`drain`). Until every kept trigger
is applied, a new trigger is kept behind them, so triggers are applied in the order they
arrived. Steps never discard kept triggers nor the drain; kept results and timers are
armed work like any other, discarded by a step that moves the execution first.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import Connection, Row

from . import dialects, semantics, steps, store, store_ops
from .definition import CompiledMachine
from .errors import (
    ExecutionNotFound,
    InputError,
    OperationNotAllowed,
    StatemError,
    StateNotFound,
)
from .expressions import JSON, check_json
from .kinds import CLOSED_STATUSES, Status, TaskKind
from .records import Execution
from .runtime import Runtime
from .semantics import InvokeFailed, Outcome, Snapshot, StepRecord, TaskSpec
from .telemetry import Metrics

log = logging.getLogger("statem.operations")

#: Statuses ``pause`` applies to.
PAUSABLE_STATUSES: tuple[str, ...] = (Status.running, Status.waiting)
#: A kept ``enter`` (a move while paused) sorts before every other kept event: the moved
#: state's always-transitions are tried first on resume.
FIRST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _snapshot(row: Row[Any]) -> Snapshot:
    return Snapshot(row.id, row.machine_id, row.machine_version, row.state, row.status, row.context)


def _lock(conn: Connection, execution_id: str) -> Row[Any]:
    row = store.lock_execution(conn, execution_id)
    if row is None:
        raise ExecutionNotFound(execution_id)
    return row


def _input(reason: str | None, **details: Any) -> dict[str, Any]:
    return {"reason": reason, **details}


def _get(rt: Runtime, execution_id: str) -> Execution:
    with rt.transaction(write=False) as conn:
        row = store.get_execution(conn, execution_id)
    if row is None:
        raise ExecutionNotFound(execution_id)
    return Execution.from_row(row)


# --------------------------------------------------------------------------- pause / resume


def pause(rt: Runtime, execution_id: str, reason: str | None = None) -> Execution:
    """Pause a running or waiting execution and its unfinished children (one transaction).

    A paused one is returned as it is (no step); any other status raises OperationNotAllowed.
    """
    now = rt.clock()
    with rt.transaction() as conn:
        row = _lock(conn, execution_id)
        if row.status == Status.paused:
            return Execution.from_row(row)
        if row.status not in PAUSABLE_STATUSES:
            raise OperationNotAllowed(
                execution_id, "pause", row.state, row.status, f"it is {row.status}; only running or "
                "waiting executions can be paused"
            )  # fmt: skip
        _pause_locked(rt.metrics, conn, row, _input(reason), now)
    return _get(rt, execution_id)


def _pause_locked(
    metrics: Metrics, conn: Connection, row: Row[Any], input: dict[str, Any], now: dt.datetime
) -> None:
    store_ops.hold_tasks(conn, row.id)
    record = StepRecord("pause", None, row.state, row.state, input=input, output={"status": row.status})
    steps.write_in_place(metrics, conn, row, [record], now, status=Status.paused)
    for child_id in store_ops.children_with_status(conn, row.id, PAUSABLE_STATUSES):
        child = _lock(conn, child_id)
        if child.status in PAUSABLE_STATUSES:
            _pause_locked(metrics, conn, child, {"reason": input.get("reason"), "parent": row.id}, now)


def resume(rt: Runtime, execution_id: str, reason: str | None = None) -> Execution:
    """Resume a paused execution and its paused children: status back to ``running`` or
    ``waiting``; the executor then applies the kept events in order of arrival."""
    now = rt.clock()
    with rt.transaction() as conn:
        row = _lock(conn, execution_id)
        if row.status != Status.paused:
            raise OperationNotAllowed(
                execution_id, "resume", row.state, row.status, f"it is {row.status}, not paused"
            )
        _resume_locked(rt.metrics, conn, row, _input(reason), now)
        dialects.notify(conn)
    rt.wake()
    return _get(rt, execution_id)


def _resume_locked(
    metrics: Metrics, conn: Connection, row: Row[Any], input: dict[str, Any], now: dt.datetime
) -> None:
    store_ops.release_held(conn, row.id, now)
    kept = store_ops.has_kept(conn, row.id)
    if kept:
        store.insert_tasks(conn, row.id, [TaskSpec(TaskKind.drain, now, {})], now)
    status = Status.running if store_ops.has_work_in_flight(conn, row.id) else Status.waiting
    record = StepRecord("resume", None, row.state, row.state, input=input, output={"status": status})
    steps.write_in_place(metrics, conn, row, [record], now, status=status, armed=row.armed or kept)
    for child_id in store_ops.children_with_status(conn, row.id, (Status.paused,)):
        child = _lock(conn, child_id)
        if child.status == Status.paused:
            _resume_locked(metrics, conn, child, {"reason": input.get("reason"), "parent": row.id}, now)


# --------------------------------------------------------------------------- kept events


def keep_trigger(
    conn: Connection,
    row: Row[Any],
    action: str,
    input: JSON,
    idempotency_key: str | None,
    now: dt.datetime,
) -> None:
    """Keep a trigger that arrived while the execution is paused (or while earlier kept
    triggers still wait), to be applied in order of arrival. A repeated idempotency key
    (already applied or already kept) is dropped."""
    if idempotency_key is not None:
        for kept in store_ops.kept_triggers(conn, row.id):
            if kept.payload.get("idempotency_key") == idempotency_key:
                return
    payload = {"action": action, "input": input, "idempotency_key": idempotency_key}
    store_ops.insert_kept(conn, row.id, "trigger", payload, now)
    if not row.armed:
        store_ops.set_armed(conn, row.id)


def must_keep_trigger(conn: Connection, row: Row[Any], kept: bool | None = None) -> bool:
    """True if a trigger on this (locked) execution must be kept rather than applied now:
    it is paused, or triggers kept earlier have not all been applied yet (the row's
    ``armed`` flag cannot tell: a step that arms nothing clears it while kept triggers
    wait, so this asks the tasks table, through its execution_id index). ``kept``: that
    answer, when the statement that locked the row read it already
    (:func:`statem.store.lock_for_trigger`)."""
    if row.status == Status.paused:
        return True
    return kept if kept is not None else store_ops.has_kept_trigger(conn, row.id)


def kept_while_paused(
    conn: Connection, row: Row[Any], task: Row[Any], now: dt.datetime, result: dict[str, Any] | None
) -> bool:
    """For the executor, on the locked execution ``row`` of a claimed ``task``: False if
    it is not paused (run the task as usual); else keep the task's event (:func:`keep_task`)
    and return True. ClaimLost if the claim is no longer ours."""
    if row.status != Status.paused:
        return False
    if not keep_task(conn, task, now, result):
        raise store.ClaimLost
    return True


def hold_if_paused(conn: Connection, row: Row[Any], task_id: int) -> None:
    """An effect's next attempt, put back as pending on the locked ``row``: held if it is paused."""
    if row.status == Status.paused:
        store_ops.hold_pending_task(conn, task_id)


def keep_task(conn: Connection, task: Row[Any], now: dt.datetime, result: dict[str, Any] | None) -> bool:
    """A claimed task whose execution is paused: a timer or a result is kept (applied after
    resume, in order of arrival); a child not yet started, or a fan-out's join, is held
    (it runs as usual once resumed). False if stale."""
    if task.kind in ("child", "join"):
        return store_ops.hold_claimed_task(conn, task.id, task.claim)
    arrived = task.due_at if task.kind == "timer" else now
    return store_ops.keep_task(conn, task, arrived, result)


def drain(rt: Runtime, task: Row[Any]) -> None:
    """Apply the earliest kept event of the task's execution as its own step, then arm the
    drain again if more are kept. A kept trigger the state does not allow (or whose
    expressions fail) is recorded as a ``rejected`` step that changes nothing else."""
    now = rt.clock()
    with rt.transaction() as conn:
        row = store.lock_execution(conn, task.execution_id)
        if row is None or not store.finish_task(conn, task.id, task.claim):
            return
        if row.status == Status.paused:  # paused again: resume arms a new drain
            return
        event = store_ops.next_kept(conn, row.id)
        if event is None:
            return
        store_ops.delete_task(conn, event.id)
        outcome, key, rejected = _kept_outcome(rt, conn, row, event, now)
        if rejected:
            more = store_ops.has_kept(conn, row.id)
            _finish_drain(conn, row, outcome, more, now)
            metrics, records, tasks = rt.metrics, outcome.steps, outcome.tasks
            steps.write_in_place(
                metrics, conn, row, records, now, tasks=tasks, status=outcome.status, armed=True
            )
        else:
            dropped = store.discard_tasks(conn, row.id) if row.armed else ()
            more = store_ops.has_kept(conn, row.id)
            _finish_drain(conn, row, outcome, more, now)
            steps.commit_locked(rt.metrics, conn, row, outcome, now, idempotency_key=key, dropped=dropped)
    rt.wake()


def _finish_drain(conn: Connection, row: Row[Any], outcome: Outcome, more: bool, now: dt.datetime) -> None:
    """Arm the drain again when more events are kept; while it runs the execution is running."""
    if more:
        outcome.tasks.append(TaskSpec(TaskKind.drain, now, {}))
        if outcome.status == Status.waiting:
            outcome.status = Status.running
    elif outcome.status in PAUSABLE_STATUSES and not outcome.tasks:
        outcome.status = Status.running if store_ops.has_work_in_flight(conn, row.id) else Status.waiting


def _kept_outcome(
    rt: Runtime, conn: Connection, row: Row[Any], event: Row[Any], now: dt.datetime
) -> tuple[Outcome, str | None, bool]:
    """(the step a kept event makes, its idempotency key, whether it is a rejection)."""
    snap = _snapshot(row)
    payload = event.payload
    if event.kind == "trigger":
        action, data, key = payload["action"], payload.get("input"), payload.get("idempotency_key")
        if key is not None and store.has_idempotency_key(conn, row.id, key):
            return Outcome(row.state, row.status, row.context, row.output, row.error), None, True
        try:
            cm = rt.compiled(row.machine_id, row.machine_version, conn)
            return semantics.action(cm, snap, action, data, rt.env, now), key, False
        except StatemError as exc:
            record = StepRecord(
                "rejected", action, row.state, row.state, input=data, output=None, context=None,
                error=str(exc), event={"type": "action", "version": row.machine_version, "action": action,
                                       "input": data},
            )  # fmt: skip
            status = row.status
            return Outcome(row.state, status, row.context, row.output, row.error, steps=[record]), None, True
    try:
        cm = rt.compiled(row.machine_id, row.machine_version, conn)
        if event.kind == "enter":
            outcome = semantics.enter_state(cm, snap, row.state, {}, rt.env, now, kind=None)
            return outcome, None, False
        if event.kind == "timer":
            return semantics.fire_timer(cm, snap, payload, rt.env, now, task_id=event.id), None, False
        if event.kind == "effect":
            result = payload["result"]
            out = semantics.apply_result(cm, snap, payload, bool(result["ok"]), result.get("output"),
                                         rt.env, now, task_id=event.id)  # fmt: skip
            return out, None, False
        if event.kind == "resume":
            waiting = store.take_waiting_task(conn, int(payload["task"]))
            if waiting is None:  # its invoke was discarded: the result is stale
                return Outcome(row.state, row.status, row.context, row.output, row.error), None, True
            ok, output = bool(payload["ok"]), payload.get("output")
            out = semantics.apply_result(
                cm, snap, waiting.payload, ok, output, rt.env, now, task_id=waiting.id
            )
            return out, None, False
        raise StatemError(f"kept event {event.id} has unknown kind {event.kind!r}")
    except (StatemError, InvokeFailed) as exc:
        name = payload.get("name")
        kind = "timer" if event.kind == "timer" else "result"
        return semantics.failure(snap, kind, name, str(exc), event=semantics.event_of(exc)), None, False


# --------------------------------------------------------------------------- retry


def retry(rt: Runtime, execution_id: str, reason: str | None = None) -> Execution:
    """Re-run what failed a ``failed`` execution, on the version it is pinned to now.

    A failed invoke (an effect that raised after its retries, or a child that failed, with
    no error branch) is invoked again: an effect under the same task id, hence the same
    idempotency key. A step that failed evaluating an expression (a timer, a result, an
    always-chain) is evaluated again with the same event. If it fails again, the execution
    is failed again, with the new error.
    """
    now = rt.clock()
    with rt.transaction() as conn:
        row = _lock(conn, execution_id)
        if row.status != "failed":
            raise OperationNotAllowed(
                execution_id, "retry", row.state, row.status, f"it is {row.status}, not failed"
            )
        failed = store_ops.last_failure(conn, execution_id)
        event = failed.event if failed is not None else None
        if not isinstance(event, dict):
            raise OperationNotAllowed(
                execution_id, "retry", row.state, row.status,
                "its history records no event to re-run (failed before statem recorded events); "
                "move it instead",
            )  # fmt: skip
        cm = rt.compiled(row.machine_id, row.machine_version, conn)
        path = _resolve(cm, row, event)
        details = _input(reason, event=event["type"], seq=failed.seq if failed is not None else None)
        step = StepRecord("retry", event.get("name"), row.state, row.state, input=details, output=None)
        outcome = _retry_outcome(rt, cm, row, event, path, now)
        outcome.steps.insert(0, step)
        reinvoke = event.get("reinvoke") and isinstance(event.get("task"), dict)
        if reinvoke and "effect" in event["task"]["payload"]:
            spec = outcome.tasks.pop()
            task_id = event["task"]["id"]
            step.output = {"task": task_id, "effect": spec.payload["effect"]}
            steps.commit_locked(rt.metrics, conn, row, outcome, now)
            store_ops.insert_task_with_id(conn, int(task_id), row.id, spec, now)
            store_ops.set_armed(conn, row.id)
            dialects.notify(conn)
        else:
            steps.commit_locked(rt.metrics, conn, row, outcome, now)
    rt.wake()
    return _get(rt, execution_id)


def _resolve(cm: CompiledMachine, row: Row[Any], event: dict[str, Any]) -> str:
    """The transition the event refers to, in the execution's version now: its own path
    when the version is the one that recorded it, else the transition of the same name in
    the current state (an always or an action) of the same kind (a timer; an invoke of the
    same effect or child machine)."""
    path = str(event.get("transition") or "")
    state = cm.state(row.state)
    candidates: list[tuple[str, Any]] = [
        (f"states.{row.state}.always[{i}]", t) for i, t in enumerate(state.always)
    ]
    candidates += [(f"states.{row.state}.actions.{a}", t) for a, t in state.actions.items()]
    if event.get("version") == row.machine_version:
        try:
            semantics.transition_at(cm, path)
            return path
        except (KeyError, IndexError, ValueError, StatemError):
            pass
    task = event.get("task") or {}
    payload = task.get("payload") or {}
    for where, t in candidates:
        name = t.name or (where.rsplit(".", 1)[1] if ".actions." in where else None)
        if name != event.get("name"):
            continue
        if event["type"] == "timer" and t.wait_for is not None:
            return where
        if event["type"] == "result" and t.invoke is not None:
            if "effect" in payload and t.invoke.effect == payload["effect"]:
                return where
            if (
                "machine" in payload
                and t.invoke.child is not None
                and t.invoke.child[0] == payload["machine"][0]
            ):
                return where
    raise OperationNotAllowed(
        row.id, "retry", row.state, row.status,
        f"version {row.machine_version} has no transition {event.get('name')!r} in state {row.state!r} "
        f"matching the failed {event['type']} (recorded on version {event.get('version')})",
    )  # fmt: skip


def _retry_outcome(
    rt: Runtime, cm: CompiledMachine, row: Row[Any], event: dict[str, Any], path: str, now: dt.datetime
) -> Outcome:
    snap = _snapshot(row)
    task = event.get("task") or {}
    payload = {**(task.get("payload") or {}), "transition": path, "name": event.get("name")}
    if event.get("reinvoke"):
        payload["pin"] = [row.machine_id, row.machine_version]
        spec = TaskSpec(TaskKind.effect if "effect" in payload else TaskKind.child, now, payload)
        return Outcome(row.state, Status.running, row.context, tasks=[spec])
    try:
        if event["type"] == "timer":
            return semantics.fire_timer(cm, snap, payload, rt.env, now, task_id=task.get("id"))
        ok, output = bool(event.get("ok")), event.get("output")
        return semantics.apply_result(cm, snap, payload, ok, output, rt.env, now, task_id=task.get("id"))
    except (StatemError, InvokeFailed) as exc:
        kind = "timer" if event["type"] == "timer" else "result"
        return semantics.failure(snap, kind, event.get("name"), str(exc), event=semantics.event_of(exc))


# --------------------------------------------------------------------------- move


def move(
    rt: Runtime,
    execution_id: str,
    state: str,
    context: dict[str, Any] | None = None,
    reason: str | None = None,
) -> Execution:
    """Put an unfinished execution in ``state`` of its version, merging ``context`` (JSON
    values), discarding its armed work (children are canceled), then entering the state as
    a transition does. A paused one stays paused; its state's always are tried on resume."""
    changes = _context_changes(context)
    now = rt.clock()
    with rt.transaction() as conn:
        row = _lock(conn, execution_id)
        if row.status in CLOSED_STATUSES:
            raise OperationNotAllowed(execution_id, "move", row.state, row.status, f"it is {row.status}")
        cm = rt.compiled(row.machine_id, row.machine_version, conn)
        if state not in cm.machine.states:
            raise StateNotFound(row.machine_id, row.machine_version, state, list(cm.machine.states))
        paused = row.status == Status.paused
        details = _input(reason, state=state, context=changes)
        outcome = semantics.enter_state(
            cm, _snapshot(row), state, changes, rt.env, now, kind="move", input=details, settle=not paused
        )
        if paused:
            outcome.status = Status.paused
        steps.commit_locked(rt.metrics, conn, row, outcome, now)
        if paused:
            store_ops.insert_kept(conn, row.id, "enter", {"state": state}, FIRST)
            store_ops.set_armed(conn, row.id)
    rt.wake()
    return _get(rt, execution_id)


def _context_changes(context: dict[str, Any] | None) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise InputError(f"move: context must be a mapping of JSON values, not {type(context).__name__}")
    try:
        checked = check_json(context, "context")
    except InputError:
        raise
    except StatemError as exc:
        raise InputError(str(exc)) from None
    assert isinstance(checked, dict)
    return checked
