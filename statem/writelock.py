"""SQLite: one process-local write lock per database file, so this process's writers queue.

SQLite has one write lock per database. A connection that finds it taken waits in
SQLite's busy handler, which sleeps in growing steps (1, 2, 5, 10, ... 100 ms) and looks
again: a writer of this process that loses the race to another thread of the same process
sleeps a millisecond or more for a lock held a fraction of that, and may lose again after
each sleep. The threads of one process instead take a :class:`WriteLock` before
``BEGIN IMMEDIATE`` (:mod:`statem.dialects`) and hand it over at ``COMMIT`` or
``ROLLBACK``: the next writer is woken at once, in order of arrival. SQLite's busy handler
still arbitrates between processes.

* Fair: waiters are served first come, first served (the lock is handed to the oldest
  waiter, never grabbed back by the thread that let it go).
* Reentrant: a thread already holding it (a write transaction on another connection)
  passes, and then waits in SQLite's busy handler as it would without this lock; it never
  waits for itself here.
* Bounded: a wait longer than its timeout returns False (the caller raises, as SQLite
  does when its busy timeout runs out).
* Read-only transactions (``BEGIN DEFERRED``) do not take it.
* After a fork, the child starts with every lock free (the threads that held them are
  not in the child).
"""

from __future__ import annotations

import os
import threading
from collections import deque

__all__ = ["WriteLock", "for_path"]


class WriteLock:
    """A fair, reentrant, timed lock; a holder is a thread (by ident), counted per entry."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        #: the waiting threads, oldest first: (ident, a lock it blocks on until handed the lock)
        self._waiters: deque[tuple[int, threading.Lock]] = deque()

    def acquire(self, timeout: float) -> bool:
        """Take the lock for this thread within ``timeout`` seconds; False if it could not."""
        me = threading.get_ident()
        with self._guard:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None:
                self._owner, self._depth = me, 1
                return True
            gate = threading.Lock()
            gate.acquire()
            waiter = (me, gate)
            self._waiters.append(waiter)
        if gate.acquire(timeout=timeout):
            return True  # handed over: _owner is me already
        with self._guard:
            if self._owner == me:  # handed over just as the wait ran out
                return True
            self._waiters.remove(waiter)
            return False

    def release(self, owner: int) -> None:
        """Let go of one entry of ``owner`` (the thread that took it; a connection may be
        closed by another thread); the last one hands the lock to the oldest waiter."""
        with self._guard:
            if self._owner != owner:
                return  # not held by it (already released, or reset after a fork)
            self._depth -= 1
            if self._depth > 0:
                return
            if self._waiters:
                self._owner, gate = self._waiters.popleft()
                self._depth = 1
                gate.release()
            else:
                self._owner = None
                self._depth = 0

    def held_by(self, owner: int) -> bool:
        """True if ``owner`` holds the lock (tests, diagnostics)."""
        return self._owner == owner

    def _reset(self) -> None:
        self._guard = threading.Lock()
        self._owner = None
        self._depth = 0
        self._waiters = deque()


_locks: dict[str, WriteLock] = {}
_locks_guard = threading.Lock()


def for_path(path: str) -> WriteLock:
    """The write lock of the SQLite database file ``path`` (one per file in this process,
    shared by every engine on it)."""
    key = os.path.realpath(path)
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = WriteLock()
        return lock


def _after_fork() -> None:
    global _locks_guard
    _locks_guard = threading.Lock()
    for lock in _locks.values():
        lock._reset()


os.register_at_fork(after_in_child=_after_fork)
