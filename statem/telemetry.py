"""Counters, timer lateness and optional OpenTelemetry spans.

Logging: every logger is under ``statem`` (``statem.executor``, ``statem.worker``); step
and task log records carry ``execution_id``, ``machine``, ``step`` and ``task_id`` as
``extra`` fields for structured handlers.

Spans: when the ``opentelemetry-api`` package is installed, steps and effect calls are
wrapped in spans named ``statem.step`` and ``statem.effect``; without it :func:`span`
is a no-op costing one function call.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

try:  # optional dependency
    from opentelemetry.trace import get_tracer

    _tracer: Any = get_tracer("statem")
except ImportError:  # pragma: no cover - depends on the environment
    _tracer = None

#: How many recent timer lateness samples the percentiles are computed over.
LATENESS_SAMPLES = 10_000


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """An OpenTelemetry span when the API is installed, else a no-op context."""
    if _tracer is None:
        return nullcontext()
    return _span(name, attributes)


@contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    with _tracer.start_as_current_span(name, attributes=attributes) as s:
        yield s


class Metrics:
    """Process-local counters: steps by kind, tasks by kind and outcome, timer lateness."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.steps: Counter[str] = Counter()
        self.tasks: Counter[str] = Counter()
        self._lateness: deque[float] = deque(maxlen=LATENESS_SAMPLES)

    def step(self, kind: str, n: int = 1) -> None:
        """Count committed history steps of a kind."""
        with self._lock:
            self.steps[kind] += n

    def task(self, outcome: str) -> None:
        """Count a task outcome: its kind, or ``retry``, ``stale``, ``failed``."""
        with self._lock:
            self.tasks[outcome] += 1

    def timer_fired(self, lateness_seconds: float) -> None:
        """Record how late a timer fired."""
        with self._lock:
            self._lateness.append(max(0.0, lateness_seconds))

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data, with timer lateness p50/p99/max in seconds."""
        with self._lock:
            late = sorted(self._lateness)
            steps, tasks = dict(self.steps), dict(self.tasks)

        def pct(p: float) -> float | None:
            return late[min(len(late) - 1, int(p * len(late)))] if late else None

        return {
            "steps": steps,
            "tasks": tasks,
            "timer_lateness": {
                "count": len(late),
                "p50": pct(0.5),
                "p99": pct(0.99),
                "max": late[-1] if late else None,
            },
        }
