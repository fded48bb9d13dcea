"""A worker process's loop, driven by APScheduler 3.x.

Jobs on a ``BackgroundScheduler``:

* ``poll``  every ``poll_seconds``: claim as many ready tasks as there are free threads and
  hand them to the worker's thread pool; then look up when the next task is due and
  schedule ``wake`` for that moment, so a timer fires on time without busy polling.
* ``wake``  a one-shot poll at the next due time (a timer, a retry, the end of a backoff).
* ``renew`` every ``lease_seconds / 3``: extend the leases of the tasks in flight.

Work armed just now (by this process, or by another one through PostgreSQL
``LISTEN/NOTIFY``) is polled for at once by the worker's ``statem-poll`` thread, woken by an
event: a scheduler job per wake-up (a Job built and stored, the scheduler's thread woken,
the job handed to its pool, then removed) cost more CPU than the poll itself, about a
sixth of a busy in-process worker's CPU on the order machine. Wake-ups that come while it
polls are folded into one more poll.

A thread that finished its task claims the next one itself when ready tasks may be
waiting for a thread (a claim came back full, or found every thread busy, and none has
found nothing since); otherwise no ready task was left and new ones wake the poll
thread, so it does not poll for nothing. A poll that claims nothing looks up the next
due time in the same transaction.

The database is the source of truth: a worker that dies loses nothing, its claims lapse
when their lease expires and another worker takes them over.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType, TracebackType
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, Row

from . import claims, dialects, store
from .batch import GroupCommit, run_timers
from .effects import jittered
from .errors import StatemError
from .executor import Executor, default_owner
from .kinds import TaskKind
from .leases import LeaseRenewer
from .runtime import Runtime
from .settings import WorkerSettings

log = logging.getLogger("statem.worker")

#: Longest pause between polls while the database is unreachable.
MAX_OUTAGE_BACKOFF_SECONDS = 30.0
#: Most timers one thread fires in one transaction when many are due at once.
TIMER_BATCH_MAX = 256


#: A worker process's first-generation GC threshold (Python's default: 700 allocations).
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Tune the garbage collector of a process that is a worker and nothing else.

    The objects alive after start-up (modules, compiled machines, SQLAlchemy's statement
    caches) are frozen out of collection (``gc.freeze``), and the young generation is
    collected every GC_GEN0_THRESHOLD allocations instead of 700: a batch of steps
    allocates tens of thousands of short-lived rows and dicts, and collecting every 700 of
    them, scanning the long-lived ones each time, cost about a fifth of a batched step's
    CPU. Reference counting still frees everything that is not in a cycle at once.
    """
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


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
        #: the effect results of this worker's threads, committed in batches, each batch
        #: claiming the next task of each thread it frees (``_refill``)
        self.results = GroupCommit(self.executor, refill=self._refill)
        self.executor.committer = self.results.submit
        self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="statem-task")
        #: the claims of the tasks in flight (renewed by the ``renew`` job)
        self.leases = LeaseRenewer(self.rt, self.settings.lease_seconds, self._outage)
        #: the jobs in flight, by their first task's id: (future, the tasks it runs)
        self._futures: dict[int, tuple[Future[None], list[Row[Any]]]] = {}
        #: the most timers one thread fired in one transaction so far
        self.largest_batch = 0
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._wake_lock = threading.Lock()
        #: when the soonest wake-up job not yet run is due (None: none is pending)
        self._wake_at: dt.datetime | None = None
        self._scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 3, "misfire_grace_time": None},
        )
        self._stopping = threading.Event()
        #: set by an immediate wake-up; the ``statem-poll`` thread waits on it
        self._poll_now = threading.Event()
        self._poller: threading.Thread | None = None
        self._again = False
        #: ready tasks may be waiting for a thread: a claim came back full, or found every
        #: thread busy (cleared by a claim that finds nothing). Only then does a thread
        #: that finished its task poll (``_run``): otherwise no ready task was left, and
        #: new ones wake the poll thread. ``_more_seen`` counts the times it was set
        #: (guarded by ``_lock``)
        self._more = False
        self._more_seen = 0
        self._outage_since: float | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._listener: threading.Thread | None = None
        self.tasks_run = 0
        #: the tasks this worker's polls claimed (the others it ran were handed to its
        #: threads with their results: ``results.handed``)
        self.claimed = 0

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
        self._poller = threading.Thread(target=self._poll_when_woken, name="statem-poll", daemon=True)
        self._poller.start()
        if not dialects.is_sqlite(self.rt.db):
            url = self.rt.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._listener = threading.Thread(
                target=_listen,
                args=(url, self._stopping, self.wake, dialects.own_backends(self.rt.db)),
                name="statem-listen",
                daemon=True,
            )
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
        self._poll_now.set()  # lets the poll thread see the stop
        self._scheduler.shutdown(wait=wait)
        if wait and self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join()
        with self._lock:
            pending = [t.id for fut, job in self._futures.values() if fut.cancel() for t in job]
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
        """Run in the foreground until SIGINT or SIGTERM, then shut down cleanly.

        The process is the worker's own, so its garbage collector is tuned for it
        (:func:`tune_gc`)."""
        tune_gc()
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
        """Poll at ``at`` (default: now), unless a wake-up is already due sooner.

        Now (or a moment already past): the ``statem-poll`` thread polls at once. Later:
        a one-shot scheduler job of its own (APScheduler names it): replacing or removing
        a one-shot job races with the scheduler, which removes a date job itself once it
        has run (seen: a wake-up lost, or JobLookupError in the scheduler thread). A later
        wake-up that a sooner one made unnecessary still runs: one spare poll.
        """
        if self._stopping.is_set():
            return
        if at is None or at <= dt.datetime.now(dt.UTC):
            self._poll_now.set()
            return
        with self._wake_lock:
            if self._wake_at is not None and self._wake_at <= at:
                return
            self._wake_at = at
        try:
            self._scheduler.add_job(self._woken, "date", run_date=at, args=[at])
        except Exception:  # the scheduler is shutting down
            if not self._stopping.is_set():
                raise

    def _poll_when_woken(self) -> None:
        """The ``statem-poll`` thread: one poll per immediate wake-up (those that come
        while it polls make one more), until the worker stops."""
        while True:
            self._poll_now.wait()
            if self._stopping.is_set():
                return
            self._poll_now.clear()
            try:
                self.poll()
            except Exception:  # poll reports database outages itself: this is a bug
                log.exception("worker %s: a poll failed", self.owner)

    def _woken(self, run_at: dt.datetime) -> None:
        """A wake-up's job: forget it as the soonest pending one, then poll."""
        with self._wake_lock:
            if self._wake_at == run_at:
                self._wake_at = None
        self.poll()

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
                upcoming = self._claim()
            self._recovered()
        except StatemError as exc:
            self._outage(exc)
            return
        finally:
            self._poll_lock.release()
        if upcoming is not None:
            self.wake(max(upcoming, dt.datetime.now(dt.UTC)))

    def _claim(self) -> dt.datetime | None:
        """Claim one task per free thread; under load, a batch of timers per thread. If
        there was none to claim, look up when the next one is due, in the same transaction
        (None: none is, or every thread is busy: the next to finish polls again, see
        ``_more``; looking the next due time up then would find one already due and poll
        in a loop).

        Timer batches adapt to load: the first claim asks for one task per free thread;
        only when it comes back full, with timers among it, does a second claim ask for up
        to TIMER_BATCH_MAX more timers per free thread. An idle worker thus fires a lone
        timer at once, on its own; a burst of due timers is fired in batches from the
        first poll that sees it. A thread fires its batch in one transaction
        (:func:`statem.batch.run_timers`); every other task runs on its own (an effect's
        result may share a transaction with others: :class:`statem.batch.GroupCommit`).
        """
        with self._lock:
            free = self.settings.concurrency - len(self._futures)
            if free <= 0:
                self._more_ahead()  # under the lock that a finishing thread reads it under
                return None
            seen = self._more_seen
        s, ex = self.settings, self.executor
        asked = min(free, s.claim_batch)
        with self.rt.transaction() as conn:  # both claims, one transaction
            dialects.lease_only(conn, claim=True)
            tasks = ex.claim_on(conn, self.owner, asked, s.lease_seconds)
            timers = [t for t in tasks if t.kind == TaskKind.timer]
            jobs: list[list[Row[Any]]] = [[t] for t in tasks if t.kind != TaskKind.timer]
            if timers and len(tasks) >= asked:
                want = max(1, free - len(jobs)) * TIMER_BATCH_MAX - len(timers)
                timers += ex.claim_on(conn, self.owner, want, s.lease_seconds, timers=True)
            upcoming = None if tasks else claims.next_due(conn, self.rt.effects.names())
        if timers:
            share = -(-len(timers) // max(1, free - len(jobs)))  # ceiling division
            jobs += [timers[i : i + share] for i in range(0, len(timers), share)]
        if len(tasks) >= asked:
            self._again = True  # more may be ready: claim again, or note that all are busy
        elif not tasks:
            # Nothing ready: the note goes, unless a claim since set it again. A claim that
            # came back short does not clear it: on PostgreSQL it skips the rows another
            # worker's claim has locked, and more may be ready behind them (with only
            # wake-ups left, this worker's threads would idle until the next poll).
            with self._lock:
                if self._more_seen == seen:
                    self._more = False
        self.claimed += sum(len(job) for job in jobs)
        for job in jobs:
            self.largest_batch = max(self.largest_batch, len(job))
            for task in job:
                self.leases.hold(task.id, task.claim)
            with self._lock:
                self._futures[job[0].id] = (self._pool.submit(self._run, job), job)
        return upcoming

    def _refill(self, conn: Connection, results: int) -> list[Row[Any]]:
        """At the end of a batch of ``results`` effect results (:class:`GroupCommit`): claim
        up to one next task per thread the batch frees, in its transaction. That saves each
        busy thread a claim transaction per task; the claim's commit is the batch's own.
        Nothing while stopping."""
        if self._stopping.is_set() or time.monotonic() < self._retry_at:
            return []
        dialects.claim_plan(conn)
        s = self.settings
        asked = min(results, s.claim_batch)
        claimed = self.executor.claim_on(conn, self.owner, asked, s.lease_seconds)
        if len(claimed) >= asked:
            with self._lock:
                self._more_ahead()
        return claimed

    def _more_ahead(self) -> None:
        """Note that ready tasks may be waiting for a thread (the caller holds ``_lock``)."""
        self._more = True
        self._more_seen += 1

    def _run(self, job: list[Row[Any]]) -> None:
        first = job[0].id
        while True:
            try:
                if len(job) == 1:
                    self.executor.run(job[0])
                else:
                    run_timers(self.executor, job)
                self.tasks_run += len(job)
            except Exception:
                log.exception("task %s crashed the executor; its lease will lapse", job[0].id)
            finally:
                for task in job:
                    self.leases.release(task.id)
            # the task claimed for this thread in its result's transaction, if any (_refill)
            handed = self.results.take_handed()
            if handed is None:
                break
            self.leases.hold(handed.id, handed.claim)
            job = [handed]
        with self._lock:
            self._futures.pop(first, None)
            more = self._more
        if not more:
            return  # every ready task is claimed; new ones wake the poll thread
        # the freed thread claims the next tasks itself (no hand-off to the scheduler's
        # thread and back: that cost a job, two thread switches and a poll per task)
        try:
            self.poll()
        except Exception:
            if not self._stopping.is_set():
                log.exception("worker %s: a poll after task %s failed", self.owner, job[0].id)

    # ------------------------------------------------------------------ outages
    def _outage(self, exc: StatemError) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("worker %s lost the database (%s); retrying with backoff", self.owner, exc)
        # doubling, capped, spread by up to +10% so a fleet does not reconnect in step
        self._backoff = jittered(min(max(self._backoff * 2, 0.25), MAX_OUTAGE_BACKOFF_SECONDS))
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


def _listen(url: str, stopping: threading.Event, wake: Callable[[], None], own: set[int]) -> None:
    """PostgreSQL (a worker's ``statem-listen`` thread): ``wake`` on every NOTIFY from a
    session that armed work, until ``stopping`` is set; reconnects after a second when the
    connection fails. A NOTIFY from one of ``own`` (the worker's engine's connections:
    :func:`statem.dialects.own_backends`) is skipped: that commit woke the worker
    in-process already."""
    import psycopg

    while not stopping.is_set():
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"LISTEN {dialects.NOTIFY_CHANNEL}")
                while not stopping.is_set():
                    for note in conn.notifies(timeout=0.5, stop_after=1):
                        if note.pid not in own:
                            wake()
        except psycopg.Error:
            stopping.wait(1.0)
