"""The expression sandbox: guards, context updates, inputs and return values.

Definitions may come from people who are not trusted with the host, so an expression
is checked twice: once when it is compiled (at machine save time) against a whitelist
of syntax, names and methods, and again while it runs, by an asteval interpreter
restricted further here. asteval alone is "safer than eval", not a sandbox.

Supported syntax: literals (numbers, strings, lists, tuples, dicts, sets, ``True``,
``False``, ``None``), ``{**a, 'k': v}`` merges, subscripts and slices, arithmetic,
comparisons (chained too), ``and``/``or``/``not``, ``x if c else y``, list, dict and
set comprehensions and generator expressions (evaluated eagerly) over bounded data,
f-strings, and calls to the bound helpers and to a few read-only methods of
str/dict/list (:data:`METHODS`).

Names bound: ``ctx`` (also ``context``), ``input``, ``output``, ``state``,
``execution`` (id, machine, version) and ``env``; helpers :data:`HELPERS`.

Forbidden, each rejected with ExpressionError: statements (assignment, ``import``,
``def``, loops, ``del``), ``lambda``, the walrus, any name or attribute starting with
``_`` (no dunder walks), any attribute that is not a whitelisted method (no
``str.format``: format strings can walk attributes), names that are not bound.

Bounds (:data:`LIMITS`, :mod:`statem.bounds`): source length, syntax depth, a budget of
evaluated nodes, a wall-clock deadline (asteval has no timeout), a work budget and a
memory budget every operator and helper is priced against *before* it runs
(:mod:`statem.sandbox`), sizes of strings, sequences and integers, and the JSON size of
the result. Every failure, including MemoryError and RecursionError, becomes an
ExpressionError with a bounded message; the process survives. For definitions from
untrusted authors, :mod:`statem.isolation` evaluates in a subprocess with CPU and
address-space limits as well.

Interpreters are reused, one per thread: each evaluation gets a fresh symbol table
built from the curated helpers and the bindings, and the interpreter's error state is
reset, so nothing leaks from one evaluation to the next. Bindings are not copied: no
whitelisted operation can mutate them.
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Mapping
from typing import Any

from .bounds import JSON, LIMITS, Abort, Limits, describe, to_json
from .errors import ExpressionError, InputError
from .helpers import HELPERS, METHODS
from .sandbox import Failure, Sandbox
from .settings import MAX_VALUE_BYTES

__all__ = [
    "BINDINGS", "HELPERS", "JSON", "LIMITS", "METHODS", "Expression", "Limits", "check_json",
    "compile_expression", "problem_text", "to_json",
]  # fmt: skip

BINDINGS = ("ctx", "context", "input", "output", "state", "execution", "env")

_CONSTANTS = {"True": True, "False": False, "None": None}
_KNOWN = frozenset(BINDINGS) | frozenset(HELPERS) | frozenset(_CONSTANTS)

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.BinOp, ast.UnaryOp, ast.BoolOp,
    ast.Compare, ast.IfExp, ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Subscript, ast.Slice,
    ast.Call, ast.keyword, ast.Attribute, ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp,
    ast.comprehension, ast.JoinedStr, ast.FormattedValue,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
    ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is,
    ast.IsNot,
)  # fmt: skip

#: What each forbidden node is called in messages.
_NODE_NAMES = {
    "Lambda": "lambda", "NamedExpr": "the walrus operator :=", "Yield": "yield", "YieldFrom": "yield",
    "Await": "await", "Starred": "*unpacking", "LShift": "operator <<", "RShift": "operator >>",
    "BitAnd": "operator &", "BitOr": "operator |", "BitXor": "operator ^", "MatMult": "operator @",
    "Invert": "operator ~",
}  # fmt: skip


def _describe_call(func: ast.expr) -> str:
    text = ast.unparse(func)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_text(node: ast.expr) -> bool:
    """True when ``node`` is certainly a string: a literal, an f-string, ``str(...)``, text + text."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id == "str"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
        return _is_text(node.left) or (isinstance(node.op, ast.Add) and _is_text(node.right))
    return False


def _check_tree(tree: ast.AST, source: str, path: str) -> None:
    """Reject every construct outside the whitelist, with a message naming it."""

    def reject(msg: str) -> None:
        raise ExpressionError(msg, expression=source, path=path)

    local: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.comprehension):
            for target in ast.walk(node.target):
                if isinstance(target, ast.Name):
                    if target.id in _KNOWN or target.id.startswith("_"):
                        reject(f"cannot use {target.id!r} as a loop variable")
                    local.add(target.id)
                elif not isinstance(target, ast.Tuple | ast.Store):
                    reject("a comprehension target must be a name or a tuple of names")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            kind = type(node).__name__
            reject(f"{_NODE_NAMES.get(kind, kind)} is not allowed in expressions")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                reject(f"name {node.id!r} is not allowed (names may not start with '_')")
            if node.id not in _KNOWN and node.id not in local:
                reject(f"name {node.id!r} is not defined")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") or node.attr not in METHODS:
                reject(f"attribute {node.attr!r} is not allowed")
        elif isinstance(node, ast.Call):
            _check_call(node, reject)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _is_text(node.left):
            reject("%-formatting of strings is not allowed; use an f-string")
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            if node.value.bit_length() > LIMITS.int_bits:
                reject(f"integer literal exceeds {LIMITS.int_bits} bits")
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes | complex):
            reject(f"{type(node.value).__name__} literals are not allowed")


def _check_call(node: ast.Call, reject: Any) -> None:
    f = node.func
    if isinstance(f, ast.Name):
        if f.id not in HELPERS:
            helpers = ", ".join(HELPERS)
            reject(f"{f.id}() cannot be called: only the helpers ({helpers}) and whitelisted methods can")
    elif isinstance(f, ast.Attribute):
        if f.attr.startswith("_") or f.attr not in METHODS:
            reject(f"method {f.attr!r} cannot be called: only {', '.join(sorted(METHODS))} can")
    else:
        reject(f"{_describe_call(f)} cannot be called: only the helpers and whitelisted methods can")
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        reject("*args and **kwargs are not allowed in calls")


_local = threading.local()


def _interpreter() -> Sandbox:
    sandbox: Sandbox | None = getattr(_local, "sandbox", None)
    if sandbox is None:
        sandbox = _local.sandbox = Sandbox()
    return sandbox


class Expression:
    """A compiled expression: parsed and checked once (at save time), evaluated many times."""

    __slots__ = ("_tree", "path", "source")

    def __init__(self, source: str, path: str, tree: ast.Expression) -> None:
        self.source = source
        self.path = path
        self._tree = tree

    def __repr__(self) -> str:
        return f"Expression({self.source!r}, path={self.path!r})"

    def evaluate(self, bindings: Mapping[str, object]) -> JSON:
        """Evaluate with ``bindings``; the result is a JSON value, else ExpressionError."""
        sandbox = _interpreter()
        symtable: dict[str, Any] = {**sandbox.helpers, **_CONSTANTS}
        symtable.update(bindings)
        sandbox.start(symtable)
        try:
            result = sandbox.run(self._tree.body, expr=self.source, with_raise=True)
            return to_json(result, LIMITS.result_bytes)
        except (Abort, Failure) as exc:
            raise self._error(str(exc)) from None
        except InputError as exc:
            raise self._error(f"expression returned {exc}") from None
        except BaseException as exc:  # MemoryError, RecursionError, anything asteval let through
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise self._error(describe(exc)) from None
        finally:
            sandbox.finish()

    def _error(self, message: str) -> ExpressionError:
        return ExpressionError(message, expression=self.source, path=self.path)


def compile_expression(source: str, path: str = "") -> Expression:
    """Parse and check an expression; raises ExpressionError naming the path and the problem."""
    if not isinstance(source, str):
        raise ExpressionError(f"an expression must be a string, not {type(source).__name__}", path=path)
    if len(source) > LIMITS.source_chars:
        raise ExpressionError(
            f"expression is {len(source)} characters; the limit is {LIMITS.source_chars}",
            expression=source, path=path,
        )  # fmt: skip
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(_syntax_message(exc), expression=source, path=path) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ExpressionError(
            f"expression cannot be parsed: {type(exc).__name__}", expression=source, path=path
        ) from None
    if _depth(tree) > LIMITS.depth:
        raise ExpressionError(f"expression nests deeper than {LIMITS.depth}", expression=source, path=path)
    _check_tree(tree, source, path)
    return Expression(source, path, tree)


def problem_text(source: str, reason: str) -> str:
    """How a definition check reports an expression: what is wrong, the reason, the source.

    ``expression does not parse: invalid syntax at line 1, column 4, in '1 +'`` for a
    syntax error, ``expression is not allowed: open() cannot be called ...`` for
    something outside the whitelist.
    """
    unparsable = reason.startswith(("invalid syntax", "expression cannot be parsed"))
    verb = "does not parse" if unparsable else "is not allowed"
    shown = source if len(source) <= 80 else source[:77] + "..."
    return f"expression {verb}: {reason}, in {shown!r}"


def _syntax_message(exc: SyntaxError) -> str:
    """``invalid syntax at line 1, column 11: ...``, with the parser's own words."""
    if exc.lineno and exc.offset:
        where = f"line {exc.lineno}, column {exc.offset}"
    elif exc.lineno:
        where = f"the end of line {exc.lineno}"
    else:
        where = "an unknown position"
    msg = exc.msg or "invalid syntax"
    if msg == "invalid syntax":
        return f"invalid syntax at {where}"
    return f"invalid syntax at {where}: {msg}"


def _depth(tree: ast.AST) -> int:
    deepest, todo = 0, [(tree, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        if deepest > LIMITS.depth:
            break
        todo.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def check_json(value: object, what: str) -> JSON:
    """Return ``value`` as plain JSON data, or raise InputError naming ``what``."""
    try:
        return to_json(value, MAX_VALUE_BYTES)
    except InputError as exc:
        raise InputError(f"{what} is not acceptable: {exc}") from None
