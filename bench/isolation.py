"""Issue 10 (14): the cost of isolated expression evaluation.

``Engine(..., isolate_expressions=True)`` evaluates every expression in a child process
with CPU and address-space limits (statem/isolation.py). This measures evaluations per
second of three typical expressions in-process and isolated, on one thread, and the time
a child process takes to start and answer its first request.

No target: the figures say what isolation costs, so an operator can choose.
Run: ``python -m bench.isolation [--quick]``.
"""

from __future__ import annotations

import time
from typing import Any

from statem.expressions import Expression, compile_expression
from statem.isolation import IsolatedExpression, _local

from .common import Result, main_for, say

BINDINGS: dict[str, Any] = {
    "ctx": {"n": 2, "l": [3, 1, 2], "order": {"id": "R1", "line_items": ["tea", "kettle"]}},
    "input": {"sku": "cup", "qty": 2},
    "output": {"status": 201, "json": {"tracking": "T1"}},
    "state": "cart",
    "execution": {"id": "e1", "machine": "order", "version": 1},
    "env": {"shipping_url": "http://localhost:8080"},
}
BINDINGS["context"] = BINDINGS["ctx"]
EXPRESSIONS = {
    "guard": "len(ctx['order']['line_items']) > 0 and 200 <= output['status'] <= 299",
    "update": "{**ctx['order'], 'line_items': ctx['order']['line_items'] + [input['sku']] * input['qty']}",
    "format": "f\"{ctx['order']['id']}-{len(ctx['order']['line_items']):03d}\"",
}


def rate(expr: Expression, seconds: float) -> float:
    """Evaluations per second of ``expr`` over about ``seconds``."""
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        for _ in range(50):
            expr.evaluate(BINDINGS)
        count += 50
    return count / (time.perf_counter() - began)


def run(quick: bool) -> list[Result]:
    """In-process and isolated evaluations per second, and a child's start-up time."""
    seconds = 0.5 if quick else 2.0
    results: list[Result] = []
    began = time.perf_counter()
    IsolatedExpression.of(compile_expression("1", "bench.start")).evaluate(BINDINGS)
    startup = time.perf_counter() - began
    say(f"isolation: a child process starts and answers in {startup * 1000:.0f} ms")
    results.append(Result("isolation: child start-up", startup * 1000, "ms"))
    for name, src in EXPRESSIONS.items():
        inline = compile_expression(src, f"bench.{name}")
        isolated = IsolatedExpression.of(inline)
        assert inline.evaluate(BINDINGS) == isolated.evaluate(BINDINGS)
        fast, slow = rate(inline, seconds), rate(isolated, seconds)
        say(f"isolation/{name}: {fast:,.0f}/s in-process, {slow:,.0f}/s isolated ({fast / slow:.1f}x)")
        results.append(
            Result(f"isolation/{name}: isolated", slow, "eval/s", fast, "eval/s in-process", slow / fast)
        )
    child = getattr(_local, "child", None)
    if child is not None:
        child.kill()
    return results


def main() -> None:
    """``python -m bench.isolation [--quick]``."""
    main_for("isolation (issue 10, 14)", run)


if __name__ == "__main__":
    main()
