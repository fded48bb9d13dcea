"""The helpers and methods expressions may call, each pricing its work before doing it.

:class:`Helpers` holds the helper functions of one interpreter (``len``, ``sorted``,
``str``, ``int``...), bound to its :class:`~statem.bounds.Meter`; :func:`method` wraps a
whitelisted method of a str, dict or list the same way. Each charges the work it will do
and the memory it will build, and checks the sizes it would produce against
:data:`~statem.bounds.LIMITS`, before calling the real function: ``int()`` of a long
string, ``sorted()`` of huge keys, ``split()`` into too many parts are refused before
they start.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any

from .bounds import (
    ENTRY_BYTES,
    LIMITS,
    OBJECT_BYTES,
    SLOT_BYTES,
    Abort,
    Meter,
    chars,
    int_bound,
    short_repr,
)

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


def metered(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a callable as one the sandbox may call: it prices its own work before doing it."""
    func._statem_metered = True  # type: ignore[attr-defined]
    func._statem_name = func.__name__.removeprefix("_h_")  # type: ignore[attr-defined]
    return func


class Helpers:
    """The helper functions of one interpreter, charging its meter."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def functions(self) -> dict[str, Any]:
        """The helpers by the names expressions call them."""
        return {name: getattr(self, f"_h_{name}") for name in HELPERS}

    def render(self, value: Any, how: Callable[[object], str]) -> str:
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

    def items(self, value: Any, what: str) -> list[Any]:
        """``list(value)``, refused before it is built when it would be too long."""
        n = len(value) if hasattr(value, "__len__") else None
        if n is None:
            raise TypeError(f"{what}() takes a list, tuple, dict, set or string")
        if n > LIMITS.sequence_items:
            raise Abort(f"{what}() would build {n} items; the limit is {LIMITS.sequence_items}")
        self.meter.spend(1 + n, OBJECT_BYTES + SLOT_BYTES * n)
        return list(value)

    def keyed(self, items: list[Any], key: Any) -> list[Any]:
        """The sort keys of ``items``: each ``key`` call is a metered helper or method."""
        if key is None:
            return items
        if not getattr(key, "_statem_metered", False):
            raise TypeError("key= takes a helper or a method")
        return [key(x) for x in items]

    @metered
    def _h_len(self, value: Any) -> int:
        return len(value)

    @metered
    def _h_sorted(self, iterable: Any, key: Any = None, reverse: bool = False) -> list[Any]:
        items = self.items(iterable, "sorted")
        keys = self.keyed(items, key)
        rounds = math.ceil(math.log2(len(items) + 1))  # compares each item takes part in
        self.meter.spend(rounds * self.meter.weigh(keys), OBJECT_BYTES + SLOT_BYTES * len(items))
        if key is None:
            return sorted(items, reverse=bool(reverse))
        order = sorted(range(len(items)), key=keys.__getitem__, reverse=bool(reverse))
        return [items[i] for i in order]

    def _extreme(self, pick: Callable[..., Any], name: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        """``min``/``max`` over one iterable or several arguments, with ``key`` and ``default``."""
        key = kw.pop("key", None)
        items = self.items(args[0] if len(args) == 1 else args, name)
        if not items and "default" in kw:
            return kw["default"]
        if kw.keys() - {"default"}:
            raise TypeError(f"{name}() got an unexpected keyword argument")
        keys = self.keyed(items, key)
        self.meter.spend(2 * self.meter.weigh(keys))
        if not keys:
            raise ValueError(f"{name}() arg is an empty sequence")
        best = pick(range(len(items)), key=keys.__getitem__)
        return items[best]

    @metered
    def _h_min(self, *args: Any, **kw: Any) -> Any:
        return self._extreme(min, "min", args, kw)

    @metered
    def _h_max(self, *args: Any, **kw: Any) -> Any:
        return self._extreme(max, "max", args, kw)

    @metered
    def _h_sum(self, values: Any, start: Any = 0) -> Any:
        if not isinstance(start, int | float) or isinstance(start, bool):
            raise Abort("sum() adds numbers only; use a comprehension to join lists or strings")
        items = self.items(values, "sum")
        if not all(type(x) in (int, float, bool) for x in items):
            raise TypeError("sum() adds numbers only")
        self.meter.spend(self.meter.weigh(items))
        return int_bound(sum(items, start))

    @metered
    def _h_abs(self, number: Any) -> Any:
        return abs(number)

    @metered
    def _h_round(self, number: Any, ndigits: int | None = None) -> Any:
        if ndigits is not None and abs(ndigits) > 100:
            raise Abort("round() takes at most 100 digits")
        return round(number, ndigits)

    @metered
    def _h_any(self, iterable: Any) -> bool:
        return any(self.items(iterable, "any"))

    @metered
    def _h_all(self, iterable: Any) -> bool:
        return all(self.items(iterable, "all"))

    @metered
    def _h_str(self, value: Any = "") -> str:
        return value if isinstance(value, str) else self.render(value, str)

    @metered
    def _h_int(self, value: Any = 0, base: Any = None) -> int:
        if isinstance(value, str):
            text = value.strip()
            self.meter.spend(chars(len(value)), len(text))
            radix = 10 if base is None else base  # base 0 reads any prefix: hex at worst
            bits_per_char = math.log2(radix) if isinstance(radix, int) and radix >= 2 else 4.0
            if (len(text) - 2) * bits_per_char > LIMITS.int_bits + 8:
                raise Abort(f"int() of a {len(text)}-character string would exceed {LIMITS.int_bits} bits")
            number: int = int(text) if base is None else int(text, base)
            int_bound(number)
            return number
        if base is not None:
            raise TypeError("int() can't convert non-string with explicit base")
        number = int(value)
        int_bound(number)
        return number

    @metered
    def _h_float(self, value: Any = 0.0) -> float:
        if isinstance(value, str):
            self.meter.spend(chars(len(value)))
            if len(value) > 1000:
                raise ValueError(f"could not convert a {len(value)}-character string to float")
        return float(value)

    @metered
    def _h_bool(self, value: Any = False) -> bool:
        return bool(value)

    @metered
    def _h_dict(self, *args: Any, **kw: Any) -> dict[str, Any]:
        if len(args) > 1:
            raise TypeError(f"dict expected at most 1 argument, got {len(args)}")
        n = len(kw) + (len(args[0]) if args and hasattr(args[0], "__len__") else 0)
        if n > LIMITS.sequence_items:
            raise Abort(f"dict() would build {n} entries; the limit is {LIMITS.sequence_items}")
        if args:
            self.meter.spend(self.meter.weigh(args[0]), OBJECT_BYTES + ENTRY_BYTES * n)
        return dict(*args, **kw)

    @metered
    def _h_list(self, iterable: Any = ()) -> list[Any]:
        return self.items(iterable, "list")

    @metered
    def _h_range(self, *args: int) -> list[int]:
        r = range(*args)
        if len(r) > LIMITS.range_items:
            raise Abort(f"range of {len(r)} items exceeds the limit of {LIMITS.range_items}")
        self.meter.spend(1 + len(r), OBJECT_BYTES + (SLOT_BYTES + 32) * len(r))
        return list(r)

    @metered
    def _h_now(self) -> str:
        return dt.datetime.now(dt.UTC).isoformat()

    @metered
    def _h_get_in(self, obj: Any, path: Iterable[Any], default: Any = None) -> Any:
        for key in self.items(path, "get_in"):
            self.meter.spend(self.meter.weigh(key))
            try:
                obj = obj[key]
            except (KeyError, IndexError, TypeError):
                return default
        return obj

    @metered
    def _h_merge(self, *dicts: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in dicts:
            if not isinstance(d, Mapping):
                raise TypeError(f"merge() takes mappings, not {type(d).__name__}")
            self.meter.spend(1 + len(d), ENTRY_BYTES * len(d))
            out.update(d)
        return out


# ---------------------------------------------------------------------- methods


def method(meter: Meter, value: Any, name: str) -> Callable[..., Any]:
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
        meter.spend(chars(len(value)) + sum(meter.weigh(a) for a in args))
        result = bound(*args, **kwargs)
        if isinstance(result, str):
            if len(result) > LIMITS.string_chars:
                raise Abort(f"{name}() would build more than {LIMITS.string_chars} characters")
            meter.spend(0, OBJECT_BYTES + len(result))
        return result

    call.__name__ = name
    return metered(call)


def _join(meter: Meter, sep: str, items: Iterable[Any]) -> str:
    size = len(items) if isinstance(items, Sized) else 0
    if size > LIMITS.sequence_items:
        raise Abort(f"join() of {size} items; the limit is {LIMITS.sequence_items}")
    meter.spend(1 + size, OBJECT_BYTES + SLOT_BYTES * size)
    parts = items if isinstance(items, list | tuple) else list(items)
    n = len(sep) * len(parts) + sum(len(p) for p in parts if isinstance(p, str))
    if n > LIMITS.string_chars:
        raise Abort(f"join() would build more than {LIMITS.string_chars} characters")
    meter.spend(1 + len(parts) + chars(n), OBJECT_BYTES + n)
    return sep.join(parts)


def _replace(meter: Meter, text: str, old: str, new: str, count: int = -1) -> str:
    meter.spend(chars(len(text)) + chars(len(old)))
    hits = text.count(old) if old else len(text) + 1
    if count >= 0:
        hits = min(hits, count)
    n = len(text) + hits * (len(new) - len(old))
    if n > LIMITS.string_chars:
        raise Abort(f"replace() would build more than {LIMITS.string_chars} characters")
    meter.spend(chars(n), OBJECT_BYTES + n)
    return text.replace(old, new, count)


def _split(meter: Meter, text: str, sep: str | None = None, maxsplit: int = -1) -> list[str]:
    cap = LIMITS.sequence_items
    limit = cap if maxsplit < 0 else min(maxsplit, cap)
    meter.spend(chars(len(text)))
    if sep is None:
        parts = min(len(text) // 2 + 1, limit + 1)
    else:
        parts = min(text.count(sep) if sep else 0, limit) + 1
    meter.spend(parts, OBJECT_BYTES + len(text) + (SLOT_BYTES + OBJECT_BYTES) * parts)
    out = text.split(sep, limit)
    if len(out) > cap:
        raise Abort(f"split() would build more than {cap} items")
    return out
