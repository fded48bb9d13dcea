"""The long crash torture and trigger storm (issue 5), at full size; the tests run small ones.

``python -m bench.torture [--quick]``: 1,000 order-like executions driven while worker
processes are SIGKILLed at random and restarted (2 workers on PostgreSQL, 1 on SQLite),
checked against a crash-free reference run; then 10,000 triggers from 4 processes x 4
threads on 100 executions with a tenth of the idempotency keys repeated. Prints the
figures: executions, kills, effect calls per key (max), lost, duplicated steps.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from statem import Engine
from tests.test_faults import storm, torture

from .common import Result, say, scratch


def _migrated(url: str) -> Engine:
    engine = Engine(url)
    engine.migrate()
    return engine


def run(quick: bool) -> list[Result]:
    """Torture and storm on both databases; every figure must show nothing lost or doubled."""
    n, triggers = (200, 2_000) if quick else (1_000, 10_000)
    results: list[Result] = []
    tmp = Path(tempfile.mkdtemp(prefix="statem-torture-"))
    try:
        # each kill comes 0.1-0.4 s after the chosen worker is up (see tests/test_faults.torture)
        for db, workers in (("postgresql", 2), ("sqlite", 1)):
            with scratch(db, "torture") as url:
                _migrated(url).close()
                (tmp / db).mkdir()
                f = torture(url, tmp / db, workers=workers, n=n, seconds=900)
            say(f"  torture/{db}: {f}")
            results += [
                Result(f"torture/{db}: executions lost", f["lost"], "", target="0", met=f["lost"] == 0),
                Result(f"torture/{db}: steps duplicated", f["duplicated"], "", target="0",
                       met=f["duplicated"] == 0),
                Result(f"torture/{db}: kills, max effect calls per key", f["kills"], "kills",
                       baseline=f["max_calls_per_key"], baseline_unit="calls/key"),
            ]  # fmt: skip
            with scratch(db, "storm") as url:
                engine = _migrated(url)
                f = storm(engine, url, triggers)
                engine.close()
            say(f"  storm/{db}: {f}")
            results.append(
                Result(f"storm/{db}: triggers applied once", f["applied"], "", baseline=f["triggers_sent"],
                       baseline_unit="accepted", target="none lost or doubled", met=f["lost"] == 0)
            )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    for r in run(parser.parse_args().quick):
        print(r.cells())
