"""Long-poll: wait for an execution to come to rest without holding a thread or a database
connection while waiting.

A waiting request is an ``asyncio.Event`` on the event loop. It re-reads the execution
(one short read on the thread pool, the connection returned at once) when the engine
wakes it, or every ``poll_seconds`` otherwise:

* the engine's runtime calls :meth:`RestWaiter.wake` after each commit in this process
  that armed work (``Runtime.add_listener``), so a start or trigger served here wakes its
  waiters;
* steps committed elsewhere (a worker process, another server) are seen by the poll.
  PostgreSQL's ``NOTIFY`` is sent only when work is armed, not when an execution comes to
  rest, so LISTENing would not wake a waiter on the step that matters; both databases
  poll, which costs one indexed read per waiting request per interval.
"""

from __future__ import annotations

import asyncio
import threading

from starlette.concurrency import run_in_threadpool

from ..engine import Engine
from ..records import Execution


class RestWaiter:
    """Wakes the long-polls of one app; registered once with the engine."""

    def __init__(self, engine: Engine, poll_seconds: float) -> None:
        self.engine = engine
        self.poll_seconds = poll_seconds
        self._waiting: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()
        # the runtime's wake-up listeners: called after each commit here that armed work
        self._runtime = engine._runtime
        self._runtime.add_listener(self.wake)

    def close(self) -> None:
        """Stop listening to the engine."""
        self._runtime.remove_listener(self.wake)

    def wake(self) -> None:
        """Wake every waiting request (called from any thread)."""
        with self._lock:
            waiting = list(self._waiting)
        for loop, event in waiting:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    @property
    def waiting(self) -> int:
        """How many requests are waiting now."""
        return len(self._waiting)

    async def wait(self, execution_id: str, seconds: float) -> Execution:
        """The execution once at rest, or as it is after ``seconds``; ExecutionNotFound if none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            ex, at_rest = await run_in_threadpool(self._read, execution_id)
            left = deadline - loop.time()
            if at_rest or left <= 0:
                return ex
            event = asyncio.Event()
            entry = (loop, event)
            with self._lock:
                self._waiting.add(entry)
            try:
                await asyncio.wait_for(event.wait(), timeout=min(self.poll_seconds, left))
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._waiting.discard(entry)

    def _read(self, execution_id: str) -> tuple[Execution, bool]:
        at_rest = self.engine.is_at_rest(execution_id)
        return self.engine.get(execution_id), at_rest
