"""The executor: runs one claimed task (timer, effect, child start, child result) as a step.

Every task is run the same way: do the slow part (an effect call) outside any
transaction, then in ONE transaction check that our claim is still the current one
(fencing: a zombie worker whose lease expired commits nothing), apply the step and
delete the task, through the step protocol (:mod:`statem.steps`). Failures of the step
mark the execution ``failed`` with the error in history, reported once the step
commits; they never take the worker down.

A task run inline (``execution_mode: sync``) goes through the same code with its
:class:`~statem.steps.InlineRun` as a parameter (None for a worker's task): the run's
connection is used, the tasks its steps arm are claimed for it, and when the run knows
the execution row its previous step wrote, the step is written against that row
(:func:`steps.commit_known`) instead of locking and reading it; any surprise there
rolls back to the locking path.

:meth:`Executor.run_once` runs ready tasks in the caller's thread (tests, scripts);
:meth:`Executor.run_inline` runs a sync execution's tasks in the caller of ``start`` or
``trigger``; :mod:`statem.worker` drives the executor from APScheduler.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import Connection, Row
from sqlalchemy.exc import DBAPIError

from . import dialects, operations, semantics, steps, store
from .definition import CompiledMachine
from .effects import default_retry, error_output, jittered, retryable
from .errors import ConcurrencyError, StatemError, StoreError
from .expressions import JSON
from .kinds import FINAL_STATUSES, TaskKind
from .leases import LeaseRenewer
from .runtime import Runtime
from .semantics import InvokeFailed, Outcome, Snapshot, StepRecord
from .steps import Armed, ClaimLost, InlineRun
from .telemetry import Metrics, span

log = logging.getLogger("statem.executor")

#: A step's rule: (machine, execution snapshot, now) -> outcome.
Rule = Callable[[CompiledMachine, Snapshot, dt.datetime], Outcome]
#: A rule built from a task's payload (as claimed, or as stored when the step commits: an
#: upgrade may have re-pointed it at the execution's new version in between).
PayloadRule = Callable[[dict[str, Any]], Rule]


def default_owner() -> str:
    """A worker name unique across hosts and processes: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _report(
    metrics: Metrics, task: Row[Any], row: Row[Any], kind: str, outcome: Outcome, failure: Exception | None
) -> None:
    """Report a committed step: the execution's failure if it failed, then the step."""
    if failure is not None:
        metrics.task("failed")
        log.warning(
            "execution %s failed in %s step: %s",
            row.id,
            kind,
            failure,
            extra={"execution_id": row.id, "machine": row.machine_id, "step": kind},
        )
    log.info(
        "execution %s: %s task %s -> state %s (%s)",
        task.execution_id,
        task.kind,
        task.id,
        outcome.state,
        outcome.status,
        extra={"execution_id": task.execution_id, "task_id": task.id, "step": task.kind},
    )


def _timer_rule(task: Row[Any], env: dict[str, Any]) -> PayloadRule:
    """A due timer's rule, built from its payload (as claimed, or as stored at commit)."""
    return lambda payload: lambda cm, s, now: semantics.fire_timer(cm, s, payload, env, now, task_id=task.id)


def _result_rule(task: Row[Any], ok: bool, output: JSON, env: dict[str, Any]) -> PayloadRule:
    """An effect result's rule, built from the effect task's payload."""
    return lambda payload: (
        lambda cm, s, now: semantics.apply_result(cm, s, payload, ok, output, env, now, task_id=task.id)
    )


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


class Executor:
    """Runs tasks for one engine's :class:`~statem.runtime.Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._local = threading.local()  # .run: the InlineRun this thread is draining
        #: keeps inline callers' claims alive while their effects run
        self.leases = LeaseRenewer(runtime, runtime.worker_settings.lease_seconds)

    # ------------------------------------------------------------------ claiming
    def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Row[Any]]:
        """Claim up to ``limit`` ready tasks under a fresh fencing token, soonest due first."""
        now = self.rt.clock()
        with self.rt.transaction() as conn:
            return list(
                store.claim_tasks(
                    conn,
                    owner=owner,
                    claim=uuid.uuid4().hex,
                    now=now,
                    lease_until=now + dt.timedelta(seconds=lease_seconds),
                    limit=limit,
                )
            )

    def run_once(self, limit: int = 100, owner: str = "run_once") -> int:
        """Claim the ready tasks and run each in this thread; returns how many ran."""
        ran = 0
        while ran < limit:
            batch = self.claim(owner, min(16, limit - ran), self.rt.worker_settings.lease_seconds)
            if not batch:
                break
            for task in batch:
                self.run(task)
                ran += 1
        return ran

    # ------------------------------------------------------------------ inline runs
    def new_run(self, execution_id: str) -> InlineRun:
        """A fresh inline run for a sync execution that ``start``/``trigger`` is stepping."""
        return InlineRun(uuid.uuid4().hex, self.rt.worker_settings.lease_seconds, {execution_id})

    def current_run(self, execution_id: str) -> InlineRun | None:
        """The inline run this thread is in, if it follows ``execution_id``."""
        run: InlineRun | None = getattr(self._local, "run", None)
        return run if run is not None and run.covers(execution_id) else None

    def run_inline(self, run: InlineRun, ready: Sequence[Row[Any]]) -> None:
        """Run ``ready`` (tasks claimed for ``run`` by a committed step) and what they arm, here.

        Children of sync machines are followed; an async child's tasks are left to workers.
        Inside the run's own loop (a sync child started by a sync parent) the tasks are
        queued for that loop. A run started while another is going on in this thread (an
        effect calling ``start``) is run to its end first, then the outer one goes on.
        """
        run.queue.extend(ready)
        outer: InlineRun | None = getattr(self._local, "run", None)
        if outer is run:
            return
        try:
            conn = self.rt.db.connect()
        except DBAPIError as exc:  # the claims lapse and a worker takes the tasks
            raise dialects.store_error(exc) from exc
        self._local.run = run
        try:
            with conn:
                run.conn = conn
                while run.queue:
                    self.run(run.queue.popleft())
        finally:
            run.conn = None
            self._local.run = outer

    # ------------------------------------------------------------------ running
    def run(self, task: Row[Any]) -> None:
        """Run one claimed task; never raises for a step failure."""
        self.rt.metrics.task(task.kind)
        run = self.current_run(task.execution_id)
        with span("statem.task", kind=task.kind, execution_id=task.execution_id, task_id=task.id):
            try:
                self._dispatch(task, run)
            except StatemError as exc:  # database trouble: the claim lapses and the task comes back
                log.warning("task %s (%s of %s) not applied: %s", task.id, task.kind, task.execution_id, exc)

    def _dispatch(self, task: Row[Any], run: InlineRun | None) -> None:
        env = self.rt.env
        if task.kind == TaskKind.effect:
            self._effect(task, run)
        elif task.kind == TaskKind.timer:
            self.rt.metrics.timer_fired((self.rt.clock() - task.due_at).total_seconds())

            self._step(task, run, "timer", _timer_rule(task, env))
        elif task.kind == TaskKind.child:
            self._child(task, run)
        elif task.kind == TaskKind.resume:
            self._resume(task, run)
        elif task.kind == TaskKind.drain:
            operations.drain(self.rt, task)
        else:
            log.error("task %s has unknown kind %r; left alone", task.id, task.kind)

    def _transaction(self, run: InlineRun | None) -> AbstractContextManager[Connection]:
        """A step's transaction: on the inline run's connection, else a pooled one."""
        if run is not None and run.conn is not None:
            return dialects.transaction_on(run.conn)
        return self.rt.transaction()

    def _committed(self, run: InlineRun | None, execution_id: str, armed: Armed) -> None:
        """After a step committed: hand what it armed to the run, wake workers if needed."""
        if run is not None:
            run.committed(execution_id, armed)
        if armed.for_workers:
            self.rt.wake()

    def _step(
        self, task: Row[Any], run: InlineRun | None, kind: str, rule_for: PayloadRule, result: Any = None
    ) -> None:
        """Apply ``rule`` as the step that consumes ``task``, in one fenced transaction.

        The fence is the row the run's previous step wrote when there is one
        (:func:`steps.commit_known`; if anything else happened since, it rolls back and
        the locking path below runs), else the row lock: the execution is locked, then
        all its armed tasks are taken (:func:`steps.take_armed`); ours must be among them
        under our claim, the others are the ones this step discards (a later step wins).
        """
        known = run.rows.pop(task.execution_id, None) if run is not None else None
        rule = rule_for(task.payload)
        if run is not None and known is not None and self._step_known(task, run, known, kind, rule):
            return
        now = self.rt.clock()
        try:
            with self._transaction(run) as conn:
                row = store.lock_execution(conn, task.execution_id)
                if row is None:
                    raise ClaimLost
                if row.status in FINAL_STATUSES:
                    steps.finish(conn, task)
                    return
                if operations.kept_while_paused(conn, row, task, now, result):  # applied after resume
                    return
                own, dropped = steps.take_armed_own(conn, row, task)
                rule = rule_for(own.payload)  # as stored: an upgrade may have re-pointed it
                outcome, failure = self._evaluate(conn, row, kind, task.payload.get("name"), rule, now)
                armed = steps.commit_locked(
                    self.rt.metrics, conn, row, outcome, now, dropped=dropped, run=run
                )
        except ClaimLost:
            self._stale(task)
            return
        _report(self.rt.metrics, task, row, kind, outcome, failure)
        self._committed(run, task.execution_id, armed)

    def _step_known(self, task: Row[Any], run: InlineRun, row: Row[Any], kind: str, rule: Rule) -> bool:
        """:meth:`_step` fenced by ``row``'s version; False, with nothing committed, if
        anything else happened in between."""
        now = self.rt.clock()
        outcome, failure = self._evaluate(None, row, kind, task.payload.get("name"), rule, now)
        try:
            with self._transaction(run) as conn:
                armed = steps.commit_known(self.rt.metrics, conn, row, outcome, now, done=task, run=run)
        except (ClaimLost, ConcurrencyError):
            return False  # the locking path evaluates the step afresh
        _report(self.rt.metrics, task, row, kind, outcome, failure)
        self._committed(run, task.execution_id, armed)
        return True

    def _evaluate(
        self,
        conn: Connection | None,
        row: Row[Any],
        kind: str,
        name: str | None,
        rule: Rule,
        now: dt.datetime,
    ) -> tuple[Outcome, Exception | None]:
        """The step's outcome, and what failed it (the execution's failure is the outcome)."""
        snap = steps.snapshot(row)
        try:
            cm = self.rt.compiled(row.machine_id, row.machine_version, conn)
            return rule(cm, snap, now), None
        except (StatemError, InvokeFailed) as exc:
            return semantics.failure(snap, kind, name, str(exc), event=semantics.event_of(exc)), exc

    def _stale(self, task: Row[Any]) -> None:
        self.rt.metrics.task("stale")
        log.info("task %s of %s is stale (discarded or reclaimed); dropped", task.id, task.execution_id)

    # ------------------------------------------------------------------ effects
    def _effect(self, task: Row[Any], run: InlineRun | None) -> None:
        payload = task.payload
        key = f"{task.execution_id}:{task.id}"
        policy = None
        timeout: float | None = None
        try:
            cm = self.rt.compiled(*payload["pin"]) if "pin" in payload else self.rt.compiled(*self._pin(task))
            inv = semantics.transition_at(cm, payload["transition"]).invoke
            assert inv is not None
            fn = self.rt.effects.get(payload["effect"], task)  # or a saved service's operation
            policy, timeout = inv.retry or default_retry(fn), inv.timeout_seconds
            kept = self.leases.holding(task) if run is not None else nullcontext()
            with kept, span("statem.effect", effect=payload["effect"], idempotency_key=key):
                output: JSON = self.rt.effects.call(fn, payload.get("input"), key, timeout)
            ok = True
        except StoreError:  # the database, not the effect: no attempt used; the claim lapses
            raise
        except Exception as exc:
            output, ok = error_output(exc), False
            attempts = policy.max_attempts if policy is not None else 1
            if task.attempts < attempts and retryable(exc):
                assert policy is not None
                self._retry(task, run, jittered(policy.delay(task.attempts)), output)
                return
        env = self.rt.env

        self._step(task, run, "result", _result_rule(task, ok, output, env), {"ok": ok, "output": output})

    def _pin(self, task: Row[Any]) -> tuple[str, int]:
        with self.rt.transaction(write=False) as conn:
            row = store.get_execution(conn, task.execution_id)
        if row is None:
            raise StatemError(f"execution {task.execution_id!r} is gone")
        return row.machine_id, row.machine_version

    def _retry(self, task: Row[Any], run: InlineRun | None, delay: float, error: dict[str, Any]) -> None:
        if run is not None:
            run.forget(task.execution_id)  # the retry step writes the row
        now = self.rt.clock()
        due = now + dt.timedelta(seconds=delay)
        with self._transaction(run) as conn:
            row = store.lock_execution(conn, task.execution_id)
            if row is None or not store.retry_task(conn, task.id, task.claim, due, error["message"]):
                return
            operations.hold_if_paused(conn, row, task.id)  # the next attempt waits for resume
            record = StepRecord(
                "retry",
                task.payload.get("name"),
                row.state,
                row.state,
                input=None,
                output={"attempt": task.attempts, "due_at": due.isoformat()},
                context=None,
                error=f"{error['type']}: {error['message']}",
            )
            steps.append_history(conn, row, [record], now)
        self.rt.metrics.task("retry")
        log.info(
            "effect task %s attempt %d failed (%s); retry in %.2fs",
            task.id,
            task.attempts,
            error["message"],
            delay,
        )
        self.rt.wake()

    # ------------------------------------------------------------------ children
    def _child(self, task: Row[Any], run: InlineRun | None) -> None:
        """Start a child execution under the parent's lock; a child that cannot start
        (its machine is missing or its start fails) is the parent's error result."""
        payload = task.payload
        machine_id, version = payload["machine"]
        now = self.rt.clock()
        env = self.rt.env
        child_id = f"{task.execution_id}.{task.id}"
        with self._transaction(run) as conn:
            parent = store.lock_execution(conn, task.execution_id)
            if parent is None or parent.status in FINAL_STATUSES:
                store.finish_task(conn, task.id, task.claim)
                return
            if operations.kept_while_paused(conn, parent, task, now, None):  # started on resume
                return
            try:
                child_cm = self.rt.compiled(machine_id, version, conn)
                outcome = semantics.start(child_cm, child_id, payload.get("input"), env, now)
            except StatemError as exc:
                error = _error(exc)
                if not store.finish_task(conn, task.id, task.claim):
                    return
                outcome, failure = self._evaluate(
                    conn,
                    parent,
                    "result",
                    payload.get("name"),
                    lambda cm, s, t: semantics.apply_result(
                        cm, s, payload, False, error, env, t, task_id=task.id
                    ),
                    now,
                )
                armed = steps.commit_locked(self.rt.metrics, conn, parent, outcome, now, run=run)
                child_run = None
            else:
                if not store.hold_task(conn, task.id, task.claim, child_id):
                    return
                # a sync child runs in the caller: in this thread's run if it follows the
                # parent, else in a run of its own (a worker took the parent's child task)
                failure, child_run = None, None
                if child_cm.machine.execution_mode == "sync":
                    child_run = run or self.new_run(child_id)
                    child_run.family.add(child_id)
                armed = steps.create_execution(
                    self.rt.metrics, conn, child_cm, child_id, payload.get("input"), now, outcome,
                    parent=(parent.id, task.id), run=child_run,
                )  # fmt: skip
        if armed.row.id == parent.id:  # the child did not start: the parent took its error branch
            _report(self.rt.metrics, task, parent, "result", outcome, failure)
            self._committed(run, parent.id, armed)
            return
        log.info(
            "execution %s started child %s (%s v%s)",
            parent.id,
            child_id,
            machine_id,
            armed.row.machine_version,
        )
        if armed.for_workers:
            self.rt.wake()
        if child_run is not None and armed.ready:
            child_run.rows[child_id] = armed.row
            self.run_inline(child_run, armed.ready)

    def _resume(self, task: Row[Any], run: InlineRun | None) -> None:
        """A child's result: consume our claim, take the parent's waiting child task,
        apply the result as the parent's step."""
        payload = task.payload
        now = self.rt.clock()
        env = self.rt.env
        with self._transaction(run) as conn:
            row = store.lock_execution(conn, task.execution_id)
            if row is not None and operations.kept_while_paused(conn, row, task, now, None):
                return
            if row is None or not store.finish_task(conn, task.id, task.claim):
                self._stale(task)
                return
            waiting = store.take_waiting_task(conn, int(payload["task"]))
            if waiting is None or row.status in FINAL_STATUSES:
                log.info("child result for %s arrived stale; dropped", task.execution_id)
                return
            ok, output = bool(payload["ok"]), payload.get("output")
            outcome, failure = self._evaluate(
                conn,
                row,
                "result",
                waiting.payload.get("name"),
                lambda cm, s, t: semantics.apply_result(
                    cm, s, waiting.payload, ok, output, env, t, task_id=waiting.id
                ),
                now,
            )
            armed = steps.commit_locked(self.rt.metrics, conn, row, outcome, now, run=run)
        _report(self.rt.metrics, task, row, "result", outcome, failure)
        self._committed(run, task.execution_id, armed)
