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

Bounds (:data:`LIMITS`): source length, syntax depth, a budget of evaluated nodes and a
wall-clock deadline (asteval has no timeout), sizes of strings, sequences and integers
built by ``*``, ``+``, ``**`` and ``range``, and the JSON size of the result. Every
failure, including MemoryError and RecursionError, becomes an ExpressionError; the
process survives.

Interpreters are reused, one per thread: each evaluation gets a fresh symbol table
built from the curated helpers and the bindings, and the interpreter's error state is
reset, so nothing leaks from one evaluation to the next. Bindings are not copied: no
whitelisted operation can mutate them.
"""

from __future__ import annotations

import ast
import datetime as dt
import math
import operator
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from asteval import Interpreter

from .errors import ExpressionError, InputError
from .settings import MAX_VALUE_BYTES

JSON: TypeAlias = Any
"""A JSON value: dict with str keys, list, str, int, float, bool or None."""


@dataclass(frozen=True)
class Limits:
    """The bounds every evaluation runs under."""

    source_chars: int = 10_000
    depth: int = 50
    nodes: int = 200_000
    seconds: float = 1.0
    string_chars: int = 1_000_000
    sequence_items: int = 100_000
    int_bits: int = 4_096
    range_items: int = 100_000
    result_bytes: int = MAX_VALUE_BYTES


LIMITS = Limits()

#: Read-only methods that may be called on str, dict and list values.
METHODS = frozenset(
    {
        "get", "keys", "values", "items",
        "lower", "upper", "strip", "lstrip", "rstrip", "split", "join", "startswith",
        "endswith", "replace", "title", "capitalize", "isdigit", "isalpha", "find", "count", "index",
    }
)  # fmt: skip

BINDINGS = ("ctx", "context", "input", "output", "state", "execution", "env")


class _Abort(Exception):
    """Raised inside the interpreter when a bound is hit; the sandbox keeps the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        sandbox = getattr(_local, "sandbox", None)
        if sandbox is not None and sandbox.aborted is None:
            sandbox.aborted = message


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _get_in(obj: Any, path: Iterable[Any], default: Any = None) -> Any:
    for key in path:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return default
    return obj


def _merge(*dicts: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        if not isinstance(d, Mapping):
            raise TypeError(f"merge() takes mappings, not {type(d).__name__}")
        out.update(d)
    return out


def _range(*args: int) -> list[int]:
    r = range(*args)
    if len(r) > LIMITS.range_items:
        raise _Abort(f"range of {len(r)} items exceeds the limit of {LIMITS.range_items}")
    return list(r)


def _bounded_text(value: Any) -> None:
    """Refuse to render a container whose text would exceed the string limit."""
    if isinstance(value, list | tuple | dict | set):
        try:
            to_json(list(value) if isinstance(value, set) else value, LIMITS.string_chars)
        except InputError:
            raise _Abort(
                f"rendering this value as text would exceed {LIMITS.string_chars} characters"
            ) from None


def _str(value: Any = "") -> str:
    _bounded_text(value)
    return str(value)


def _sum(values: Iterable[Any], start: Any = 0) -> Any:
    if not isinstance(start, int | float) or isinstance(start, bool):
        raise _Abort("sum() adds numbers only; use a comprehension to join lists or strings")
    return sum(values, start)


def _round(number: Any, ndigits: int | None = None) -> Any:
    if ndigits is not None and abs(ndigits) > 100:
        raise _Abort("round() takes at most 100 digits")
    return round(number, ndigits)


def _join(sep: str) -> Callable[[Iterable[Any]], str]:
    def join(items: Iterable[Any]) -> str:
        parts = list(items)
        if len(sep) * len(parts) + sum(len(p) for p in parts if isinstance(p, str)) > LIMITS.string_chars:
            raise _Abort(f"join() would build more than {LIMITS.string_chars} characters")
        return sep.join(parts)

    return join


def _replace(text: str) -> Callable[..., str]:
    def replace(old: str, new: str, count: int = -1) -> str:
        hits = text.count(old) if old else len(text) + 1
        if count >= 0:
            hits = min(hits, count)
        if len(text) + hits * max(len(new) - len(old), 0) > LIMITS.string_chars:
            raise _Abort(f"replace() would build more than {LIMITS.string_chars} characters")
        return text.replace(old, new, count)

    return replace


_HELPER_FUNCS: dict[str, Any] = {
    "len": len, "min": min, "max": max, "sorted": sorted, "sum": _sum, "abs": abs, "round": _round,
    "any": any, "all": all, "str": _str, "int": int, "float": float, "bool": bool, "dict": dict,
    "list": list, "range": _range, "now": _now, "get_in": _get_in, "merge": _merge,
}  # fmt: skip
#: Helper functions expressions may call.
HELPERS = tuple(sorted(_HELPER_FUNCS))
_CONSTANTS = {"True": True, "False": False, "None": None}
_KNOWN = frozenset(BINDINGS) | frozenset(_HELPER_FUNCS) | frozenset(_CONSTANTS)

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.BinOp, ast.UnaryOp, ast.BoolOp,
    ast.Compare, ast.IfExp, ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Subscript, ast.Slice,
    ast.Call, ast.keyword, ast.Attribute, ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp,
    ast.comprehension, ast.JoinedStr, ast.FormattedValue,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
    ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is,
    ast.IsNot,
)  # fmt: skip


def _check_tree(tree: ast.AST, source: str, path: str, bound: frozenset[str] = frozenset()) -> None:
    """Reject every construct outside the whitelist, with a message naming it; ``bound``
    names are bound besides the usual ones (``item`` and ``index`` in a map's input)."""

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
            reject(f"{type(node).__name__} is not allowed in expressions")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                reject(f"name {node.id!r} is not allowed (names may not start with '_')")
            if node.id not in _KNOWN and node.id not in local and node.id not in bound:
                reject(f"name {node.id!r} is not defined")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") or node.attr not in METHODS:
                reject(f"attribute {node.attr!r} is not allowed")
        elif isinstance(node, ast.Call):
            f = node.func
            if not (isinstance(f, ast.Name) and f.id in _HELPER_FUNCS) and not isinstance(f, ast.Attribute):
                reject("only the bound helpers and whitelisted methods can be called")
            if any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords
            ):
                reject("*args and **kwargs are not allowed in calls")


#: f-string conversions by their code: !s, !r, !a.
_CONVERSIONS: dict[int, Callable[[object], str]] = {115: str, 114: repr, 97: ascii}
_PLAIN_ERRORS = (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError)


class _Sandbox(Interpreter):  # type: ignore[misc]
    """asteval with a node budget, a deadline, safe operators and ``{**a}`` merges."""

    def __init__(self) -> None:
        super().__init__(
            symtable={},
            minimal=True,
            use_numpy=False,
            builtins_readonly=True,
            max_statement_length=LIMITS.source_chars,
            config={"ifexp": True, "listcomp": True, "dictcomp": True, "setcomp": True,
                    "formattedvalue": True},
        )  # fmt: skip
        self.node_handlers["generatorexp"] = self.on_listcomp
        self.node_handlers["attribute"] = self._attribute
        self.budget = 0
        self.deadline = 0.0
        self.aborted: str | None = None

    def start(self, symtable: dict[str, Any]) -> None:
        """Reset for one evaluation with a fresh symbol table."""
        self.symtable = symtable
        self.readonly_symbols = set(symtable)
        self.error: list[Any] = []
        self.error_msg = None
        self.retval = None
        self._interrupt = None
        self.code_text: list[Any] = []
        self.aborted = None
        self.budget = LIMITS.nodes
        self.deadline = time.monotonic() + LIMITS.seconds

    def run(self, node: Any, expr: Any = None, lineno: Any = None, with_raise: bool = True) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _Abort(f"expression took more than {LIMITS.nodes} evaluation steps")
        if self.budget % 1024 == 0 and time.monotonic() > self.deadline:
            raise _Abort(f"expression ran longer than {LIMITS.seconds:g}s")
        return super().run(node, expr=expr, lineno=lineno, with_raise=with_raise)

    def _attribute(self, node: ast.Attribute) -> Any:
        if node.attr not in METHODS:
            raise _Abort(f"attribute {node.attr!r} is not allowed")
        value = self.run(node.value)
        if not isinstance(value, str | dict | list):
            raise TypeError(f"{type(value).__name__} has no method {node.attr!r}")
        if isinstance(value, str) and node.attr == "join":
            return _join(value)
        if isinstance(value, str) and node.attr == "replace":
            return _replace(value)
        return getattr(value, node.attr)

    def on_call(self, node: ast.Call) -> Any:
        # asteval's own on_call puts repr(args) in its error message: with a large argument
        # that alone can exhaust memory. Call directly and name the function only.
        func = self.run(node.func)
        args = [self.run(a) for a in node.args]
        kwargs = {k.arg: self.run(k.value) for k in node.keywords if k.arg is not None}
        try:
            return func(*args, **kwargs)
        except _Abort:
            raise
        except Exception as exc:
            name = getattr(func, "__name__", "function")
            raise type(exc)(f"{name}(): {exc}") if type(exc) in _PLAIN_ERRORS else exc from None

    def on_formattedvalue(self, node: ast.FormattedValue) -> str:
        value = self.run(node.value)
        _bounded_text(value)
        spec = self.run(node.format_spec) if node.format_spec is not None else ""
        if re.search(r"\d{4,}", str(spec)):
            raise _Abort("f-string widths and precisions are limited to 3 digits")
        conversion = _CONVERSIONS.get(node.conversion)
        if conversion is not None:
            value = conversion(value)
        return format(value, str(spec))

    def on_dict(self, node: ast.Dict) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                merged = self.run(value)
                if not isinstance(merged, Mapping):
                    raise TypeError(f"'{type(merged).__name__}' object is not a mapping")
                out.update(merged)
            else:
                out[self.run(key)] = self.run(value)
        return out

    def on_binop(self, node: ast.BinOp) -> Any:
        left, right = self.run(node.left), self.run(node.right)
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise _Abort(f"operator {type(node.op).__name__} is not allowed")
        return op(left, right)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict | set) else 0


def _mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | list | tuple) and isinstance(n, int):
            cap = LIMITS.string_chars if isinstance(seq, str) else LIMITS.sequence_items
            if len(seq) * max(n, 0) > cap:
                raise _Abort(f"repetition would build {len(seq) * n} items; the limit is {cap}")
    return _int_bound(operator.mul(a, b))


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, str | list | tuple) and _size(a) + _size(b) > LIMITS.string_chars:
        raise _Abort(f"concatenation exceeds the limit of {LIMITS.string_chars} items")
    return _int_bound(operator.add(a, b))


def _pow(a: Any, b: Any) -> Any:
    big = isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 0
    if big and b * math.log2(abs(a)) > LIMITS.int_bits:
        raise _Abort(f"power result exceeds {LIMITS.int_bits} bits")
    return operator.pow(a, b)


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, str):
        raise _Abort("%-formatting is not allowed; use an f-string")
    return operator.mod(a, b)


def _int_bound(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > LIMITS.int_bits:
        raise _Abort(f"integer exceeds {LIMITS.int_bits} bits")
    return value


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: _add, ast.Sub: operator.sub, ast.Mult: _mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: _mod, ast.Pow: _pow,
}  # fmt: skip

_local = threading.local()


def _interpreter() -> _Sandbox:
    sandbox: _Sandbox | None = getattr(_local, "sandbox", None)
    if sandbox is None:
        sandbox = _local.sandbox = _Sandbox()
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
        symtable: dict[str, Any] = {**_HELPER_FUNCS, **_CONSTANTS}
        symtable.update(bindings)
        sandbox.start(symtable)
        try:
            result = sandbox.run(self._tree.body, expr=self.source, with_raise=True)
        except _Abort as exc:
            raise self._error(sandbox.aborted or str(exc)) from None
        except BaseException as exc:  # asteval re-raises what the expression raised
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise self._error(self._message(sandbox, exc)) from None
        finally:
            sandbox.symtable = {}
        if sandbox.error or sandbox.aborted:
            raise self._error(self._message(sandbox, None))
        try:
            return to_json(result, LIMITS.result_bytes)
        except InputError as exc:
            raise self._error(f"expression returned {exc}") from None

    def _message(self, sandbox: _Sandbox, exc: BaseException | None) -> str:
        if sandbox.aborted is not None:
            return sandbox.aborted
        if sandbox.error:
            err = sandbox.error[0]
            kind = getattr(err.exc, "__name__", "Error")
            msg = str(err.msg or exc or "").strip().splitlines()
            text = msg[-1] if msg else ""
            return text if text.startswith(f"{kind}:") else f"{kind}: {text}"
        return f"{type(exc).__name__}: {exc}" if exc is not None else "evaluation failed"

    def _error(self, message: str) -> ExpressionError:
        return ExpressionError(message, expression=self.source, path=self.path)


def compile_expression(source: str, path: str = "", bound: frozenset[str] = frozenset()) -> Expression:
    """Parse and check an expression; raises ExpressionError naming the path and the problem.

    ``bound``: names bound besides the usual ones where this expression is evaluated
    (``item`` and ``index`` in the input of ``invoke.map``)."""
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
        raise ExpressionError(f"invalid syntax: {exc.msg}", expression=source, path=path) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ExpressionError(
            f"expression cannot be parsed: {type(exc).__name__}", expression=source, path=path
        ) from None
    if _depth(tree) > LIMITS.depth:
        raise ExpressionError(f"expression nests deeper than {LIMITS.depth}", expression=source, path=path)
    _check_tree(tree, source, path, bound)
    return Expression(source, path, tree)


def _depth(tree: ast.AST) -> int:
    deepest, todo = 0, [(tree, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        if deepest > LIMITS.depth:
            break
        todo.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def to_json(value: Any, limit: int = MAX_VALUE_BYTES) -> JSON:
    """A fresh copy of ``value`` as plain JSON data (tuples become lists), or InputError.

    The size is counted as the walk goes, so an oversized value fails before it is copied.
    """
    budget = [limit]

    def spend(n: int) -> None:
        budget[0] -= n
        if budget[0] < 0:
            raise InputError(f"a value larger than {limit} bytes of JSON")

    def walk(v: Any, depth: int) -> JSON:
        if depth > 100:
            raise InputError("a value nested deeper than 100 levels")
        if v is None or isinstance(v, bool):
            spend(5)
            return v
        if isinstance(v, int):
            spend(len(str(v)) if v.bit_length() < 64 else v.bit_length() // 3)
            return v
        if isinstance(v, float):
            if not math.isfinite(v):
                raise InputError(f"a non-finite float ({v}), which JSON cannot hold")
            spend(24)
            return v
        if isinstance(v, str):
            spend(len(v) + 2)
            return v
        if isinstance(v, list | tuple):
            spend(2 + len(v))
            return [walk(x, depth + 1) for x in v]
        if isinstance(v, dict):
            spend(2 + 2 * len(v))
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise InputError(f"a dict with a non-string key {k!r}")
                spend(len(k) + 2)
                out[k] = walk(x, depth + 1)
            return out
        raise InputError(f"a non-JSON value of type {type(v).__name__}")

    return walk(value, 0)


def check_json(value: object, what: str) -> JSON:
    """Return ``value`` as plain JSON data, or raise InputError naming ``what``."""
    try:
        return to_json(value)
    except InputError as exc:
        raise InputError(f"{what} is not acceptable: {exc}") from None
