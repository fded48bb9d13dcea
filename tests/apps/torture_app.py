"""The application the crash-torture test runs in worker subprocesses.

`statem --app tests.apps.torture_app:make worker`: an order-like machine with actions, an
always-chain, an effect that logs every call by idempotency key, and a short timer; and a
poison machine whose effect kills the worker running it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from statem import Engine

MACHINE: dict[str, Any] = {
    "id": "torture",
    "version": 1,
    "start_at": "open",
    "context": {"n": "input['n']", "items": "[]", "charged": "None", "trail": "['open']"},
    "states": {
        "open": {
            "actions": {
                "add": {"context": {"items": "ctx['items'] + [input['sku']]"}},
                "close": {"state": "closing", "when": "len(ctx['items']) > 0"},
            }
        },
        "closing": {"always": [{"name": "tally", "state": "charging",
                                "context": {"trail": "ctx['trail'] + ['closing']"}}]},
        "charging": {
            "always": [{"name": "charge", "invoke": {
                "effect": "charge",
                "input": "{'n': ctx['n'], 'items': len(ctx['items'])}",
                # a SIGKILLed worker's claim counts as an attempt: leave room for many
                "retry": {"max_attempts": 100, "initial_seconds": 0.05, "max_seconds": 0.2},
                "success": {"state": "cooling", "context": {"charged": "output['amount']",
                                                            "trail": "ctx['trail'] + ['charged']"}},
            }}]
        },
        "cooling": {"always": [{"name": "settle", "state": "done", "wait_for": {"seconds": 0.2},
                                "context": {"trail": "ctx['trail'] + ['settled']"}}]},
        "done": {"end": True, "return": "{'n': ctx['n'], 'charged': ctx['charged']}"},
    },
}  # fmt: skip


#: A machine whose effect kills the worker running it (``os._exit``): it must end in
#: ``poisoned`` after at most ``max_attempts`` dead workers, never stay ``running``.
POISON: dict[str, Any] = {
    "id": "poison",
    "version": 1,
    "start_at": "go",
    "states": {
        "go": {"always": [{"name": "swallow", "invoke": {
            "effect": "poison",
            "retry": {"max_attempts": 2, "initial_seconds": 0},
            "success": {"state": "survived"},
            "error": {"state": "poisoned", "context": {"why": "output"}},
        }}]},
        "survived": {"end": True},
        "poisoned": {"end": True},
    },
}  # fmt: skip


def poison(input: dict[str, Any], *, idempotency_key: str) -> Any:
    """Kill this worker process on the spot (after noting the call in $FX_POISON)."""
    calls = os.environ.get("FX_POISON")
    if calls:
        with Path(calls).open("a") as f:
            f.write(f"{idempotency_key}\n")
    os._exit(3)


def charge(input: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """A deterministic effect; each call is appended to $FX_CALLS (when set)."""
    calls = os.environ.get("FX_CALLS")
    if calls:
        with Path(calls).open("a") as f:
            f.write(f"{idempotency_key}\n")
    time.sleep(0.02)
    return {"amount": input["n"] * 10 + input["items"]}


def make() -> Engine:
    """The Engine on STATEM_DATABASE_URL with the `charge` effect."""
    engine = Engine(os.environ["STATEM_DATABASE_URL"])
    engine.effects.register("charge", charge)
    engine.effects.register("poison", poison)
    return engine
