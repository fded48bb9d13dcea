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

from . import claims, dialects, fanout, operations, semantics, steps, store
from .dialects import is_outage
from .effects import default_retry, error_output, jittered, retryable
from .errors import ConcurrencyError, StatemError, StoreError
from .expressions import JSON
from .kinds import FINAL_STATUSES, TaskKind
from .leases import LeaseRenewer
from .limits import check_outcome, check_value, child_execution_id, clean_text
from .runtime import Runtime
from .semantics import InvokeFailed, Outcome, StepRecord
from .settings import DEFAULT_MAX_ATTEMPTS, MAX_STEP_CLAIMS
from .steps import Armed, ClaimLost, InlineRun
from .task_rules import (
    Done,
    Item,
    Late,
    PayloadRule,
    Rule,
    TaskAbandoned,
    check_depth,
    error_of,
    late_record,
    report,
    result_rule,
    timer_rule,
    used_up,
)
from .telemetry import span

log = logging.getLogger("statem.executor")


def default_owner() -> str:
    """A worker name unique across hosts and processes: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Executor:
    """Runs tasks for one engine's :class:`~statem.runtime.Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._local = threading.local()  # .run: the InlineRun this thread is draining
        #: commits a worker's effect results, in batches (statem.batch.GroupCommit); None:
        #: each is its own transaction
        self.committer: Callable[[Item], None] | None = None
        #: keeps inline callers' claims alive while their effects run
        self.leases = LeaseRenewer(runtime, runtime.worker_settings.lease_seconds)

    # ------------------------------------------------------------------ claiming
    def claim(self, owner: str, limit: int, lease_seconds: float, *, timers: bool = False) -> list[Row[Any]]:
        """Claim up to ``limit`` ready tasks (``timers``: timers only) under a fresh fencing
        token, soonest due first, in a transaction of their own."""
        with self.rt.transaction() as conn:
            dialects.lease_only(conn, claim=True)
            return self.claim_on(conn, owner, limit, lease_seconds, timers=timers)

    def claim_on(
        self, conn: Connection, owner: str, limit: int, lease_seconds: float, *, timers: bool = False
    ) -> list[Row[Any]]:
        """:meth:`claim` inside the caller's transaction (committed with it, or not at all)."""
        now = self.rt.clock()
        lease_until = now + dt.timedelta(seconds=lease_seconds)
        token = uuid.uuid4().hex
        if timers:  # any process can fire a timer
            return claims.claim_timers(
                conn, owner=owner, claim=token, now=now, lease_until=lease_until, limit=limit
            )
        return claims.claim_tasks(
            conn, owner=owner, claim=token, now=now, lease_until=lease_until, limit=limit,
            effects=self.rt.effects.names(),
        )  # fmt: skip

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
        effects = frozenset(self.rt.effects.names())
        return InlineRun(
            uuid.uuid4().hex, self.rt.worker_settings.lease_seconds, {execution_id}, effects=effects
        )

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
        """Run one claimed task; never raises. What a step raises that is not a database
        outage fails its execution (an invoke takes its error branch), as does a claim past
        its task's bound: see :func:`_unexpected`, :func:`_give_up`."""
        self.rt.metrics.task(task.kind)
        run = self.current_run(task.execution_id)
        with span("statem.task", kind=task.kind, execution_id=task.execution_id, task_id=task.id):
            try:
                if task.kind != TaskKind.effect and task.attempts > MAX_STEP_CLAIMS:
                    _give_up(self, task, run, TaskAbandoned(
                        f"this {task.kind} step was claimed {task.attempts - 1} times and never finished: "
                        "the worker running it died (or lost its lease) each time"
                    ))  # fmt: skip
                else:
                    self._dispatch(task, run)
            except Exception as exc:
                _unexpected(self, task, run, exc)

    def _dispatch(self, task: Row[Any], run: InlineRun | None) -> None:
        if task.kind == TaskKind.effect:
            self._effect(task, run)
        elif task.kind == TaskKind.timer:
            self.rt.metrics.timer_fired((self.rt.clock() - task.due_at).total_seconds())
            self._step(task, run, "timer", timer_rule(task, self.rt.env))
        elif task.kind == TaskKind.child:
            start_child(self, task, run)
        elif task.kind == TaskKind.resume:
            self._resume(task, run)
        elif task.kind == TaskKind.joining:
            join(self, task, run)
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
        self,
        task: Row[Any],
        run: InlineRun | None,
        kind: str,
        rule_for: PayloadRule,
        result: Any = None,
        late: Late = None,
    ) -> None:
        """Apply ``rule`` as the step that consumes ``task``, in one fenced transaction.

        The fence is the row the run's previous step wrote when there is one
        (:func:`steps.commit_known`; if anything else happened since, it rolls back and
        the locking path below runs), else the row lock: the execution is locked, then
        all its armed tasks are taken (:func:`steps.take_armed`); ours must be among them
        under our claim, the others are the ones this step discards (a later step wins).
        ``late``: an effect's (ok, output), recorded in history as a ``discard`` row when it
        arrives too late to apply (its task discarded, or taken over).
        """
        known = run.rows.pop(task.execution_id, None) if run is not None else None
        rule = rule_for(task.payload)
        if run is not None and known is not None and self._step_known(task, run, known, kind, rule):
            return
        now = self.rt.clock()
        try:
            with self._transaction(run) as conn:
                done = self._locked_step(conn, task, run, kind, rule_for, now, late=late, result=result)
        except ClaimLost:
            self._stale(task)
            if late is not None:
                record_late(self, task, run, *late)
            return
        if done is not None:
            self._after(task, run, kind, done)

    def _locked_step(
        self,
        conn: Connection,
        task: Row[Any],
        run: InlineRun | None,
        kind: str,
        rule_for: PayloadRule,
        now: dt.datetime,
        *,
        late: Late = None,
        result: Any = None,
    ) -> Done | None:
        """The locking path of :meth:`_step` inside the caller's transaction: lock the
        execution, take its armed tasks (ClaimLost unless ours is among them under our
        claim), apply the step with the rule built from our task's payload as stored (an
        upgrade may have re-pointed it). None when there is no step to report: the
        execution is final (our task is just done, an effect's ``late`` result recorded),
        or paused (the task, with its ``result``, is kept for resume)."""
        row = store.lock_execution(conn, task.execution_id)
        if row is None:
            raise ClaimLost
        if row.status in FINAL_STATUSES:
            steps.finish(conn, task)
            if late is not None:
                steps.append_history(conn, row, [late_record(task, row.state, *late)], now)
            return None
        if operations.kept_while_paused(conn, row, task, now, result):  # applied after resume
            return None
        own, dropped = steps.take_armed_own(conn, row, task)
        rule = rule_for(own.payload)
        outcome, failure = self._evaluate(conn, row, kind, task.payload.get("name"), rule, now)
        armed = steps.commit_locked(self.rt.metrics, conn, row, outcome, now, dropped=dropped, run=run)
        return Done(row, outcome, failure, armed)

    def _after(
        self, task: Row[Any], run: InlineRun | None, kind: str, done: Done, level: int = logging.INFO
    ) -> None:
        """Once a step committed: report it (its log line at ``level``), hand on what it armed."""
        report(self.rt.metrics, task, done.row, kind, done.outcome, done.failure, level)
        self._committed(run, task.execution_id, done.armed)

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
        report(self.rt.metrics, task, row, kind, outcome, failure)
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
            outcome = rule(cm, snap, now)
            check_outcome(outcome, now)  # what cannot be stored fails the step, not the commit
            return outcome, None
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
            bound = policy.max_attempts if policy is not None else DEFAULT_MAX_ATTEMPTS
            if task.attempts > bound:
                raise used_up(task, bound)
            kept = self.leases.holding(task) if run is not None else nullcontext()
            with kept, span("statem.effect", effect=payload["effect"], idempotency_key=key):
                result = self.rt.effects.call(fn, payload.get("input"), key, timeout)
                output: JSON = check_value(result, "effect result")
            ok = True
        except StoreError:  # the database, not the effect: no attempt used; the claim lapses
            raise
        except Exception as exc:
            output, ok = error_output(exc), False
            attempts = policy.max_attempts if policy is not None else DEFAULT_MAX_ATTEMPTS
            if task.attempts < attempts and retryable(exc) and not isinstance(exc, TaskAbandoned):
                assert policy is not None
                _retry(self, task, run, jittered(policy.delay(task.attempts)), output)
                return
        if fanout.is_element(task):
            element_result(self, task, run, ok, output)
            return
        item = Item(task, "result", result_rule(task, ok, output, self.rt.env), {"ok": ok, "output": output},
                    late=(ok, output))  # fmt: skip
        if run is None and self.committer is not None:
            self.committer(item)
        else:
            self._step(task, run, item.kind, item.rule_for, item.result, late=item.late)

    def settle(self, item: Item) -> None:
        """Commit one effect result as its own step (a batch's item run alone); never
        raises (see :meth:`run`)."""
        try:
            self._step(item.task, None, item.kind, item.rule_for, item.result, late=item.late)
        except Exception as exc:
            _unexpected(self, item.task, None, exc)

    def _pin(self, task: Row[Any]) -> tuple[str, int]:
        with self.rt.transaction(write=False) as conn:
            row = store.get_execution(conn, task.execution_id)
        if row is None:
            raise StatemError(f"execution {task.execution_id!r} is gone")
        return row.machine_id, row.machine_version

    # ------------------------------------------------------------------ children
    def _resume(self, task: Row[Any], run: InlineRun | None) -> None:
        """A child's result: consume our claim, take the parent's waiting child task,
        apply the result as the parent's step (or as its fan-out element's end)."""
        payload = task.payload
        now = self.rt.clock()
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
            after = _result_step(
                self, conn, run, task, row, waiting, bool(payload["ok"]), payload.get("output"), now
            )
        after()


def start_child(ex: Executor, task: Row[Any], run: InlineRun | None) -> None:
    """Start a child execution under the parent's lock; a child that cannot start
    (its machine is missing or its start fails) is the parent's error result."""
    payload = task.payload
    machine_id, version = payload["machine"]
    now = ex.rt.clock()
    env = ex.rt.env
    child_id = child_execution_id(task.execution_id, task.id)
    after: Callable[[], None] | None = None
    with ex._transaction(run) as conn:
        parent = store.lock_execution(conn, task.execution_id)
        if parent is None or parent.status in FINAL_STATUSES:
            store.finish_task(conn, task.id, task.claim)
            return
        if operations.kept_while_paused(conn, parent, task, now, None):  # started on resume
            return
        try:
            check_depth(conn, parent)
            child_cm = ex.rt.compiled(machine_id, version, conn)
            outcome = semantics.start(child_cm, child_id, payload.get("input"), env, now)
            check_outcome(outcome, now)
        except StatemError as exc:
            if not store.finish_task(conn, task.id, task.claim):
                return
            after = _result_step(ex, conn, run, task, parent, task, False, error_of(exc), now)
        else:
            if not store.hold_task(conn, task.id, task.claim, child_id):
                return
            # a sync child runs in the caller: in this thread's run if it follows the
            # parent, else in a run of its own (a worker took the parent's child task)
            child_run = None
            if child_cm.machine.execution_mode == "sync":
                child_run = run or ex.new_run(child_id)
                child_run.family.add(child_id)
            armed = steps.create_execution(
                ex.rt.metrics, conn, child_cm, child_id, payload.get("input"), now, outcome,
                parent=(parent.id, task.id), run=child_run,
            )  # fmt: skip
    if after is not None:  # the child did not start: its error is the parent's result
        after()
        return
    log.info(
        "execution %s started child %s (%s v%s)",
        parent.id,
        child_id,
        machine_id,
        armed.row.machine_version,
    )
    if armed.for_workers:
        ex.rt.wake()
    if child_run is not None and armed.ready:
        child_run.rows[child_id] = armed.row
        ex.run_inline(child_run, armed.ready)


def _result_step(
    ex: Executor,
    conn: Connection,
    run: InlineRun | None,
    task: Row[Any],
    row: Row[Any],
    invoked: Row[Any],
    ok: bool,
    output: JSON,
    now: dt.datetime,
) -> Callable[[], None]:
    """Apply a child's result (or its failed start) on the locked ``row``: the parent's
    step, or the end of the fan-out element ``invoked`` is. Returns what to do once the
    transaction committed."""
    if fanout.is_element(invoked):
        claim = _claim_for(ex, run, row.id)
        started = fanout.element_ended(conn, invoked, ok, output, now, claim, finish=False)
        return lambda: _started(ex, run, started)
    env, payload = ex.rt.env, invoked.payload
    outcome, failure = ex._evaluate(
        conn,
        row,
        "result",
        payload.get("name"),
        lambda cm, s, t: semantics.apply_result(cm, s, payload, ok, output, env, t, task_id=invoked.id),
        now,
    )
    armed = steps.commit_locked(ex.rt.metrics, conn, row, outcome, now, run=run)

    def after() -> None:
        report(ex.rt.metrics, task, row, "result", outcome, failure)
        ex._committed(run, row.id, armed)

    return after


# --------------------------------------------------------------------------- fan-out
# The executor's fan-out steps, as functions of the executor (its class stays small).
def _claim_for(ex: Executor, run: InlineRun | None, execution_id: str) -> store.Claim | None:
    """The claim an inline run takes ``execution_id``'s tasks under, if it follows it."""
    if run is None or not run.covers(execution_id):
        return None
    return run.claim(ex.rt.clock())


def _retry_element(
    ex: Executor, task: Row[Any], run: InlineRun | None, due: dt.datetime, error: dict[str, Any]
) -> None:
    """An element's failed attempt: its task only goes back, due after its backoff (the
    history keeps the invoke and the join, not one step per element attempt)."""
    with ex._transaction(run) as conn:
        retried = store.retry_task(conn, task.id, task.claim, due, error["message"])
    if retried:
        ex.rt.metrics.task("retry")
        ex.rt.wake()


def _started(ex: Executor, run: InlineRun | None, started: fanout.Started) -> None:
    """Hand what an element's end armed to the inline run; wake workers if needed."""
    if run is not None:
        run.queue.extend(started.ready)
    if started.for_workers:
        ex.rt.wake()


def element_result(ex: Executor, task: Row[Any], run: InlineRun | None, ok: bool, output: JSON) -> None:
    """An element's effect result: one transaction on the element's rows, not the
    execution's; a result whose fan-out was discarded is dropped and recorded."""
    now = ex.rt.clock()
    try:
        with ex._transaction(run) as conn:
            claim = _claim_for(ex, run, task.execution_id)
            started = fanout.element_ended(conn, task, ok, output, now, claim, finish=True)
    except ClaimLost:
        _late(ex, task, run, ok)
        return
    _started(ex, run, started)


def _late(ex: Executor, task: Row[Any], run: InlineRun | None, ok: bool) -> None:
    """An element's result whose task is gone: its fan-out was discarded (by a later
    step, or a join past the failure bound), or another worker took the task over and
    finished it. Dropped, and recorded in the history. A task reclaimed by another worker
    but not finished yet (it still exists) is merely stale."""
    now = ex.rt.clock()
    with ex._transaction(run) as conn:
        row = store.lock_execution(conn, task.execution_id)
        if row is not None and store.get_task(conn, task.id) is None:
            if run is not None:
                run.forget(task.execution_id)
            record = StepRecord(
                "late",
                task.payload.get("name"),
                row.state,
                row.state,
                input=None,
                output={"element": task.payload.get("element"), "ok": ok, "task": task.id},
                context=None,
                error="the element was no longer armed (its fan-out was discarded, or another "
                "worker took it over after its lease lapsed); this result was dropped",
            )
            steps.append_history(conn, row, [record], now)
    ex._stale(task)


def join(ex: Executor, task: Row[Any], run: InlineRun | None) -> None:
    """A fan-out's join: one step under the execution's lock, with the results read
    from the element rows in index order; stale if a later step discarded it."""
    if run is not None:
        run.forget(task.execution_id)
    payload = task.payload
    now = ex.rt.clock()
    env = ex.rt.env
    try:
        with ex._transaction(run) as conn:
            row = store.lock_execution(conn, task.execution_id)
            if row is None:
                raise ClaimLost
            if row.status in FINAL_STATUSES:
                steps.finish(conn, task)
                return
            if operations.kept_while_paused(conn, row, task, now, None):  # joins after resume
                return
            kind, results, tolerated, dropped = steps.take_fanout(ex.rt.metrics, conn, row, task, now)
            ok, output = semantics.join(kind, results, tolerated)
            outcome, failure = ex._evaluate(
                conn,
                row,
                "result",
                payload.get("name"),
                lambda cm, s, t: semantics.apply_result(cm, s, payload, ok, output, env, t),
                now,
            )
            armed = steps.commit_locked(ex.rt.metrics, conn, row, outcome, now, dropped=dropped, run=run)
    except ClaimLost:
        ex._stale(task)
        return
    report(ex.rt.metrics, task, row, "result", outcome, failure)
    ex._committed(run, task.execution_id, armed)


def _retry(ex: Executor, task: Row[Any], run: InlineRun | None, delay: float, error: dict[str, Any]) -> None:
    now = ex.rt.clock()
    due = now + dt.timedelta(seconds=delay)
    if fanout.is_element(task):
        _retry_element(ex, task, run, due, error)
        return
    if run is not None:
        run.forget(task.execution_id)  # the retry step writes the row
    with ex._transaction(run) as conn:
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
    ex.rt.metrics.task("retry")
    log.info(
        "effect task %s attempt %d failed (%s); retry in %.2fs",
        task.id,
        task.attempts,
        error["message"],
        delay,
    )
    ex.rt.wake()


# --------------------------------------------------------------------------- when a step raises


def _unexpected(ex: Executor, task: Row[Any], run: InlineRun | None, exc: Exception) -> None:
    """A step raised. On a database outage (or a concurrent writer) the claim lapses and
    the task comes back. Anything else (a value the database refuses, a bug) fails the
    step (:func:`_give_up`): no task comes back forever."""
    if run is not None:
        run.forget(task.execution_id)  # the rolled-back step wrote nothing
    if is_outage(exc) or isinstance(exc, ConcurrencyError):
        log.warning("task %s (%s of %s) not applied: %s", task.id, task.kind, task.execution_id, exc)
        try:  # give it back unrun, its attempt unused; if the database is away, the claim lapses
            with ex._transaction(run) as conn:
                store.release_task(conn, task.id, task.claim)
        except Exception as again:
            log.info("task %s: claim not released (%s); it lapses", task.id, again)
        return
    log.error(
        "task %s (%s of %s) raised %s: %s; failing it",
        task.id,
        task.kind,
        task.execution_id,
        type(exc).__name__,
        exc,
        exc_info=not isinstance(exc, StatemError),
    )
    try:
        _give_up(ex, task, run, exc)
    except Exception as again:
        log.error("task %s: could not record its failure either (%s); its lease will lapse", task.id, again)


def _give_up(ex: Executor, task: Row[Any], run: InlineRun | None, exc: Exception) -> None:
    """Fail the step of ``task`` with ``exc``: an invoke (effect, child) takes its error
    branch if it has one; anything else, or an error branch that cannot commit either,
    fails the execution, state and context unchanged, the error in history."""
    ex.rt.metrics.task("failed")
    error = error_of(exc)
    payload = task.payload or {}
    env = ex.rt.env
    if task.kind in (TaskKind.effect, TaskKind.child) and "transition" in payload:
        try:
            ex._step(task, run, "result", result_rule(task, False, error, env))
            return
        except Exception as again:
            if is_outage(again):
                raise
            if run is not None:
                run.forget(task.execution_id)
            log.error("task %s: its error branch failed too (%s); failing the execution", task.id, again)
    message = clean_text(f"{error['type']}: {error['message']}") or error["type"]
    kind = "timer" if task.kind == TaskKind.timer else "result"
    ex._step(
        task, run, kind, lambda _: lambda cm, s, now: semantics.failure(s, kind, payload.get("name"), message)
    )


def record_late(ex: Executor, task: Row[Any], run: InlineRun | None, ok: bool, output: JSON) -> None:
    """Record an effect result that arrived after its task was discarded (a later step
    won, the execution ended) or taken over: a ``discard`` row with the output and error."""
    if run is not None:
        run.forget(task.execution_id)
    now = ex.rt.clock()
    with ex._transaction(run) as conn:
        row = store.lock_execution(conn, task.execution_id)
        if row is not None:
            steps.append_history(conn, row, [late_record(task, row.state, ok, output)], now)
