"""What the step code needs of an engine, and nothing of its API: the database, the clock,
``env``, the effect registry, the counters, the worker settings, the compiled-machine cache
and the wake-up listeners.

:class:`statem.Engine` builds one :class:`Runtime` and hands it to the step protocol
(:mod:`statem.steps`), the executor and its workers, so none of them imports the engine.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from sqlalchemy import Connection
from sqlalchemy import Engine as Database

from . import dialects, store_definitions
from .definition import CompiledMachine, compile_machine, load_definition
from .effects import EffectRegistry
from .errors import DefinitionError, MachineNotFound, StatemError
from .http_service import ServiceCatalog
from .settings import WorkerSettings
from .telemetry import Metrics

#: A clock: returns the current time, aware, in UTC.
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """The current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


class Runtime:
    """The shared state of one engine the step code runs on (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        env: dict[str, object],
        clock: Clock,
        worker_settings: WorkerSettings,
    ) -> None:
        self.db = db
        self.env = env
        self.clock = clock
        self.worker_settings = worker_settings
        self.metrics = Metrics()
        self.effects = EffectRegistry(self.metrics)
        #: saved HTTP services; their operations are effects too (``effect: service.operation``)
        self.catalog = ServiceCatalog(self)
        self.effects.fallback = self.catalog.effect
        self._machines: dict[tuple[str, int], CompiledMachine] = {}
        self._machines_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        #: evaluate expressions in a child process (``Engine(isolate_expressions=True)``)
        self.isolate_expressions = False

    def process_stats(self) -> dict[str, object]:
        """This process's counters, and its timed effect attempts (``stats()["process"]``)."""
        return {**self.metrics.snapshot(), "timed_effects": self.effects.timed.snapshot()}

    # ------------------------------------------------------------------ transactions
    def transaction(self, *, write: bool = True) -> AbstractContextManager[Connection]:
        """One transaction on a pooled connection (see :func:`dialects.transaction`)."""
        return dialects.transaction(self.db, write=write)

    # ------------------------------------------------------------------ wake-ups
    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` after every commit that armed work for workers."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        """Stop calling ``fn``."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    def wake(self) -> None:
        """Tell this process's listeners (its workers) that work was armed."""
        for fn in list(self._listeners):
            fn()

    # ------------------------------------------------------------------ machines
    def cache(self, machines: Iterator[CompiledMachine] | list[CompiledMachine]) -> None:
        """Remember compiled machines just saved (a saved version never changes)."""
        with self._machines_lock:
            for cm in machines:
                self._machines[cm.key] = cm

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
            version = store_definitions.latest_version(conn, machine_id)
            if version is None:
                raise MachineNotFound(machine_id, None)
        cached = self._machines.get((machine_id, version))
        if cached is not None:
            return cached
        row = store_definitions.get_machine(conn, machine_id, version)
        if row is None:
            raise MachineNotFound(machine_id, version)
        try:
            cm = compile_machine(load_definition(row.definition), isolate=self.isolate_expressions)
        except StatemError as exc:
            raise DefinitionError(
                machine_id, [("", f"stored version {row.version} no longer validates: {exc}")]
            ) from None
        self.cache([cm])
        return cm
