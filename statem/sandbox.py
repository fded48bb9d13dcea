"""The metered interpreter that runs checked expression trees.

An asteval interpreter (minimal mode, no numpy, read-only builtins) whose node handlers
are replaced here so that every operator, helper and method call is *priced before it
runs*: its work (elements it will touch) and the memory of what it builds are charged to
the evaluation's :class:`~statem.bounds.Meter`, and the sizes it would produce are checked
against :data:`~statem.bounds.LIMITS`. Heavy C-level work inside one node (a division of
million-digit integers, a ``sorted`` over huge keys, a ``split`` into a million parts)
is refused before it starts instead of being waited out, so the evaluation deadline,
checked at every node and every charge, really ends the evaluation.

Errors never render the values involved in full (see :func:`~statem.bounds.describe`).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from asteval import Interpreter

from .bounds import (
    ENTRY_BYTES,
    LIMITS,
    OBJECT_BYTES,
    SLOT_BYTES,
    Abort,
    Meter,
    chars,
    describe,
    int_bound,
)
from .helpers import METHODS, Helpers, method

#: f-string conversions by their code: !s, !r, !a.
_CONVERSIONS: dict[int, Callable[[object], str]] = {115: str, 114: repr, 97: ascii}


class Failure(Exception):
    """The expression raised; the message is already bounded and carries the type name."""


class Sandbox(Interpreter):  # type: ignore[misc]
    """asteval with metered handlers, a node budget and a deadline. One per thread."""

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
        self.meter = Meter()
        self.nodes = 0
        handlers = {
            "attribute": self._attribute, "binop": self._binop, "call": self._call,
            "compare": self._compare, "dict": self._dict, "list": self._list, "tuple": self._tuple,
            "set": self._set, "subscript": self._subscript, "joinedstr": self._joinedstr,
            "formattedvalue": self._formattedvalue, "listcomp": self._listcomp,
            "generatorexp": self._listcomp, "setcomp": self._setcomp, "dictcomp": self._dictcomp,
        }  # fmt: skip
        self.node_handlers.update(handlers)
        self._helpers = Helpers(self.meter)
        self.helpers: dict[str, Any] = self._helpers.functions()

    # ------------------------------------------------------------------ running

    def start(self, symtable: dict[str, Any]) -> None:
        """Reset for one evaluation with a fresh symbol table and full budgets."""
        self.symtable = symtable
        self.readonly_symbols = set(symtable)
        self.error: list[Any] = []
        self.error_msg = None
        self.retval = None
        self._interrupt = None
        self.code_text: list[Any] = []
        self.nodes = LIMITS.nodes
        self.meter.reset()

    def finish(self) -> None:
        """Drop every reference the evaluation held."""
        self.symtable = {}
        self.meter.forget()

    def run(self, node: Any, expr: Any = None, lineno: Any = None, with_raise: bool = True) -> Any:
        """Evaluate one node: charge it, dispatch it, turn what it raises into a bounded Failure."""
        self.nodes -= 1
        if self.nodes < 0:
            raise Abort(f"expression took more than {LIMITS.nodes} evaluation steps")
        if self.nodes & 15 == 0:
            self.meter.check_time()
        if node is None:
            return None
        handler = self.node_handlers.get(type(node).__name__.lower())
        if handler is None:
            raise Abort(f"{type(node).__name__} is not allowed in expressions")
        try:
            return handler(node)
        except (Abort, Failure):
            raise
        except Exception as exc:
            raise Failure(describe(exc)) from None

    # ------------------------------------------------------------------ displays

    def _list(self, node: ast.List) -> list[Any]:
        self.meter.spend(len(node.elts), OBJECT_BYTES + SLOT_BYTES * len(node.elts))
        return [self.run(e) for e in node.elts]

    def _tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return tuple(self._list(node))  # type: ignore[arg-type]

    def _set(self, node: ast.Set) -> set[Any]:
        items = [self.run(e) for e in node.elts]
        self.meter.spend(sum(self.meter.weigh(x) for x in items), OBJECT_BYTES + ENTRY_BYTES * len(items))
        return set(items)

    def _dict(self, node: ast.Dict) -> dict[Any, Any]:
        # asteval 1.0.10 mis-evaluates {**a}: merges are evaluated here.
        out: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                merged = self.run(value)
                if not isinstance(merged, Mapping):
                    raise TypeError(f"'{type(merged).__name__}' object is not a mapping")
                self.meter.spend(1 + len(merged), ENTRY_BYTES * len(merged))
                out.update(merged)
            else:
                k = self.run(key)
                self.meter.spend(self.meter.weigh(k), ENTRY_BYTES)
                out[k] = self.run(value)
        return out

    def _subscript(self, node: ast.Subscript) -> Any:
        value = self.run(node.value)
        index = self.run(node.slice)
        if isinstance(index, slice) and isinstance(value, str | list | tuple):
            n = len(range(*index.indices(len(value))))
            per = 1 if isinstance(value, str) else SLOT_BYTES
            self.meter.spend(1 + (n // 16 if isinstance(value, str) else n), OBJECT_BYTES + per * n)
        elif isinstance(value, dict):
            self.meter.spend(self.meter.weigh(index))
        return value[index]

    # ------------------------------------------------------------------ comprehensions

    def _generate(self, node: Any, emit: Callable[[], None]) -> None:
        names = {t.id for g in node.generators for t in ast.walk(g.target) if isinstance(t, ast.Name)}
        saved = {n: self.symtable[n] for n in names if n in self.symtable}

        def loop(level: int) -> None:
            gen = node.generators[level]
            iterable = self.run(gen.iter)
            if isinstance(iterable, str):
                self.meter.spend(chars(len(iterable)))
            for item in iterable:
                self._bind(gen.target, item)
                if all(self.run(cond) for cond in gen.ifs):
                    if level + 1 < len(node.generators):
                        loop(level + 1)
                    else:
                        emit()

        try:
            loop(0)
        finally:
            for n in names:
                self.symtable.pop(n, None)
            self.symtable.update(saved)

    def _bind(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.symtable[target.id] = value
            return
        if not isinstance(target, ast.Tuple | ast.List):
            raise TypeError("a comprehension target must be a name or a tuple of names")
        if not isinstance(value, list | tuple | str) or len(value) != len(target.elts):
            raise ValueError(f"cannot unpack {type(value).__name__} into {len(target.elts)} names")
        for t, v in zip(target.elts, value, strict=True):
            self._bind(t, v)

    def _grow(self, size: int, entry: int) -> None:
        if size > LIMITS.sequence_items:
            raise Abort(f"a comprehension built more than {LIMITS.sequence_items} items")
        self.meter.spend(1, entry)

    def _listcomp(self, node: ast.ListComp | ast.GeneratorExp) -> list[Any]:
        out: list[Any] = []

        def emit() -> None:
            self._grow(len(out) + 1, SLOT_BYTES)
            out.append(self.run(node.elt))

        self._generate(node, emit)
        return out

    def _setcomp(self, node: ast.SetComp) -> set[Any]:
        out: set[Any] = set()

        def emit() -> None:
            self._grow(len(out) + 1, ENTRY_BYTES)
            item = self.run(node.elt)
            self.meter.spend(self.meter.weigh(item))
            out.add(item)

        self._generate(node, emit)
        return out

    def _dictcomp(self, node: ast.DictComp) -> dict[Any, Any]:
        out: dict[Any, Any] = {}

        def emit() -> None:
            self._grow(len(out) + 1, ENTRY_BYTES)
            key = self.run(node.key)
            self.meter.spend(self.meter.weigh(key))
            out[key] = self.run(node.value)

        self._generate(node, emit)
        return out

    # ------------------------------------------------------------------ operators

    def _binop(self, node: ast.BinOp) -> Any:
        left, right = self.run(node.left), self.run(node.right)
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise Abort(f"operator {type(node.op).__name__} is not allowed")
        return op(self.meter, left, right)

    def _compare(self, node: ast.Compare) -> Any:
        left = self.run(node.left)
        result: Any = True
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.run(comparator)
            self.meter.spend(_compare_cost(self.meter, op, left, right))
            result = _COMPARE[type(op)](left, right)
            if not result:
                return result
            left = right
        return result

    # ------------------------------------------------------------------ f-strings

    def _joinedstr(self, node: ast.JoinedStr) -> str:
        pieces: list[str] = []
        total = 0
        for part in node.values:
            piece = str(self.run(part))
            total += len(piece)
            if total > LIMITS.string_chars:
                raise Abort(f"f-string would build more than {LIMITS.string_chars} characters")
            pieces.append(piece)
        self.meter.spend(chars(total), OBJECT_BYTES + total)
        return "".join(pieces)

    def _formattedvalue(self, node: ast.FormattedValue) -> str:
        value = self.run(node.value)
        spec = str(self.run(node.format_spec)) if node.format_spec is not None else ""
        if re.search(r"\d{4,}", spec):
            raise Abort("f-string widths and precisions are limited to 3 digits")
        conversion = _CONVERSIONS.get(node.conversion)
        if conversion is not None or not isinstance(value, str | int | float | bool):
            value = self._helpers.render(value, conversion or str)
        text = format(value, spec)
        if len(text) > LIMITS.string_chars:
            raise Abort(f"f-string would build more than {LIMITS.string_chars} characters")
        self.meter.spend(chars(len(text)), OBJECT_BYTES + len(text))
        return text

    def _call(self, node: ast.Call) -> Any:
        func = self.run(node.func)
        args = [self.run(a) for a in node.args]
        kwargs = {k.arg: self.run(k.value) for k in node.keywords if k.arg is not None}
        if not getattr(func, "_statem_metered", False):
            raise Abort("only the bound helpers and whitelisted methods can be called")
        try:
            return func(*args, **kwargs)
        except (Abort, Failure):
            raise
        except Exception as exc:
            kind, text = type(exc).__name__, describe(exc)
            name = getattr(func, "_statem_name", "function")
            raise Failure(f"{kind}: {name}(): {text.removeprefix(kind).removeprefix(': ')}") from None

    def _attribute(self, node: ast.Attribute) -> Any:
        if node.attr not in METHODS:
            raise Abort(f"attribute {node.attr!r} is not allowed")
        value = self.run(node.value)
        if not isinstance(value, str | dict | list):
            raise TypeError(f"{type(value).__name__} has no method {node.attr!r}")
        return method(self.meter, value, node.attr)

    # ------------------------------------------------------------------ helpers


def _int_operands(a: Any, b: Any) -> None:
    """Every integer an operator takes is within the integer bound (so its work is small)."""
    for x in (a, b):
        if type(x) is int and x.bit_length() > LIMITS.int_bits:
            raise Abort(f"integer operand of {x.bit_length()} bits exceeds {LIMITS.int_bits} bits")


def _seq_cap(seq: Any) -> int:
    return LIMITS.string_chars if isinstance(seq, str) else LIMITS.sequence_items


def _add(meter: Meter, a: Any, b: Any) -> Any:
    _int_operands(a, b)
    if isinstance(a, str | list | tuple) and type(a) is type(b):
        n = len(a) + len(b)
        if n > _seq_cap(a):
            raise Abort(f"concatenation would build {n} items; the limit is {_seq_cap(a)}")
        meter.spend(chars(n) if isinstance(a, str) else 1 + n,
                    OBJECT_BYTES + (n if isinstance(a, str) else SLOT_BYTES * n))  # fmt: skip
        return operator.add(a, b)
    return int_bound(operator.add(a, b))


def _sub(meter: Meter, a: Any, b: Any) -> Any:
    _int_operands(a, b)
    if isinstance(a, set) and isinstance(b, set):
        meter.spend(1 + len(a) + len(b), OBJECT_BYTES + ENTRY_BYTES * len(a))
    return int_bound(operator.sub(a, b))


def _mul(meter: Meter, a: Any, b: Any) -> Any:
    _int_operands(a, b)
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | list | tuple) and isinstance(n, int):
            size = len(seq) * max(n, 0)
            if size > _seq_cap(seq):
                raise Abort(f"repetition would build {size} items; the limit is {_seq_cap(seq)}")
            meter.spend(chars(size) if isinstance(seq, str) else 1 + size,
                        OBJECT_BYTES + (size if isinstance(seq, str) else SLOT_BYTES * size))  # fmt: skip
            return seq * n
    if type(a) is int and type(b) is int and a.bit_length() + b.bit_length() > LIMITS.int_bits + 1:
        raise Abort(f"product exceeds {LIMITS.int_bits} bits")
    return int_bound(operator.mul(a, b))


def _div(meter: Meter, a: Any, b: Any) -> Any:
    _int_operands(a, b)
    return operator.truediv(a, b)


def _floordiv(meter: Meter, a: Any, b: Any) -> Any:
    _int_operands(a, b)
    return operator.floordiv(a, b)


def _mod(meter: Meter, a: Any, b: Any) -> Any:
    if isinstance(a, str):
        raise Abort("%-formatting of strings is not allowed; use an f-string")
    _int_operands(a, b)
    return operator.mod(a, b)


def _pow(meter: Meter, a: Any, b: Any) -> Any:
    _int_operands(a, b)
    big = isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 0
    if big and b * math.log2(abs(a)) > LIMITS.int_bits:
        raise Abort(f"power result exceeds {LIMITS.int_bits} bits")
    return int_bound(operator.pow(a, b))


_BINOPS: dict[type[ast.operator], Callable[[Meter, Any, Any], Any]] = {
    ast.Add: _add, ast.Sub: _sub, ast.Mult: _mul, ast.Div: _div, ast.FloorDiv: _floordiv,
    ast.Mod: _mod, ast.Pow: _pow,
}  # fmt: skip

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip


def _compare_cost(meter: Meter, op: ast.cmpop, a: Any, b: Any) -> int:
    """Upper bound of the elements a comparison touches, measured before it runs."""
    if isinstance(op, ast.Is | ast.IsNot):
        return 1
    if isinstance(op, ast.In | ast.NotIn):
        if isinstance(b, dict | set | frozenset):
            return meter.weigh(a)  # one hash
        return meter.weigh(a) + meter.weigh(b)
    scalar = (int, float, bool, type(None))
    if type(a) in scalar or type(b) in scalar:
        return 1
    return min(meter.weigh(a), meter.weigh(b))


# ---------------------------------------------------------------------- methods
