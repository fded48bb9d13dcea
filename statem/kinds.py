"""The words statem stores: execution statuses, task kinds and task statuses, as enums.

Each is a ``StrEnum``, so a member *is* its string: the database keeps the same values
it always had, and rows read back compare equal to the members.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """An execution's status (DESIGN.md section 3)."""

    running = "running"  #: work in flight: an effect, a child execution
    waiting = "waiting"  #: at rest: only an action or a timer can move it
    paused = "paused"  #: held by an operator: nothing moves it until resumed (events are kept)
    finished = "finished"
    failed = "failed"
    canceled = "canceled"


#: The statuses nothing moves an execution out of.
FINAL_STATUSES: frozenset[str] = frozenset({Status.finished, Status.failed, Status.canceled})


class TaskKind(StrEnum):
    """What a task does when it runs."""

    timer = "timer"  #: a durable timer firing a ``wait_for`` transition
    effect = "effect"  #: a call of a registered effect
    child = "child"  #: the start of a child execution
    resume = "resume"  #: a finished child's result, handed to its parent
    fanout = "fanout"  #: a map/all fan-out waiting for its elements (never claimed)
    joining = "join"  #: a fan-out whose elements ended: its join step, ready to run
    trigger = "trigger"  #: a trigger kept while the execution was paused (statem.operations)
    enter = "enter"  #: a move while paused: the state's always are tried on resume
    drain = "drain"  #: applies the kept events of a resumed execution, one per step


#: The task kinds ``execution_mode: sync`` runs in the caller (timers always go to workers).
INLINE_KINDS: frozenset[str] = frozenset({TaskKind.effect, TaskKind.child, TaskKind.resume, TaskKind.joining})


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    pending = "pending"  #: ready for any worker once due
    claimed = "claimed"  #: held under a claim (owner, fencing token, lease)
    waiting = "waiting"  #: a child task whose child execution runs; its result resumes it
    held = "held"  #: armed work of a paused execution: no worker claims it until resume
    kept = "kept"  #: an event that arrived while paused, applied after resume in arrival order


#: The statuses no operator operation changes: ``failed`` is not final (DESIGN.md section 8):
#: retry, move, upgrade or cancel it. (:data:`FINAL_STATUSES` is what the executor treats
#: as ended: a failed execution runs no task.)
CLOSED_STATUSES: frozenset[str] = frozenset({Status.finished, Status.canceled})
