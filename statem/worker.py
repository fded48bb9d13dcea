"""A worker process's loop, driven by APScheduler 3.x.

Jobs on a ``BackgroundScheduler``:

* ``poll``  every ``poll_seconds``: claim as many ready tasks as there are free threads and
  hand them to the worker's thread pool; then look up when the next task is due and
  schedule ``wake`` for that moment, so a timer fires on time without busy polling.
* ``wake``  a one-shot poll at the next due time, or at once when work was armed (by this
  process, or by another one through PostgreSQL ``LISTEN/NOTIFY``).
* ``renew`` every ``lease_seconds / 3``: extend the leases of the tasks in flight.

The database is the source of truth: a worker that dies loses nothing, its claims lapse
when their lease expires and another worker takes them over.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType, TracebackType
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Row

from . import dialects, store
from .errors import StatemError
from .executor import Executor, default_owner
from .leases import LeaseRenewer
from .runtime import Runtime
from .settings import WorkerSettings

log = logging.getLogger("statem.worker")

#: Longest pause between polls while the database is unreachable.
MAX_OUTAGE_BACKOFF_SECONDS = 30.0


class Hosting(Protocol):
    """What a worker is given: a :class:`statem.Engine` (the runtime its steps run on)."""

    @property
    def _runtime(self) -> Runtime: ...


class Worker:
    """Claims and runs tasks in background threads; ``with engine.worker(): ...``."""

    def __init__(self, engine: Hosting, settings: WorkerSettings | None = None) -> None:
        self.rt = engine._runtime
        self.settings = settings or self.rt.worker_settings
        self.owner = self.settings.name or default_owner()
        self.executor = Executor(self.rt)
        self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="statem-task")
        #: the claims of the tasks in flight (renewed by the ``renew`` job)
        self.leases = LeaseRenewer(self.rt, self.settings.lease_seconds, self._outage)
        self._futures: dict[int, Future[None]] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 3, "misfire_grace_time": None},
        )
        self._stopping = threading.Event()
        self._again = False
        self._outage_since: float | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._listener: threading.Thread | None = None
        self.tasks_run = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Worker:
        """Start the scheduler and, on PostgreSQL, the LISTEN thread."""
        s = self.settings
        self._scheduler.add_job(
            self.poll,
            "interval",
            seconds=s.poll_seconds,
            id="poll",
            next_run_time=dt.datetime.now(dt.UTC),
        )
        self._scheduler.add_job(
            self.leases.renew, "interval", seconds=max(s.lease_seconds / 3, 0.05), id="renew"
        )
        self.rt.add_listener(self.wake)
        self._scheduler.start()
        if not dialects.is_sqlite(self.rt.db):
            self._listener = threading.Thread(target=self._listen, name="statem-listen", daemon=True)
            self._listener.start()
        log.info(
            "worker %s started (%d threads, lease %.0fs)",
            self.owner,
            s.concurrency,
            s.lease_seconds,
        )
        return self

    def stop(self, wait: bool = True) -> None:
        """Stop claiming, finish the tasks in flight (or release them if not started)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.rt.remove_listener(self.wake)
        self._scheduler.shutdown(wait=wait)
        with self._lock:
            pending = [tid for tid, fut in self._futures.items() if fut.cancel()]
        releases = [(tid, claim) for tid in pending if (claim := self.leases.release(tid)) is not None]
        if releases:
            try:
                with self.rt.transaction() as conn:
                    for tid, claim in releases:
                        store.release_task(conn, tid, claim)
            except StatemError as exc:
                log.warning(
                    "could not release %d claimed tasks (their leases will lapse): %s",
                    len(releases),
                    exc,
                )
        self._pool.shutdown(wait=wait)
        log.info("worker %s stopped after %d tasks", self.owner, self.tasks_run)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def run_forever(self) -> None:
        """Run in the foreground until SIGINT or SIGTERM, then shut down cleanly."""
        done = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info(
                "worker %s got %s; finishing tasks in flight",
                self.owner,
                signal.Signals(signum).name,
            )
            done.set()

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not done.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in old.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------------ jobs
    def wake(self, at: dt.datetime | None = None) -> None:
        """Poll at ``at`` (default: now), unless a wake-up is already due sooner."""
        if self._stopping.is_set():
            return
        run_at = at or dt.datetime.now(dt.UTC)
        job = self._scheduler.get_job("wake")
        if job is not None and job.next_run_time is not None and job.next_run_time <= run_at:
            return
        try:
            self._scheduler.add_job(self.poll, "date", run_date=run_at, id="wake", replace_existing=True)
        except Exception:  # the scheduler is shutting down
            if not self._stopping.is_set():
                raise

    def poll(self) -> None:
        """Claim ready tasks for the free threads; schedule the next wake-up."""
        if self._stopping.is_set() or time.monotonic() < self._retry_at:
            return
        if not self._poll_lock.acquire(blocking=False):
            self._again = True  # the poll running now goes round once more
            return
        try:
            upcoming = None
            self._again = True
            while self._again and not self._stopping.is_set():
                self._again = False
                claimed = self._claim()
                upcoming = None if claimed else self._next_due()
            self._recovered()
        except StatemError as exc:
            self._outage(exc)
            return
        finally:
            self._poll_lock.release()
        if upcoming is not None:
            self.wake(max(upcoming, dt.datetime.now(dt.UTC)))

    def _claim(self) -> int:
        free = self.settings.concurrency - self.leases.count()
        if free <= 0:
            return 0
        tasks = self.executor.claim(
            self.owner, min(free, self.settings.claim_batch), self.settings.lease_seconds
        )
        for task in tasks:
            self.leases.hold(task.id, task.claim)
            with self._lock:
                self._futures[task.id] = self._pool.submit(self._run, task)
        return len(tasks)

    def _next_due(self) -> dt.datetime | None:
        with self.rt.transaction(write=False) as conn:
            return store.next_due(conn)

    def _run(self, task: Row[Any]) -> None:
        try:
            self.executor.run(task)
            self.tasks_run += 1
        except Exception:
            log.exception("task %s crashed the executor; its lease will lapse", task.id)
        finally:
            self.leases.release(task.id)
            with self._lock:
                self._futures.pop(task.id, None)
            self.wake()

    # ------------------------------------------------------------------ outages
    def _outage(self, exc: StatemError) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("worker %s lost the database (%s); retrying with backoff", self.owner, exc)
        self._backoff = min(max(self._backoff * 2, 0.25), MAX_OUTAGE_BACKOFF_SECONDS)
        self._retry_at = time.monotonic() + self._backoff
        self.wake(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._backoff))

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "worker %s reconnected after %.1fs",
                self.owner,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
            self._backoff = 0.0

    def _listen(self) -> None:
        """PostgreSQL: wake on NOTIFY from any process that armed work."""
        import psycopg

        url = self.rt.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopping.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {dialects.NOTIFY_CHANNEL}")
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self.wake()
            except psycopg.Error:
                self._stopping.wait(1.0)
