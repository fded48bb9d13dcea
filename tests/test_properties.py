"""Property-based: random machines and trigger sequences against an in-memory reference model.

The reference below re-implements the step rules of DESIGN.md section 1 in plain Python
(guards and updates are Python lambdas mirroring the expression strings), independently of
statem's code. For every generated machine and sequence of triggers, the engine's state,
context, status, output and errors must match the reference after every call.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statem import ActionNotAllowed, Engine, LoopError
from statem.settings import MAX_ALWAYS_CHAIN

Guard = tuple[int, int] | None  # n % m == r, or always true
Update = tuple[str, int] | None  # ("add", k) | ("mul", k) | None


def guard_src(g: Guard) -> str | None:
    return None if g is None else f"ctx['n'] % {g[0]} == {g[1]}"


def guard_fn(g: Guard) -> Callable[[int], bool]:
    return (lambda n: True) if g is None else (lambda n, m=g[0], r=g[1]: n % m == r)


def update_src(u: Update) -> dict[str, str] | None:
    if u is None:
        return None
    op, k = u
    return {
        "n": f"(ctx['n'] + {k}) % 1000" if op == "add" else f"(ctx['n'] * {k}) % 1000",
        "hops": "ctx['hops'] + 1",
    }


def update_fn(u: Update, n: int) -> int:
    if u is None:
        return n
    op, k = u
    return (n + k) % 1000 if op == "add" else (n * k) % 1000


@dataclass
class T:
    """A generated transition."""

    target: int | None
    guard: Guard
    update: Update


@dataclass
class S:
    """A generated state."""

    final: bool
    always: list[T] = field(default_factory=list)
    actions: dict[str, T] = field(default_factory=dict)


guards = st.one_of(
    st.none(), st.tuples(st.integers(2, 4), st.integers(0, 3)).map(lambda t: (t[0], t[1] % t[0]))
)
updates = st.one_of(st.none(), st.tuples(st.sampled_from(["add", "mul"]), st.integers(1, 7)))


@st.composite
def machines(draw: st.DrawFn) -> list[S]:
    count = draw(st.integers(2, 5))
    targets = st.one_of(st.none(), st.integers(0, count - 1))
    trans = st.builds(T, targets, guards, updates)
    states = []
    for i in range(count):
        final = i > 0 and draw(st.booleans()) and draw(st.booleans())
        if final:
            states.append(S(True))
            continue
        always = draw(st.lists(trans, max_size=2))
        names = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True))
        states.append(S(False, always, {n: draw(trans) for n in names}))
    return states


def reachable(states: list[S]) -> set[int]:
    seen, todo = {0}, [0]
    while todo:
        here = todo.pop()
        s = states[here]
        for t in [*s.always, *s.actions.values()]:
            nxt = t.target if t.target is not None else here
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def to_definition(states: list[S], keep: set[int]) -> dict[str, Any]:
    def tdef(t: T) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if t.target is not None:
            d["state"] = f"s{t.target}"
        if (g := guard_src(t.guard)) is not None:
            d["when"] = g
        if (u := update_src(t.update)) is not None:
            d["context"] = u
        return d

    out: dict[str, Any] = {}
    for i, s in enumerate(states):
        if i not in keep:
            continue
        if s.final:
            out[f"s{i}"] = {"end": True, "return": "ctx['n']"}
        else:
            out[f"s{i}"] = {
                "always": [tdef(t) for t in s.always],
                "actions": {k: tdef(t) for k, t in s.actions.items()},
            }
    return {
        "id": "prop",
        "version": 1,
        "start_at": "s0",
        "context": {"n": "input.get('n', 0)", "hops": "0"},
        "states": out,
    }


class Reference:
    """The step rules, re-implemented."""

    def __init__(self, states: list[S], n: int) -> None:
        self.states = states
        self.state, self.n, self.hops = 0, n, 0
        self.status, self.output = "running", None

    def settle(self) -> None:
        steps = 0
        while True:
            s = self.states[self.state]
            if s.final:
                self.status, self.output = "finished", self.n
                return
            for t in s.always:
                if guard_fn(t.guard)(self.n):
                    if steps >= MAX_ALWAYS_CHAIN:
                        raise LoopError("loop")
                    steps += 1
                    self.take(t)
                    break
            else:
                self.status = "waiting"
                return

    def take(self, t: T) -> None:
        if t.update is not None:
            self.n, self.hops = update_fn(t.update, self.n), self.hops + 1
        if t.target is not None:
            self.state = t.target

    def trigger(self, action: str) -> None:
        if self.status != "waiting":
            raise ActionNotAllowed("x", action, "", [], "final")
        t = self.states[self.state].actions.get(action)
        if t is None or not guard_fn(t.guard)(self.n):
            raise ActionNotAllowed("x", action, "", [], "no")
        self.take(t)
        self.settle()

    def snapshot(self) -> tuple[Any, ...]:
        return (f"s{self.state}", self.status, {"n": self.n, "hops": self.hops}, self.output)


def _attempt(fn: Callable[[], Any]) -> tuple[str | None, Any]:
    try:
        return None, fn()
    except (ActionNotAllowed, LoopError) as exc:
        return type(exc).__name__, None


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    states=machines(), n=st.integers(0, 50), actions=st.lists(st.sampled_from(["a", "b", "c"]), max_size=8)
)
def test_engine_matches_reference(
    sqlite_engine: Engine, tmp_path: Path, states: list[S], n: int, actions: list[str]
) -> None:
    keep = reachable(states)
    engine = sqlite_engine
    definition = to_definition(states, keep)
    version = len(engine.machines()) + 1
    definition["version"] = version
    engine.save_machine(definition)

    ref = Reference(states, n)
    ref_err, _ = _attempt(ref.settle)
    err, ex = _attempt(lambda: engine.start("prop", {"n": n}, version=version))
    assert err == ref_err
    if err is not None:
        return
    assert (ex.state, ex.status, ex.context, ex.output) == ref.snapshot()
    for action in actions:
        before = ref.snapshot()
        ref_err, _ = _attempt(lambda a=action: ref.trigger(a))
        if ref_err is not None:  # a rejected trigger changes nothing, in the reference too
            ref.state, ref.status = int(before[0][1:]), before[1]
            ref.n, ref.hops, ref.output = before[2]["n"], before[2]["hops"], before[3]
        err, _ = _attempt(lambda a=action: engine.trigger(ex.id, a))
        assert err == ref_err, (action, before)
        stored = engine.get(ex.id)
        assert (stored.state, stored.status, stored.context, stored.output) == ref.snapshot()
    history = engine.history(ex.id)
    assert [s.seq for s in history] == list(range(1, len(history) + 1))


# --------------------------------------------------------------------------- sync == async


#: how many times ``flaky`` has been called per idempotency key (one key per effect task)
_FLAKY_CALLS: dict[str, int] = {}

#: the child machine some chain states invoke: one call of ``flaky`` (retried), then an
#: end; its error branch divides by zero, so the child fails and its parent takes the
#: invoke's error branch
KID: dict[str, Any] = {"id": "kid", "version": 1, "start_at": "k0",
    "context": {"n": "input['n']"},
    "states": {
        "k0": {"always": [{"name": "kcall", "invoke": {
            "effect": "flaky", "input": "{'i': 7, 'n': ctx['n']}",
            "retry": {"max_attempts": 2, "initial_seconds": 0},
            "success": {"state": "k1", "context": {"n": "output"}},
            "error": {"state": "k1", "context": {"n": "ctx['n'] // 0"}},
        }}]},
        "k1": {"end": True, "return": "ctx['n']"},
    }}  # fmt: skip


@st.composite
def effect_chains(draw: st.DrawFn) -> dict[str, Any]:
    """States s0..s{k}: each invokes ``fx``, ``flaky`` (with retries) or the child machine
    ``kid`` and moves forward on success or on error (so every run ends), updating the
    context from the result; some states are final."""
    count = draw(st.integers(2, 6))
    states: dict[str, Any] = {}
    for i in range(count - 1):
        if i > 0 and draw(st.integers(0, 4)) == 0:
            states[f"s{i}"] = {"end": True, "return": "ctx"}
            continue
        ok, bad = draw(st.integers(i + 1, count - 1)), draw(st.integers(i + 1, count - 1))
        what = draw(st.sampled_from(["fx", "flaky", "kid"]))
        invoke: dict[str, Any] = (
            {"machine": "kid", "input": "{'n': ctx['n']}"}
            if what == "kid"
            else {"effect": what, "input": f"{{'i': {i}, 'n': ctx['n']}}"}
        )
        if what == "flaky":
            invoke["retry"] = {"max_attempts": draw(st.integers(1, 3)), "initial_seconds": 0}
        states[f"s{i}"] = {"always": [{"name": f"call{i}", "invoke": {
            **invoke,
            "success": {"state": f"s{ok}", "context": {"n": "output", "trail": f"ctx['trail'] + [{i}]"}},
            "error": {"state": f"s{bad}", "context": {"trail": f"ctx['trail'] + [-{i}]"}},
        }}]}  # fmt: skip
    states[f"s{count - 1}"] = {"end": True, "return": "ctx"}
    keep = _forward_reachable(states)
    return {"id": "chain", "version": 1, "start_at": "s0",
            "context": {"n": "input['n']", "trail": "[]"},
            "states": {k: v for k, v in states.items() if k in keep}}  # fmt: skip


def _forward_reachable(states: dict[str, Any]) -> set[str]:
    seen, todo = {"s0"}, ["s0"]
    while todo:
        for t in states[todo.pop()].get("always", []):
            for branch in ("success", "error"):
                nxt = t["invoke"][branch]["state"]
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    return seen


def fx(input: Any, *, idempotency_key: str) -> Any:
    """Deterministic: fails on a third of its inputs, else a number made from them."""
    if (input["n"] + input["i"]) % 3 == 0:
        raise ValueError("no")
    return (input["n"] * 2 + input["i"]) % 100


def flaky(input: Any, *, idempotency_key: str) -> Any:
    """Fails its first ``(n + i) % 4`` calls for one task (so its retries matter), then
    answers as ``fx`` does when it succeeds."""
    calls = _FLAKY_CALLS[idempotency_key] = _FLAKY_CALLS.get(idempotency_key, 0) + 1
    if calls <= (input["n"] + input["i"]) % 4:
        raise ValueError(f"flaky call {calls}")
    return (input["n"] * 2 + input["i"]) % 100


def _tree(engine: Engine, execution_id: str) -> list[Any]:
    """An execution and its children, depth first: end state and the whole history."""
    done = engine.get(execution_id)
    steps = [(s.seq, s.kind, s.name, s.from_state, s.to_state, s.output, s.context, s.error)
             for s in engine.history(execution_id)]  # fmt: skip
    out: list[Any] = [(done.id, done.state, done.status, done.context, done.output, done.error, steps)]
    for child in sorted(engine.executions(parent_id=execution_id), key=lambda c: c.id):
        out += _tree(engine, child.id)
    return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(definition=effect_chains(), n=st.integers(0, 99), kid_mode=st.sampled_from(["same", "async"]))
def test_sync_runs_match_worker_runs(
    tmp_path: Path, definition: dict[str, Any], n: int, kid_mode: str
) -> None:
    """An execution its caller runs inline (``execution_mode: sync``, the fast path) ends
    exactly as the same machine run by the executor: same state, context and output, and
    the same history, step by step, its children's (sync or async) and effect retries
    included."""
    from statem.testing import FakeClock, run_until_idle

    runs = []
    for mode in ("sync", "async"):
        _FLAKY_CALLS.clear()  # both runs use the same keys: each starts counting afresh
        engine = Engine(f"sqlite:///{tmp_path / f'{mode}-{uuid.uuid4().hex}.db'}", clock=FakeClock())
        try:
            engine.migrate()
            engine.effects.register("fx", fx)
            engine.effects.register("flaky", flaky)
            engine.save_machine({**KID, "execution_mode": mode if kid_mode == "same" else "async"})
            engine.save_machine({**definition, "execution_mode": mode})
            ex = engine.start("chain", {"n": n}, execution_id="e")
            assert ex == engine.get(ex.id)  # what start() returned is what was committed
            ran = run_until_idle(engine)
            tree = _tree(engine, ex.id)
            runs.append(tree)
            retried = any(step[1] == "retry" for node in tree for step in node[-1])
            if mode == "sync" and kid_mode == "same" and not retried:
                assert ran == 0  # the caller ran everything: nothing was left for workers
        finally:
            engine.close()
    assert runs[0] == runs[1]
    assert runs[0][0][2] == "finished"
