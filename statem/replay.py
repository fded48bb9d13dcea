"""The replay check: re-run an execution's recorded events through another machine version.

Pure: no database, no effects, no clock. The events come from history (each chain's first
step records the event that began it, ``statem_steps.event``): the start input, each
trigger's action and input, each timer firing, each effect or child result with ``ok`` and
its output. They are applied, in order, through the target version with
:mod:`statem.semantics`, from its start; an effect or a child is never run: its recorded
result is applied to the invoke the replay has armed. After every chain the replayed state
is compared with the recorded one (through the upgrade's state map, and through the state
maps of earlier upgrades for the steps recorded before them).

Verdicts:

* ``same``: every chain ends in the (mapped) recorded state, the replay ends in the mapped
  current state, with the same armed work (timers, effects, children, by kind and name).
* ``diverges``: the first chain that ends elsewhere, is rejected, or fails on the target;
  ``detail`` says ``"seq 7: version 2 went to 'x', version 1 to 'y'"``.
* ``not_replayable``: history cannot be replayed: a step recorded before events were
  kept, or an operator's ``move`` (it is not an event of the process).

Steps that failed the execution are not replayed (they changed nothing; ``retry`` re-runs
them): for a failed execution the work the failed event belonged to counts as its armed
work. A kept trigger that was rejected (``rejected`` step) must be rejected by the target
too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from . import semantics
from .definition import CompiledMachine
from .errors import StatemError
from .semantics import InvokeFailed, Outcome, Snapshot, TaskSpec

Verdict = Literal["same", "diverges", "not_replayable"]

#: Step kinds that record an event of the process (the first step of a chain).
_EVENT_KINDS = frozenset({"start", "action", "wait", "invoke", "timer", "result", "rejected"})
#: Operator and bookkeeping steps a replay passes over.
_PASSED_OVER = frozenset({"pause", "resume", "discard", "retry", "upgrade", "always"})
#: When replayed events happened (expressions see no clock through this; ``now`` only
#: dates the timers the replay arms, which it never waits for).
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class RecordedStep:
    """One history row as the replay needs it."""

    seq: int
    kind: str
    name: str | None
    to_state: str | None
    error: str | None
    event: Any = None
    input: Any = None


@dataclass(frozen=True)
class Work:
    """A piece of armed work, as compared: its kind (timer, effect, child) and name."""

    kind: str
    name: str | None


@dataclass(frozen=True)
class ReplayResult:
    """The verdict of a replay, with the first differing seq and a one-line detail."""

    verdict: Verdict
    detail: str | None = None
    seq: int | None = None


@dataclass
class _Replay:
    cm: CompiledMachine
    execution_id: str
    env: Mapping[str, Any]
    state: str = ""
    status: str = "running"
    context: dict[str, Any] = field(default_factory=dict)
    armed: list[TaskSpec] = field(default_factory=list)

    def apply(self, outcome: Outcome) -> None:
        self.state, self.status, self.context = outcome.state, outcome.status, outcome.context
        self.armed = list(outcome.tasks)

    def snap(self) -> Snapshot:
        m = self.cm.machine
        return Snapshot(self.execution_id, m.id, m.version, self.state, self.status, self.context)

    def armed_one(self, kinds: tuple[str, ...], name: str | None) -> TaskSpec | None:
        for spec in self.armed:
            if spec.kind in kinds and spec.payload.get("name") == name:
                return spec
        return None

    def work(self) -> list[Work]:
        return sorted((Work(s.kind, s.payload.get("name")) for s in self.armed), key=_work_key)


def _work_key(w: Work) -> tuple[str, str]:
    return (w.kind, w.name or "")


def state_mapper(
    steps: Sequence[RecordedStep], states: Mapping[str, str] | None
) -> Callable[[int, str | None], str | None]:
    """``(seq, recorded state) -> the state name to compare with on the target``: the maps
    of the upgrades recorded after ``seq`` (oldest first), then ``states``."""
    upgrades: list[tuple[int, dict[str, str]]] = []
    for s in steps:
        if s.kind == "upgrade" and isinstance(s.input, dict) and isinstance(s.input.get("states"), dict):
            upgrades.append((s.seq, dict(s.input["states"])))
    final = dict(states or {})

    def mapped(seq: int, state: str | None) -> str | None:
        if state is None:
            return None
        for at, m in upgrades:
            if at > seq:
                state = m.get(state, state)
        return final.get(state, state)

    return mapped


def replay(
    target: CompiledMachine,
    execution_id: str,
    steps: Sequence[RecordedStep],
    *,
    current_state: str,
    current_work: Sequence[Work],
    states: Mapping[str, str] | None = None,
    env: Mapping[str, Any] | None = None,
    source_version: int | None = None,
) -> ReplayResult:
    """Replay ``steps`` (an execution's history, by seq) through ``target`` from its start.

    ``current_state`` and ``current_work`` are where the execution is now and its armed
    work; ``states`` the upgrade's state map (old name -> new name). ``source_version``
    names the recorded side in details (default: the version of the last event).
    """
    r = _Replay(target, execution_id, env or {})
    mapped = state_mapper(steps, states)
    chains = _chains(steps)
    if not chains or chains[0][0].event is None or chains[0][0].kind != "start":
        first = steps[0].seq if steps else None
        return ReplayResult("not_replayable", f"seq {first}: history records no start event", first)
    target_v = target.machine.version
    failed_event: dict[str, Any] | None = None
    for head, end_state in chains:
        if head.kind == "move":
            return ReplayResult("not_replayable", f"seq {head.seq}: moved by an operator", head.seq)
        if not isinstance(head.event, dict):
            detail = f"seq {head.seq}: a {head.kind} step recorded before events were kept"
            return ReplayResult("not_replayable", detail, head.seq)
        event = head.event
        old_v = source_version or event.get("version")
        if head.error is not None and head.kind in ("timer", "result"):
            failed_event = event  # it changed nothing; retry re-runs it
            continue
        failed_event = None
        try:
            outcome = _step(r, head, event)
        except _Rejected as exc:
            if head.kind == "rejected":
                continue
            detail = (
                f"seq {head.seq}: version {target_v} rejects {exc}, version {old_v} went to {end_state!r}"
            )
            return ReplayResult("diverges", detail, head.seq)
        except (StatemError, InvokeFailed) as exc:
            detail = (
                f"seq {head.seq}: version {target_v} fails ({exc}), version {old_v} went to {end_state!r}"
            )
            return ReplayResult("diverges", detail, head.seq)
        if head.kind == "rejected":
            detail = (
                f"seq {head.seq}: version {target_v} takes action {event.get('action')!r} to "
                f"{outcome.state!r}, version {old_v} rejected it"
            )
            return ReplayResult("diverges", detail, head.seq)
        r.apply(outcome)
        expected = mapped(head.seq, end_state)
        if r.state != expected:
            detail = (
                f"seq {head.seq}: version {target_v} went to {r.state!r}, version {old_v} to {expected!r}"
            )
            return ReplayResult("diverges", detail, head.seq)
    last_seq = steps[-1].seq
    now_expected = mapped(last_seq + 1, current_state)
    if r.state != now_expected:
        detail = f"end: version {target_v} is in {r.state!r}, the execution in {now_expected!r}"
        return ReplayResult("diverges", detail, last_seq)
    want = sorted(current_work, key=_work_key)
    if failed_event is not None:
        kind = "timer" if failed_event.get("type") == "timer" else _invoke_kind(failed_event)
        want = sorted([*want, Work(kind, failed_event.get("name"))], key=_work_key)
    got = r.work()
    if got != want:
        detail = f"end: version {target_v} has {_show(got)} armed, the execution {_show(want)}"
        return ReplayResult("diverges", detail, last_seq)
    return ReplayResult("same")


class _Rejected(Exception):
    """The target does not take the recorded action (or has no matching armed work)."""


def _invoke_kind(event: Mapping[str, Any]) -> str:
    payload = (event.get("task") or {}).get("payload") or {}
    return "child" if "machine" in payload else "effect"


def _show(work: Sequence[Work]) -> str:
    return "[" + ", ".join(f"{w.kind} {w.name!r}" for w in work) + "]" if work else "nothing"


def _step(r: _Replay, head: RecordedStep, event: Mapping[str, Any]) -> Outcome:
    kind = event.get("type")
    if kind == "start":
        return semantics.start(r.cm, r.execution_id, event.get("input"), r.env, _EPOCH)
    if kind == "action":
        from .errors import ActionNotAllowed

        try:
            return semantics.action(r.cm, r.snap(), str(event["action"]), event.get("input"), r.env, _EPOCH)
        except ActionNotAllowed as exc:
            raise _Rejected(f"action {event['action']!r} ({exc.reason})") from None
    if kind == "timer":
        spec = r.armed_one(("timer",), event.get("name"))
        if spec is None:
            raise _Rejected(f"the timer {event.get('name')!r} (it has {_show(r.work())} armed)")
        return semantics.fire_timer(r.cm, r.snap(), spec.payload, r.env, _EPOCH)
    if kind == "result":
        spec = r.armed_one(("effect", "child"), event.get("name"))
        if spec is None:
            raise _Rejected(f"the result of {event.get('name')!r} (it has {_show(r.work())} armed)")
        return semantics.apply_result(
            r.cm, r.snap(), spec.payload, bool(event.get("ok")), event.get("output"), r.env, _EPOCH
        )
    raise StatemError(f"unknown event type {kind!r}")


def _chains(steps: Sequence[RecordedStep]) -> list[tuple[RecordedStep, str | None]]:
    """(the step that began each chain, the state the chain ended in)."""
    chains: list[tuple[RecordedStep, str | None]] = []
    head: RecordedStep | None = None
    end: str | None = None
    for s in steps:
        begins = s.kind == "move" or (
            s.kind in _EVENT_KINDS and (s.event is not None or _legacy_head(s, head))
        )
        if begins:
            if head is not None:
                chains.append((head, end))
            head, end = s, s.to_state
            continue
        if s.kind in _PASSED_OVER and s.kind != "always":
            continue
        if head is not None and s.to_state is not None:
            end = s.to_state
    if head is not None:
        chains.append((head, end))
    return chains


def _legacy_head(s: RecordedStep, head: RecordedStep | None) -> bool:
    """A step recorded before events were kept that must have begun a chain."""
    return s.kind in ("start", "action", "timer", "result") or head is None


def versions_of(steps: Sequence[Any], current_version: int) -> list[int]:
    """The machine version each step of a history was recorded on (``steps``: records with
    ``kind`` and ``input``, by seq): the ``from_version`` of the first upgrade before it,
    switching to each upgrade's ``to_version`` from that upgrade step on."""
    upgrades = [s for s in steps if s.kind == "upgrade" and isinstance(s.input, dict)]
    version = int(upgrades[0].input.get("from_version", current_version)) if upgrades else current_version
    out: list[int] = []
    for s in steps:
        if s.kind == "upgrade" and isinstance(s.input, dict):
            version = int(s.input.get("to_version", version))
        out.append(version)
    return out


def path_on_version(steps: Sequence[Any], current_version: int, version: int) -> list[Any]:
    """The steps of a history to draw on ``version``: on the current version, every step,
    the states recorded before an upgrade renamed through its state map (the upgrade step
    itself is left out: it follows no edge of the machine); on an older one, the steps
    recorded while the execution was on it."""
    import dataclasses

    versions = versions_of(steps, current_version)
    if version != current_version:
        return [s for s, v in zip(steps, versions, strict=True) if v == version and s.kind != "upgrade"]
    records = [RecordedStep(s.seq, s.kind, s.name, s.to_state, None, None, s.input) for s in steps]
    mapped = state_mapper(records, None)
    out = []
    for s in steps:
        if s.kind == "upgrade":
            continue
        out.append(
            dataclasses.replace(s, from_state=mapped(s.seq, s.from_state), to_state=mapped(s.seq, s.to_state))
        )
    return out
