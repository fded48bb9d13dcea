"""The read side of the public API: executions, their history and pending work, waiting
for one to come to rest, and the operator's figures.

:class:`Reads` is a base of :class:`statem.Engine` (kept apart so each class stays small);
every method runs in one read-only transaction on the engine's runtime.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from typing import Any

from . import semantics, store, store_fanout, store_stats
from .errors import ExecutionNotFound
from .kinds import FINAL_STATUSES, Status, TaskKind
from .records import Execution, Step, Task
from .runtime import Clock, Runtime
from .settings import UNCLAIMED_EFFECT_LEASES, WorkerSettings


class Reads:
    """The read-only half of :class:`statem.Engine`."""

    _runtime: Runtime
    clock: Clock
    worker_settings: WorkerSettings

    def _find(self, execution_id: str) -> Execution | None:
        with self._runtime.transaction(write=False) as conn:
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
        with self._runtime.transaction(write=False) as conn:
            if store.get_execution(conn, execution_id) is None:
                raise ExecutionNotFound(execution_id)
            rows = store.history(conn, execution_id)
        # store.HISTORY_COLUMNS are Step's fields in order (tests/test_engine.py checks it):
        # positional, as a history of thousands of steps is read in one call
        return [Step(*row) for row in rows]  # type: ignore[call-arg]

    def pending(self, execution_id: str) -> list[Task]:
        """The execution's pending work: armed timers with their due times, effect calls
        with their attempts and last error, children started or awaited; soonest first."""
        with self._runtime.transaction(write=False) as conn:
            if store.get_execution(conn, execution_id) is None:
                raise ExecutionNotFound(execution_id)
            rows = store.pending_tasks(conn, execution_id)
            fans = store_fanout.get_fanouts(conn, (r.id for r in rows if r.kind == TaskKind.fanout))
        return [
            Task.from_row(r, store_fanout.counts(fans[r.id]).describe() if r.id in fans else None)
            for r in rows
        ]

    def allowed_actions(self, execution_id: str) -> list[str]:
        """The actions ``trigger`` accepts now (their guards aside); none once it is final."""
        ex = self.get(execution_id)
        if ex.status in FINAL_STATUSES:
            return []
        return semantics.allowed_actions(self._runtime.compiled(ex.machine_id, ex.machine_version), ex.state)

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
        after: tuple[dt.datetime, str] | None = None,
    ) -> list[Execution]:
        """Executions matching every given filter, newest first.

        ``after``: the ``(created_at, id)`` of the last execution of the previous page (a
        keyset cursor, stable while executions are added; see ``store.list_executions``).
        """
        before = self.clock() - older_than if older_than is not None else None
        with self._runtime.transaction(write=False) as conn:
            rows = store.list_executions(
                conn,
                machine_id=machine_id,
                status=status,
                state=state,
                parent_id=parent_id,
                updated_before=before,
                limit=limit,
                offset=offset,
                after=after,
            )
        return [Execution.from_row(r) for r in rows]

    def ping(self) -> None:
        """Raise StoreError unless the database answers (health checks)."""
        with self._runtime.transaction(write=False) as conn:
            store_stats.ping(conn)

    def state_counts(self, machine_id: str, states: Sequence[str], cap: int = 1000) -> dict[str, int]:
        """Executions of the machine per state in ``states``, each count bounded by ``cap + 1``."""
        with self._runtime.transaction(write=False) as conn:
            return store_stats.count_states(conn, machine_id, states, cap)

    def is_at_rest(self, execution_id: str) -> bool:
        """True when only an action can move the execution: final, or waiting with no armed work."""
        with self._runtime.transaction(write=False) as conn:
            row = store.get_execution(conn, execution_id)
            if row is None:
                raise ExecutionNotFound(execution_id)
            if row.status in FINAL_STATUSES or row.status == Status.paused:
                return True
            return row.status == Status.waiting and not store.execution_has_tasks(conn, execution_id)

    def wait(self, execution_id: str, timeout: float = 10.0) -> Execution:
        """Block until the execution is final, or waiting with nothing armed; else TimeoutError."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        event = threading.Event()
        self._runtime.add_listener(event.set)
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
            self._runtime.remove_listener(event.set)
        return self.get(execution_id)

    def stats(self) -> dict[str, Any]:
        """Operator figures: from the database (executions, tasks, overdue work) and from
        this process (steps committed, tasks run, retries, failures, timer lateness)."""
        now = self.clock()
        patience = dt.timedelta(seconds=UNCLAIMED_EFFECT_LEASES * self.worker_settings.lease_seconds)
        with self._runtime.transaction(write=False) as conn:
            db = store_stats.stats(conn, now)
            db.update(_unclaimed(store_stats.unclaimed_effects(conn, now - patience), now))
        return {"database": db, "process": self._runtime.process_stats()}


def _unclaimed(waiting: dict[str, tuple[int, dt.datetime]], now: dt.datetime) -> dict[str, Any]:
    """The stats of effects no running worker has: counts, and a warning for each."""
    return {
        "unclaimed_effects": {
            name: {"tasks": n, "waiting_seconds": (now - due).total_seconds()}
            for name, (n, due) in waiting.items()
        },
        "warnings": [
            f"effect {name!r}: no worker has it ({n} task{'s' if n > 1 else ''} ready for "
            f"{(now - due).total_seconds():.0f}s, never claimed); run a worker whose --app registers it"
            for name, (n, due) in sorted(waiting.items())
        ],
    }
