"""The executor: runs one claimed task (timer, effect, child start, child result) as a step.

Every task is run the same way: do the slow part (an effect call) outside any
transaction, then in ONE transaction lock the execution, check that our claim is still
the current one (fencing: a zombie worker whose lease expired commits nothing), apply
the step and delete the task. Failures of the step mark the execution ``failed`` with
the error in history; they never take the worker down.

The one exception is a step of an :class:`InlineRun` (``execution_mode: sync``): the
execution row its previous step wrote is known, so the step writes fenced by that row's
version without reading it first, and finishes its task under its claim; any surprise
rolls back to the locking path above.

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
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row
from sqlalchemy.exc import DBAPIError

from . import operations, semantics, store, store_ops
from .effects import call_effect
from .engine import snapshot, store_error
from .errors import ConcurrencyError, StatemError
from .expressions import JSON
from .semantics import FINAL_STATUSES, InvokeFailed, Outcome, StepRecord
from .telemetry import span

if TYPE_CHECKING:
    from .engine import Armed, Engine

log = logging.getLogger("statem.executor")


def default_owner() -> str:
    """A worker name unique across hosts and processes: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


def _with_payload(make: Any, payload: Any) -> Any:
    """A step maker ``(cm, snap, now, payload)`` bound to ``payload``."""
    return lambda cm, snap, now: make(cm, snap, now, payload)


def _is_claim(row: Row[Any], task: Row[Any]) -> bool:
    """True if ``row`` is ``task`` still held under its claim."""
    return bool(row.id == task.id and row.claim == task.claim and row.status == "claimed")


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
    #: execution id -> its row as this run's last step on it wrote it; a write that does
    #: not hand the row back drops the entry. The next step writes fenced by that row's
    #: version instead of reading the row again (see Engine.commit_unread_step).
    rows: dict[str, Row[Any]] = field(default_factory=dict)

    def remember(self, execution_id: str, row: Row[Any] | None) -> None:
        """Keep ``row`` as the latest of ``execution_id`` (forget it when None)."""
        if row is None:
            self.rows.pop(execution_id, None)
        else:
            self.rows[execution_id] = row

    def covers(self, execution_id: str | None) -> bool:
        """True if this run takes the inline tasks of ``execution_id``."""
        return execution_id in self.family

    def claim(self, now: dt.datetime) -> store.Claim:
        """The claim tasks armed at ``now`` are inserted under."""
        return store.Claim(self.owner, self.token, now + dt.timedelta(seconds=self.lease_seconds))


class LeaseKeeper:
    """Renews the leases of claims held by callers running effects inline, while they run.

    Workers renew their own claims from APScheduler; a caller of ``start``/``trigger`` on
    a sync machine has no scheduler, so this keeps its claims alive instead: one daemon
    thread per engine, started when a claim is taken and ending when none is left,
    renewing every claim it holds in one transaction every lease/3 seconds. An effect
    that runs longer than the lease is then not taken over (and run a second time) by a
    worker while the caller still waits on it. If the caller's process dies, renewal
    stops with it and the lease lapses.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._held: dict[int, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, task: Row[Any]) -> Iterator[None]:
        """Keep ``task``'s claim leased while the body runs."""
        with self._lock:
            self._held[task.id] = task.claim
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="statem-lease-keeper", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(task.id, None)

    def _loop(self) -> None:
        lease = self.engine.worker_settings.lease_seconds
        while True:
            time.sleep(lease / 3)
            with self._lock:
                claims = list(self._held.items())
                if not claims:  # nothing to keep: the thread ends; the next claim starts another
                    self._thread = None
                    return
            try:
                with self.engine.transaction() as conn:
                    store.renew_leases(conn, claims, self.engine.clock() + dt.timedelta(seconds=lease))
            except StatemError as exc:  # the database is away: the claims may lapse, nothing breaks
                log.warning("could not renew %d inline claims: %s", len(claims), exc)


class Executor:
    """Runs tasks for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()  # .run: the InlineRun this thread is draining
        self.leases = LeaseKeeper(engine)

    # ------------------------------------------------------------------ claiming
    def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
    ) -> list[Row[Any]]:
        """Claim up to ``limit`` ready tasks under a fresh fencing token, soonest due first."""
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

    def new_run(self, execution_id: str) -> InlineRun:
        """A fresh inline run for a sync execution that ``start``/``trigger`` is stepping."""
        return InlineRun(uuid.uuid4().hex, self.engine.worker_settings.lease_seconds, {execution_id})

    def current_run(self, execution_id: str) -> InlineRun | None:
        """The inline run this thread is in, if it follows ``execution_id``."""
        run: InlineRun | None = getattr(self._local, "run", None)
        return run if run is not None and run.covers(execution_id) else None

    @staticmethod
    def _conn(inline: InlineRun | None) -> Connection | None:
        """The connection of the inline run a step belongs to (None: take one from the pool)."""
        return inline.conn if inline is not None else None

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
            conn = self.engine.db.connect()
        except DBAPIError as exc:  # the claims lapse and a worker takes the tasks
            raise store_error(exc) from exc
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
        self.engine.metrics.task(task.kind)
        with span("statem.task", kind=task.kind, execution_id=task.execution_id, task_id=task.id):
            self._dispatch(task)

    def _dispatch(self, task: Row[Any]) -> None:
        try:
            if task.kind == "effect":
                self._effect(task)
            elif task.kind == "timer":
                self.engine.metrics.timer_fired((self.engine.clock() - task.due_at).total_seconds())
                self._step(
                    task,
                    lambda cm, snap, now, payload: semantics.fire_timer(
                        cm, snap, payload, self.engine.env, now, task_id=task.id
                    ),
                    "timer",
                )
            elif task.kind == "child":
                self._child(task)
            elif task.kind == "resume":
                self._resume(task)
            elif task.kind == "drain":
                operations.drain(self.engine, task)
            else:
                log.error("task %s has unknown kind %r; left alone", task.id, task.kind)
        except StatemError as exc:  # database trouble: the claim lapses and the task comes back
            log.warning("task %s (%s of %s) not applied: %s", task.id, task.kind, task.execution_id, exc)

    def _stale(self, task: Row[Any]) -> None:
        self.engine.metrics.task("stale")
        log.info("task %s of %s is stale (discarded or reclaimed); dropped", task.id, task.execution_id)

    def _locked(self, conn: Connection, task: Row[Any]) -> Row[Any] | None:
        """Lock the task's execution, then check and consume our claim; None if stale."""
        row = store.lock_execution(conn, task.execution_id)
        if row is None or not store.finish_task(conn, task.id, task.claim):
            self._stale(task)
            return None
        return row

    def _step(self, task: Row[Any], make: Any, kind: str, result: dict[str, Any] | None = None) -> None:
        """Apply a task's step in one fenced transaction; a failing step fails the execution.

        The execution is locked, then all its armed tasks are taken in one
        ``DELETE ... RETURNING``: ours must be among them under our claim (fencing: if it is
        not, the transaction is rolled back and the result dropped); the others are the
        ones this step discards (a later step wins).
        """
        inline = self.current_run(task.execution_id)
        known = inline.rows.pop(task.execution_id, None) if inline is not None else None
        as_claimed = _with_payload(make, task.payload)
        if (
            inline is not None
            and known is not None
            and self._step_unread(task, as_claimed, kind, inline, known)
        ):
            return
        now = self.engine.clock()
        try:
            with self.engine.transaction(on=self._conn(inline)) as conn:
                row = store.lock_execution(conn, task.execution_id)
                if row is None:
                    raise store.ClaimLost
                if row.status in FINAL_STATUSES:
                    if not store.finish_task(conn, task.id, task.claim):
                        raise store.ClaimLost
                    return
                if row.status == "paused":  # kept, applied after resume (``result``: an effect's)
                    if not operations.keep_task(conn, task, now, result):
                        raise store.ClaimLost
                    return
                taken = store.discard_tasks(conn, row.id)
                if not any(_is_claim(t, task) for t in taken):
                    raise store.ClaimLost
                others = [t for t in taken if t.id != task.id]
                # the payload as stored now: an upgrade may have re-pointed it at its new version
                stored = next(t.payload for t in taken if t.id == task.id)
                outcome = self._outcome(
                    conn, row, _with_payload(make, stored), kind, task.payload.get("name"), now
                )
                armed = self.engine.commit_step(conn, row, outcome, now, dropped=others, inline=inline)
                self._log(task, outcome)
        except store.ClaimLost:
            self._stale(task)
            return
        self._armed(inline, task.execution_id, armed)

    def _step_unread(self, task: Row[Any], make: Any, kind: str, inline: InlineRun, row: Row[Any]) -> bool:
        """The step on the row this run's previous step wrote, without reading it again.

        Taken only when nothing else happened in between: the write is fenced by that
        row's version, and our task by its claim. Anything else rolls back and returns
        False, and the caller takes the locking path, which handles every case (stale
        claims, discards, other writers).
        """

        now = self.engine.clock()
        outcome, failure = self._evaluate(None, row, make, kind, task.payload.get("name"), now)
        try:
            with self.engine.transaction(on=self._conn(inline)) as conn:
                armed = self.engine.commit_unread_step(
                    conn, row, outcome, now, done=(task.id, task.claim), inline=inline
                )
        except (store.ClaimLost, ConcurrencyError):
            return False  # nothing committed: the locking path evaluates the step afresh
        if failure is not None:
            self._failed(row, kind, failure)
        self._log(task, outcome)
        self._armed(inline, task.execution_id, armed)
        return True

    def _armed(self, inline: InlineRun | None, execution_id: str, armed: Armed) -> None:
        """After a step committed: queue what it claimed for this run, wake workers if needed."""
        if inline is not None:
            inline.remember(execution_id, armed.row)
            inline.queue.extend(armed.ready)
        if armed.for_workers:
            self.engine._wake()

    def _outcome(
        self,
        conn: Connection | None,
        row: Row[Any],
        make: Any,
        kind: str,
        name: str | None,
        now: dt.datetime,
    ) -> Outcome:
        """The step's outcome; a step that fails fails the execution (reported here)."""
        outcome, failure = self._evaluate(conn, row, make, kind, name, now)
        if failure is not None:
            self._failed(row, kind, failure)
        return outcome

    def _evaluate(
        self,
        conn: Connection | None,
        row: Row[Any],
        make: Any,
        kind: str,
        name: str | None,
        now: dt.datetime,
    ) -> tuple[Outcome, Exception | None]:
        """The step's outcome, and what failed it (the execution's failure is the outcome)."""
        snap = snapshot(row)
        try:
            cm = self.engine.compiled(row.machine_id, row.machine_version, conn)
            outcome: Outcome = make(cm, snap, now)
        except (StatemError, InvokeFailed) as exc:
            return semantics.failure(snap, kind, name, str(exc), event=semantics.event_of(exc)), exc
        return outcome, None

    def _failed(self, row: Row[Any], kind: str, exc: Exception) -> None:
        self.engine.metrics.task("failed")
        log.warning(
            "execution %s failed in %s step: %s",
            row.id,
            kind,
            exc,
            extra={"execution_id": row.id, "machine": row.machine_id, "step": kind},
        )

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
            kept = self.leases.holding(task) if self.current_run(task.execution_id) else nullcontext()
            with kept, span("statem.effect", effect=payload["effect"], idempotency_key=key):
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
            lambda cm, snap, now, stored: semantics.apply_result(
                cm, snap, stored, ok, output, self.engine.env, now, task_id=task.id
            ),
            "result",
            {"ok": ok, "output": output},
        )

    def _pin(self, task: Row[Any]) -> tuple[str, int]:
        with self.engine.transaction(write=False) as conn:
            row = store.get_execution(conn, task.execution_id)
        if row is None:
            raise StatemError(f"execution {task.execution_id!r} is gone")
        return row.machine_id, row.machine_version

    def _retry(self, task: Row[Any], delay: float, error: dict[str, str]) -> None:
        inline = self.current_run(task.execution_id)
        if inline is not None:
            inline.remember(task.execution_id, None)  # the retry step writes the row
        now = self.engine.clock()
        due = now + dt.timedelta(seconds=delay)
        with self.engine.transaction(on=self._conn(inline)) as conn:
            row = store.lock_execution(conn, task.execution_id)
            if row is None or not store.retry_task(conn, task.id, task.claim, due, error["message"]):
                return
            if row.status == "paused":  # the next attempt waits for resume
                store_ops.hold_pending_task(conn, task.id)
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
    def _child(self, task: Row[Any]) -> None:
        payload = task.payload
        machine_id, version = payload["machine"]
        now = self.engine.clock()
        child_id = f"{task.execution_id}.{task.id}"
        inline = self.current_run(task.execution_id)
        with self.engine.transaction(on=self._conn(inline)) as conn:
            parent = store.lock_execution(conn, task.execution_id)
            if parent is None or parent.status in FINAL_STATUSES:
                store.finish_task(conn, task.id, task.claim)
                return
            if parent.status == "paused":  # started on resume
                operations.keep_task(conn, task, now, None)
                return
            try:
                child_cm = self.engine.compiled(machine_id, version, conn)
                outcome = semantics.start(child_cm, child_id, payload.get("input"), self.engine.env, now)
            except StatemError as exc:
                error = _error(exc)
                if not store.finish_task(conn, task.id, task.claim):
                    return
                failed = self._outcome(
                    conn,
                    parent,
                    lambda cm, snap, t: semantics.apply_result(
                        cm, snap, payload, False, error, self.engine.env, t, task_id=task.id
                    ),
                    "result",
                    payload.get("name"),
                    now,
                )
                armed = self.engine.commit_step(conn, parent, failed, now, inline=inline)
                started, child_run = False, None
            else:
                if not store.hold_task(conn, task.id, task.claim, child_id):
                    return
                # a sync child runs in the caller: in this thread's run if it follows the
                # parent, else in a run of its own (a worker took the parent's child task)
                started, child_run = True, None
                if child_cm.machine.execution_mode == "sync":
                    child_run = inline or self.new_run(child_id)
                    child_run.family.add(child_id)
                armed = self.engine.insert_execution(
                    conn, child_cm, child_id, payload.get("input"), now, outcome,
                    parent=(parent.id, task.id), inline=child_run,
                )  # fmt: skip
                log.info(
                    "execution %s started child %s (%s v%s)",
                    task.execution_id,
                    child_id,
                    child_cm.machine.id,
                    child_cm.machine.version,
                )
        if not started:  # the parent took its error branch
            self._armed(inline, task.execution_id, armed)
            return
        if armed.for_workers:
            self.engine._wake()
        if child_run is not None and armed.ready:
            child_run.remember(child_id, armed.row)
            self.run_inline(child_run, armed.ready)

    def _resume(self, task: Row[Any]) -> None:
        payload = task.payload
        now = self.engine.clock()
        inline = self.current_run(task.execution_id)
        with self.engine.transaction(on=self._conn(inline)) as conn:
            locked = store.lock_execution(conn, task.execution_id)
            if locked is not None and locked.status == "paused":  # kept, applied after resume
                operations.keep_task(conn, task, now, None)
                return
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
                    task_id=waiting.id,
                ),
                "result",
                waiting.payload.get("name"),
                now,
            )
            armed = self.engine.commit_step(conn, row, outcome, now, inline=inline)
            self._log(task, outcome)
        self._armed(inline, task.execution_id, armed)
