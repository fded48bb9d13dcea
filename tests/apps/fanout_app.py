"""The application the fan-out crash test runs in worker subprocesses.

`statem --app tests.apps.fanout_app:make worker`: a map of 20 effects, 5 at once, whose
effect logs every call by idempotency key.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from statem import Engine

MACHINE: dict[str, Any] = {
    "id": "fanout-torture",
    "version": 1,
    "start_at": "picking",
    "context": {"n": "input['n']"},
    "states": {
        "picking": {"always": [{"name": "pick", "invoke": {
            "map": "list(range(20))",
            "effect": "pick",
            "input": "{'n': ctx['n'], 'i': index, 'item': item}",
            "max_concurrency": 5,
            # a claim whose worker is killed uses up an attempt (attempts count at claim)
            "retry": {"max_attempts": 100, "initial_seconds": 0.1},
            "success": {"state": "done", "context": {"picked": "output"}},
        }}]},
        "done": {"end": True, "return": "ctx['picked']"},
    },
}  # fmt: skip


def pick(input: dict[str, Any], *, idempotency_key: str) -> int:
    """A deterministic effect; each call is appended to $FX_CALLS (when set)."""
    calls = os.environ.get("FX_CALLS")
    if calls:
        with Path(calls).open("a") as f:
            f.write(f"{idempotency_key}\n")
    time.sleep(0.1)
    return int(input["n"] * 100 + input["item"])


def make() -> Engine:
    """The Engine on STATEM_DATABASE_URL with the `pick` effect."""
    engine = Engine(os.environ["STATEM_DATABASE_URL"])
    engine.effects.register("pick", pick)
    return engine
