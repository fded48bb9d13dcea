"""The public API: save machines, start and trigger executions, read their history.

``Engine`` owns the database engine, the compiled-machine cache, the effect registry and
the ``env`` expressions see. Each call is one transaction: the step (with its following
always-chain), its history rows and the tasks it arms commit together or not at all.
The engine is a facade: steps are written by :mod:`statem.steps` (the one owner of the
step protocol), tasks run by :mod:`statem.executor`, both on the engine's
:class:`~statem.runtime.Runtime`; :mod:`statem.worker` drives the executor.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError

from . import dialects, migrate, operations, retention, semantics, steps, store, store_definitions
from .contracts import check_invokes
from .definition import CompiledMachine, Machine, compile_machine, load_definition
from .effects import Effect, ShapeSpec
from .errors import DefinitionError, ExecutionNotFound, InputError, StatemError, StoreError, version_taken
from .executor import Executor
from .expressions import JSON, check_json
from .limits import check_execution_id, check_idempotency_key, check_text, check_value
from .operator_api import OperatorAPI
from .reads import Reads
from .records import Execution, MachineInfo
from .replays import replayed_start, same_trigger
from .retention import Progress, PurgeCounts
from .runtime import Clock, Runtime, utcnow
from .schema import machines
from .semantics import Outcome
from .services import Service, ServiceInfo
from .settings import WorkerSettings
from .steps import Armed, InlineRun
from .worker import Worker

__all__ = ["Clock", "Engine", "utcnow"]


class Engine(OperatorAPI, Reads):
    """A statem engine on one database.

    >>> engine = Engine("sqlite:///statem.db", env={"shipping_url": "http://localhost:8080"})
    >>> engine.migrate()

    ``url`` is any SQLAlchemy URL (SQLite for embedded use, PostgreSQL to scale out).
    ``env`` is what expressions see as ``env``. ``clock`` replaces the wall clock (tests).
    With ``strict_effects``, saving a machine that invokes an effect this engine has not
    registered is a DefinitionError. With ``isolate_expressions``, expressions evaluate in
    a child process with CPU and memory limits (for untrusted definitions; statem/isolation.py).
    """

    def __init__(
        self,
        url: str = "sqlite:///statem.db",
        *,
        env: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        strict_effects: bool = False,
        worker_settings: WorkerSettings | None = None,
        isolate_expressions: bool = False,
    ) -> None:
        self.url = url
        try:
            db = dialects.make_engine(url)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"invalid database URL {url!r}: {dialects.first_line(exc)}") from None
        self._runtime = rt = Runtime(
            db,
            env=dict(check_json(dict(env or {}), "env")),
            clock=clock or utcnow,
            worker_settings=worker_settings or WorkerSettings(),
        )
        self.strict_effects = strict_effects
        rt.isolate_expressions = isolate_expressions  # see statem/isolation.py
        #: the SQLAlchemy engine (connection pool) on the database
        self.db = rt.db
        #: what expressions see as ``env``
        self.env = rt.env
        #: the clock due times, history timestamps and claims are taken from
        self.clock = rt.clock
        #: the default settings of ``worker()``, ``run_worker()`` and ``run_once()``
        self.worker_settings = rt.worker_settings
        #: the registered effects (``engine.effects.register(name, fn)``)
        self.effects = rt.effects
        #: this process's counters (``stats()["process"]``)
        self.metrics = rt.metrics
        #: the saved HTTP services (``save_service``, ``get_service``, ``services``)
        self.catalog = rt.catalog
        self._executor = Executor(rt)

    def __repr__(self) -> str:
        return f"Engine({self.db.url.render_as_string(hide_password=True)!r})"

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        """Release the database connections and the HTTP client."""
        self.effects.close()
        self.db.dispose()

    def migrate(self) -> None:
        """Create or upgrade the schema to the latest migration (``alembic upgrade head``)."""
        migrate.upgrade(self.db)

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
            with self._runtime.transaction() as conn:
                for cm in compiled:
                    m, now = cm.machine, self.clock()
                    if not store_definitions.save_definition(
                        conn, machines, m.id, m.version, m.to_json(), cm.content_hash, now
                    ):
                        raise DefinitionError(m.id, [("version", version_taken(m.version))])
        except IntegrityError:  # a concurrent save of the same version won the race: compare again
            return self.save_machines([cm.machine for cm in compiled])
        self._runtime.cache(compiled)
        return [cm.machine for cm in compiled]

    def _validated(self, definition: Mapping[str, Any] | Machine | str | Path) -> CompiledMachine:
        cm = compile_machine(load_definition(definition), isolate=self._runtime.isolate_expressions)
        problems = check_invokes(cm.machine, self.effects, self.catalog.latest, strict=self.strict_effects)
        if problems:  # effects and services it calls: unknown names (strict), schema mismatches
            raise DefinitionError(cm.machine.id, problems)
        return cm

    def get_machine(self, machine_id: str, version: int | None = None) -> Machine:
        """A saved machine: the latest version when ``version`` is None."""
        return self._runtime.compiled(machine_id, version).machine

    def machines(self) -> list[MachineInfo]:
        """Every saved machine version."""
        with self._runtime.transaction(write=False) as conn:
            rows = store_definitions.list_machines(conn)
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

    # ------------------------------------------------------------------ effects
    def effect(
        self, name: str, *, input: ShapeSpec | None = None, output: ShapeSpec | None = None
    ) -> Callable[[Effect], Effect]:
        """Register a Python function as an effect: ``fn(input, *, idempotency_key) -> JSON``;
        ``input``/``output`` (pydantic models or JSON Schema dicts) make it a typed effect.

        >>> @engine.effect("charge-card")
        ... def charge(input, *, idempotency_key): ...
        """
        return self.effects.decorator(name, input=input, output=output)

    # ------------------------------------------------------------------ services
    def save_service(self, definition: Mapping[str, Any] | Service | str | Path) -> Service:
        """Validate and store an HTTP service version (same content again: a no-op);
        ``engine.catalog.save([...])`` stores several in one transaction, or none."""
        return self.catalog.save([definition])[0]

    def get_service(self, service_id: str, version: int | None = None) -> Service:
        """A saved service: the latest version when ``version`` is None; ServiceNotFound."""
        return self.catalog.compiled(service_id, version).service

    def services(self) -> list[ServiceInfo]:
        """Every saved service version."""
        return self.catalog.infos()

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

        With ``execution_id`` (see :func:`statem.limits.check_execution_id` for the rule), a
        repeated start of the same machine with the same input returns the existing
        execution (``replayed=True``); with a different machine, version or input it
        raises IdempotencyConflict.
        """
        data = _check_input(input)
        check_text(machine_id, "machine id")
        eid = uuid.uuid4().hex if execution_id is None else check_execution_id(execution_id)
        now = self.clock()
        rt = self._runtime
        run: InlineRun | None = None
        try:
            with rt.transaction() as conn:
                if execution_id is not None and (row := store.get_execution(conn, execution_id)):
                    return replayed_start(row, machine_id, version, data)
                cm = rt.compiled(machine_id, version, conn)
                outcome = semantics.start(cm, eid, data, self.env, now)
                if cm.machine.execution_mode == "sync":
                    run = self._executor.new_run(eid)
                armed = steps.create_execution(rt.metrics, conn, cm, eid, data, now, outcome, run=run)
        except IntegrityError as exc:  # a concurrent start with the same execution_id won
            with rt.transaction(write=False) as conn:
                row = store.get_execution(conn, eid)
            if row is None:  # the database refused the row for another reason
                raise dialects.store_error(exc) from exc
            return replayed_start(row, machine_id, version, data)
        return self._after(run, eid, armed) or Execution(
            eid, cm.machine.id, cm.machine.version, outcome.state, outcome.status, outcome.context,
            data, outcome.output, outcome.error, None, now, now,
        )  # fmt: skip

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
        ``idempotency_key`` with the same action and input returns the current execution
        (``replayed=True``) and applies nothing; with a different action or input it raises
        IdempotencyConflict.
        """
        data = _check_input(input)
        check_text(execution_id, "execution id")
        check_text(action, "action")
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        now = self.clock()
        rt = self._runtime
        run: InlineRun | None = None
        with _refusals_as_store_errors(), rt.transaction() as conn:
            row, kept = store.lock_for_trigger(conn, execution_id)
            if row is None:
                raise ExecutionNotFound(execution_id)
            if idempotency_key is not None and (
                first := store.step_with_key(conn, execution_id, idempotency_key)
            ):
                cm = rt.compiled(row.machine_id, row.machine_version, conn)
                same_trigger(cm, first, execution_id, idempotency_key, action, data)
                return Execution.from_row(row, replayed=True)
            if operations.must_keep_trigger(conn, row, kept):  # paused: kept, applied in order after resume
                operations.keep_trigger(conn, row, action, data, idempotency_key, now)
                return Execution.from_row(row)
            cm = rt.compiled(row.machine_id, row.machine_version, conn)
            outcome = semantics.action(cm, steps.snapshot(row), action, data, self.env, now)
            if cm.machine.execution_mode == "sync":
                run = self._executor.new_run(execution_id)
            armed = steps.commit_locked(
                rt.metrics, conn, row, outcome, now, idempotency_key=idempotency_key, run=run
            )
        return self._after(run, execution_id, armed) or _execution(row, outcome, now)

    def _after(self, run: InlineRun | None, eid: str, armed: Armed) -> Execution | None:
        """After a start or trigger committed: wake workers if it armed work for them; run a
        sync execution's tasks here and return the execution as its last step here left it
        (None when nothing ran inline: the caller's outcome is the execution)."""
        if armed.for_workers:
            self._runtime.wake()
        if run is None or not armed.ready:
            return None
        run.committed(eid, armed)
        self._executor.run_inline(run, [])
        row = run.rows.get(eid)
        return Execution.from_row(row) if row is not None else self.get(eid)

    def cancel(self, execution_id: str, reason: str = "canceled") -> Execution:
        """Cancel an execution and, recursively, its unfinished children. A no-op on a final one."""
        with _refusals_as_store_errors(), self._runtime.transaction() as conn:
            steps.cancel(self.metrics, conn, execution_id, reason, self.clock())
        self._runtime.wake()
        return self.get(execution_id)

    # ------------------------------------------------------------------ retention
    def purge(
        self,
        finished_before: dt.datetime,
        machine_id: str | None = None,
        batch: int = 1000,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> PurgeCounts:
        """Delete the finished and canceled executions that last moved before ``finished_before``
        with their history, tasks and children, one short transaction per ``batch``; never an
        unfinished one. ``dry_run`` only counts; ``progress(counts)`` follows each batch.
        See :func:`statem.retention.purge`."""
        return retention.purge(
            self.db, finished_before, machine_id=machine_id, batch=batch, dry_run=dry_run, progress=progress
        )

    # ------------------------------------------------------------------ workers
    def worker(self, settings: WorkerSettings | None = None) -> Worker:
        """A worker for this engine; use as ``with engine.worker(): ...`` to run it in threads."""
        return Worker(self, settings or self.worker_settings)

    def run_worker(self, settings: WorkerSettings | None = None) -> None:
        """Run a worker in the foreground until SIGINT/SIGTERM."""
        self.worker(settings).run_forever()

    def run_once(self, limit: int = 100) -> int:
        """Claim and run the ready tasks in this thread (tests, scripts); returns how many ran."""
        return self._executor.run_once(limit)


# --------------------------------------------------------------------------- helpers


@contextmanager
def _refusals_as_store_errors() -> Iterator[None]:
    """A constraint the database enforces (an IntegrityError) reaches callers of the API as
    a StoreError, like every other database error (the transaction rolled back)."""
    try:
        yield
    except IntegrityError as exc:
        raise dialects.store_error(exc) from exc


def _check_input(value: JSON | None) -> JSON:
    data = {} if value is None else value
    try:
        checked = check_json(data, "input")
    except InputError:
        raise
    except StatemError as exc:
        raise InputError(str(exc)) from None
    return check_value(checked, "input")


def _execution(row: Row[Any], outcome: Outcome, now: dt.datetime) -> Execution:
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
        created_at=row.created_at,
        updated_at=now,
    )
