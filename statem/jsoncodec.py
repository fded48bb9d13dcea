"""How statem decodes the JSON columns it reads on PostgreSQL: orjson, with the standard
library's result wherever the two could differ. (SQLite engines keep ``json.loads``: with
this decoder, ``tests/test_faults.py``'s SQLite crash torture left timers stuck, claimed
again and again by workers killed before they fired them, in every run; the cause was not
found, and the figures that asked for orjson were PostgreSQL's.)

Decoding JSON is most of the client's time in a read of many rows (``history()`` of a
1,000-step execution spent about two thirds of its CPU in ``json.loads``, called by
psycopg per column per row; see ``bench/README.md``, "million"). orjson decodes the same
documents several times faster. Its results equal ``json.loads``'s except in two cases,
both sent to ``json.loads`` here, so a value still comes back exactly as it went in:

* integers beyond 64 bits (orjson returns a float): any text with a run of 19 or more
  digits (every such integer has 20) is decoded by ``json.loads``;
* documents orjson refuses (``NaN``, ``Infinity``, an overflowing exponent, a lone
  surrogate escape): ``json.loads`` decodes them, or raises as it always did.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")


def loads(data: str | bytes) -> Any:
    """``json.loads(data)``, through orjson when the result is certainly the same."""
    digits = _LONG_DIGITS_TEXT if isinstance(data, str) else _LONG_DIGITS_BYTES
    if digits.search(data) is None:  # type: ignore[arg-type]  # the pattern matches data's type
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)
