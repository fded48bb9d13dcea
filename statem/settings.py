"""Defaults, named once with their units, and the typed settings object built from them."""

from __future__ import annotations

from dataclasses import dataclass

#: Longest chain of always-transitions one step may take before it fails with LoopError.
MAX_ALWAYS_CHAIN = 1_000
#: Largest JSON-encoded input, context or output accepted, in bytes.
MAX_VALUE_BYTES = 1_000_000
#: Longest execution id a caller may choose, in characters (a child's derived id is longer
#: but always fits the 200-character id column; see statem.limits).
MAX_EXECUTION_ID_LENGTH = 128
#: Longest idempotency key accepted by ``trigger``, in characters (the column's width).
MAX_IDEMPOTENCY_KEY_LENGTH = 200
#: Deepest chain of child executions: a root is at depth 0, its children at 1, ...
MAX_CHILD_DEPTH = 32
#: Largest JSON size of one history row (its input, output and context together), in bytes:
#: the context's own limit, so a step cannot store the same large value three times over.
MAX_STEP_ROW_BYTES = MAX_VALUE_BYTES
#: Largest JSON size of all the history rows one step appends, in bytes.
MAX_STEP_BYTES = 8_000_000
#: Longest duration a timer, a retry delay or an effect timeout may have: 100 years, in seconds.
MAX_DURATION_SECONDS = 100 * 366 * 86_400.0
#: Most decimal digits an integer in an input, context or result may have (Python's own
#: limit on converting integers to text, which JSON needs).
MAX_INT_DIGITS = 4_300
#: An effect task ready this many lease periods and never claimed is reported by
#: ``stats()`` as one no running worker has ("effect X: no worker has it").
UNCLAIMED_EFFECT_LEASES = 3
#: Claims a timer, child or result task may take without finishing (the worker running
#: it died or lost its lease each time) before its execution fails; an effect task's
#: bound is its ``max_attempts``.
MAX_STEP_CLAIMS = 10
#: How long a worker's claim on a task lasts before another worker may take it over.
LEASE_SECONDS = 30.0
#: How often a worker polls for ready tasks when nothing wakes it earlier.
POLL_SECONDS = 1.0
#: Threads per worker process that run effects and steps. Eight, because effects mostly
#: wait (an HTTP call) and a worker's threads share their results' transactions (group
#: commit): with 4,000 ready no-op effect tasks on PostgreSQL, one worker ran 716 tasks/s
#: with 4 threads and 1,115/s with 8, for about the same CPU (bench/executor.py). Each
#: thread holds a database connection while it runs a task.
WORKER_CONCURRENCY = 8
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
