"""The expression sandbox: escape attempts fail fast and harmlessly; the documented syntax works."""

from __future__ import annotations

import os
import re
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
    """Each abuse ends in ExpressionError within the documented time and memory bounds.

    Refused at save time (compile_expression), or else by the evaluation, whose wall time
    and peak memory (tracemalloc) are measured.
    """
    try:
        expr = compile_expression(src, "test.path")
    except ExpressionError as exc:
        assert exc.path == "test.path"
        return
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ExpressionError) as info:
            expr.evaluate({**BINDINGS})
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


# ---------------------------------------------------------------------- issue 10, item 12


def test_an_error_never_renders_a_huge_value() -> None:
    """A KeyError's message is the repr of its key: bounded, whatever the key."""
    from statem.bounds import describe

    shared = ("x" * 1_000_000,) * 100_000  # 100 GB once rendered in full
    text = describe(KeyError(shared))
    assert text.startswith("KeyError: ('xxx") and len(text) < 1_000
    with pytest.raises(ExpressionError) as info:
        evaluate("ctx['k' * 1000000]")
    assert str(info.value).startswith("KeyError: 'kkk") and len(str(info.value)) < 1_000
    with pytest.raises(ExpressionError, match=r"ValueError: index\(\): 'zzz.*\.\.\..* is not in list"):
        evaluate("ctx['l'].index('z' * 1000000)")


def test_an_f_string_is_bounded_as_a_whole() -> None:
    """Each piece fits the string limit; the joined string must too (item 12)."""
    assert evaluate("len(f\"{'x' * 500000}{'y' * 500000}\")") == LIMITS.string_chars
    with pytest.raises(ExpressionError, match="f-string would build more than 1000000 characters"):
        evaluate("f\"{'x' * 500000}{'y' * 500001}\"")


# ---------------------------------------------------------------------- issue 10, item 13


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("ctx['a'] +", "invalid syntax at the end of line 1"),
        ("(ctx['a']", "invalid syntax at line 1, column 1: '(' was never closed"),
        ("ctx['a'] = 1", "invalid syntax at line 1, column 10"),
        ("ctx['a'] +\n 1 +", "invalid syntax at line 1, column 11"),
        ("[1, 2", "invalid syntax at line 1, column 1: '[' was never closed"),
    ],
)
def test_a_syntax_error_says_where_and_why(src: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(src, "states.cart.when")
    assert info.value.reason.startswith(reason), info.value.reason
    assert "invalid syntax: invalid syntax" not in str(info.value)
    assert info.value.path == "states.cart.when" and info.value.expression == src


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("open('/etc/passwd')", "open() cannot be called"),
        ("eval('1')", "eval() cannot be called"),
        ("ctx.clear()", "method 'clear' cannot be called"),
        ("ctx['f']()", "ctx['f'] cannot be called"),
        ("(lambda: 1)()", "lambda is not allowed"),
    ],
)
def test_a_forbidden_call_names_the_function(src: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(src, "p")
    assert reason in info.value.reason


@pytest.mark.parametrize(
    "src", ["'%s' % ctx['n']", "'%d items' % len(ctx['l'])", "f'{ctx}' % 1", "('a' + '%s') % 1", "str(1) % 2"]
)
def test_percent_formatting_is_refused_at_validation(src: str) -> None:
    """It used to pass validation and fail only when run."""
    from statem.definition import load_definition
    from statem.errors import DefinitionError

    with pytest.raises(ExpressionError, match="%-formatting of strings is not allowed; use an f-string"):
        compile_expression(src, "p")
    machine = {"id": "m", "version": 1, "start_at": "a", "states": {"a": {"end": True, "return": src}}}
    with pytest.raises(DefinitionError) as info:
        load_definition(machine)
    [(path, message)] = info.value.problems
    assert path == "states.a.return"
    assert message.startswith("expression is not allowed: %-formatting") and repr(src) in message
    assert evaluate("7 % 3") == 1  # the arithmetic operator stays


# ---------------------------------------------------------------------- issue 10, item 14


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("int('f' * 1000000, 16) // int('f' * 500000, 16)", "int() of a 1000000-character string"),
        ("int('f' * 1025, 16)", "exceeds 4096 bits"),
        ("int('f' * 1100, 16)", "int() of a 1100-character string would exceed 4096 bits"),
        ("('a ' * 500000).split()", "split() would build more than 100000 items"),
        ("('a,' * 100000).split(',')", "split() would build more than 100000 items"),
        ("list('x' * 100001)", "list() would build 100001 items; the limit is 100000"),
        ("sorted('x' * 100001)", "sorted() would build 100001 items"),
        ("sorted(['x' * 1000000, 'x' * 999999 + 'y'] * 50000)", "units of work"),
        ("['x' * 1000000] * 100 == ['x' * 999999 + 'x'] * 100", "units of work"),
        ("[[0] * 100000 for i in range(1000)]", "allocates more than 32000000 bytes"),
        ("[list(range(100000)) for i in range(100)]", "allocates more than"),
        ("ctx['n'] * 2 ** 4000 * 2 ** 100", "product exceeds 4096 bits"),
    ],
)
def test_heavy_work_is_refused_before_it_runs(src: str, reason: str) -> None:
    """Priced from operand sizes before the operation, not interrupted after it (item 14)."""
    with pytest.raises(ExpressionError) as info:
        evaluate(src)
    assert reason in info.value.reason, info.value.reason


@pytest.mark.parametrize(
    ("src", "size"),
    [
        ("['x' * 1000000][0][::1000]", LIMITS.string_chars // 1000),
        ("list(range(100000))[::10]", LIMITS.range_items // 10),
        ("('a,' * 99999 + 'a').split(',')[::10]", LIMITS.sequence_items // 10),
        ("sorted(list(range(100000)), key=str)[::10]", LIMITS.sequence_items // 10),
        ("str(int('f' * 1024, 16))", len(str(2**4096 - 1))),
        ("([0] * 100000 + [])[::10]", LIMITS.sequence_items // 10),
    ],
)
def test_values_at_the_documented_limits_are_allowed(src: str, size: int) -> None:
    assert len(evaluate(src)) == size


def test_the_meter_is_fresh_for_each_evaluation() -> None:
    """Budgets are per evaluation: many heavy-but-allowed evaluations in a row all succeed."""
    for _ in range(20):
        assert evaluate("len(sorted(list(range(100000))))") == 100_000


# ---------------------------------------------------------------------- isolated evaluation


@pytest.fixture(scope="module")
def isolated() -> Iterator[Any]:
    """IsolatedExpression; this thread's child process is shared by the tests, killed at the end."""
    from statem import isolation

    yield isolation.IsolatedExpression
    child = getattr(isolation._local, "child", None)
    if child is not None:
        child.kill()
        isolation._local.child = None


def run_isolated(isolated: Any, src: str) -> Any:
    return isolated.of(compile_expression(src, "test.path")).evaluate(BINDINGS)


def test_isolated_evaluation_gives_the_same_results_and_errors(isolated: Any) -> None:
    for src in ["ctx['n'] + 1", "{**ctx['order'], 'id': 'R2'}", "sorted(ctx['l'])", "f\"{ctx['n']:03d}\""]:
        assert run_isolated(isolated, src) == evaluate(src)
    for src in ["ctx['nope']", "'a' * 10**10", "int('f' * 2000, 16)", "('a ' * 500000).split()"]:
        with pytest.raises(ExpressionError) as inline:
            evaluate(src)
        with pytest.raises(ExpressionError) as far:
            run_isolated(isolated, src)
        assert far.value.path == "test.path" and far.value.expression == src
        assert far.value.reason.split(" ")[0] == inline.value.reason.split(" ")[0]


def test_the_isolated_process_runs_under_cpu_and_memory_limits(isolated: Any) -> None:
    from statem import isolation

    run_isolated(isolated, "1")
    pid = isolation._local.child.proc.pid
    assert pid != os.getpid()
    limits = Path(f"/proc/{pid}/limits").read_text()
    address = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    cpu = next(line for line in limits.splitlines() if line.startswith("Max cpu time"))
    assert address.split()[3] == str(isolation.ADDRESS_SPACE_BYTES)
    assert cpu.split()[3] != "unlimited"  # renewed before each evaluation


def test_a_killed_isolated_process_fails_the_evaluation_and_is_replaced(isolated: Any) -> None:
    import signal
    import threading

    from statem import isolation

    run_isolated(isolated, "1")
    pid = isolation._local.child.proc.pid
    # an evaluation that runs for its whole 1 s deadline (10,000 str() calls and a sort)
    threading.Timer(0.1, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(
        ExpressionError, match="isolated evaluation failed: its process was killed by SIGKILL"
    ):
        run_isolated(isolated, "sorted([[str(i)] * 100 for i in range(10000)], key=str)")
    assert run_isolated(isolated, "ctx['n'] + 1") == 3  # a new child
    assert isolation._local.child.proc.pid != pid


def test_a_hung_isolated_process_is_killed_at_the_deadline(
    isolated: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the child stops answering (here: SIGSTOP), the parent kills it and fails the evaluation."""
    import signal

    from statem import isolation

    monkeypatch.setattr(isolation, "GRACE_SECONDS", 0.3)
    run_isolated(isolated, "1")
    child = isolation._local.child
    os.kill(child.proc.pid, signal.SIGSTOP)
    with pytest.raises(ExpressionError, match=r"ran longer than \S+ and was killed"):
        run_isolated(isolated, "ctx['n']")
    assert child.proc.poll() is not None  # killed, not left behind


def test_an_engine_can_isolate_expressions(db_url: str, isolated: Any) -> None:
    from statem import Engine, isolation

    engine = Engine(db_url, isolate_expressions=True)
    try:
        engine.save_machine(
            {"id": "iso", "version": 1, "start_at": "a", "context": {"n": "input['n'] * 2"},
             "states": {"a": {"actions": {"go": {"state": "b", "when": "ctx['n'] > 2"}}}, "b": {"end": True,
                        "return": "{'n': ctx['n']}"}}}
        )  # fmt: skip
        ex = engine.start("iso", {"n": 3})
        assert ex.context == {"n": 6}
        assert isolation._local.child.alive()  # the expressions ran in the child
        assert engine.trigger(ex.id, "go").status == "finished"
        with pytest.raises(ExpressionError, match="KeyError: 'n'"):
            engine.start("iso", {})
    finally:
        engine.close()


#: The issue's cases of heavy work inside one node (the first two are also run isolated).
HEAVY_IN_ONE_NODE = [
    "[sorted(x, key=str) for x in [list(range(100000))] * 100]",
    "int('f' * 1000000, 16) // int('f' * 500000, 16)",
    "('a ' * 500000).split()",
    "[[0] * 100000 for i in range(1000)]",
]


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "isolated"])
def test_a_worker_fails_executions_stuck_in_heavy_nodes(tmp_path: Path, isolate: bool) -> None:
    """Each execution fails with its error recorded; none keeps its task (and lease) forever."""
    from statem import Engine, WorkerSettings

    engine = Engine(f"sqlite:///{tmp_path / 'heavy.db'}", isolate_expressions=isolate)
    engine.migrate()
    try:
        ids = []
        for i, src in enumerate(HEAVY_IN_ONE_NODE[:2] if isolate else HEAVY_IN_ONE_NODE):
            engine.save_machine(
                {"id": f"heavy{i}", "version": 1, "start_at": "a", "states": {
                    "a": {"always": [{"state": "b", "wait_for": {"seconds": 0}}]},
                    "b": {"always": [{"state": "c", "context": {"x": src}}]},
                    "c": {"end": True}}}
            )  # fmt: skip
            ids.append(engine.start(f"heavy{i}").id)
        with engine.worker(WorkerSettings(concurrency=2, poll_seconds=0.2)):
            for eid in ids:
                ex = engine.wait(eid, timeout=60)
                assert ex.status == "failed" and ex.state == "a", (ex.status, ex.error)
                assert ex.error is not None and ex.error.endswith("at states.b.always[0].context.x")
                assert re.search(r"would (exceed|build)|more than|longer than", ex.error), ex.error
                assert engine.pending(eid) == []
    finally:
        engine.close()
