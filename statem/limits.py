"""The documented limits on what statem stores, checked at the door and before every commit.

Values it stores must come back exactly as they went in, on SQLite and PostgreSQL alike,
and must never wedge an execution in a step that can then never commit. So:

* **Execution ids** a caller chooses: 1 to ``MAX_EXECUTION_ID_LENGTH`` (128) characters,
  each a letter, a digit or one of ``_ - . : @`` (:data:`EXECUTION_ID_PATTERN`). A child
  execution's id is derived from its parent's (:func:`child_execution_id`): it contains
  ``~``, which callers may not use, so it never collides with a caller's id, and a long
  parent's id is shortened with a hash, so it always fits the 200-character column, at
  any depth.
* **Text** (in inputs, contexts, outputs, ids, action names, keys): no NUL character and
  no surrogate code point (PostgreSQL cannot store either; a surrogate is not Unicode).
* **Numbers**: integers of at most ``MAX_INT_DIGITS`` (4,300) digits, the most Python
  converts to the text JSON needs; floats finite.
* **Sizes**: a context, an input or an output at most ``MAX_VALUE_BYTES`` (1 MB) of JSON;
  one history row (its input, output and context together) as much; all the rows one
  step appends at most ``MAX_STEP_BYTES`` (8 MB).
* **Time**: a timer at most ``MAX_DURATION_SECONDS`` (100 years) ahead.

Everything here raises :class:`~statem.errors.InputError` (or ExpressionError for a
timer's ``until``) naming what is wrong and where; in ``start``/``trigger`` nothing is
then applied, and in a step the executor runs the execution fails with the error recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any

from .errors import ExpressionError, InputError
from .semantics import Outcome, StepRecord
from .settings import (
    MAX_DURATION_SECONDS,
    MAX_EXECUTION_ID_LENGTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_INT_DIGITS,
    MAX_STEP_BYTES,
    MAX_STEP_ROW_BYTES,
    MAX_VALUE_BYTES,
)

#: What a caller-chosen execution id must match (and at most MAX_EXECUTION_ID_LENGTH long).
EXECUTION_ID_PATTERN = r"[A-Za-z0-9_.:@-]+"
#: Separates a child's id from its parent's; callers may not use it in their ids.
CHILD_SEPARATOR = "~"
#: Width of the id columns.
ID_COLUMN_LENGTH = 200

_ID_RE = re.compile(EXECUTION_ID_PATTERN)
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_INT_BOUND = 10**MAX_INT_DIGITS
#: A parent id longer than this is shortened (prefix + hash) in its children's ids.
_KEPT_PREFIX = 100


class _Bad(Exception):
    """A value breaks a limit; ``where`` is filled in on the way out of the walk."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.where: list[str] = []


# --------------------------------------------------------------------------- text


def text_problem(text: str) -> str | None:
    """What makes ``text`` unstorable (a NUL or a surrogate), or None."""
    if text.isascii() and "\x00" not in text:
        return None
    found = _BAD_TEXT.search(text)
    if found is None:
        return None
    ch = found.group()
    if ch == "\x00":
        return f"a NUL character (\\x00) at offset {found.start()}"
    return f"a surrogate code point (\\u{ord(ch):04x}) at offset {found.start()}, which is not Unicode text"


def clean_text(text: str | None) -> str | None:
    """``text`` with NULs and surrogates replaced by U+FFFD (for error messages we store)."""
    if text is None or text_problem(text) is None:
        return text
    return _BAD_TEXT.sub("\ufffd", text)


def check_text(value: object, what: str, max_length: int | None = None) -> str:
    """A string argument (an action name, a key): storable text, not empty, not too long."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InputError(f"{what} must not be empty")
    problem = text_problem(value)
    if problem is not None:
        raise InputError(f"{what} {_short(value)} holds {problem}")
    if max_length is not None and len(value) > max_length:
        raise InputError(f"{what} is {len(value)} characters long; the limit is {max_length}")
    return value


def check_idempotency_key(key: object) -> str:
    """An idempotency key: 1 to MAX_IDEMPOTENCY_KEY_LENGTH characters of storable text."""
    return check_text(key, "idempotency key", MAX_IDEMPOTENCY_KEY_LENGTH)


# --------------------------------------------------------------------------- ids


def check_execution_id(value: object) -> str:
    """A caller-chosen execution id, or InputError saying what the rule is."""
    if not isinstance(value, str):
        raise InputError(f"execution id must be a string, not {type(value).__name__}")
    rule = (
        f"an execution id is 1 to {MAX_EXECUTION_ID_LENGTH} characters, "
        "each a letter, a digit or one of _ - . : @"
    )
    if not value:
        raise InputError(f"execution id must not be empty ({rule})")
    if len(value) > MAX_EXECUTION_ID_LENGTH:
        raise InputError(f"execution id is {len(value)} characters long ({rule})")
    if _ID_RE.fullmatch(value) is None:
        bad = next(ch for ch in value if _ID_RE.fullmatch(ch) is None)
        raise InputError(f"execution id {_short(value)} contains {bad!r} ({rule})")
    return value


def child_execution_id(parent_id: str, task_id: int) -> str:
    """The id of the child a parent's child task starts: ``<parent>~<task id>``.

    Task ids are never reused, and ``~`` is not allowed in a caller's id, so a child id
    is unique and never equals an id a caller chose. A parent id too long for its
    children's ids to fit the column is kept as its first 100 characters and a hash of
    the whole (``<prefix>~h<16 hex>~<task id>``), so children fit at any depth.
    """
    candidate = f"{parent_id}{CHILD_SEPARATOR}{task_id}"
    if len(candidate) <= ID_COLUMN_LENGTH:
        return candidate
    digest = hashlib.sha256(parent_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{parent_id[:_KEPT_PREFIX]}{CHILD_SEPARATOR}h{digest}{CHILD_SEPARATOR}{task_id}"


# --------------------------------------------------------------------------- values


def _size(value: Any, memo: dict[int, int]) -> int:
    """Approximate JSON size of ``value`` in bytes, checking text and numbers as it goes.

    Containers already walked in this check (``memo``, by identity) count without a
    second walk: the rows of one step share most of their values.
    """
    if isinstance(value, str):
        if not value.isascii() or "\x00" in value:
            problem = text_problem(value)
            if problem is not None:
                raise _Bad(f"text holding {problem}")
        return len(value) + 2
    if value is None or isinstance(value, bool):
        return 5
    if isinstance(value, int):
        if value.bit_length() > 64 and abs(value) >= _INT_BOUND:
            raise _Bad(
                f"an integer of more than {MAX_INT_DIGITS} digits (about {value.bit_length() * 3 // 10})"
            )
        return 21
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"a non-finite number ({value}), which JSON cannot hold")
        return 24
    known = memo.get(id(value))
    if known is not None:
        return known
    total = 2
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            try:
                total += _size(item, memo) + 1
            except _Bad as bad:
                bad.where.append(f"[{i}]")
                raise
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"[{key!r}]"
            try:
                if not isinstance(key, str):
                    raise _Bad(f"a non-string key {key!r}")
                total += _size(key, memo) + _size(item, memo) + 2
            except _Bad as bad:
                bad.where.append(where)
                raise
    else:
        raise _Bad(f"a non-JSON value of type {type(value).__name__}")
    memo[id(value)] = total
    return total


def _measure(value: Any, what: str, memo: dict[int, int]) -> int:
    try:
        return _size(value, memo)
    except _Bad as bad:
        where = "".join(reversed(bad.where))
        raise InputError(
            f"{what} is not acceptable: {bad.reason}" + (f" at {what}{where}" if where else "")
        ) from None


def check_value(value: Any, what: str, limit: int = MAX_VALUE_BYTES) -> Any:
    """``value`` if it is storable JSON within ``limit`` bytes, else InputError naming
    ``what`` and the path to the offending part (``input['items'][3]``)."""
    size = _measure(value, what, {})
    if size > limit:
        raise InputError(f"{what} is not acceptable: about {size} bytes of JSON; the limit is {limit}")
    return value


def check_outcome(outcome: Outcome, now: dt.datetime) -> None:
    """Check everything a step is about to store: the context, the output, each history
    row, the tasks it arms (their input, and a timer's due time). Raises InputError (or
    ExpressionError for a timer's ``until``) with nothing written."""
    memo: dict[int, int] = {}
    check_size(_measure(outcome.context, "the context", memo), "the context", MAX_VALUE_BYTES)
    _measure(outcome.output, "the output", memo)
    _check_rows(outcome.steps, memo)
    latest = now + dt.timedelta(seconds=MAX_DURATION_SECONDS)
    for spec in outcome.tasks:
        _measure(spec.payload, f"the {spec.kind} task's input", memo)
        if spec.kind == "timer":
            _check_due(spec.due_at, latest, str(spec.payload.get("transition", "")))


def _check_rows(records: Sequence[StepRecord], memo: dict[int, int]) -> None:
    total = 0
    for i, r in enumerate(records):
        try:  # the row's name is only spelled out for an error (this runs on every step)
            row = _size(r.input, memo) + _size(r.output, memo) + _size(r.context, memo)
        except _Bad:
            what = _row_name(i, r)
            for part in ("input", "output", "context"):
                _measure(getattr(r, part), f"{what}: {part}", memo)
            raise
        if row > MAX_STEP_ROW_BYTES:
            check_size(row, _row_name(i, r), MAX_STEP_ROW_BYTES)
        total += row
    check_size(total, "the history rows of one step", MAX_STEP_BYTES)


def _row_name(i: int, r: StepRecord) -> str:
    return f"history row {i + 1} of the step ({r.kind} {r.name or ''})".replace(" )", ")")


def check_size(size: int, what: str, limit: int) -> None:
    """InputError if ``size`` bytes of JSON exceed ``limit``."""
    if size > limit:
        raise InputError(f"{what} is not acceptable: about {size} bytes of JSON; the limit is {limit}")


def _check_due(due: dt.datetime, latest: dt.datetime, transition: str) -> None:
    try:
        ahead = due.astimezone(dt.UTC) > latest
        problem = f"more than {MAX_DURATION_SECONDS / 86400 / 366:.0f} years ahead" if ahead else None
    except (OverflowError, ValueError) as exc:
        problem = f"it cannot be expressed in UTC ({exc})"
    if problem is not None:
        raise ExpressionError(
            f"a timer due at {due.isoformat()} is out of range: {problem}",
            path=f"{transition}.wait_for" if transition else "",
        )


def _short(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."
