"""The public API: save machines, start and trigger executions, read their history.

``Engine`` owns the database engine, the compiled-machine cache, the effect registry and
the ``env`` expressions see. Each call is one transaction: the step (with its following
always-chain), its history rows and the tasks it arms commit together or not at all.
The executor (:mod:`statem.executor`) and the workers (:mod:`statem.worker`) build on the
same :meth:`Engine.commit_step`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError

from . import dialects, operations, semantics, store, store_ops
from .definition import CompiledMachine, Machine, compile_machine, load_definition
from .effects import Effect, EffectRegistry
from .errors import (
    DefinitionError,
    ExecutionNotFound,
    InputError,
    MachineNotFound,
    StatemError,
    StoreError,
)
from .expressions import JSON, check_json
from .records import Execution, MachineInfo, Step, Task
from .semantics import FINAL_STATUSES, INLINE_KINDS, Outcome, Snapshot, StepRecord, TaskSpec
from .settings import WorkerSettings
from .telemetry import Metrics

if TYPE_CHECKING:
    from .executor import Executor, InlineRun
    from .upgrade import UpgradeItem, UpgradeReport
    from .worker import Worker

log = logging.getLogger("statem")

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """The current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


@dataclass
class Armed:
    """What a committed step armed: tasks claimed for the inline caller to run next, and
    whether it left work for workers (they were notified)."""

    ready: list[Row[Any]] = field(default_factory=list)
    for_workers: bool = False
    #: the execution row as the step wrote it (when an inline run asked for it)
    row: Row[Any] | None = None


def snapshot(row: Row[Any]) -> Snapshot:
    """The semantics' view of an execution row."""
    return Snapshot(row.id, row.machine_id, row.machine_version, row.state, row.status, row.context)


class Engine:
    """A statem engine on one database.

    >>> engine = Engine("sqlite:///statem.db", env={"shipping_url": "http://localhost:8080"})
    >>> engine.migrate()

    ``url`` is any SQLAlchemy URL (SQLite for embedded use, PostgreSQL to scale out).
    ``env`` is what expressions see as ``env``. ``clock`` replaces the wall clock (tests).
    With ``strict_effects``, saving a machine that invokes an effect this engine has not
    registered is a DefinitionError.
    """

    def __init__(
        self,
        url: str = "sqlite:///statem.db",
        *,
        env: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        strict_effects: bool = False,
        worker_settings: WorkerSettings | None = None,
    ) -> None:
        self.url = url
        try:
            self.db = dialects.make_engine(url)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"invalid database URL {url!r}: {_first_line(exc)}") from None
        self.env: dict[str, Any] = dict(check_json(dict(env or {}), "env"))
        self.clock: Clock = clock or utcnow
        self.strict_effects = strict_effects
        self.worker_settings = worker_settings or WorkerSettings()
        self.effects = EffectRegistry()
        self.metrics = Metrics()
        self._machines: dict[tuple[str, int], CompiledMachine] = {}
        self._machines_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._executor: Executor | None = None

    def __repr__(self) -> str:
        return f"Engine({self.db.url.render_as_string(hide_password=True)!r})"

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def transaction(self, *, write: bool = True, on: Connection | None = None) -> Iterator[Connection]:
        """One database transaction; database failures surface as StoreError.

        ``on``: a connection the caller holds (an inline run keeps one for all its steps),
        else one from the pool for this transaction.
        """
        try:
            if on is not None:
                with on.begin():
                    yield on
                return
            with self.db.connect() as conn:
                if not write and dialects.is_sqlite(conn):
                    conn = conn.execution_options(sqlite_begin="DEFERRED")
                with conn.begin():
                    yield conn
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise store_error(exc) from exc

    def close(self) -> None:
        """Release the database connections."""
        self.db.dispose()

    def migrate(self) -> None:
        """Create or upgrade the schema to the latest migration (``alembic upgrade head``)."""
        from .migrate import upgrade

        upgrade(self)

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` after every commit that armed work (in-process worker wake-ups)."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        """Stop calling ``fn``."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _wake(self) -> None:
        for fn in list(self._listeners):
            fn()

    @property
    def executor(self) -> Executor:
        """The executor that runs this engine's tasks (created on first use)."""
        if self._executor is None:
            from .executor import Executor

            self._executor = Executor(self)
        return self._executor

    # ------------------------------------------------------------------ machines
    def save_machine(self, definition: Mapping[str, Any] | Machine | str | Path) -> Machine:
        """Validate and store a machine version; saving the same content again is a no-op.

        Raises DefinitionError when the definition is invalid or when different content is
        already saved under the same (id, version). Nothing is stored on error.
        """
        return self.save_machines([definition])[0]

    def save_machines(self, definitions: Sequence[Mapping[str, Any] | Machine | str | Path]) -> list[Machine]:
        """Validate every definition, then store them all in one transaction, or none."""
        compiled = [self._validated(d) for d in definitions]
        try:
            with self.transaction() as conn:
                for cm in compiled:
                    self._store_machine(conn, cm)
        except IntegrityError:  # a concurrent save of the same version won the race: compare again
            return self.save_machines([cm.machine for cm in compiled])
        with self._machines_lock:
            for cm in compiled:
                self._machines[cm.key] = cm
        return [cm.machine for cm in compiled]

    def _validated(self, definition: Mapping[str, Any] | Machine | str | Path) -> CompiledMachine:
        cm = compile_machine(load_definition(definition))
        if self.strict_effects:
            unknown = sorted(cm.effects() - set(self.effects.names()))
            if unknown:
                hint = "register it with @engine.effect"
                raise DefinitionError(cm.machine.id, [("", f"unknown effect {n!r}; {hint}") for n in unknown])
        return cm

    def _store_machine(self, conn: Connection, cm: CompiledMachine) -> None:
        m = cm.machine
        row = store.get_machine(conn, m.id, m.version)
        if row is None:
            store.insert_machine(conn, m.id, m.version, m.to_json(), cm.content_hash, self.clock())
        elif row.content_hash != cm.content_hash:
            reason = (
                f"version {m.version} is already saved with different content; "
                "save the change as a new version"
            )
            raise DefinitionError(m.id, [("version", reason)])

    def get_machine(self, machine_id: str, version: int | None = None) -> Machine:
        """A saved machine: the latest version when ``version`` is None."""
        return self.compiled(machine_id, version).machine

    def machines(self) -> list[MachineInfo]:
        """Every saved machine version."""
        with self.transaction(write=False) as conn:
            rows = store.list_machines(conn)
        return [
            MachineInfo(
                r.machine_id,
                r.version,
                r.content_hash,
                r.created_at,
                len(r.definition.get("states", {})),
            )
            for r in rows
        ]

    def compiled(
        self, machine_id: str, version: int | None = None, conn: Connection | None = None
    ) -> CompiledMachine:
        """The compiled machine (cached: a saved version never changes).

        With ``version`` None, the latest saved version is looked up each time (another
        process may have saved a newer one), but only its number: the definition is read
        and compiled once per version.
        """
        if version is not None and (cached := self._machines.get((machine_id, version))) is not None:
            return cached
        if conn is None:
            with self.transaction(write=False) as c:
                return self.compiled(machine_id, version, c)
        if version is None:
            version = store.latest_version(conn, machine_id)
            if version is None:
                raise MachineNotFound(machine_id, None)
        cached = self._machines.get((machine_id, version))
        if cached is not None:
            return cached
        row = store.get_machine(conn, machine_id, version)
        if row is None:
            raise MachineNotFound(machine_id, version)
        try:
            cm = compile_machine(load_definition(row.definition))
        except StatemError as exc:
            raise DefinitionError(
                machine_id, [("", f"stored version {row.version} no longer validates: {exc}")]
            ) from None
        with self._machines_lock:
            self._machines[cm.key] = cm
        return cm

    # ------------------------------------------------------------------ effects
    def effect(self, name: str) -> Callable[[Effect], Effect]:
        """Register a Python function as an effect: ``fn(input, *, idempotency_key) -> JSON``.

        >>> @engine.effect("charge-card")
        ... def charge(input, *, idempotency_key): ...
        """
        return self.effects.decorator(name)

    # ------------------------------------------------------------------ executions
    def start(
        self,
        machine_id: str,
        input: JSON | None = None,
        *,
        version: int | None = None,
        execution_id: str | None = None,
    ) -> Execution:
        """Start an execution: enter ``start_at`` and run its always-chain, in one transaction.

        With ``execution_id``, a repeated start returns the existing execution.
        """
        data = _check_input(input)
        eid = execution_id or uuid.uuid4().hex
        now = self.clock()
        inline: InlineRun | None = None
        try:
            with self.transaction() as conn:
                if execution_id is not None and (row := store.get_execution(conn, execution_id)):
                    return Execution.from_row(row)
                cm = self.compiled(machine_id, version, conn)
                outcome = semantics.start(cm, eid, data, self.env, now)
                if cm.machine.execution_mode == "sync":
                    inline = self.executor.new_run(eid)
                armed = self.insert_execution(conn, cm, eid, data, now, outcome, inline=inline)
        except IntegrityError:  # a concurrent start with the same execution_id won
            existing = self._find(eid)
            if existing is None:
                raise
            return existing
        if armed.for_workers:
            self._wake()
        if inline is not None and armed.ready:
            return self._run_inline(inline, armed, eid)
        return Execution(
            eid, cm.machine.id, cm.machine.version, outcome.state, outcome.status, outcome.context,
            data, outcome.output, outcome.error, None, now, now,
        )  # fmt: skip

    def insert_execution(
        self,
        conn: Connection,
        cm: CompiledMachine,
        eid: str,
        data: JSON,
        now: dt.datetime,
        outcome: Outcome,
        parent: tuple[str, int] | None = None,
        inline: InlineRun | None = None,
    ) -> Armed:
        """Create an execution row as its first step (a start or a child start) leaves it."""
        parent_id, parent_task_id = parent if parent else (None, None)
        written = store.insert_execution(
            conn,
            returning=inline is not None,
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
        armed = self._arm(conn, eid, outcome, now, parent_id, parent_task_id, inline)
        armed.row = written
        return armed

    def trigger(
        self,
        execution_id: str,
        action: str,
        input: JSON | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Execution:
        """Fire an action and the always-chain that follows, in one transaction.

        Raises ActionNotAllowed (changing nothing) if the current state has no such
        action, its guard is false, or the execution is final. A repeated
        ``idempotency_key`` returns the current execution and applies nothing.
        """
        data = _check_input(input)
        now = self.clock()
        inline: InlineRun | None = None
        with self.transaction() as conn:
            row = store.lock_execution(conn, execution_id)
            if row is None:
                raise ExecutionNotFound(execution_id)
            if idempotency_key is not None and store.has_idempotency_key(conn, execution_id, idempotency_key):
                return Execution.from_row(row)
            if operations.must_keep_trigger(conn, row):  # paused: kept, applied in order after resume
                operations.keep_trigger(conn, row, action, data, idempotency_key, now)
                return Execution.from_row(row)
            cm = self.compiled(row.machine_id, row.machine_version, conn)
            outcome = semantics.action(cm, snapshot(row), action, data, self.env, now)
            if cm.machine.execution_mode == "sync":
                inline = self.executor.new_run(execution_id)
            armed = self.commit_step(conn, row, outcome, now, idempotency_key=idempotency_key, inline=inline)
            created = row.created_at
        if armed.for_workers:
            self._wake()
        if inline is not None and armed.ready:
            return self._run_inline(inline, armed, execution_id)
        return _execution(row, outcome, now, created)

    def _run_inline(self, inline: InlineRun, armed: Armed, eid: str) -> Execution:
        """Run a sync execution's tasks here; the execution as its last step here left it."""
        inline.remember(eid, armed.row)
        self.executor.run_inline(inline, armed.ready)
        row = inline.rows.get(eid)
        return Execution.from_row(row) if row is not None else self.get(eid)

    def commit_step(
        self,
        conn: Connection,
        row: Row[Any],
        outcome: Outcome,
        now: dt.datetime,
        *,
        idempotency_key: str | None = None,
        report_to_parent: bool = True,
        dropped: Sequence[Row[Any]] | None = None,
        inline: InlineRun | None = None,
    ) -> Armed:
        """Persist one step on a locked execution row: history, new state, armed tasks.

        Tasks armed earlier are dropped (a later step wins), each recorded in history; a
        child left behind is canceled. ``dropped`` says which, when the caller has already
        deleted them (the executor does, to check its claim in the same statement). A child
        that ends hands its result to its parent as a ``resume`` task (unless the parent
        itself is canceling it: ``report_to_parent=False``). With ``inline``, the tasks the
        step arms for the executions that run follows are claimed for it as they are armed.
        """
        records = list(outcome.steps)
        if dropped is None:
            dropped = store.discard_tasks(conn, row.id) if row.armed else ()
        for task in dropped:
            records.insert(1, _discard_record(task, outcome.steps[0].from_state or row.state))
            self.metrics.step("discard")
            if task.kind == "child" and task.child_id:
                self.cancel_locked(
                    conn, task.child_id, f"parent {row.id!r} moved on", now, notify_parent=False
                )
        written = self._record(
            conn, row, outcome, records, now, idempotency_key, returning=inline is not None
        )
        parent_id, parent_task_id = (row.parent_id, row.parent_task_id) if report_to_parent else (None, None)
        armed = self._arm(conn, row.id, outcome, now, parent_id, parent_task_id, inline)
        armed.row = written
        return armed

    def commit_unread_step(
        self,
        conn: Connection,
        row: Row[Any],
        outcome: Outcome,
        now: dt.datetime,
        *,
        done: tuple[int, str],
        inline: InlineRun,
    ) -> Armed:
        """:meth:`commit_step` on the row an inline run's previous step wrote, without
        reading it again; ``done`` (task id, claim) is the task whose result this is.

        The write (with the history rows) comes first, fenced by that row's version
        (ConcurrencyError if anything wrote the execution since), so it also takes the
        row lock. Nothing wrote it since, so no step armed anything since: the previous
        step armed exactly ``done`` (a step arms at most one task), and there is nothing
        to discard. ``done`` is then finished under its claim (store.ClaimLost if that is
        no longer current), in the same statement that arms the next task when there is
        one. Any error rolls the whole step back.
        """
        written = self._record(conn, row, outcome, outcome.steps, now, None, returning=True)
        armed = self._arm(conn, row.id, outcome, now, row.parent_id, row.parent_task_id, inline, done)
        armed.row = written
        return armed

    def _record(
        self,
        conn: Connection,
        row: Row[Any],
        outcome: Outcome,
        records: Sequence[StepRecord],
        now: dt.datetime,
        idempotency_key: str | None,
        *,
        returning: bool,
    ) -> Row[Any] | None:
        """The step's history rows and the execution's new state, fenced by its version."""
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
            error=outcome.error,
            armed=bool(outcome.tasks),
            returning=returning,
        )

    def _arm(
        self,
        conn: Connection,
        eid: str,
        outcome: Outcome,
        now: dt.datetime,
        parent_id: str | None,
        parent_task_id: int | None,
        inline: InlineRun | None,
        done: tuple[int, str] | None = None,
    ) -> Armed:
        """Insert the tasks a step armed; a child that ended hands its result to its parent.

        Tasks an inline run will take are inserted already claimed under its token; the
        rest are left pending for workers, who are notified when the transaction commits.
        ``done`` (task id, claim): a task to finish, fenced, first (see commit_unread_step).
        """
        for record in outcome.steps:
            self.metrics.step(record.kind)
        claim = inline.claim(now) if inline is not None else None
        mine: list[TaskSpec] = []
        theirs: list[TaskSpec] = []
        here = inline is not None and inline.covers(eid)
        for spec in outcome.tasks:
            (mine if here and spec.kind in INLINE_KINDS else theirs).append(spec)
        ready: list[Row[Any]] = []
        if done is not None:
            if claim is not None and mine:
                ready.append(store.swap_task(conn, done, eid, mine.pop(0), now, claim))
            elif not store.finish_task(conn, *done):
                raise store.ClaimLost
        store.insert_tasks(conn, eid, theirs, now)
        if claim is not None:
            ready += store.insert_claimed_tasks(conn, eid, mine, now, claim)
        for_workers = bool(theirs)
        if outcome.status in FINAL_STATUSES and parent_id is not None and parent_task_id is not None:
            ok = outcome.status == "finished"
            result = outcome.output if ok else {"type": outcome.status, "message": outcome.error or ""}
            resume = [store.resume_spec(parent_task_id, ok, result, now)]
            if claim is not None and inline is not None and inline.covers(parent_id):
                ready += store.insert_claimed_tasks(conn, parent_id, resume, now, claim)
            else:
                store.insert_tasks(conn, parent_id, resume, now)
                for_workers = True
        if for_workers:
            dialects.notify(conn)
        return Armed(ready, for_workers)

    def append_steps(
        self, conn: Connection, row: Row[Any], records: list[StepRecord], now: dt.datetime
    ) -> None:
        """Record history rows that do not move the execution (retries, stale results)."""
        last = store.insert_steps(conn, row.id, row.seq + 1, records, now)
        store.write_seq(conn, row, last, now)

    def cancel(self, execution_id: str, reason: str = "canceled") -> Execution:
        """Cancel an execution and, recursively, its unfinished children. A no-op on a final one."""
        now = self.clock()
        with self.transaction() as conn:
            self.cancel_locked(conn, execution_id, reason, now, notify_parent=True)
        self._wake()
        return self.get(execution_id)

    def cancel_locked(
        self,
        conn: Connection,
        execution_id: str,
        reason: str,
        now: dt.datetime,
        *,
        notify_parent: bool,
    ) -> None:
        """Cancel inside an open transaction (locks parent before child, never the reverse)."""
        row = store.lock_execution(conn, execution_id)
        if row is None:
            raise ExecutionNotFound(execution_id)
        if row.status in operations.CLOSED_STATUSES:
            return
        if row.status == "paused" and store_ops.has_kept_trigger(conn, row.id):  # rejected by the drain
            store.insert_tasks(conn, row.id, [TaskSpec("drain", now, {})], now)
        step = StepRecord("cancel", None, row.state, row.state, context=row.context, error=reason)
        outcome = Outcome(row.state, "canceled", row.context, error=reason, steps=[step])
        for child_id in store.live_children(conn, row.id):
            self.cancel_locked(
                conn, child_id, f"parent {row.id!r} canceled: {reason}", now, notify_parent=False
            )
        self.commit_step(conn, row, outcome, now, report_to_parent=notify_parent)

    # ------------------------------------------------------------------ operations
    def pause(self, execution_id: str, reason: str | None = None) -> Execution:
        """Pause a running or waiting execution and its unfinished children: nothing moves
        it until :meth:`resume`; timers, results and triggers that arrive meanwhile are kept
        (in the database) and applied after resume in order of arrival. A no-op on a paused
        one; OperationNotAllowed (an ActionNotAllowed) on any other status."""
        return operations.pause(self, execution_id, reason)

    def resume(self, execution_id: str, reason: str | None = None) -> Execution:
        """Resume a paused execution (and its paused children); the executor then applies
        the kept events, each as its own step. OperationNotAllowed if it is not paused."""
        return operations.resume(self, execution_id, reason)

    def retry(self, execution_id: str, reason: str | None = None) -> Execution:
        """Re-run what failed a ``failed`` execution (the failed invoke, under the same
        idempotency key for an effect, or the failed step with the same event), on the
        version it is pinned to now. OperationNotAllowed unless it is failed."""
        return operations.retry(self, execution_id, reason)

    def move(
        self,
        execution_id: str,
        state: str,
        context: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> Execution:
        """Operator override: put an unfinished execution in ``state`` of its version, merge
        ``context`` (JSON values), discard its armed work (children are canceled) and enter
        the state as a transition does. StateNotFound for a state the version lacks;
        OperationNotAllowed on a finished or canceled execution."""
        return operations.move(self, execution_id, state, context, reason)

    def upgrade(
        self,
        machine_id: str,
        to_version: int,
        from_version: int | None = None,
        states: Mapping[str, str] | None = None,
        context: str | None = None,
        execution_ids: Sequence[str] | None = None,
        apply: bool = False,
        only_if_replays: bool = False,
        reason: str | None = None,
        *,
        progress: Callable[[UpgradeItem], None] | None = None,
    ) -> UpgradeReport:
        """Move unfinished executions of a machine to version ``to_version`` (DESIGN.md §9).

        A dry run by default (``apply=False``: nothing is written). ``states`` maps old
        state names to new ones; ``context`` is an expression over ``ctx``/``execution``
        yielding a mapping merged into the context. Each execution is upgraded or refused
        on its own, in its own transaction; refused and skipped ones are left exactly as
        they were. Every item carries the replay check (``same``/``diverges``/
        ``not_replayable``) in a dry run, and when ``only_if_replays`` (then only the
        ``same`` ones are upgraded). ``progress`` is called with each item as it is done.
        Executions are read in keyset batches; :func:`statem.upgrade.run` streams the
        items without collecting them.
        """
        from . import upgrade as upgrading

        return upgrading.upgrade(
            self, machine_id, to_version, from_version=from_version, states=states, context=context,
            execution_ids=execution_ids, apply=apply, only_if_replays=only_if_replays, reason=reason,
            progress=progress,
        )  # fmt: skip

    # ------------------------------------------------------------------ reading
    def _find(self, execution_id: str) -> Execution | None:
        with self.transaction(write=False) as conn:
            row = store.get_execution(conn, execution_id)
        return Execution.from_row(row) if row is not None else None

    def get(self, execution_id: str) -> Execution:
        """The execution as stored now; raises ExecutionNotFound."""
        ex = self._find(execution_id)
        if ex is None:
            raise ExecutionNotFound(execution_id)
        return ex

    def history(self, execution_id: str) -> list[Step]:
        """Every step of an execution, ordered by ``seq`` (1, 2, ... with no gaps)."""
        with self.transaction(write=False) as conn:
            if store.get_execution(conn, execution_id) is None:
                raise ExecutionNotFound(execution_id)
            rows = store.history(conn, execution_id)
        return [Step.from_row(r) for r in rows]

    def pending(self, execution_id: str) -> list[Task]:
        """The execution's pending work: armed timers with their due times, effect calls
        with their attempts and last error, children started or awaited; soonest first."""
        with self.transaction(write=False) as conn:
            if store.get_execution(conn, execution_id) is None:
                raise ExecutionNotFound(execution_id)
            rows = store.pending_tasks(conn, execution_id)
        return [Task.from_row(r) for r in rows]

    def allowed_actions(self, execution_id: str) -> list[str]:
        """The actions ``trigger`` accepts now (their guards aside); none once it is final."""
        ex = self.get(execution_id)
        if ex.status in FINAL_STATUSES:
            return []
        return semantics.allowed_actions(self.compiled(ex.machine_id, ex.machine_version), ex.state)

    def executions(
        self,
        machine_id: str | None = None,
        status: str | None = None,
        state: str | None = None,
        limit: int = 100,
        *,
        parent_id: str | None = None,
        older_than: dt.timedelta | None = None,
        offset: int = 0,
    ) -> list[Execution]:
        """Executions matching every given filter, newest first."""
        before = self.clock() - older_than if older_than is not None else None
        with self.transaction(write=False) as conn:
            rows = store.list_executions(
                conn,
                machine_id=machine_id,
                status=status,
                state=state,
                parent_id=parent_id,
                updated_before=before,
                limit=limit,
                offset=offset,
            )
        return [Execution.from_row(r) for r in rows]

    def is_at_rest(self, execution_id: str) -> bool:
        """True when only an action can move the execution: final, or waiting with no armed work."""
        with self.transaction(write=False) as conn:
            row = store.get_execution(conn, execution_id)
            if row is None:
                raise ExecutionNotFound(execution_id)
            if row.status in FINAL_STATUSES or row.status == "paused":
                return True
            return row.status == "waiting" and not store.execution_has_tasks(conn, execution_id)

    def wait(self, execution_id: str, timeout: float = 10.0) -> Execution:
        """Block until the execution is final, or waiting with nothing armed; else TimeoutError."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        event = threading.Event()
        self.add_listener(event.set)
        try:
            while not self.is_at_rest(execution_id):
                left = deadline - time.monotonic()
                if left <= 0:
                    ex = self.get(execution_id)
                    raise TimeoutError(
                        f"execution {execution_id!r} still {ex.status} in state {ex.state!r} after {timeout}s"
                    )
                event.wait(min(pause, left))
                event.clear()
                pause = min(pause * 2, 0.1)
        finally:
            self.remove_listener(event.set)
        return self.get(execution_id)

    def stats(self) -> dict[str, Any]:
        """Operator figures: from the database (executions, tasks, overdue work) and from
        this process (steps committed, tasks run, retries, failures, timer lateness)."""
        with self.transaction(write=False) as conn:
            db = store.stats(conn, self.clock())
        return {"database": db, "process": self.metrics.snapshot()}

    # ------------------------------------------------------------------ workers
    def worker(self, settings: WorkerSettings | None = None) -> Worker:
        """A worker for this engine; use as ``with engine.worker(): ...`` to run it in threads."""
        from .worker import Worker

        return Worker(self, settings or self.worker_settings)

    def run_worker(self, settings: WorkerSettings | None = None) -> None:
        """Run a worker in the foreground until SIGINT/SIGTERM."""
        self.worker(settings).run_forever()

    def run_once(self, limit: int = 100) -> int:
        """Claim and run the ready tasks in this thread (tests, scripts); returns how many ran."""
        return self.executor.run_once(limit)


# --------------------------------------------------------------------------- helpers


def _check_input(value: JSON | None) -> JSON:
    data = {} if value is None else value
    try:
        return check_json(data, "input")
    except InputError:
        raise
    except StatemError as exc:
        raise InputError(str(exc)) from None


def store_error(exc: DBAPIError) -> StoreError:
    """A database error as a one-line StoreError, with a hint when the schema is missing."""
    text = _first_line(exc.orig or exc)
    if "no such table: statem_" in text or ('relation "statem_' in text and "does not exist" in text):
        return StoreError(f"the database has no statem tables ({text}); run `statem db upgrade` first")
    return StoreError(f"database error: {text}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _discard_record(task: Row[Any], state: str) -> StepRecord:
    what = {"task": task.kind, "armed_at": task.created_at.isoformat()}
    payload = task.payload or {}
    if task.kind == "timer":
        what["due_at"] = task.due_at.isoformat()
    elif task.kind == "effect":
        what["effect"] = payload.get("effect")
    elif task.kind == "child":
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


def _execution(row: Row[Any], outcome: Outcome, now: dt.datetime, created: dt.datetime) -> Execution:
    return Execution(
        id=row.id,
        machine_id=row.machine_id,
        machine_version=row.machine_version,
        state=outcome.state,
        status=outcome.status,
        context=outcome.context,
        input=row.input,
        output=outcome.output,
        error=outcome.error,
        parent_id=row.parent_id,
        created_at=created,
        updated_at=now,
    )
