"""An application module for worker subprocesses: `statem --app tests.apps.fxapp:make worker`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from statem import Engine


def make() -> Engine:
    """The Engine on STATEM_DATABASE_URL with a `slow` effect that logs each call to FX_CALLS."""
    engine = Engine(os.environ["STATEM_DATABASE_URL"])
    calls = Path(os.environ["FX_CALLS"])

    @engine.effect("slow")
    def slow(input: dict[str, Any], *, idempotency_key: str) -> Any:
        with calls.open("a") as f:
            f.write(f"{idempotency_key} {os.getpid()}\n")
        time.sleep(float(input.get("sleep", 0)))
        return {"pid": os.getpid()}

    return engine
