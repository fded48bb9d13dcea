"""The expression sandbox: escape attempts fail fast and harmlessly; the documented syntax works."""

from __future__ import annotations

import os
import socket
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statem.errors import ExpressionError
from statem.expressions import HELPERS, LIMITS, compile_expression

from .escapes import ESCAPES

BINDINGS: dict[str, Any] = {
    "ctx": {"n": 2, "order": {"id": "R1", "line_items": ["a", "b"]}, "l": [3, 1, 2]},
    "input": {"qty": 3},
    "output": {"status": 200},
    "state": "cart",
    "execution": {"id": "e1", "machine": "order", "version": 1},
    "env": {"url": "http://x"},
}
BINDINGS["context"] = BINDINGS["ctx"]


def evaluate(src: str, **extra: Any) -> Any:
    return compile_expression(src, "test.path").evaluate({**BINDINGS, **extra})


@pytest.fixture
def no_side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Run in an empty directory and record every attempt to open a network connection."""
    monkeypatch.chdir(tmp_path)
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def spy(self: socket.socket, address: Any) -> Any:
        attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    yield attempts
    assert os.listdir(tmp_path) == [], "an expression created a file"
    assert attempts == [], "an expression opened a network connection"


def test_there_are_enough_escape_patterns() -> None:
    assert len(ESCAPES) >= 50
    assert len(set(ESCAPES)) == len(ESCAPES)


#: Memory an evaluation may use beyond the values it is charged for (interpreter frames,
#: the compiled tree, the meter's bookkeeping, tracemalloc's own tables).
MEMORY_SLACK = 16_000_000


@pytest.mark.parametrize("src", ESCAPES, ids=[f"{i:03d}" for i in range(len(ESCAPES))])
def test_escape_attempt_is_rejected_quickly(src: str, no_side_effects: list[Any]) -> None:
    """Each abuse ends in ExpressionError within the documented time and memory bounds."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ExpressionError) as info:
            evaluate(src)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The deadline is LIMITS.seconds; the grace covers a loaded machine and tracemalloc's
    # slowdown (it makes allocation-heavy code several times slower), not unbounded work.
    assert elapsed < LIMITS.seconds + 1.5, f"took {elapsed:.2f}s"
    assert peak < LIMITS.memory_bytes + MEMORY_SLACK, f"peak {peak / 1e6:.1f} MB"
    assert len(str(info.value)) < len(src) + 1_000, "the message renders a value in full"
    assert info.value.path == "test.path"
    assert evaluate("ctx['n'] + 1") == 3  # the sandbox is still healthy afterwards


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("1 + 2 * 3 - 4 / 2", 5.0),
        ("7 // 2, 7 % 2, -7, +7, 2 ** 10", [3, 1, -7, 7, 1024]),
        ("'a' + 'b' * 3", "abbb"),
        ("[1, 'x', None, True, 1.5]", [1, "x", None, True, 1.5]),
        ("{**ctx['order'], 'id': 'R2'}", {"id": "R2", "line_items": ["a", "b"]}),
        ("{'x': 1, **input, 'qty': 9}", {"x": 1, "qty": 9}),
        ("{**{'a': 1}, **{'b': 2}}", {"a": 1, "b": 2}),
        ("ctx['order']['line_items'][-1]", "b"),
        ("ctx['l'][1:]", [1, 2]),
        ("ctx['l'][::-1]", [2, 1, 3]),
        ("1 < ctx['n'] <= 2", True),
        ("ctx['n'] == 2 and not False or None", True),
        ("'big' if ctx['n'] > 1 else 'small'", "big"),
        ("[x * 2 for x in ctx['l'] if x > 1]", [6, 4]),
        ("{k: len(v) for k, v in ctx['order'].items()}", {"id": 2, "line_items": 2}),
        ("sorted({x % 2 for x in ctx['l']})", [0, 1]),
        ("[(a, b) for a in [1, 2] for b in 'xy']", [[1, "x"], [1, "y"], [2, "x"], [2, "y"]]),
        ("sum(x for x in ctx['l'])", 6),
        ("f\"{ctx['order']['id']}-{input['qty']:03d}\"", "R1-003"),
        ("'a' in ctx['order']['line_items'] and 'z' not in ctx['order']['line_items']", True),
        ("ctx['order'] is not None", True),
        ("input.get('missing', 'default')", "default"),
        ("'-'.join(ctx['order']['line_items']).upper()", "A-B"),
        ("'a,b'.split(',')", ["a", "b"]),
        ("len(ctx['l']), min(ctx['l']), max(ctx['l']), sorted(ctx['l'])", [3, 1, 3, [1, 2, 3]]),
        ("sum([1, 2]), abs(-1), round(2.567, 2), any([0, 1]), all([1, 0])", [3, 1, 2.57, True, False]),
        (
            "str(5), int('7'), float('1.5'), bool(0), dict(a=1), list('ab')",
            ["5", 7, 1.5, False, {"a": 1}, ["a", "b"]],
        ),
        ("list(range(3)), list(range(1, 7, 2))", [[0, 1, 2], [1, 3, 5]]),
        ("get_in(ctx, ['order', 'line_items', 0]), get_in(ctx, ['nope', 1], 'd')", ["a", "d"]),
        ("merge(ctx['order'], {'id': 'R9'}, {'x': 1})", {"id": "R9", "line_items": ["a", "b"], "x": 1}),
        ("state, execution['machine'], env['url'], output['status']", ["cart", "order", "http://x", 200]),
        ("context is ctx", True),
    ],
)
def test_supported_syntax(src: str, expected: Any) -> None:
    assert evaluate(src) == expected


def test_now_is_an_iso_utc_timestamp() -> None:
    import datetime as dt

    value = evaluate("now()")
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None and abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 5


def test_every_helper_is_documented_and_bound() -> None:
    assert set(HELPERS) >= {
        "len",
        "min",
        "max",
        "sorted",
        "sum",
        "str",
        "int",
        "float",
        "bool",
        "dict",
        "list",
        "now",
        "get_in",
        "merge",
    }
    for name in HELPERS:
        assert compile_expression(name) is not None  # a bound name, not "not defined"


def test_errors_name_the_expression_path_and_cause() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("ctx['a'] +", "states.cart.actions.add.context.order")
    assert info.value.path == "states.cart.actions.add.context.order"
    assert "invalid syntax" in str(info.value) and "ctx['a'] +" in str(info.value)
    with pytest.raises(ExpressionError, match=r"KeyError: 'nope'.*at test\.path"):
        evaluate("ctx['nope']")
    with pytest.raises(ExpressionError, match="name 'y' is not defined"):
        evaluate("y + 1")


def test_bindings_are_not_mutated() -> None:
    before = repr(BINDINGS)
    evaluate("{**ctx, 'n': 99}")
    evaluate("sorted(ctx['l'])")
    evaluate("[x for x in ctx['l']]")
    with pytest.raises(ExpressionError):
        evaluate("ctx['l'].append(4)")
    with pytest.raises(ExpressionError):
        evaluate("ctx.update({'n': 1})")
    assert repr(BINDINGS) == before


def test_results_are_fresh_json_copies() -> None:
    result = evaluate("ctx['order']")
    assert result == BINDINGS["ctx"]["order"] and result is not BINDINGS["ctx"]["order"]
    assert evaluate("(1, 2)") == [1, 2]


def test_interpreters_do_not_leak_between_evaluations() -> None:
    evaluate("[leak for leak in [1]]")
    with pytest.raises(ExpressionError, match="not defined"):
        evaluate("leak")


SAFE_EXPRS = st.recursive(
    st.integers(-50, 50).map(str) | st.sampled_from(["ctx['n']", "input['qty']", "len(ctx['l'])"]),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "//", "%", "<", "==", "and", "or"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.tuples(inner, inner).map(lambda t: f"{{'a': {t[0]}, 'b': {t[1]}}}"),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(SAFE_EXPRS)
def test_matches_python_on_the_safe_subset(src: str) -> None:
    names = dict(BINDINGS)
    try:
        expected: Any = eval(src, {"__builtins__": {"len": len}}, names)  # trusted, generated input
    except (ZeroDivisionError, TypeError) as exc:
        with pytest.raises(ExpressionError, match=type(exc).__name__):
            evaluate(src)
        return
    assert evaluate(src) == expected


def test_a_worker_survives_hostile_expressions(sqlite_engine: Any) -> None:
    """Expressions that are only evaluated by the executor fail their execution, not the worker."""
    from statem import WorkerSettings

    def compiles(src: str) -> bool:
        try:
            compile_expression(src)
        except ExpressionError:
            return False
        return True

    heavy = [e for e in ESCAPES if ("10**" in e or "range(" in e or "100000" in e) and compiles(e)][:12]
    assert len(heavy) == 12
    ids = []
    for i, src in enumerate(heavy):
        sqlite_engine.save_machine(
            {"id": f"hostile{i}", "version": 1, "start_at": "a", "states": {
                "a": {"always": [{"state": "b", "wait_for": {"seconds": 0}}]},
                "b": {"always": [{"state": "c", "context": {"x": src}}]},
                "c": {"end": True}}}
        )  # fmt: skip
        ids.append(sqlite_engine.start(f"hostile{i}").id)
    sqlite_engine.save_machine(
        {"id": "fine", "version": 1, "start_at": "a", "states": {
            "a": {"always": [{"state": "b", "wait_for": {"seconds": 0}}]}, "b": {"end": True}}}
    )  # fmt: skip
    with sqlite_engine.worker(WorkerSettings(concurrency=2, poll_seconds=0.2)):
        for eid in ids:
            ex = sqlite_engine.wait(eid, timeout=30)
            assert ex.status == "failed" and ex.state == "a", (ex.state, ex.error)
        assert sqlite_engine.wait(sqlite_engine.start("fine").id, timeout=10).status == "finished"
