"""The JSON codec of every stored JSON column: orjson, with the standard library where
orjson would answer differently.

A step writes its context, its history rows' inputs, outputs and contexts and its tasks'
payloads as JSON, and a worker reads them back: with the standard ``json`` module that was
about a fifth of the client CPU of a batch of timers. orjson does the same work several
times faster, but it is not a drop-in: it refuses some values the standard module takes,
and it reads an integer wider than 64 bits as a float. Here it is used only where it gives
exactly what ``json`` gives; everything else takes the standard path:

* :func:`dumps` returns text (SQLite must bind JSON as TEXT, not a BLOB); a value orjson
  refuses (an integer wider than 64 bits, a non-string key, a lone surrogate, a subclass
  or a datetime it would convert on its own) is written by ``json.dumps``, which stores it
  or raises exactly as before;
* :func:`loads` hands any text holding a run of 20 or more digits (an integer that may not
  fit 64 bits) to ``json.loads``, so no integer ever comes back as a float, and so does
  any text orjson refuses (``json.loads`` then reads it, or raises its own error).

The stored text is compact (no spaces after separators) and UTF-8 rather than escaped;
both parse to the same values. Values reaching the store were checked by
:func:`statem.limits.check_json` (no NaN, no infinity), where the two modules agree.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import orjson

__all__ = ["dumps", "dumps_rows", "loads"]

_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_ROW_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
_WIDE = re.compile(r"\d{20}")
_WIDE_BYTES = re.compile(rb"\d{20}")


def dumps(value: Any) -> str:
    """``value`` as JSON text (see the module docstring for when the standard module writes it)."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:
        return json.dumps(value)


def dumps_rows(rows: Any) -> str:
    """Rows for the server to unpack (``json_populate_recordset``): as :func:`dumps`, with
    datetimes written as ISO 8601 text (what ``datetime.isoformat`` gives)."""
    try:
        return orjson.dumps(rows, option=_ROW_OPTIONS).decode()
    except TypeError:
        return json.dumps(rows, default=_isoformat)


def _isoformat(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def loads(text: str | bytes | bytearray | memoryview) -> Any:
    """The value of JSON ``text``; integers of any width stay integers."""
    if isinstance(text, memoryview):
        text = bytes(text)
    wide = _WIDE.search(text) if isinstance(text, str) else _WIDE_BYTES.search(text)
    if wide is not None:
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # what orjson refuses (an escaped lone surrogate) or a real error
