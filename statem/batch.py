"""Batches: many executions' steps committed in one transaction.

A worker under load has many steps to write at once: timers due in the same second, the
results of effects its threads ran side by side. Writing each as its own transaction
costs a commit (a WAL flush) and five or six statements per step; here a batch is one
transaction of a handful of set-based statements (:mod:`statem.store_batch`), whatever
its size:

1. lock every execution of the batch (one ``SELECT ... FOR NO KEY UPDATE``, in id order);
2. take the armed tasks of those whose task in the batch is still ours (one ``DELETE ...
   RETURNING``, fenced per row by the claim token);
3. evaluate each step in Python, on its locked row;
4. write them all (:func:`statem.steps.commit_many`: fenced ``UPDATE`` per row, history
   rows and armed tasks, one ``executemany`` each).

No guarantee is weakened: each step is still all-or-nothing (the batch commits or rolls
back as a whole, and a rolled-back batch is retried one step at a time), fenced (a stale
claim keeps its execution out of step 2, and so out of the batch: it is reported stale
and nothing of it is written), and has its own history rows with contiguous ``seq``. A
step the set-based path does not cover (one that discards other armed work or arms a
fan-out; an execution that is paused or already final) is written in the same
transaction by the ordinary locking path, the final or paused ones each in a savepoint so
a database error there rolls back that step only.

Batch size adapts to load by construction: :class:`GroupCommit` (effect results) is a
leader/follower group commit, so an idle worker commits a lone result at once, on its
own, and a busy one commits whatever results arrived while the previous batch was being
written; the worker sizes timer batches from how full its claims come back
(:mod:`statem.worker`).

A batch of timers logs one INFO line (how many fired, and their executions in the record's
``execution_ids``); each of its steps logs at DEBUG. A burst of 10,000 timers is thus 40
lines, not 10,000: one line per step was 13.5% of the worker's CPU samples in that
burst. A failed execution is still a WARNING of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row
from sqlalchemy.exc import DBAPIError

from . import steps
from . import store_batch as sb
from .errors import StatemError
from .executor import Executor, record_late
from .kinds import FINAL_STATUSES, Status, TaskKind
from .steps import ClaimLost
from .task_rules import Done, Item, timer_rule

log = logging.getLogger("statem.executor")

#: Most steps one batch writes (bounded, so a batch's transaction stays short).
BATCH_MAX = 256


@dataclass
class Written:
    """What a batch's transaction did: steps committed, items found stale, and items left
    to run on their own afterwards (a savepointed step that hit a database error)."""

    done: list[tuple[Item, Done]] = field(default_factory=list)
    stale: list[Item] = field(default_factory=list)
    alone: list[Item] = field(default_factory=list)


def run_timers(ex: Executor, tasks: Sequence[Row[Any]]) -> None:
    """Fire claimed timers as one batch (:func:`commit_batch`). A timer claimed before (a
    worker died holding it, maybe because of it) is fired on its own first, as
    :meth:`Executor.run` does (failed there if claimed too many times), so one poisonous
    timer never costs the timers batched with it more than the one claim."""
    env = ex.rt.env
    for task in tasks:
        if task.attempts > 1:
            ex.run(task)
    commit_batch(ex, [Item(t, "timer", timer_rule(t, env)) for t in tasks if t.attempts <= 1])


#: Claims the next tasks inside a batch's transaction, at its end (``GroupCommit(refill=)``):
#: given the connection and how many items the batch holds, returns the tasks claimed.
Refill = Callable[[Connection, int], list[Row[Any]]]


def commit_batch(ex: Executor, items: Sequence[Item], refill: Refill | None = None) -> list[Row[Any]]:
    """Commit ``items`` (claimed tasks and the steps they make) as one transaction; never
    raises. A lone item, an execution's second item, and every item of a batch whose
    transaction failed as a whole (a deadlock with another writer, a lost connection) are
    run on their own, exactly as without batching.

    ``refill``: run at the end of the batch's transaction (a lone item then goes through
    the batch's path too), committed with the batch; returns what it claimed, or nothing
    when the batch was not written as one."""
    if not items or (len(items) == 1 and refill is None):
        for item in items:
            _alone(ex, item)
        return []
    first: dict[str, Item] = {}
    later: list[Item] = []
    for item in sorted(items, key=lambda i: (i.task.execution_id, i.task.id)):
        if item.task.execution_id in first:
            later.append(item)  # one step per execution per batch: the next one sees the first
        else:
            first[item.task.execution_id] = item
    now = ex.rt.clock()
    try:
        with ex.rt.transaction() as conn:
            written = _write(ex, conn, list(first.values()), now)
            claimed = refill(conn, len(items)) if refill is not None else []
    except Exception as exc:
        level = logging.INFO if isinstance(exc, DBAPIError | StatemError) else logging.WARNING
        log.log(level, "a batch of %d steps rolled back (%s); running them one by one", len(items), exc)
        for item in items:
            _alone(ex, item)
        return []
    fired: list[str] = []
    for item, step in written.done:
        timer = item.task.kind == TaskKind.timer
        if timer:
            ex.rt.metrics.task(item.task.kind)
            ex.rt.metrics.timer_fired((now - item.task.due_at).total_seconds())
            fired.append(item.task.execution_id)
        # a timer's line at DEBUG: the batch logs one line for its timers, below
        ex._after(item.task, None, item.kind, step, logging.DEBUG if timer else logging.INFO)
    if fired:
        log.info(
            "fired %d timers in one transaction (executions %s .. %s)",
            len(fired),
            min(fired),
            max(fired),
            extra={"execution_ids": fired, "step": TaskKind.timer.value},
        )
    for item in written.stale:
        _stale(ex, item)
    for item in written.alone + later:
        _alone(ex, item)
    return claimed


def _write(ex: Executor, conn: Connection, items: list[Item], now: dt.datetime) -> Written:
    """The batch's transaction (see the module docstring)."""
    out = Written()
    rows = sb.lock_executions(conn, [i.task.execution_id for i in items])
    plain: list[tuple[Item, Row[Any]]] = []
    special: list[Item] = []
    for item in items:
        row = rows.get(item.task.execution_id)
        if row is None:
            out.stale.append(item)
        elif row.status in FINAL_STATUSES or row.status == Status.paused:
            special.append(item)
        else:
            plain.append((item, row))
    taken = sb.take_claimed(conn, [(i.task.id, i.task.claim) for i, _ in plain])
    many: list[tuple[Item, Row[Any], Any, Exception | None]] = []
    for item, row in plain:
        mine = taken.get(row.id, [])
        own = next((t for t in mine if t.id == item.task.id), None)
        if own is None:
            out.stale.append(item)
            continue
        dropped = [t for t in mine if t.id != item.task.id]
        name = item.task.payload.get("name")
        outcome, failure = ex._evaluate(conn, row, item.kind, name, item.rule_for(own.payload), now)
        if steps.batchable(outcome, dropped):
            many.append((item, row, outcome, failure))
        else:  # discards other work or arms a fan-out: the ordinary path, same transaction
            armed = steps.commit_locked(ex.rt.metrics, conn, row, outcome, now, dropped=dropped)
            out.done.append((item, Done(row, outcome, failure, armed)))
    written = steps.commit_many(ex.rt.metrics, conn, [(row, outcome) for _, row, outcome, _ in many], now)
    out.done += [
        (item, Done(row, outcome, failure, armed))
        for (item, row, outcome, failure), armed in zip(many, written, strict=True)
    ]
    for item in special:  # final or paused: the locking path, each in its own savepoint
        try:
            with conn.begin_nested():
                step = ex._locked_step(
                    conn, item.task, None, item.kind, item.rule_for, now, late=item.late, result=item.result
                )
        except ClaimLost:
            out.stale.append(item)
        except DBAPIError as exc:
            log.info("task %s of %s: %s; run on its own", item.task.id, item.task.execution_id, exc)
            out.alone.append(item)
        else:
            if step is not None:
                out.done.append((item, step))
    return out


def _alone(ex: Executor, item: Item) -> None:
    """Run one item as if there were no batching: a timer as :meth:`Executor.run` runs it,
    an effect's result as its own step."""
    if item.task.kind == TaskKind.timer:
        ex.run(item.task)
    else:
        ex.settle(item)


def _stale(ex: Executor, item: Item) -> None:
    """A batch item whose claim was no longer ours: dropped (a late result recorded)."""
    if item.task.kind == TaskKind.timer:
        ex.rt.metrics.task(item.task.kind)
    ex._stale(item.task)
    if item.late is not None:
        try:
            record_late(ex, item.task, None, *item.late)
        except Exception as exc:
            log.info("task %s: its late result was not recorded (%s)", item.task.id, exc)


@dataclass
class _Waiter:
    item: Item
    woken: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    handed: Row[Any] | None = None


class GroupCommit:
    """Effect results from a worker's threads, committed in batches (group commit).

    :meth:`submit` returns once the item's step is committed (or found stale, or failed
    and recorded). The first thread to submit while no batch is being written leads: it
    writes every result queued so far (up to BATCH_MAX) as one batch. Threads that submit
    meanwhile wait; when the batch is done, the oldest of them leads the next one. An idle
    worker's lone result is therefore committed at once, on its own; a busy one's results
    share transactions.

    ``refill`` (the worker's): the batch's transaction ends by claiming up to one next
    task per result in it, for the threads those results free, so a busy thread goes from
    one task to the next without a claim transaction of its own. A thread takes the task
    handed to it with :meth:`take_handed` once the executor returns.
    """

    def __init__(self, executor: Executor, limit: int = BATCH_MAX, refill: Refill | None = None) -> None:
        self._ex = executor
        self._limit = limit
        self._refill = refill
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._busy = False
        self._handed = threading.local()
        #: the most results one batch committed so far
        self.largest = 0
        #: the tasks claimed for threads in their results' transactions so far
        self.handed = 0

    def submit(self, item: Item) -> None:
        """Commit ``item`` (alone or with others); returns when it is done."""
        me = _Waiter(item)
        with self._lock:
            self._queue.append(me)
            if not self._busy:
                self._busy = me.lead = True
        if not me.lead:
            me.woken.wait()
        if me.lead:
            self._write()
        self._handed.task = me.handed

    def take_handed(self) -> Row[Any] | None:
        """The task claimed for this thread with its last result (once), or None."""
        task: Row[Any] | None = getattr(self._handed, "task", None)
        self._handed.task = None
        return task

    def _write(self) -> None:
        with self._lock:
            batch, self._queue = self._queue[: self._limit], self._queue[self._limit :]
        self.largest = max(self.largest, len(batch))
        try:
            claimed = commit_batch(self._ex, [w.item for w in batch], self._refill)
            for waiter, task in zip(batch, claimed, strict=False):
                waiter.handed = task
            self.handed += len(claimed)
        finally:
            with self._lock:
                nxt = self._queue[0] if self._queue else None
                if nxt is None:
                    self._busy = False
                else:
                    nxt.lead = True
            for waiter in batch:
                waiter.woken.set()
            if nxt is not None:
                nxt.woken.set()
