"""The bounds of one expression evaluation, and the meter that enforces them.

:data:`LIMITS` names every bound. A :class:`Meter` holds the budgets of one evaluation:
*work* (an estimate of the elements a C-level operation will touch, charged before the
operation runs, so no single operator or helper call can run long), *memory* (bytes of
the values the evaluation produces, charged as they are produced) and a wall-clock
deadline, checked at every charge. :func:`short_repr` renders any value in a bounded
number of characters, for error messages; :func:`describe` turns an exception into a
bounded message (a ``KeyError`` of a huge key never becomes a huge string).
:func:`to_json` copies a value as plain JSON data, counting its size as it goes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, TypeAlias

from .errors import InputError
from .settings import MAX_VALUE_BYTES

JSON: TypeAlias = Any
"""A JSON value: dict with str keys, list, str, int, float, bool or None."""


@dataclass(frozen=True)
class Limits:
    """The bounds every evaluation runs under (documented in docs/expressions.md)."""

    source_chars: int = 10_000
    depth: int = 50
    nodes: int = 200_000
    seconds: float = 1.0
    string_chars: int = 1_000_000
    sequence_items: int = 100_000
    int_bits: int = 4_096
    range_items: int = 100_000
    work: int = 5_000_000
    memory_bytes: int = 32_000_000
    result_bytes: int = MAX_VALUE_BYTES
    message_chars: int = 200


LIMITS = Limits()

#: Work units per character of a string (C code walks strings fast).
CHARS_PER_UNIT = 16
#: Work units per bit of an integer.
BITS_PER_UNIT = 64


#: Bytes charged per slot of a list or tuple, per entry of a dict or set, per object.
SLOT_BYTES, ENTRY_BYTES, OBJECT_BYTES = 8, 64, 56


def chars(n: int) -> int:
    """Work units to walk ``n`` characters."""
    return 1 + n // CHARS_PER_UNIT


def int_bound(value: Any) -> Any:
    """``value``, unless it is an int over the integer bound (then Abort)."""
    if type(value) is int and value.bit_length() > LIMITS.int_bits:
        raise Abort(f"integer exceeds {LIMITS.int_bits} bits")
    return value


class Abort(Exception):
    """A bound was hit; the message says which. Never caught inside the sandbox."""


class Meter:
    """The work, memory and time budgets of one evaluation."""

    __slots__ = ("_weights", "deadline", "memory", "work")

    def __init__(self) -> None:
        self.work = LIMITS.work
        self.memory = LIMITS.memory_bytes
        self.deadline = time.monotonic() + LIMITS.seconds
        self._weights: dict[int, tuple[object, int]] = {}

    def reset(self) -> None:
        """Full budgets for a new evaluation."""
        self.work = LIMITS.work
        self.memory = LIMITS.memory_bytes
        self.deadline = time.monotonic() + LIMITS.seconds
        self._weights = {}

    def forget(self) -> None:
        """Drop the references the measurements hold (the evaluation is over)."""
        self._weights = {}

    def check_time(self) -> None:
        """Abort when the evaluation has run past its deadline."""
        if time.monotonic() > self.deadline:
            raise Abort(f"expression ran longer than {LIMITS.seconds:g}s")

    def spend(self, work: int, memory: int = 0) -> None:
        """Charge ``work`` units and ``memory`` bytes *before* doing the work; abort past a budget."""
        self.work -= work
        self.memory -= memory
        if self.work < 0:
            raise Abort(f"expression does more than {LIMITS.work} units of work (see LIMITS.work)")
        if self.memory < 0:
            raise Abort(f"expression allocates more than {LIMITS.memory_bytes} bytes")
        self.check_time()

    def weigh(self, value: object) -> int:
        """Work units to touch every part of ``value`` once (compare, hash or render it).

        Containers are measured once per evaluation (by identity, so a list repeating one
        item 100,000 times costs 100,000 steps to measure, not the item's size each time);
        the measuring walk is charged as work too, and stops as soon as the weight exceeds
        the whole work budget.
        """
        kind = type(value)
        if kind is str:
            return 1 + len(value) // CHARS_PER_UNIT  # type: ignore[arg-type]
        if kind is int:
            bits: int = value.bit_length()  # type: ignore[attr-defined]
            return 1 + bits // BITS_PER_UNIT
        if kind is float or kind is bool or value is None:
            return 1
        hit = self._weights.get(id(value))
        if hit is not None:
            return hit[1]
        if isinstance(value, dict):
            items: Any = [*value.keys(), *value.values()] if len(value) <= LIMITS.work else ()
        elif isinstance(value, list | tuple | set | frozenset):
            items = value
        else:
            try:
                items = list(value)  # type: ignore[call-overload]  # dict views
            except TypeError:
                return 1
        size = len(items)
        self.spend(1 + size // 8)
        total = 1 + size
        for item in items:
            total += self.weigh(item)
            if total > LIMITS.work:
                break
        self._weights[id(value)] = (value, total)
        return total

    def text_size(self, value: object, str_factor: int = 4) -> int:
        """An upper bound of ``len(repr(value))``, or more than the string limit: stops there.

        Strings count ``str_factor`` characters per character (escapes), numbers their
        digits, containers their brackets and separators; shared parts count every time
        they would be rendered. The walk checks the deadline as it goes.
        """
        limit = LIMITS.string_chars
        total, steps = 0, 0
        todo: list[object] = [value]
        while todo and total <= limit:
            v = todo.pop()
            steps += 1
            if steps % 4096 == 0:
                self.spend(4096)
            if isinstance(v, str):
                total += 2 + str_factor * len(v)
            elif isinstance(v, bool) or v is None:
                total += 5
            elif isinstance(v, int):
                total += 2 + v.bit_length() * 30103 // 100000
            elif isinstance(v, float):
                total += 24
            elif isinstance(v, dict):
                total += 2 + 4 * len(v)
                todo.extend(v.keys())
                todo.extend(v.values())
            elif isinstance(v, list | tuple | set | frozenset):
                total += 2 + 2 * len(v)
                todo.extend(v)
            else:
                total += 100
        return total


def short_repr(value: Any, chars: int | None = None) -> str:
    """``repr(value)`` cut to about ``chars`` characters, without ever building the full text."""
    limit = LIMITS.message_chars if chars is None else chars
    out: list[str] = []
    room = [limit]

    def put(text: str) -> bool:
        out.append(text[: max(room[0], 0)])
        room[0] -= len(text)
        return room[0] > 0

    def walk(v: Any, depth: int) -> bool:
        if isinstance(v, str):
            cut = v[: max(room[0], 0) + 1]
            return put(repr(cut) if len(cut) == len(v) else repr(cut)[:-1] + "...'")
        if isinstance(v, bool) or v is None or isinstance(v, float):
            return put(repr(v))
        if isinstance(v, int):
            return put(repr(v) if v.bit_length() < 2_000 else f"<an integer of {v.bit_length()} bits>")
        if isinstance(v, dict):
            opened, closed, pairs = "{", "}", True
        elif isinstance(v, list):
            opened, closed, pairs = "[", "]", False
        elif isinstance(v, tuple):
            opened, closed, pairs = "(", ")", False
        elif isinstance(v, set | frozenset):
            opened, closed, pairs = "{", "}", False
        else:
            return put(f"<{type(v).__name__}>")
        if depth > 3:
            return put(opened + "..." + closed)
        if not put(opened):
            return False
        for i, item in enumerate(v.items() if pairs else v):
            if i >= 8:
                return put(", ...") and put(closed)
            if i and not put(", "):
                return False
            if pairs:
                if not (walk(item[0], depth + 1) and put(": ") and walk(item[1], depth + 1)):
                    return False
            elif not walk(item, depth + 1):
                return False
        return put(closed)

    if not walk(value, 0):
        return "".join(out)[:limit] + "..."
    return "".join(out)


def describe(exc: BaseException) -> str:
    """``'KeyError: ...'``: the exception's type and message, bounded in length.

    ``str(exc)`` is never called on an exception carrying values: a ``KeyError`` whose
    key is a tuple of 100,000 one-megabyte strings would render as 100 GB.
    """
    name = type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = short_repr(exc.args[0])  # what str(KeyError(key)) shows, bounded
    else:
        text = ", ".join(a if isinstance(a, str) else short_repr(a) for a in exc.args)
    limit = LIMITS.message_chars * 2
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{name}: {text}" if text else name


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
                    raise InputError(f"a dict with a non-string key {short_repr(k)}")
                spend(len(k) + 2)
                out[k] = walk(x, depth + 1)
            return out
        raise InputError(f"a non-JSON value of type {type(v).__name__}")

    return walk(value, 0)
