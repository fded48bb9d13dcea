"""The executor: runs one claimed task (timer, effect, child start, child result) as a step.

Every task is run the same way: do the slow part (an effect call) outside any
transaction, then in ONE transaction lock the execution, check that our claim is still
the current one (fencing: a zombie worker whose lease expired commits nothing), apply
the step and delete the task. Failures of the step mark the execution ``failed`` with
the error in history; they never take the worker down.

:meth:`Executor.run_once` runs ready tasks in the caller's thread (tests, scripts,
``execution_mode: sync``); :mod:`statem.worker` drives it from APScheduler.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row

from . import semantics, store
from .effects import call_effect
from .engine import snapshot
from .errors import StatemError
from .expressions import JSON
from .semantics import FINAL_STATUSES, InvokeFailed, Outcome, StepRecord
from .telemetry import span

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("statem.executor")

#: Task kinds ``execution_mode: sync`` runs in the caller (timers always go to workers).
INLINE_KINDS = ("effect", "child", "resume")


def default_owner() -> str:
    """A worker name unique across hosts and processes: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


class Executor:
    """Runs tasks for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._inline = threading.local()  # the queue of the sync execution this thread runs

    # ------------------------------------------------------------------ claiming
    def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        *,
        execution_ids: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> list[Row[Any]]:
        """Claim up to ``limit`` ready tasks under a fresh fencing token."""
        now = self.engine.clock()
        with self.engine.transaction() as conn:
            return list(
                store.claim_tasks(
                    conn,
                    owner=owner,
                    claim=uuid.uuid4().hex,
                    now=now,
                    lease_until=now + dt.timedelta(seconds=lease_seconds),
                    limit=limit,
                    execution_ids=execution_ids,
                    kinds=kinds,
                )
            )

    def run_once(self, limit: int = 100, owner: str = "run_once") -> int:
        """Claim the ready tasks and run each in this thread; returns how many ran."""
        ran = 0
        while ran < limit:
            batch = self.claim(owner, min(16, limit - ran), self.engine.worker_settings.lease_seconds)
            if not batch:
                break
            for task in batch:
                self.run(task)
                ran += 1
        return ran

    def run_inline(self, execution_id: str) -> None:
        """Run a sync execution's ready tasks (not timers) in the caller until it rests.

        Children of sync machines are followed; an async child's tasks are left to workers.
        """
        family = [execution_id]
        self._inline.queue = []
        try:
            while True:
                batch = self._inline.queue or self.claim(
                    "inline",
                    16,
                    self.engine.worker_settings.lease_seconds,
                    execution_ids=family,
                    kinds=INLINE_KINDS,
                )
                self._inline.queue = []
                if not batch:
                    return
                for task in batch:
                    child = self.run(task)
                    if child is not None and child not in family:
                        family.append(child)
        finally:
            self._inline.queue = None

    def _claim_next_inline(self, conn: Connection, execution_id: str, now: dt.datetime) -> bool:
        """Running inline: claim the tasks this step armed in its own transaction (saves one)."""
        queue = getattr(self._inline, "queue", None)
        if queue is None:
            return False
        lease = dt.timedelta(seconds=self.engine.worker_settings.lease_seconds)
        queue.extend(
            store.claim_tasks(
                conn, owner="inline", claim=uuid.uuid4().hex, now=now, lease_until=now + lease,
                limit=16, execution_ids=[execution_id], kinds=INLINE_KINDS,
            )
        )  # fmt: skip
        return True

    # ------------------------------------------------------------------ running
    def run(self, task: Row[Any]) -> str | None:
        """Run one claimed task; never raises for a step failure. Returns a started child's id."""
        self.engine.metrics.task(task.kind)
        with span("statem.task", kind=task.kind, execution_id=task.execution_id, task_id=task.id):
            return self._dispatch(task)

    def _dispatch(self, task: Row[Any]) -> str | None:
        try:
            if task.kind == "effect":
                self._effect(task)
            elif task.kind == "timer":
                self.engine.metrics.timer_fired((self.engine.clock() - task.due_at).total_seconds())
                self._step(
                    task,
                    lambda cm, snap, now: semantics.fire_timer(cm, snap, task.payload, self.engine.env, now),
                    "timer",
                )
            elif task.kind == "child":
                return self._child(task)
            elif task.kind == "resume":
                self._resume(task)
            else:
                log.error("task %s has unknown kind %r; left alone", task.id, task.kind)
        except StatemError as exc:  # database trouble: the claim lapses and the task comes back
            log.warning("task %s (%s of %s) not applied: %s", task.id, task.kind, task.execution_id, exc)
        return None

    def _locked(self, conn: Connection, task: Row[Any]) -> Row[Any] | None:
        """Lock the task's execution, then check and consume our claim; None if stale."""
        row = store.lock_execution(conn, task.execution_id)
        if row is None or not store.finish_task(conn, task.id, task.claim):
            self.engine.metrics.task("stale")
            log.info(
                "task %s of %s is stale (discarded or reclaimed); dropped",
                task.id,
                task.execution_id,
            )
            return None
        return row

    def _step(self, task: Row[Any], make: Any, kind: str, name: str | None = None) -> None:
        """Apply a task's step in one fenced transaction; a failing step fails the execution."""
        now = self.engine.clock()
        with self.engine.transaction() as conn:
            row = self._locked(conn, task)
            if row is None or row.status in FINAL_STATUSES:
                return
            outcome = self._outcome(conn, row, make, kind, name or task.payload.get("name"), now)
            self.engine.commit_step(conn, row, outcome, now)
            self._log(task, outcome)
            inline = bool(outcome.tasks) and self._claim_next_inline(conn, row.id, now)
        if outcome.tasks and not inline:
            self.engine._wake()

    def _outcome(
        self,
        conn: Connection,
        row: Row[Any],
        make: Any,
        kind: str,
        name: str | None,
        now: dt.datetime,
    ) -> Outcome:
        snap = snapshot(row)
        try:
            cm = self.engine.compiled(row.machine_id, row.machine_version, conn)
            outcome: Outcome = make(cm, snap, now)
        except (StatemError, InvokeFailed) as exc:
            self.engine.metrics.task("failed")
            log.warning(
                "execution %s failed in %s step: %s",
                row.id,
                kind,
                exc,
                extra={"execution_id": row.id, "machine": row.machine_id, "step": kind},
            )
            return semantics.failure(snap, kind, name, str(exc))
        return outcome

    def _log(self, task: Row[Any], outcome: Outcome) -> None:
        log.info(
            "execution %s: %s task %s -> state %s (%s)",
            task.execution_id,
            task.kind,
            task.id,
            outcome.state,
            outcome.status,
            extra={"execution_id": task.execution_id, "task_id": task.id, "step": task.kind},
        )

    # ------------------------------------------------------------------ effects
    def _effect(self, task: Row[Any]) -> None:
        payload = task.payload
        key = f"{task.execution_id}:{task.id}"
        policy = None
        timeout: float | None = None
        try:
            cm = (
                self.engine.compiled(*payload["pin"])
                if "pin" in payload
                else self.engine.compiled(*self._pin(task))
            )
            inv = semantics.transition_at(cm, payload["transition"]).invoke
            assert inv is not None
            policy, timeout = inv.retry, inv.timeout_seconds
            fn = self.engine.effects.get(payload["effect"])
            with span("statem.effect", effect=payload["effect"], idempotency_key=key):
                output: JSON = call_effect(fn, payload.get("input"), key, timeout)
            ok = True
        except Exception as exc:
            output, ok = _error(exc), False
            attempts = policy.max_attempts if policy is not None else 1
            if task.attempts < attempts:
                assert policy is not None
                self._retry(task, policy.delay(task.attempts), output)
                return
        self._step(
            task,
            lambda cm, snap, now: semantics.apply_result(cm, snap, payload, ok, output, self.engine.env, now),
            "result",
        )

    def _pin(self, task: Row[Any]) -> tuple[str, int]:
        with self.engine.transaction(write=False) as conn:
            row = store.get_execution(conn, task.execution_id)
        if row is None:
            raise StatemError(f"execution {task.execution_id!r} is gone")
        return row.machine_id, row.machine_version

    def _retry(self, task: Row[Any], delay: float, error: dict[str, str]) -> None:
        now = self.engine.clock()
        due = now + dt.timedelta(seconds=delay)
        with self.engine.transaction() as conn:
            row = store.lock_execution(conn, task.execution_id)
            if row is None or not store.retry_task(conn, task.id, task.claim, due, error["message"]):
                return
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
            self.engine.append_steps(conn, row, [record], now)
        self.engine.metrics.task("retry")
        log.info(
            "effect task %s attempt %d failed (%s); retry in %.2fs",
            task.id,
            task.attempts,
            error["message"],
            delay,
        )
        self.engine._wake()

    # ------------------------------------------------------------------ children
    def _child(self, task: Row[Any]) -> str | None:
        payload = task.payload
        machine_id, version = payload["machine"]
        now = self.engine.clock()
        child_id = f"{task.execution_id}.{task.id}"
        child_cm = None
        with self.engine.transaction() as conn:
            parent = store.lock_execution(conn, task.execution_id)
            if parent is None or parent.status in FINAL_STATUSES:
                store.finish_task(conn, task.id, task.claim)
                return None
            try:
                child_cm = self.engine.compiled(machine_id, version, conn)
                outcome = semantics.start(child_cm, child_id, payload.get("input"), self.engine.env, now)
            except StatemError as exc:
                error = _error(exc)
                if not store.finish_task(conn, task.id, task.claim):
                    return None
                failed = self._outcome(
                    conn,
                    parent,
                    lambda cm, snap, t: semantics.apply_result(
                        cm, snap, payload, False, error, self.engine.env, t
                    ),
                    "result",
                    payload.get("name"),
                    now,
                )
                self.engine.commit_step(conn, parent, failed, now)
                return None
            if not store.hold_task(conn, task.id, task.claim, child_id):
                return None
            self.engine.insert_execution(
                conn,
                child_cm,
                child_id,
                payload.get("input"),
                now,
                outcome,
                parent=(parent.id, task.id),
            )
        log.info(
            "execution %s started child %s (%s v%s)",
            task.execution_id,
            child_id,
            child_cm.machine.id,
            child_cm.machine.version,
        )
        if child_cm.machine.execution_mode == "sync" and outcome.tasks:
            self.run_inline(child_id)
        self.engine._wake()
        return child_id

    def _resume(self, task: Row[Any]) -> None:
        payload = task.payload
        now = self.engine.clock()
        with self.engine.transaction() as conn:
            row = self._locked(conn, task)
            if row is None:
                return
            waiting = store.take_waiting_task(conn, int(payload["task"]))
            if waiting is None or row.status in FINAL_STATUSES:
                log.info("child result for %s arrived stale; dropped", task.execution_id)
                return
            outcome = self._outcome(
                conn,
                row,
                lambda cm, snap, t: semantics.apply_result(
                    cm,
                    snap,
                    waiting.payload,
                    bool(payload["ok"]),
                    payload.get("output"),
                    self.engine.env,
                    t,
                ),
                "result",
                waiting.payload.get("name"),
                now,
            )
            self.engine.commit_step(conn, row, outcome, now)
            self._log(task, outcome)
        if outcome.tasks:
            self.engine._wake()
