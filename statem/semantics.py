"""The step semantics: pure functions from (machine, execution snapshot, event) to an Outcome.

Nothing here touches the database or the clock beyond the ``now`` it is given: the engine
locks the execution, calls one of :func:`start`, :func:`action`, :func:`fire_timer` or
:func:`apply_result`, and commits the returned :class:`Outcome` (new state, status,
context, the history steps and the tasks to arm) in one transaction.

Rules (DESIGN.md section 1):

* After a transition, the target state's ``always`` list is tried in order; the first
  transition whose ``when`` holds is taken, and the search starts again in the new state
  (also when it stayed). When none holds, the execution rests.
* A transition with ``wait_for`` arms a timer instead of moving; one with ``invoke`` arms
  an effect or child task. Either ends the chain: the execution rests until the task's
  result arrives as its own step.
* Context updates are evaluated against the context before the transition, then
  shallow-merged.
* A final state (``end: true``) finishes the execution with its ``return`` as output.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .definition import Branch, CompiledMachine, ContextUpdate, Invoke, Transition
from .errors import ActionNotAllowed, ExpressionError, LoopError, StatemError
from .expressions import JSON
from .kinds import FINAL_STATUSES, INLINE_KINDS, Status, TaskKind
from .settings import MAX_ALWAYS_CHAIN

__all__ = ["FINAL_STATUSES", "INLINE_KINDS", "Status", "TaskKind"]


@dataclass(frozen=True)
class Snapshot:
    """What the semantics needs to know of an execution."""

    id: str
    machine_id: str
    machine_version: int
    state: str
    status: str
    context: dict[str, Any]


@dataclass
class StepRecord:
    """One history row to append."""

    kind: str
    name: str | None
    from_state: str | None
    to_state: str | None
    input: JSON = None
    output: JSON = None
    context: dict[str, Any] | None = None
    error: str | None = None
    #: the event that began this chain (on its first step): what replay and retry re-run
    event: JSON = None


@dataclass
class TaskSpec:
    """A task to arm with the step: a timer, an effect call, a child start or a child's result."""

    kind: TaskKind
    due_at: dt.datetime
    payload: dict[str, Any]


@dataclass(frozen=True)
class ElementSpec:
    """One element of a fan-out armed by a step: its index (and branch name for ``all``),
    its input, and what runs it (an effect name, or a child machine ``[id, version]``)."""

    index: int
    branch: str | None
    input: JSON
    effect: str | None = None
    machine: list[Any] | None = None


@dataclass
class Outcome:
    """The result of one step: what to write back to the execution row, and what to append."""

    state: str
    status: Status
    context: dict[str, Any]
    output: JSON = None
    error: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)
    #: the elements of the fan-out the step armed (its ``fanout`` task is in ``tasks``)
    elements: list[ElementSpec] = field(default_factory=list)


def transition_at(cm: CompiledMachine, path: str) -> Transition:
    """The transition a task refers to by its dotted path (``states.s.always[0]``, ``states.s.actions.a``)."""
    _, sname, rest = path.split(".", 2)
    st = cm.state(sname)
    if rest.startswith("always["):
        return st.always[int(rest[len("always[") : -1])]
    return st.actions[rest.split(".", 1)[1]]


class _Chain:
    """One chain of steps: begun by a start, action, timer or result; then always-transitions."""

    def __init__(
        self,
        cm: CompiledMachine,
        snap: Snapshot,
        env: Mapping[str, Any],
        now: dt.datetime,
        chain_input: JSON,
        chain_output: JSON = None,
    ) -> None:
        self.cm = cm
        self.snap = snap
        self.env = env
        self.now = now
        self.input = chain_input if chain_input is not None else {}
        self.output = chain_output
        self.state = snap.state
        self.context = dict(snap.context)
        self.steps: list[StepRecord] = []
        self.tasks: list[TaskSpec] = []
        self.elements: list[ElementSpec] = []
        self.result: JSON = None
        self.execution = {
            "id": snap.id,
            "machine": snap.machine_id,
            "version": snap.machine_version,
        }

    # ------------------------------------------------------------------ evaluation
    def names(self) -> dict[str, Any]:
        return {
            "ctx": self.context,
            "context": self.context,
            "input": self.input,
            "output": self.output,
            "state": self.state,
            "execution": self.execution,
            "env": self.env,
        }

    def eval(self, path: str) -> JSON:
        return self.cm.expr(path).evaluate(self.names())

    def holds(self, path: str, when: str | None) -> bool:
        return when is None or bool(self.eval(f"{path}.when"))

    def updated_context(self, path: str, update: ContextUpdate | None) -> dict[str, Any]:
        if update is None:
            return self.context
        where = f"{path}.context" if path else "context"
        if isinstance(update, str):
            value = self.eval(where)
            if not isinstance(value, dict):
                raise ExpressionError(
                    f"a context expression must yield a mapping, not {type(value).__name__}",
                    expression=update,
                    path=where,
                )
            changes = value
        else:
            changes = {key: self.eval(f"{where}.{key}") for key in update}
        return {**self.context, **changes}

    # ------------------------------------------------------------------ moves
    def take(self, kind: str, name: str | None, path: str, t: Transition | Branch) -> None:
        """Apply a transition's context and move to its target (default: stay)."""
        new_context = self.updated_context(path, t.context)
        from_state = self.state
        self.state = t.state or from_state
        self.context = new_context
        self.record(kind, name, from_state, self.state, context=new_context)

    def record(self, kind: str, name: str | None, from_state: str | None, to_state: str, **kw: Any) -> None:
        kw.setdefault("context", self.context)
        kw.setdefault("input", self.input)
        kw.setdefault("output", self.output)
        self.steps.append(StepRecord(kind, name, from_state, to_state, **kw))

    def arm(self, name: str | None, path: str, t: Transition) -> Status | None:
        """Arm the timer or the task of a ``wait_for``/``invoke`` transition; the chain rests."""
        if t.wait_for is not None:
            due = self.due_at(path, t)
            self.tasks.append(TaskSpec(TaskKind.timer, due, {"transition": path, "name": name}))
            target = t.state or self.state
            self.record(
                "wait",
                name,
                self.state,
                self.state,
                output={"due_at": due.isoformat(), "target": target},
            )
            return Status.waiting
        assert t.invoke is not None
        inv = t.invoke
        if inv.fanout is not None:
            return self.arm_fanout(name, path, inv)
        task_input = self.eval(f"{path}.invoke.input") if inv.input is not None else {}
        payload: dict[str, Any] = {
            "transition": path,
            "name": name,
            "input": task_input,
            "pin": [self.snap.machine_id, self.snap.machine_version],  # spares the executor a read
        }
        if inv.effect is not None:
            payload["effect"] = inv.effect
            self.tasks.append(TaskSpec(TaskKind.effect, self.now, payload))
        else:
            child = inv.child
            assert child is not None
            payload["machine"] = list(child)
            self.tasks.append(TaskSpec(TaskKind.child, self.now, payload))
        if inv.effect is not None:
            target = inv.effect
        else:
            mid, version = inv.child or ("?", None)
            target = f"machine {mid} v{version}" if version is not None else f"machine {mid} (latest)"
        self.record("invoke", name, self.state, self.state, output={"invoke": target, "input": task_input})
        return Status.running

    def arm_fanout(self, name: str | None, path: str, inv: Invoke) -> Status | None:
        """Arm a ``map``/``all`` fan-out: one ``fanout`` task (its join) and its elements.

        Every element's input is evaluated here, against the context of this step (a
        later one would discard the fan-out). An empty ``map`` joins at once: the chain
        takes ``success`` with ``[]`` and goes on (None is returned).
        """
        elements = self.fanout_elements(path, inv)
        total = len(elements)
        info: dict[str, Any] = {"invoke": inv.fanout, "elements": total}
        if inv.fanout == "map":
            info["target"] = inv.effect or f"machine {inv.machine}"
            info["max_concurrency"] = inv.max_concurrency
            info["tolerated_failures"] = tolerated(inv.tolerated_failures, total)
        else:
            info["branches"] = [e.branch for e in elements]
        self.record("invoke", name, self.state, self.state, output=info)
        payload: dict[str, Any] = {
            "transition": path,
            "name": name,
            "pin": [self.snap.machine_id, self.snap.machine_version],
            "fanout": inv.fanout,
            "total": total,
            "max_concurrency": inv.max_concurrency,
            "tolerated": tolerated(inv.tolerated_failures, total),
        }
        if total == 0:
            self.output = []
            branch, branch_path = inv.success, f"{path}.invoke.success"
            if inv.if_ is not None and not bool(self.eval(f"{path}.invoke.if")):
                branch, branch_path = inv.error, f"{path}.invoke.error"
            if branch is None:
                raise InvokeFailed(f"{path}.invoke: `if` is false and there is no else branch")
            self.take("result", branch.name or name, branch_path, branch)
            return None
        self.tasks.append(TaskSpec(TaskKind.fanout, self.now, payload))
        self.elements = elements
        return Status.running

    def fanout_elements(self, path: str, inv: Invoke) -> list[ElementSpec]:
        """The elements of a fan-out with their inputs evaluated (``item``/``index`` bound)."""
        if inv.all is not None:
            return [
                ElementSpec(
                    i,
                    bname,
                    self.eval(f"{path}.invoke.all.{bname}.input") if leg.input is not None else {},
                    leg.effect,
                    list(leg.child) if leg.child is not None else None,
                )
                for i, (bname, leg) in enumerate(inv.all.items())
            ]
        items = self.eval(f"{path}.invoke.map")
        if not isinstance(items, list):
            raise ExpressionError(
                f"map must yield a list, not {type(items).__name__}",
                expression=inv.map or "",
                path=f"{path}.invoke.map",
            )
        machine = list(inv.child) if inv.child is not None else None
        expr = self.cm.expr(f"{path}.invoke.input") if inv.input is not None else None
        names = self.names()
        out = []
        for index, item in enumerate(items):
            value = expr.evaluate({**names, "item": item, "index": index}) if expr is not None else item
            out.append(ElementSpec(index, None, value, inv.effect, machine))
        return out

    def due_at(self, path: str, t: Transition) -> dt.datetime:
        assert t.wait_for is not None
        seconds = t.wait_for.duration()
        if seconds is not None:
            return self.now + dt.timedelta(seconds=seconds)
        value = self.eval(f"{path}.wait_for.until")
        try:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return dt.datetime.fromtimestamp(value, dt.UTC)
            if isinstance(value, str):
                parsed = dt.datetime.fromisoformat(value)
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise ExpressionError(
                f"until must be an ISO timestamp or epoch seconds: {exc}",
                expression=t.wait_for.until or "",
                path=f"{path}.wait_for.until",
            ) from None
        raise ExpressionError(
            f"until must be an ISO timestamp or epoch seconds, not {type(value).__name__}",
            expression=t.wait_for.until or "",
            path=f"{path}.wait_for.until",
        )

    def settle(self) -> Status:
        """Run always-transitions until the execution rests, arms a task, or ends."""
        taken: list[str] = []
        while True:
            st = self.cm.state(self.state)
            if st.end:
                self.result = self.eval(f"states.{self.state}.return") if st.return_ else None
                return Status.finished
            for i, t in enumerate(st.always):
                path = f"states.{self.state}.always[{i}]"
                if not self.holds(path, t.when):
                    continue
                if t.wait_for is not None or t.invoke is not None:
                    status = self.arm(t.name, path, t)
                    if status is not None:
                        return status
                    if len(taken) >= MAX_ALWAYS_CHAIN:  # an empty map joined at once: go on
                        raise _loop_error(taken)
                    taken.append(path)
                    break
                if len(taken) >= MAX_ALWAYS_CHAIN:
                    raise _loop_error(taken)
                taken.append(path)
                self.take("always", t.name, path, t)
                break
            else:
                return Status.waiting

    def outcome(self, status: Status) -> Outcome:
        # Each context value is plain JSON already (every expression's result is checked);
        # the size of the whole is bounded where every stored step is checked, with its
        # history rows and tasks: statem.limits.check_outcome.
        return Outcome(
            state=self.state,
            status=status,
            context=self.context,
            output=self.result,
            steps=self.steps,
            tasks=self.tasks,
            elements=self.elements,
        )


def _loop_error(taken: list[str]) -> LoopError:
    tail = taken[-20:]
    cycle: list[str] = []
    for p in reversed(tail):
        if p in cycle:
            break
        cycle.insert(0, p)
    states = [p.split(".")[1] for p in cycle]
    return LoopError(
        f"always-chain exceeded {MAX_ALWAYS_CHAIN} steps; it loops through " + " -> ".join(cycle + cycle[:1]),
        loop=states,
    )


# --------------------------------------------------------------------------- entry points


def start(
    cm: CompiledMachine, execution_id: str, input: JSON, env: Mapping[str, Any], now: dt.datetime
) -> Outcome:
    """Begin an execution: evaluate the initial context, enter ``start_at``, run the chain."""
    m = cm.machine
    snap = Snapshot(execution_id, m.id, m.version, m.start_at, Status.running, {})
    chain = _Chain(cm, snap, env, now, input)
    chain.context = chain.updated_context("", m.context) if m.context is not None else {}
    chain.record(
        "start", None, None, m.start_at, event={"type": "start", "version": m.version, "input": input}
    )
    return chain.outcome(chain.settle())


def allowed_actions(cm: CompiledMachine, state: str) -> list[str]:
    """The actions the state offers, in definition order."""
    return list(cm.state(state).actions)


def action(
    cm: CompiledMachine,
    snap: Snapshot,
    name: str,
    input: JSON,
    env: Mapping[str, Any],
    now: dt.datetime,
) -> Outcome:
    """Fire an action from outside; raises ActionNotAllowed if the state does not take it now."""
    allowed = allowed_actions(cm, snap.state) if snap.state in cm.machine.states else []
    if snap.status in FINAL_STATUSES:
        raise ActionNotAllowed(snap.id, name, snap.state, [], f"the execution is {snap.status}")
    t = cm.state(snap.state).actions.get(name)
    if t is None:
        raise ActionNotAllowed(snap.id, name, snap.state, allowed, "the state has no such action")
    path = f"states.{snap.state}.actions.{name}"
    chain = _Chain(cm, snap, env, now, input)
    if not chain.holds(path, t.when):
        raise ActionNotAllowed(snap.id, name, snap.state, allowed, f"its guard is false: {t.when}")
    step_name = t.name or name
    event = {"type": "action", "version": snap.machine_version, "action": name, "input": input}
    if t.wait_for is not None or t.invoke is not None:
        status = chain.arm(step_name, path, t)
        chain.steps[0].event = event
        return chain.outcome(status if status is not None else chain.settle())
    chain.take("action", step_name, path, t)
    chain.steps[0].event = event
    return chain.outcome(chain.settle())


def fire_timer(
    cm: CompiledMachine,
    snap: Snapshot,
    payload: Mapping[str, Any],
    env: Mapping[str, Any],
    now: dt.datetime,
    task_id: int | None = None,
) -> Outcome:
    """Take the transition a due timer was armed for (its guard held when it was armed)."""
    path = str(payload["transition"])
    event: dict[str, Any] = {
        "type": "timer", "version": snap.machine_version, "transition": path, "name": payload.get("name"),
    }  # fmt: skip
    with _event_on_error(event, task_id, payload):
        t = transition_at(cm, path)
        chain = _Chain(cm, snap, env, now, {})
        chain.take("timer", payload.get("name"), path, t)
        chain.steps[0].event = event
        return chain.outcome(chain.settle())


def apply_result(
    cm: CompiledMachine,
    snap: Snapshot,
    payload: Mapping[str, Any],
    ok: bool,
    output: JSON,
    env: Mapping[str, Any],
    now: dt.datetime,
    task_id: int | None = None,
) -> Outcome:
    """Take an invoke's success/error branch for an effect or child result.

    ``ok`` is False when the effect raised (after its retries) or the child failed or was
    canceled; ``output`` is then ``{'type': ..., 'message': ...}``. ``if`` (when given)
    judges a returned result. A missing branch fails the execution.

    ``task_id`` (the effect or child task whose result this is) is recorded with the
    event when the step fails, so that ``retry`` can invoke it again under the same key.
    """
    path = str(payload["transition"])
    event: dict[str, Any] = {
        "type": "result", "version": snap.machine_version, "transition": path, "name": payload.get("name"),
        "ok": ok, "output": output,
    }  # fmt: skip
    with _event_on_error(event, task_id, payload):
        return _apply_result(cm, snap, path, payload, ok, output, env, now, event)


def _apply_result(
    cm: CompiledMachine,
    snap: Snapshot,
    path: str,
    payload: Mapping[str, Any],
    ok: bool,
    output: JSON,
    env: Mapping[str, Any],
    now: dt.datetime,
    event: dict[str, Any],
) -> Outcome:
    t = transition_at(cm, path)
    assert t.invoke is not None
    inv = t.invoke
    chain = _Chain(cm, snap, env, now, {}, output)
    branch_path = f"{path}.invoke.success"
    branch: Branch | None = inv.success
    if not ok:
        branch, branch_path = inv.error, f"{path}.invoke.error"
        if branch is None:
            message = output.get("message") if isinstance(output, dict) else output
            raise InvokeFailed(f"{path}.invoke failed and has no error branch: {message}")
    elif inv.if_ is not None and not bool(chain.eval(f"{path}.invoke.if")):
        branch, branch_path = inv.error, f"{path}.invoke.error"
        if branch is None:
            raise InvokeFailed(f"{path}.invoke: `if` is false and there is no else branch")
    if branch is None:
        raise InvokeFailed(f"{path}.invoke has no success branch")
    name = branch.name or payload.get("name")
    chain.take("result", name, branch_path, branch)
    chain.steps[0].event = event
    return chain.outcome(chain.settle())


class InvokeFailed(Exception):
    """An invoke result has no branch to take: the execution fails with this message."""


def failure(
    snap: Snapshot, kind: str, name: str | None, error: str, input: JSON = None, event: JSON = None
) -> Outcome:
    """The outcome of a step the executor could not apply: failed, state and context unchanged.

    ``event`` is what the step tried to apply (see :func:`event_of`): ``retry`` re-runs it.
    """
    step = StepRecord(
        kind, name, snap.state, snap.state, input=input, context=snap.context, error=error, event=event
    )
    return Outcome(snap.state, Status.failed, snap.context, error=error, steps=[step])


def event_of(exc: BaseException) -> JSON:
    """The event a failed :func:`fire_timer` / :func:`apply_result` was applying (or None)."""
    event: JSON = getattr(exc, "statem_event", None)
    return event


@contextmanager
def _event_on_error(event: dict[str, Any], task_id: int | None, payload: Mapping[str, Any]) -> Iterator[None]:
    """Attach the event (with the task it came from) to an error the step raises."""
    try:
        yield
    except (StatemError, InvokeFailed) as exc:
        # an effect that raised (or a child that failed) with no error branch: retry invokes it again
        reinvoke = isinstance(exc, InvokeFailed) and event.get("ok") is False
        task = {"id": task_id, "payload": dict(payload)}
        exc.statem_event = {**event, "task": task, "reinvoke": reinvoke}  # type: ignore[union-attr]
        raise


def enter_state(
    cm: CompiledMachine,
    snap: Snapshot,
    state: str,
    changes: Mapping[str, Any],
    env: Mapping[str, Any],
    now: dt.datetime,
    *,
    kind: str | None,
    input: JSON = None,
    settle: bool = True,
) -> Outcome:
    """Put an execution in ``state`` with ``changes`` merged into its context (literal
    values, not expressions), record a step of ``kind``, then enter the state as a
    transition does: its ``always`` are tried (``settle=False``: not now; the step only
    records the move). With ``kind`` None no step of its own is recorded (the state is
    only entered again). The operator's ``move`` and an upgrade build on this."""
    chain = _Chain(cm, snap, env, now, {})
    from_state = snap.state
    chain.state = state
    chain.context = {**snap.context, **changes}
    if kind is not None:
        chain.record(kind, None, from_state, state, input=input, output=None)
    if not settle:
        return chain.outcome(Status.waiting)
    return chain.outcome(chain.settle())


# --------------------------------------------------------------------------- fan-out rules


def tolerated(spec: int | str | None, total: int) -> int:
    """How many failed elements a map tolerates: a count, or a percentage of ``total``
    rounded down (``"10%"`` of 25 is 2); none when not given."""
    if spec is None:
        return 0
    if isinstance(spec, int):
        return spec
    return int(Fraction(spec[:-1]) * total // 100)


@dataclass(frozen=True)
class Counts:
    """A fan-out's progress: elements in all, armed so far, running, succeeded, failed."""

    total: int
    armed: int
    running: int
    done: int
    failed: int

    def describe(self) -> str:
        """``12/30 done, 1 failed, 5 running``."""
        return f"{self.done}/{self.total} done, {self.failed} failed, {self.running} running"


def exceeded(counts: Counts, tolerated_failures: int) -> bool:
    """True once the failures are more than the fan-out tolerates: it joins on ``error``."""
    return counts.failed > tolerated_failures


def next_move(counts: Counts, tolerated_failures: int, max_concurrency: int | None) -> tuple[int, bool]:
    """After an element ended: how many more elements to start now, and whether to join.

    The join comes when every element has ended, or as soon as the failures exceed the
    bound (then nothing more starts: the join discards the rest). Otherwise unstarted
    elements start while fewer than ``max_concurrency`` run.
    """
    if exceeded(counts, tolerated_failures) or counts.done + counts.failed >= counts.total:
        return 0, True
    room = counts.total - counts.armed
    if max_concurrency is not None:
        room = min(room, max_concurrency - counts.running)
    return max(room, 0), False


def initial_batch(total: int, max_concurrency: int | None) -> int:
    """How many elements a fan-out starts with."""
    return total if max_concurrency is None else min(total, max_concurrency)


@dataclass(frozen=True)
class ElementResult:
    """How an element ended: ``ok`` with its ``output``, failed with its ``error``
    (``{'type', 'message'}``), or not at all (``ended`` False: discarded by the join)."""

    index: int
    branch: str | None
    ended: bool
    ok: bool = False
    output: JSON = None
    error: JSON = None


def join(kind: str, elements: Sequence[ElementResult], tolerated_failures: int) -> tuple[bool, JSON]:
    """The join of a fan-out: ``(ok, output)`` for the invoke's success/error branch.

    ``map``: ``ok`` with the results in input order (failed elements ``None``) when every
    element ended and the failures are within the bound; else a ``MapFailed`` error with
    ``failed: [{'index', 'error'}]`` and the results. ``all``: the results by branch
    name; any failed branch makes it a ``MapFailed`` with ``failed: [{'branch', 'error'}]``.
    """
    ordered = sorted(elements, key=lambda e: e.index)
    results_list = [e.output if e.ended and e.ok else None for e in ordered]
    failed_elements = [e for e in ordered if e.ended and not e.ok]
    unended = sum(1 for e in ordered if not e.ended)
    if kind == "all":
        results: JSON = {e.branch: r for e, r in zip(ordered, results_list, strict=True)}
        failed: list[JSON] = [{"branch": e.branch, "error": e.error} for e in failed_elements]
        ok = not failed and not unended
        what = "branches"
    else:
        results = results_list
        failed = [{"index": e.index, "error": e.error} for e in failed_elements]
        ok = len(failed) <= tolerated_failures and not unended
        what = "elements"
    if ok:
        return True, results
    message = f"{len(failed)} of {len(ordered)} {what} failed"
    if kind == "map":
        message += f" ({tolerated_failures} tolerated)"
    if unended:
        message += f"; {unended} not run to their end (discarded)"
    return False, {"type": "MapFailed", "message": message, "failed": failed, "results": results}
