"""Upgrading running executions to another version of their machine (DESIGN.md section 9).

:func:`plan` is pure: from an execution, its armed tasks and the target version it decides
whether the execution can move (and where, with what context, keeping which work) or why
it is refused. :func:`run` streams over the machine's unfinished executions in keyset
batches of ids (never holding the executions themselves), and handles each in its own
transaction: a dry run only reads; ``apply`` locks the execution, plans again from the
locked row, and writes the upgrade (or nothing). The report lists every execution.

Refusal rules: the (mapped) state is not in the target; the context expression fails or
yields a non-mapping; the execution has work in flight (an effect call or a child
execution) and the target state has no always-transition of the same name invoking the
same effect or child machine (an action of that name with that invoke counts too: an
action can arm an invoke). Work that passes is kept, re-pointed at the target's
transition (its result is applied by the new branches; an effect keeps its task id and so
its idempotency key). An armed timer is kept (same due time) when the target state has an
always-transition of the same name with a ``wait_for``, else discarded (recorded). A
``waiting`` execution left with no armed work then has its new state's always tried, as
on entering it. Status is kept: a failed one stays failed, a paused one paused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Row

from . import semantics, steps, store, store_ops
from .definition import CompiledMachine
from .errors import InputError, StatemError, StateNotFound
from .expressions import Expression, check_json, compile_expression
from .replay import RecordedStep, ReplayResult, Work, replay
from .runtime import Runtime
from .semantics import InvokeFailed, Snapshot, StepRecord

log = logging.getLogger("statem.upgrade")

Outcome = Literal["upgraded", "would_upgrade", "refused", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("upgraded", "would_upgrade", "refused", "skipped")
#: Statuses an upgrade applies to.
UNFINISHED: tuple[str, ...] = ("running", "waiting", "paused", "failed")
#: Executions listed per keyset batch.
BATCH = 500
#: Task kinds that are work in flight an upgrade must find a counterpart for.
_IN_FLIGHT = ("effect", "child")


@dataclass(frozen=True)
class UpgradeItem:
    """One execution's line in an upgrade report."""

    execution_id: str
    from_version: int | None
    from_state: str | None
    to_state: str | None
    outcome: Outcome
    reason: str | None = None
    replay: str | None = None
    replay_detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data."""
        return asdict(self)


@dataclass
class UpgradeReport:
    """Every execution an upgrade looked at, and how many had each outcome."""

    items: list[UpgradeItem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))

    def add(self, item: UpgradeItem) -> None:
        """Count an item and keep it."""
        self.items.append(item)
        self.counts[item.outcome] += 1

    def to_json(self) -> dict[str, Any]:
        """``{"items": [...], "counts": {...}}``."""
        return {"items": [i.to_json() for i in self.items], "counts": dict(self.counts)}


@dataclass(frozen=True)
class TaskView:
    """What :func:`plan` reads of an armed task."""

    id: int
    kind: str
    status: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Plan:
    """How one execution moves to the target version."""

    to_state: str
    context: dict[str, Any]
    #: task id -> its payload re-pointed at the target's transition
    kept: dict[int, dict[str, Any]]
    #: timers the target has no counterpart for
    discarded: list[int]
    #: how many tasks the execution keeps (of any kind)
    left: int = 0


@dataclass(frozen=True)
class Refusal:
    """Why an execution cannot move; it is left exactly as it was."""

    reason: str
    to_state: str | None = None


@dataclass(frozen=True)
class Request:
    """An upgrade's parameters, checked once before any execution is read."""

    machine_id: str
    target: CompiledMachine
    from_version: int | None
    states: dict[str, str]
    context: Expression | None
    context_source: str | None
    execution_ids: list[str] | None
    apply: bool
    only_if_replays: bool
    reason: str | None


def check_request(
    target: CompiledMachine,
    *,
    from_version: int | None,
    states: Mapping[str, str] | None,
    context: str | None,
    execution_ids: Sequence[str] | None,
    apply: bool,
    only_if_replays: bool,
    reason: str | None,
) -> Request:
    """Validate the parameters (bad input raises before anything is read or written)."""
    m = target.machine
    mapping = dict(states or {})
    for old, new in mapping.items():
        if not isinstance(old, str) or not isinstance(new, str):
            raise InputError(f"upgrade: the state map must map names to names, not {old!r} -> {new!r}")
        if new not in m.states:
            raise StateNotFound(m.id, m.version, new, list(m.states))
    if from_version is not None and from_version == m.version:
        raise InputError(f"upgrade: from_version and to_version are both {m.version}")
    expr = compile_expression(context, "upgrade.context") if context is not None else None
    ids = None if execution_ids is None else sorted(set(execution_ids))
    return Request(m.id, target, from_version, mapping, expr, context, ids, apply, only_if_replays, reason)


# --------------------------------------------------------------------------- the pure part


def plan(
    req: Request,
    snap: Snapshot,
    tasks: Sequence[TaskView],
    env: Mapping[str, Any],
) -> Plan | Refusal:
    """Where the execution goes on the target version, or why it cannot go."""
    target = req.target
    to_state = req.states.get(snap.state, snap.state)
    if to_state not in target.machine.states:
        return Refusal(f"state {to_state!r} is not in version {target.machine.version}", to_state)
    changes: dict[str, Any] = {}
    if req.context is not None:
        try:
            execution = {"id": snap.id, "machine": snap.machine_id, "version": snap.machine_version}
            value = req.context.evaluate(
                {"ctx": snap.context, "context": snap.context, "state": snap.state, "input": {},
                 "output": None, "execution": execution, "env": env}
            )  # fmt: skip
        except StatemError as exc:
            return Refusal(f"the context expression failed: {exc}", to_state)
        if not isinstance(value, dict):
            return Refusal(f"the context expression yielded {type(value).__name__}, not a mapping", to_state)
        changes = value
    kept: dict[int, dict[str, Any]] = {}
    discarded: list[int] = []
    pin = [target.machine.id, target.machine.version]
    for task in tasks:
        if task.kind in _IN_FLIGHT:
            path = counterpart(target, to_state, task)
            if path is None:
                what = f"effect {task.payload.get('effect')!r}" if task.kind == "effect" else "child machine"
                return Refusal(
                    f"{task.kind} task {task.id} ({what}, transition {task.payload.get('name')!r}) has no "
                    f"counterpart in version {target.machine.version} state {to_state!r}",
                    to_state,
                )
            kept[task.id] = {**task.payload, "transition": path, "pin": pin}
        elif task.kind == "timer":
            path = counterpart(target, to_state, task)
            if path is None:
                discarded.append(task.id)
            else:
                kept[task.id] = {**task.payload, "transition": path}
    context = {**snap.context, **changes}
    try:
        check_json(context, "the context")
    except StatemError as exc:
        return Refusal(f"the new context is not valid: {exc}", to_state)
    return Plan(to_state, context, kept, discarded, len(tasks) - len(discarded))


def counterpart(target: CompiledMachine, state: str, task: TaskView) -> str | None:
    """The path of the target's transition in ``state`` that takes over ``task``: the same
    name, and a ``wait_for`` for a timer, the same effect or child machine for an invoke."""
    name = task.payload.get("name")
    st = target.state(state)
    candidates = [(f"states.{state}.always[{i}]", t, t.name) for i, t in enumerate(st.always)]
    candidates += [(f"states.{state}.actions.{a}", t, t.name or a) for a, t in st.actions.items()]
    for path, t, t_name in candidates:
        if t_name != name:
            continue
        if task.kind == "timer" and t.wait_for is not None:
            return path
        inv = t.invoke
        if inv is None:
            continue
        if task.kind == "effect" and inv.effect is not None and inv.effect == task.payload.get("effect"):
            return path
        machine = task.payload.get("machine")
        if task.kind == "child" and inv.child is not None and machine and inv.child[0] == machine[0]:
            return path
    return None


# --------------------------------------------------------------------------- the database part


def count(rt: Runtime, req: Request) -> int:
    """How many executions the upgrade will look at (for a progress bar)."""
    if req.execution_ids is not None:
        return len(req.execution_ids)
    with rt.transaction(write=False) as conn:
        return store_ops.count_upgrade_candidates(
            conn, req.machine_id, req.target.machine.version, req.from_version
        )


def run(rt: Runtime, req: Request) -> Iterator[UpgradeItem]:
    """Upgrade each execution in its own transaction (a dry run reads a batch of
    executions, their tasks and their histories in one read transaction); yields one item
    per execution, in id order, holding one batch at a time."""
    for batch in _batches(rt, req):
        if req.apply:
            for eid in batch:
                yield one(rt, req, eid)
        else:
            yield from _dry_batch(rt, req, batch)


def _dry_batch(rt: Runtime, req: Request, ids: list[str]) -> Iterator[UpgradeItem]:
    """Assess a batch: three reads for all of it, then each execution on its own."""
    try:
        with rt.transaction(write=False) as conn:
            rows = {r.id: r for r in store_ops.executions_by_id(conn, ids)}
            tasks: dict[str, list[Row[Any]]] = {}
            for t in store_ops.tasks_of_many(conn, ids):
                tasks.setdefault(t.execution_id, []).append(t)
            history: dict[str, list[Row[Any]]] = {}
            for h in store_ops.events_of_many(conn, ids):
                history.setdefault(h.execution_id, []).append(h)
    except StatemError as exc:
        log.warning("upgrade dry run of %d executions failed: %s", len(ids), exc)
        for eid in ids:
            yield UpgradeItem(eid, None, None, None, "refused", f"not read: {exc}")
        return
    for eid in ids:
        yield _assess(rt, req, rows.get(eid), eid, tasks.get(eid, []), _given(history.get(eid, [])))[0]


def _given(rows: Sequence[Row[Any]]) -> Callable[[], Sequence[Row[Any]]]:
    """A loader of rows already read."""
    return lambda: rows


def _batches(rt: Runtime, req: Request) -> Iterator[list[str]]:
    if req.execution_ids is not None:
        for i in range(0, len(req.execution_ids), BATCH):
            yield req.execution_ids[i : i + BATCH]
        return
    after = ""
    while True:
        with rt.transaction(write=False) as conn:
            ids = store_ops.upgrade_candidates(
                conn, req.machine_id, req.target.machine.version, req.from_version, after, BATCH
            )
        if not ids:
            return
        yield ids
        after = ids[-1]


def one(rt: Runtime, req: Request, execution_id: str) -> UpgradeItem:
    """Assess or upgrade one execution in one transaction."""
    try:
        with rt.transaction(write=req.apply) as conn:
            row = (
                store.lock_execution(conn, execution_id)
                if req.apply
                else store.get_execution(conn, execution_id)
            )
            tasks = store_ops.tasks_of(conn, execution_id) if row is not None else []
            item, write = _assess(
                rt, req, row, execution_id, tasks, lambda: store_ops.events(conn, execution_id)
            )
            if write is not None and row is not None:
                _write(rt, req, conn, row, write)
            return item
    except StatemError as exc:  # the database failed this one: the others go on
        log.warning("upgrade of %s failed: %s", execution_id, exc)
        return UpgradeItem(execution_id, None, None, None, "refused", f"not upgraded: {exc}")


def _assess(
    rt: Runtime,
    req: Request,
    row: Row[Any] | None,
    execution_id: str,
    task_rows: Sequence[Row[Any]],
    history: Callable[[], Sequence[Row[Any]]],
) -> tuple[UpgradeItem, Plan | None]:
    to_v = req.target.machine.version
    if row is None or row.machine_id != req.machine_id:
        reason = f"no execution {execution_id!r} of machine {req.machine_id!r}"
        return UpgradeItem(execution_id, None, None, None, "refused", reason), None
    if row.status not in UNFINISHED:
        return UpgradeItem(
            execution_id, row.machine_version, row.state, None, "refused", f"it is {row.status}"
        ), None
    if row.machine_version == to_v:
        reason = f"already on version {to_v}"
        return UpgradeItem(execution_id, row.machine_version, row.state, row.state, "skipped", reason), None
    if req.from_version is not None and row.machine_version != req.from_version:
        reason = f"on version {row.machine_version}, not {req.from_version}"
        return UpgradeItem(execution_id, row.machine_version, row.state, None, "skipped", reason), None
    snap = Snapshot(row.id, row.machine_id, row.machine_version, row.state, row.status, row.context)
    tasks = [TaskView(t.id, t.kind, t.status, t.payload) for t in task_rows]
    decided = plan(req, snap, tasks, rt.env)
    verdict: ReplayResult | None = None
    if not req.apply or req.only_if_replays:
        verdict = replay_execution(rt, req, row, tasks, history())

    def item(outcome: Outcome, to_state: str | None, reason: str | None = None) -> UpgradeItem:
        return UpgradeItem(
            row.id, row.machine_version, row.state, to_state, outcome, reason,
            verdict.verdict if verdict is not None else None, verdict.detail if verdict is not None else None,
        )  # fmt: skip

    if isinstance(decided, Refusal):
        return item("refused", decided.to_state, decided.reason), None
    if req.only_if_replays and verdict is not None and verdict.verdict != "same":
        return item("skipped", decided.to_state, f"replay {verdict.verdict.replace('_', ' ')}"), None
    if not req.apply:
        return item("would_upgrade", decided.to_state), None
    return item("upgraded", decided.to_state), decided


def replay_execution(
    rt: Runtime, req: Request, row: Row[Any], tasks: Sequence[TaskView], history: Sequence[Row[Any]]
) -> ReplayResult:
    """The replay check of one execution (``history``: its steps by seq, as
    :func:`statem.store_ops.events` reads them) against the target version."""
    recorded = [RecordedStep(r.seq, r.kind, r.name, r.to_state, r.error, r.event, r.input) for r in history]
    work = [Work(t.kind, t.payload.get("name")) for t in tasks if t.kind in ("timer", "effect", "child")]
    try:
        return replay(
            req.target, row.id, recorded, current_state=row.state, current_work=work, states=req.states,
            env=rt.env, source_version=row.machine_version,
        )  # fmt: skip
    except (StatemError, InvokeFailed, KeyError, TypeError, ValueError) as exc:
        return ReplayResult("not_replayable", f"history could not be replayed: {exc}")


def _write(rt: Runtime, req: Request, conn: Connection, row: Row[Any], p: Plan) -> None:
    """Apply a plan on the locked row: discarded timers, re-pointed work, the upgrade step,
    the new version; a waiting execution left with nothing armed then enters its state."""
    now = rt.clock()
    to_v = req.target.machine.version
    records: list[StepRecord] = []
    for task in store_ops.delete_tasks(conn, p.discarded):
        records.append(_discard_record(task, row.state))
    for task_id, payload in p.kept.items():
        store_ops.set_task_payload(conn, task_id, payload)
    details = {
        "reason": req.reason, "from_version": row.machine_version, "to_version": to_v, "states": req.states,
        "context": req.context_source, "kept": sorted(p.kept), "discarded": sorted(p.discarded),
    }  # fmt: skip
    records.insert(0, StepRecord("upgrade", None, row.state, p.to_state, input=details, context=p.context))
    state, status, context, output = p.to_state, row.status, p.context, row.output
    armed = row.armed
    tasks: list[semantics.TaskSpec] = []
    if row.status == "waiting" and p.left == 0:
        snap = Snapshot(row.id, row.machine_id, to_v, p.to_state, row.status, p.context)
        entered = semantics.enter_state(req.target, snap, p.to_state, {}, rt.env, now, kind=None)
        records += entered.steps
        state, status, context, output = entered.state, entered.status, entered.context, entered.output
        tasks = entered.tasks
        armed = bool(tasks)
    steps.write_in_place(
        rt.metrics, conn, row, records, now, tasks=tasks, state=state, status=status, context=context,
        output=output, armed=armed,
    )  # fmt: skip
    store_ops.set_machine_version(conn, row.id, to_v)


def _discard_record(task: Row[Any], state: str) -> StepRecord:
    payload = task.payload or {}
    return StepRecord(
        "discard", payload.get("name"), state, state,
        output={"task": task.kind, "due_at": task.due_at.isoformat(),
                "armed_at": task.created_at.isoformat()},
        error="the new version has no timer of this name in this state; dropped by the upgrade",
    )  # fmt: skip


def upgrade(
    rt: Runtime,
    machine_id: str,
    to_version: int,
    *,
    from_version: int | None = None,
    states: Mapping[str, str] | None = None,
    context: str | None = None,
    execution_ids: Sequence[str] | None = None,
    apply: bool = False,
    only_if_replays: bool = False,
    reason: str | None = None,
    progress: Callable[[UpgradeItem], None] | None = None,
) -> UpgradeReport:
    """Run an upgrade and collect its report (see :meth:`statem.Engine.upgrade`)."""
    req = request(rt, machine_id, to_version, from_version, states, context, execution_ids, apply,
                  only_if_replays, reason)  # fmt: skip
    report = UpgradeReport()
    for item in run(rt, req):
        report.add(item)
        if progress is not None:
            progress(item)
    return report


def request(
    rt: Runtime,
    machine_id: str,
    to_version: int,
    from_version: int | None,
    states: Mapping[str, str] | None,
    context: str | None,
    execution_ids: Sequence[str] | None,
    apply: bool,
    only_if_replays: bool,
    reason: str | None,
) -> Request:
    """The checked request (MachineNotFound, StateNotFound, ExpressionError, InputError)."""
    if isinstance(to_version, bool) or not isinstance(to_version, int):
        raise InputError(f"upgrade: to_version must be an int, not {to_version!r}")
    target = rt.compiled(machine_id, to_version)
    if from_version is not None:
        rt.compiled(machine_id, from_version)
    return check_request(
        target, from_version=from_version, states=states, context=context, execution_ids=execution_ids,
        apply=apply, only_if_replays=only_if_replays, reason=reason,
    )  # fmt: skip
