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
import datetime as dt
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from asteval import Interpreter

from .bounds import LIMITS, Abort, Meter, describe, short_repr

#: Read-only methods that may be called on str, dict and list values.
METHODS = frozenset(
    {
        "get", "keys", "values", "items",
        "lower", "upper", "strip", "lstrip", "rstrip", "split", "join", "startswith",
        "endswith", "replace", "title", "capitalize", "isdigit", "isalpha", "find", "count", "index",
    }
)  # fmt: skip

#: Helper functions expressions may call.
HELPERS = (
    "abs", "all", "any", "bool", "dict", "float", "get_in", "int", "len", "list", "max", "merge",
    "min", "now", "range", "round", "sorted", "str", "sum",
)  # fmt: skip

#: Bytes charged per slot of a list or tuple, per entry of a dict or set, per object.
SLOT_BYTES, ENTRY_BYTES, OBJECT_BYTES = 8, 64, 56

#: f-string conversions by their code: !s, !r, !a.
_CONVERSIONS: dict[int, Callable[[object], str]] = {115: str, 114: repr, 97: ascii}


class Failure(Exception):
    """The expression raised; the message is already bounded and carries the type name."""


def _chars(n: int) -> int:
    return 1 + n // 16


def _metered(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a callable as one the sandbox may call: it prices its own work before doing it."""
    func._statem_metered = True  # type: ignore[attr-defined]
    func._statem_name = func.__name__.removeprefix("_h_")  # type: ignore[attr-defined]
    return func


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
        self.helpers: dict[str, Any] = {name: getattr(self, f"_h_{name}") for name in HELPERS}

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
                self.meter.spend(_chars(len(iterable)))
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
        self.meter.spend(_chars(total), OBJECT_BYTES + total)
        return "".join(pieces)

    def _formattedvalue(self, node: ast.FormattedValue) -> str:
        value = self.run(node.value)
        spec = str(self.run(node.format_spec)) if node.format_spec is not None else ""
        if re.search(r"\d{4,}", spec):
            raise Abort("f-string widths and precisions are limited to 3 digits")
        conversion = _CONVERSIONS.get(node.conversion)
        if conversion is not None or not isinstance(value, str | int | float | bool):
            value = self._render(value, conversion or str)
        text = format(value, spec)
        if len(text) > LIMITS.string_chars:
            raise Abort(f"f-string would build more than {LIMITS.string_chars} characters")
        self.meter.spend(_chars(len(text)), OBJECT_BYTES + len(text))
        return text

    def _render(self, value: Any, how: Callable[[object], str]) -> str:
        """``str``/``repr`` of a value whose text is first shown to fit the string limit."""
        self.meter.spend(self.meter.weigh(value))
        too_long = f"rendering this value as text would exceed {LIMITS.string_chars} characters"
        factor = 1 if how is str and isinstance(value, str) else 4  # repr escapes: at most \\xNN
        if self.meter.text_size(value, factor) > LIMITS.string_chars:
            raise Abort(too_long)
        text = how(value)
        if len(text) > LIMITS.string_chars:
            raise Abort(too_long)
        self.meter.spend(0, OBJECT_BYTES + len(text))
        return text

    # ------------------------------------------------------------------ calls

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
        return _method(self.meter, value, node.attr)

    # ------------------------------------------------------------------ helpers

    def _items(self, value: Any, what: str) -> list[Any]:
        """``list(value)``, refused before it is built when it would be too long."""
        n = len(value) if hasattr(value, "__len__") else None
        if n is None:
            raise TypeError(f"{what}() takes a list, tuple, dict, set or string")
        if n > LIMITS.sequence_items:
            raise Abort(f"{what}() would build {n} items; the limit is {LIMITS.sequence_items}")
        self.meter.spend(1 + n, OBJECT_BYTES + SLOT_BYTES * n)
        return list(value)

    def _keyed(self, items: list[Any], key: Any) -> list[Any]:
        if key is None:
            return items
        if not getattr(key, "_statem_metered", False):
            raise TypeError("key= takes a helper or a method")
        return [key(x) for x in items]

    @_metered
    def _h_len(self, value: Any) -> int:
        return len(value)

    @_metered
    def _h_sorted(self, iterable: Any, key: Any = None, reverse: bool = False) -> list[Any]:
        items = self._items(iterable, "sorted")
        keys = self._keyed(items, key)
        rounds = math.ceil(math.log2(len(items) + 1))  # compares each item takes part in
        self.meter.spend(rounds * self.meter.weigh(keys), OBJECT_BYTES + SLOT_BYTES * len(items))
        if key is None:
            return sorted(items, reverse=bool(reverse))
        order = sorted(range(len(items)), key=keys.__getitem__, reverse=bool(reverse))
        return [items[i] for i in order]

    def _extreme(self, pick: Callable[..., Any], name: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        key = kw.pop("key", None)
        items = self._items(args[0] if len(args) == 1 else args, name)
        if not items and "default" in kw:
            return kw["default"]
        if kw.keys() - {"default"}:
            raise TypeError(f"{name}() got an unexpected keyword argument")
        keys = self._keyed(items, key)
        self.meter.spend(2 * self.meter.weigh(keys))
        if not keys:
            raise ValueError(f"{name}() arg is an empty sequence")
        best = pick(range(len(items)), key=keys.__getitem__)
        return items[best]

    @_metered
    def _h_min(self, *args: Any, **kw: Any) -> Any:
        return self._extreme(min, "min", args, kw)

    @_metered
    def _h_max(self, *args: Any, **kw: Any) -> Any:
        return self._extreme(max, "max", args, kw)

    @_metered
    def _h_sum(self, values: Any, start: Any = 0) -> Any:
        if not isinstance(start, int | float) or isinstance(start, bool):
            raise Abort("sum() adds numbers only; use a comprehension to join lists or strings")
        items = self._items(values, "sum")
        if not all(type(x) in (int, float, bool) for x in items):
            raise TypeError("sum() adds numbers only")
        self.meter.spend(self.meter.weigh(items))
        return _int_bound(sum(items, start))

    @_metered
    def _h_abs(self, number: Any) -> Any:
        return abs(number)

    @_metered
    def _h_round(self, number: Any, ndigits: int | None = None) -> Any:
        if ndigits is not None and abs(ndigits) > 100:
            raise Abort("round() takes at most 100 digits")
        return round(number, ndigits)

    @_metered
    def _h_any(self, iterable: Any) -> bool:
        return any(self._items(iterable, "any"))

    @_metered
    def _h_all(self, iterable: Any) -> bool:
        return all(self._items(iterable, "all"))

    @_metered
    def _h_str(self, value: Any = "") -> str:
        return value if isinstance(value, str) else self._render(value, str)

    @_metered
    def _h_int(self, value: Any = 0, base: Any = None) -> int:
        if isinstance(value, str):
            text = value.strip()
            self.meter.spend(_chars(len(value)), len(text))
            radix = 10 if base is None else base  # base 0 reads any prefix: hex at worst
            bits_per_char = math.log2(radix) if isinstance(radix, int) and radix >= 2 else 4.0
            if (len(text) - 2) * bits_per_char > LIMITS.int_bits + 8:
                raise Abort(f"int() of a {len(text)}-character string would exceed {LIMITS.int_bits} bits")
            number: int = int(text) if base is None else int(text, base)
            _int_bound(number)
            return number
        if base is not None:
            raise TypeError("int() can't convert non-string with explicit base")
        number = int(value)
        _int_bound(number)
        return number

    @_metered
    def _h_float(self, value: Any = 0.0) -> float:
        if isinstance(value, str):
            self.meter.spend(_chars(len(value)))
            if len(value) > 1000:
                raise ValueError(f"could not convert a {len(value)}-character string to float")
        return float(value)

    @_metered
    def _h_bool(self, value: Any = False) -> bool:
        return bool(value)

    @_metered
    def _h_dict(self, *args: Any, **kw: Any) -> dict[str, Any]:
        if len(args) > 1:
            raise TypeError(f"dict expected at most 1 argument, got {len(args)}")
        n = len(kw) + (len(args[0]) if args and hasattr(args[0], "__len__") else 0)
        if n > LIMITS.sequence_items:
            raise Abort(f"dict() would build {n} entries; the limit is {LIMITS.sequence_items}")
        if args:
            self.meter.spend(self.meter.weigh(args[0]), OBJECT_BYTES + ENTRY_BYTES * n)
        return dict(*args, **kw)

    @_metered
    def _h_list(self, iterable: Any = ()) -> list[Any]:
        return self._items(iterable, "list")

    @_metered
    def _h_range(self, *args: int) -> list[int]:
        r = range(*args)
        if len(r) > LIMITS.range_items:
            raise Abort(f"range of {len(r)} items exceeds the limit of {LIMITS.range_items}")
        self.meter.spend(1 + len(r), OBJECT_BYTES + (SLOT_BYTES + 32) * len(r))
        return list(r)

    @_metered
    def _h_now(self) -> str:
        return dt.datetime.now(dt.UTC).isoformat()

    @_metered
    def _h_get_in(self, obj: Any, path: Iterable[Any], default: Any = None) -> Any:
        for key in self._items(path, "get_in"):
            self.meter.spend(self.meter.weigh(key))
            try:
                obj = obj[key]
            except (KeyError, IndexError, TypeError):
                return default
        return obj

    @_metered
    def _h_merge(self, *dicts: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in dicts:
            if not isinstance(d, Mapping):
                raise TypeError(f"merge() takes mappings, not {type(d).__name__}")
            self.meter.spend(1 + len(d), ENTRY_BYTES * len(d))
            out.update(d)
        return out


# ---------------------------------------------------------------------- operators


def _int_bound(value: Any) -> Any:
    """``value``, unless it is an int over the integer bound."""
    if type(value) is int and value.bit_length() > LIMITS.int_bits:
        raise Abort(f"integer exceeds {LIMITS.int_bits} bits")
    return value


def _int_operands(a: Any, b: Any) -> None:
    """Every integer an operator takes is within the integer bound (so its work is small)."""
    for x in (a, b):
        if type(x) is int and x.bit_length() > LIMITS.int_bits:
            raise Abort(f"integer operand of {x.bit_length()} bits exceeds {LIMITS.int_bits} bits")


def _seq_cap(seq: Any) -> int:
    return LIMITS.string_chars if isinstance(seq, str) else LIMITS.sequence_items


def _charge_built(meter: Meter, value: Any) -> Any:
    if isinstance(value, str):
        meter.spend(_chars(len(value)), OBJECT_BYTES + len(value))
    elif isinstance(value, list | tuple):
        meter.spend(1 + len(value), OBJECT_BYTES + SLOT_BYTES * len(value))
    elif isinstance(value, set | dict):
        meter.spend(1 + len(value), OBJECT_BYTES + ENTRY_BYTES * len(value))
    return value


def _add(meter: Meter, a: Any, b: Any) -> Any:
    _int_operands(a, b)
    if isinstance(a, str | list | tuple) and type(a) is type(b):
        n = len(a) + len(b)
        if n > _seq_cap(a):
            raise Abort(f"concatenation would build {n} items; the limit is {_seq_cap(a)}")
        meter.spend(_chars(n) if isinstance(a, str) else 1 + n,
                    OBJECT_BYTES + (n if isinstance(a, str) else SLOT_BYTES * n))  # fmt: skip
        return operator.add(a, b)
    return _int_bound(operator.add(a, b))


def _sub(meter: Meter, a: Any, b: Any) -> Any:
    _int_operands(a, b)
    if isinstance(a, set) and isinstance(b, set):
        meter.spend(1 + len(a) + len(b), OBJECT_BYTES + ENTRY_BYTES * len(a))
    return _int_bound(operator.sub(a, b))


def _mul(meter: Meter, a: Any, b: Any) -> Any:
    _int_operands(a, b)
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | list | tuple) and isinstance(n, int):
            size = len(seq) * max(n, 0)
            if size > _seq_cap(seq):
                raise Abort(f"repetition would build {size} items; the limit is {_seq_cap(seq)}")
            meter.spend(_chars(size) if isinstance(seq, str) else 1 + size,
                        OBJECT_BYTES + (size if isinstance(seq, str) else SLOT_BYTES * size))  # fmt: skip
            return seq * n
    if type(a) is int and type(b) is int and a.bit_length() + b.bit_length() > LIMITS.int_bits + 1:
        raise Abort(f"product exceeds {LIMITS.int_bits} bits")
    return _int_bound(operator.mul(a, b))


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
    return _int_bound(operator.pow(a, b))


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


def _method(meter: Meter, value: Any, name: str) -> Callable[..., Any]:
    """A whitelisted method of ``value``, wrapped to price its work before it runs."""
    bound = getattr(value, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        if name == "join":
            return _join(meter, value, *args, **kwargs)
        if name == "replace":
            return _replace(meter, value, *args, **kwargs)
        if name == "split":
            return _split(meter, value, *args, **kwargs)
        if isinstance(value, dict):
            if args:
                meter.spend(meter.weigh(args[0]))
            return bound(*args, **kwargs)
        if isinstance(value, list):  # count, index
            needle = args[0] if args else None
            meter.spend(meter.weigh(value) + meter.weigh(needle))
            if name == "index" and needle not in value[slice(*(args[1:3] or (None,)))]:
                raise ValueError(f"{short_repr(needle)} is not in list")
            return bound(*args, **kwargs)
        # str methods: at most linear in the text and the arguments
        meter.spend(_chars(len(value)) + sum(meter.weigh(a) for a in args))
        result = bound(*args, **kwargs)
        if isinstance(result, str):
            if len(result) > LIMITS.string_chars:
                raise Abort(f"{name}() would build more than {LIMITS.string_chars} characters")
            meter.spend(0, OBJECT_BYTES + len(result))
        return result

    call.__name__ = name
    return _metered(call)


def _join(meter: Meter, sep: str, items: Iterable[Any]) -> str:
    parts = items if isinstance(items, list | tuple) else list(items)
    if len(parts) > LIMITS.sequence_items:
        raise Abort(f"join() of {len(parts)} items; the limit is {LIMITS.sequence_items}")
    n = len(sep) * len(parts) + sum(len(p) for p in parts if isinstance(p, str))
    if n > LIMITS.string_chars:
        raise Abort(f"join() would build more than {LIMITS.string_chars} characters")
    meter.spend(1 + len(parts) + _chars(n), OBJECT_BYTES + n)
    return sep.join(parts)


def _replace(meter: Meter, text: str, old: str, new: str, count: int = -1) -> str:
    meter.spend(_chars(len(text)) + _chars(len(old)))
    hits = text.count(old) if old else len(text) + 1
    if count >= 0:
        hits = min(hits, count)
    n = len(text) + hits * (len(new) - len(old))
    if n > LIMITS.string_chars:
        raise Abort(f"replace() would build more than {LIMITS.string_chars} characters")
    meter.spend(_chars(n), OBJECT_BYTES + n)
    return text.replace(old, new, count)


def _split(meter: Meter, text: str, sep: str | None = None, maxsplit: int = -1) -> list[str]:
    cap = LIMITS.sequence_items
    limit = cap if maxsplit < 0 else min(maxsplit, cap)
    meter.spend(_chars(len(text)))
    if sep is None:
        parts = min(len(text) // 2 + 1, limit + 1)
    else:
        parts = min(text.count(sep) if sep else 0, limit) + 1
    meter.spend(parts, OBJECT_BYTES + len(text) + (SLOT_BYTES + OBJECT_BYTES) * parts)
    out = text.split(sep, limit)
    if len(out) > cap:
        raise Abort(f"split() would build more than {cap} items")
    return out
