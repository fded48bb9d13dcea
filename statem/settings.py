"""Defaults, named once with their units, and the typed settings object built from them."""

from __future__ import annotations

from dataclasses import dataclass

#: Longest chain of always-transitions one step may take before it fails with LoopError.
MAX_ALWAYS_CHAIN = 1_000
#: Largest JSON-encoded input, context or output accepted, in bytes.
MAX_VALUE_BYTES = 1_000_000
#: How long a worker's claim on a task lasts before another worker may take it over.
LEASE_SECONDS = 30.0
#: How often a worker polls for ready tasks when nothing wakes it earlier.
POLL_SECONDS = 1.0
#: Threads per worker process that run effects and steps.
WORKER_CONCURRENCY = 4
#: Tasks a worker claims in one query.
CLAIM_BATCH = 16
#: Default attempts for an effect that declares no retry policy (1 = no retry).
DEFAULT_MAX_ATTEMPTS = 1
#: Default per-attempt timeout of an effect, in seconds.
DEFAULT_EFFECT_TIMEOUT_SECONDS = 60.0
#: Timed effect attempts alive at once per engine (abandoned ones included); more wait to start.
EFFECT_THREADS = 32
#: How long start/trigger wait for the database before failing with StoreError.
DB_TIMEOUT_SECONDS = 10.0
#: A pooled PostgreSQL connection idle longer than this is pinged before it is used again.
PING_IDLE_SECONDS = 1.0


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker claims and runs tasks. Every field has a default from this module."""

    concurrency: int = WORKER_CONCURRENCY
    lease_seconds: float = LEASE_SECONDS
    poll_seconds: float = POLL_SECONDS
    claim_batch: int = CLAIM_BATCH
    name: str | None = None
