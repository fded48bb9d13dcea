"""Helpers for testing code that uses statem: a controllable clock and deterministic stepping.

>>> clock = FakeClock()
>>> engine = Engine("sqlite:///test.db", clock=clock)
>>> ex = engine.start("order")
>>> clock.advance(seconds=60)       # timers due within the minute are now ready
>>> run_until_idle(engine)          # run every ready task in this thread
"""

from __future__ import annotations

import datetime as dt
import threading

from .engine import Engine


class FakeClock:
    """A clock that only moves when told to. Pass it as ``Engine(..., clock=clock)``."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0.0, **kw: float) -> dt.datetime:
        """Move forward by ``seconds`` (plus ``minutes=``, ``hours=``, ``days=``)."""
        with self._lock:
            self._now += dt.timedelta(seconds=seconds, **kw)
            return self._now


def run_until_idle(engine: Engine, max_tasks: int = 10_000) -> int:
    """Run ready tasks in this thread until none is ready; returns how many ran."""
    total = 0
    while total < max_tasks:
        ran = engine.run_once(limit=max_tasks - total)
        if ran == 0:
            break
        total += ran
    return total
