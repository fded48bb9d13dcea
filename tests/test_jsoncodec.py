"""The stored-JSON codec: orjson's speed, the standard module's answers. (Values through
the engine and both databases: tests/test_engine.py,
test_values_come_back_exactly_through_the_json_decoder.)"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from statem import jsoncodec

SAME = [
    None,
    0,
    -1,
    2**63 - 1,
    2**64 - 1,
    1.5,
    1e16,
    "naïve ☃ \u0000x",
    [1, [2, {"a": None}]],
    {"k": {"nested": [True, False]}, "": "empty key"},
]
WIDE = [2**64, -(2**64), int("9" * 400), {"n": 10**30}, [1.0, 12345678901234567890123]]


@pytest.mark.parametrize("value", SAME + WIDE)
def test_round_trip_gives_back_the_value_with_its_types(value: Any) -> None:
    back = jsoncodec.loads(jsoncodec.dumps(value))
    assert back == value and json.dumps(back) == json.dumps(value)  # ints stay ints, floats floats


@pytest.mark.parametrize("value", WIDE)
def test_wide_integers_never_come_back_as_floats(value: Any) -> None:
    text = json.dumps(value)
    assert jsoncodec.loads(text) == json.loads(text)
    assert jsoncodec.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("value", [{1: "int key"}, "\ud800", dt.datetime(2026, 1, 1), {1, 2}])
def test_what_orjson_refuses_or_converts_is_answered_as_the_standard_module_does(value: Any) -> None:
    try:
        expected: Any = json.dumps(value)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            jsoncodec.dumps(value)
    else:
        assert jsoncodec.loads(jsoncodec.dumps(value)) == json.loads(expected)
