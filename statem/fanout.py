"""Fan-out writes: arming a ``map``/``all``, an element's end, and what a discard drops.

Owned by :mod:`statem.steps` (which calls :func:`arm` when a step arms a fan-out, and
:func:`discard` when a later step drops one); the executor calls :func:`element_ended`
for each element's result. The rules (what to start next, when to join, the join's
output) are the pure functions of :mod:`statem.semantics`.

An element's end is one transaction that touches neither the execution row nor its
history: its task is finished (fenced by its claim), the fan-out's counts row is locked,
the element's row records the result, and the next unstarted element is armed. When
every element has ended, or the failures exceed the bound, a ``join`` task is armed
instead: the join is then an ordinary fenced step under the execution's lock
(:func:`statem.steps.take_fanout`), so a later step that discarded the fan-out (and the
join task with it) always wins.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row

from . import store
from . import store_fanout as sf
from .expressions import JSON
from .kinds import TaskKind
from .semantics import Counts, ElementSpec, TaskSpec, initial_batch, next_move
from .store import Claim, ClaimLost

#: Payload keys of an element's task besides its input: the invoke it belongs to.
_SPEC_KEYS = ("transition", "name", "pin")


@dataclass
class Started:
    """Tasks an element's end (or a fan-out's arming) armed: claimed for the inline
    caller (``ready``), or left for workers."""

    ready: list[Row[Any]] = field(default_factory=list)
    for_workers: bool = False
    joined: bool = False


def is_element(task: Row[Any]) -> bool:
    """True for an element's effect or child task (it reports to its fan-out)."""
    return isinstance(task.payload, dict) and "element" in task.payload


def _element_task(
    spec: dict[str, Any], fanout_id: int, index: int, value: JSON, e: ElementSpec | None
) -> TaskSpec:
    payload = {k: spec[k] for k in _SPEC_KEYS}
    payload.update(fanout=fanout_id, element=index, input=value)
    name = spec.get("name") or "fan-out"
    branch = e.branch if e is not None else None
    payload["name"] = f"{name}.{branch}" if branch is not None else f"{name}[{index}]"
    effect = e.effect if e is not None else spec.get("effect")
    machine = e.machine if e is not None else spec.get("machine")
    if effect is not None:
        payload["effect"] = effect
        return TaskSpec(TaskKind.effect, dt.datetime.min, payload)
    payload["machine"] = machine
    return TaskSpec(TaskKind.child, dt.datetime.min, payload)


def _put(
    conn: Connection, execution_id: str, specs: list[TaskSpec], now: dt.datetime, claim: Claim | None
) -> Started:
    for s in specs:
        s.due_at = now
    if claim is not None:
        return Started(store.insert_claimed_tasks(conn, execution_id, specs, now, claim))
    store.insert_tasks(conn, execution_id, specs, now)
    return Started(for_workers=bool(specs))


def arm(
    conn: Connection,
    execution_id: str,
    task: TaskSpec,
    items: Sequence[ElementSpec],
    now: dt.datetime,
    claim: Claim | None,
) -> Started:
    """Arm a fan-out: its ``fanout`` task, counts and element rows, and its first
    elements (``claim``: claimed for the inline caller, else pending for workers)."""
    payload = task.payload
    fanout_id = sf.insert_fanout_task(conn, execution_id, payload, now)
    spec = {k: payload[k] for k in _SPEC_KEYS}
    first = items[0] if items else None
    if payload["fanout"] == "map" and first is not None:
        spec["effect"], spec["machine"] = first.effect, first.machine
    armed = initial_batch(len(items), payload.get("max_concurrency"))
    sf.insert_fanout(conn, fanout_id, execution_id, payload, spec, items, armed, now)
    specs = [_element_task(spec, fanout_id, e.index, e.input, e) for e in items[:armed]]
    return _put(conn, execution_id, specs, now, claim)


def element_ended(
    conn: Connection,
    task: Row[Any],
    ok: bool,
    output: JSON,
    now: dt.datetime,
    claim: Claim | None,
    *,
    finish: bool,
) -> Started:
    """Record the end of the element whose task is ``task`` and arm what follows: the
    next elements, or the join. ClaimLost if the fan-out is gone (joined or discarded),
    the task's claim is no longer current, or the element had already ended.

    Locks are taken in the order of every step: the execution row, the fan-out row, then
    tasks. With ``finish`` (an effect's result, no execution lock held) the execution row
    is key-shared first and the (claimed) task deleted here after the fan-out row is
    locked; else the caller holds the execution's lock and took the task already."""
    payload = task.payload
    fanout_id, index = int(payload["fanout"]), int(payload["element"])
    if finish and not sf.share_execution(conn, task.execution_id):
        raise ClaimLost
    fan = sf.lock_fanout(conn, fanout_id)
    if fan is None:
        raise ClaimLost
    if finish and not store.finish_task(conn, task.id, task.claim):
        raise ClaimLost
    result, error = (output, None) if ok else (None, output)
    if not sf.end_element(conn, fanout_id, index, ok, result, error):
        raise ClaimLost
    c = sf.counts(fan)
    c = Counts(c.total, c.armed, c.running - 1, c.done + ok, c.failed + (not ok))
    if fan.joining:  # the join is armed already: this result only counts
        sf.write_counts(conn, fanout_id, c, True, now)
        return Started()
    more, join = next_move(c, fan.tolerated, fan.max_concurrency)
    if join:
        sf.write_counts(conn, fanout_id, c, True, now)
        spec = {k: fan.spec[k] for k in _SPEC_KEYS} | {"fanout": fanout_id}
        started = _put(conn, task.execution_id, [TaskSpec(TaskKind.joining, now, spec)], now, claim)
        started.joined = True
        return started
    specs = [
        _element_task(fan.spec, fanout_id, i, value, None)
        for i, value in sf.start_elements(conn, fanout_id, c.armed, c.armed + more)
    ]
    sf.write_counts(
        conn, fanout_id, Counts(c.total, c.armed + more, c.running + more, c.done, c.failed), False, now
    )
    return _put(conn, task.execution_id, specs, now, claim)


def discard_all(conn: Connection, execution_id: str) -> dict[int, Counts]:
    """Delete every fan-out of an execution, before its tasks are (see
    :func:`statem.store_fanout.delete_fanouts_of`); returns each one's progress."""
    return {i: sf.counts(row) for i, row in sf.delete_fanouts_of(conn, execution_id).items()}


def discard(conn: Connection, dropped: Sequence[Row[Any]]) -> dict[int, Counts]:
    """Delete the fan-outs among ``dropped`` tasks (a later step won, or the join took
    them), with their elements; returns each one's progress when it was dropped."""
    ids = [t.id for t in dropped if t.kind == TaskKind.fanout]
    return {i: sf.counts(row) for i, row in sf.delete_fanouts(conn, ids).items()}
