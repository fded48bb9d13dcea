"""The one lease renewer: keeps the claims a process holds alive while their tasks run.

A claim on a task lasts ``lease_seconds``; another worker may take the task over once
it lapses. :class:`LeaseRenewer` holds the claims of the tasks in flight and renews all
of them in one transaction. A worker calls :meth:`LeaseRenewer.renew` from its scheduler
every lease/3 seconds; a caller running effects inline (``execution_mode: sync``) has no
scheduler, so it uses :meth:`LeaseRenewer.holding`, which runs the same renewal on a
daemon thread that lives while anything is held. If the process dies, renewal stops
with it and the leases lapse.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Row

from . import claims, dialects
from .errors import StatemError
from .runtime import Runtime

log = logging.getLogger("statem.executor")


class LeaseRenewer:
    """The claims held by one worker (or one engine's inline callers), renewed together.

    ``on_error`` is called with the StoreError when a renewal fails (the database is away:
    the claims may lapse, nothing breaks); by default it is logged.
    """

    def __init__(
        self,
        runtime: Runtime,
        lease_seconds: float,
        on_error: Callable[[StatemError], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.lease_seconds = lease_seconds
        self.on_error = on_error or self._log
        self._held: dict[int, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what is held
    def hold(self, task_id: int, claim: str) -> None:
        """Renew ``claim`` on task ``task_id`` from now on."""
        with self._lock:
            self._held[task_id] = claim

    def release(self, task_id: int) -> str | None:
        """Stop renewing task ``task_id``'s claim; returns the claim (None if not held)."""
        with self._lock:
            return self._held.pop(task_id, None)

    def count(self) -> int:
        """How many claims are held."""
        with self._lock:
            return len(self._held)

    # ------------------------------------------------------------------ renewing
    def renew(self) -> None:
        """Extend every held claim's lease to now + ``lease_seconds``, in one transaction."""
        with self._lock:
            held = list(self._held.items())
        if not held:
            return
        until = self.runtime.clock() + dt.timedelta(seconds=self.lease_seconds)
        try:
            with self.runtime.transaction() as conn:
                dialects.lease_only(conn)
                claims.renew_leases(conn, held, until)
        except StatemError as exc:
            self.on_error(exc)

    @contextmanager
    def holding(self, task: Row[Any]) -> Iterator[None]:
        """Keep ``task``'s claim leased while the body runs, from a daemon thread (for
        callers with no scheduler of their own)."""
        with self._lock:
            self._held[task.id] = task.claim
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="statem-lease-keeper", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            self.release(task.id)

    def _loop(self) -> None:
        while True:
            time.sleep(self.lease_seconds / 3)
            with self._lock:
                if not self._held:  # nothing to keep: the thread ends; the next hold starts another
                    self._thread = None
                    return
            self.renew()

    def _log(self, exc: StatemError) -> None:
        log.warning("could not renew %d claims: %s", self.count(), exc)
