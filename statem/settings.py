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
#: Largest request body the HTTP API and the console accept, in bytes (larger ones get 413).
WEB_MAX_BODY_BYTES = 2_000_000
#: Longest ``?wait=`` a long-poll may ask for, in seconds.
WEB_MAX_WAIT_SECONDS = 60.0
#: How often a waiting long-poll re-reads its execution when nothing wakes it sooner, in seconds.
WEB_POLL_SECONDS = 0.25
#: Executions per page of the API and console lists (default, and the most one may ask for).
WEB_PAGE_SIZE = 50
WEB_MAX_PAGE_SIZE = 500
#: Executions counted per state on a machine's page at most (a bounded count, shown as "1000+").
WEB_STATE_COUNT_CAP = 1000
#: How long the stats page reuses the figures it read, in seconds.
WEB_STATS_TTL_SECONDS = 5.0


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker claims and runs tasks. Every field has a default from this module."""

    concurrency: int = WORKER_CONCURRENCY
    lease_seconds: float = LEASE_SECONDS
    poll_seconds: float = POLL_SECONDS
    claim_batch: int = CLAIM_BATCH
    name: str | None = None
