"""The stats figures, read at most once per ``ttl`` seconds however often pages ask.

``Engine.stats()`` counts executions by status and tasks by kind; on a large database that
is the one read here that grows with the data, so a burst of page views or API polls
shares one reading.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from ..engine import Engine


class StatsCache:
    """``engine.stats()``, reused for ``ttl`` seconds."""

    def __init__(self, engine: Engine, ttl: float) -> None:
        self.engine = engine
        self.ttl = ttl
        self._value: dict[str, Any] | None = None
        self._read_at = 0.0
        self._lock: asyncio.Lock | None = None

    async def get(self) -> dict[str, Any]:
        """The figures, at most ``ttl`` seconds old, with ``read_at`` (epoch seconds)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._value is None or time.monotonic() - self._read_at >= self.ttl:
                value = await run_in_threadpool(self.engine.stats)
                value["read_at"] = time.time()
                self._value, self._read_at = value, time.monotonic()
            return self._value
