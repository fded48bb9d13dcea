"""The benchmarks' application: a no-op effect and the machines the benchmarks run.

Worker subprocesses load it with ``statem --app bench.app:make worker`` (the database
comes from ``STATEM_DATABASE_URL``, which the CLI's ``--db`` reads too).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from statem import Engine

#: The effect every benchmark machine invokes; it does nothing and answers at once.
NOOP = "bench.noop"
MACHINES = Path(__file__).resolve().parent.parent / "machines"


def noop(input: Any, *, idempotency_key: str) -> dict[str, Any]:
    """Answer like the shipping service's create-shipment operation, without any io."""
    return {"tracking": idempotency_key}


def register(engine: Engine) -> Engine:
    """Register the no-op effect on ``engine``."""
    engine.effects.register(NOOP, noop)
    return engine


def make() -> Engine:
    """The ``--app`` factory: an Engine on ``STATEM_DATABASE_URL`` with the no-op effect."""
    return register(Engine(os.environ["STATEM_DATABASE_URL"], env={"shipping_url": "http://unused.invalid"}))


# --------------------------------------------------------------------------- machines


def counter_machine() -> dict[str, Any]:
    """One state with a ``bump`` action that adds 1 to a counter in the context."""
    return {
        "id": "bench_counter",
        "version": 1,
        "start_at": "counting",
        "context": {"n": "0"},
        "states": {
            "counting": {"actions": {"bump": {"state": "counting", "context": {"n": "ctx['n'] + 1"}}}},
        },
    }


def chain_machine(length: int = 10) -> dict[str, Any]:
    """``start_at`` chains ``length`` always-transitions, each updating the context, then rests."""
    states: dict[str, Any] = {
        f"s{i}": {"always": [{"name": f"step{i}", "state": f"s{i + 1}", "context": {"n": "ctx['n'] + 1"}}]}
        for i in range(length)
    }
    states[f"s{length}"] = {"actions": {"again": {"state": "s0"}}}
    return {"id": "bench_chain", "version": 1, "start_at": "s0", "context": {"n": "0"}, "states": states}


def effect_machine() -> dict[str, Any]:
    """The start state invokes the no-op effect; its success ends the execution."""
    return {
        "id": "bench_effect",
        "version": 1,
        "start_at": "calling",
        "context": {"n": "input.get('n', 0)"},
        "states": {
            "calling": {
                "always": [
                    {
                        "name": "call",
                        "invoke": {
                            "effect": NOOP,
                            "input": "{'n': ctx['n']}",
                            "success": {
                                "state": "done",
                                "context": {"tracking": "output['tracking']"},
                            },
                            "error": {"state": "broken"},
                        },
                    }
                ]
            },
            "done": {"end": True, "return": "{'n': ctx['n']}"},
            "broken": {"end": True},
        },
    }


def timer_machine() -> dict[str, Any]:
    """The start state arms a timer until ``input['at']``; when it fires the execution ends."""
    return {
        "id": "bench_timer",
        "version": 1,
        "start_at": "sleeping",
        "states": {
            "sleeping": {
                "always": [{"name": "wake", "state": "awake", "wait_for": {"until": "input['at']"}}]
            },
            "awake": {"end": True},
        },
    }


def order_machines() -> list[dict[str, Any]]:
    """``machines/order.yaml`` as shipped, and ``shipment.yaml`` calling the no-op effect."""
    order = yaml.safe_load((MACHINES / "order.yaml").read_text())
    shipment = yaml.safe_load((MACHINES / "shipment.yaml").read_text())
    shipment = copy.deepcopy(shipment)
    shipment["states"]["outstanding"]["always"][0]["invoke"]["effect"] = NOOP
    return [shipment, order]
