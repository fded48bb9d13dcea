"""statem next to DBOS Transact: the same 10-step process, on the same databases, in one run.

Run from the bench environment, which has ``dbos`` (it is not a dependency of statem)::

    make bench-peer            # or: .venv-bench/bin/python -m bench.peer [--quick]

Variants, each run sequentially (one workflow after another) on a SQLite file and on a
scratch PostgreSQL database:

* **chain**: statem ``start()`` of a machine whose start state chains 10 always-transitions,
  each updating the context (one transaction for the whole chain); DBOS: a workflow of 10
  ``@DBOS.step()`` calls, each returning the updated dict.
* **effect**: statem, a ``sync`` machine of 10 states, each invoking a no-op effect (run
  inline in the caller, one transaction per result, as DBOS runs its steps); DBOS: the
  same workflow as above (its steps are its effects).

The last line printed is ``SUMMARY <json>`` with the rows ``bench/__main__.py`` shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

STEPS = 10
PG_ADMIN = os.environ.get("STATEM_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def chain_machine() -> dict[str, Any]:
    """start -> s1 -> ... -> s10 (final), each always-transition updating the context."""
    states: dict[str, Any] = {}
    for i in range(STEPS):
        states[f"s{i}"] = {
            "always": [{"state": f"s{i + 1}", "context": {f"k{i}": f"ctx.get('k{i - 1}', 0) + {i}"}}]
        }
    states[f"s{STEPS}"] = {"end": True, "return": "ctx"}
    return {"id": "peer_chain", "version": 1, "start_at": "s0", "states": states}


def effect_machine() -> dict[str, Any]:
    """10 states, each invoking the no-op effect; sync mode runs them in the caller."""
    states: dict[str, Any] = {}
    for i in range(STEPS):
        states[f"s{i}"] = {"always": [{"invoke": {
            "effect": "noop", "input": f"{{'i': {i}}}",
            "success": {"state": f"s{i + 1}", "context": {f"k{i}": "output"}},
        }}]}  # fmt: skip
    states[f"s{STEPS}"] = {"end": True, "return": "ctx"}
    return {"id": "peer_effect", "version": 1, "start_at": "s0", "execution_mode": "sync", "states": states}


@contextmanager
def databases() -> Iterator[dict[str, tuple[str, str]]]:
    """A SQLite file and a scratch PostgreSQL database for each engine: name -> (statem url, dbos url)."""
    tmp = tempfile.mkdtemp(prefix="statem-peer-")
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    names = [f"peer_{tag}_{uuid.uuid4().hex[:6]}" for tag in ("statem", "dbos")]
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    pg = sa.engine.make_url(PG_ADMIN)
    try:
        yield {
            "sqlite": (f"sqlite:///{tmp}/statem.db", f"sqlite:///{tmp}/dbos.db"),
            "postgresql": (
                pg.set(database=names[0]).render_as_string(hide_password=False),
                pg.set(drivername="postgresql", database=names[1]).render_as_string(hide_password=False),
            ),
        }
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


def timed(n: int, run: Callable[[int], Any]) -> float:
    """Workflows per second over ``n`` sequential runs (after a short warm-up)."""
    for i in range(min(5, n)):
        run(-1 - i)
    began = time.perf_counter()
    for i in range(n):
        run(i)
    return n / (time.perf_counter() - began)


def statem_rates(url: str, n: int) -> dict[str, float]:
    """statem workflows/s for the chain and effect variants."""
    from statem import Engine

    engine = Engine(url)
    engine.migrate()
    engine.save_machine(chain_machine())
    engine.save_machine(effect_machine())
    engine.effects.register("noop", lambda input, *, idempotency_key: input["i"])

    def chain(i: int) -> None:
        assert engine.start("peer_chain", {"i": i}, version=1).status == "finished"

    def effect(i: int) -> None:
        assert engine.start("peer_effect", {"i": i}, version=1).status == "finished"

    rates = {"chain": timed(n, chain), "effect": timed(max(n // 4, 10), effect)}
    engine.close()
    return rates


def dbos_rate(url: str, n: int) -> float:
    """DBOS workflows/s for a 10-step workflow."""
    from dbos import DBOS

    DBOS(config={"name": "statem-peer", "system_database_url": url, "log_level": "WARNING"})

    @DBOS.step()
    def step(ctx: dict[str, Any], i: int) -> dict[str, Any]:
        return {**ctx, f"k{i}": ctx.get(f"k{i - 1}", 0) + i}

    @DBOS.workflow()
    def workflow(n: int) -> dict[str, Any]:
        ctx: dict[str, Any] = {}
        for i in range(STEPS):
            ctx = step(ctx, i)
        return ctx

    DBOS.launch()
    try:
        return timed(n, workflow)
    finally:
        DBOS.destroy(destroy_registry=True)


def main(quick: bool) -> list[dict[str, Any]]:
    """Run every variant; print the table; return the summary rows."""
    n = 100 if quick else 500
    rows: list[dict[str, Any]] = []
    with databases() as dbs:
        for db, (statem_url, dbos_url) in dbs.items():
            ours = statem_rates(statem_url, n)
            theirs = dbos_rate(dbos_url, max(n // 4, 20))
            for variant, target in (("chain", 10.0), ("effect", 2.0)):
                ratio = ours[variant] / theirs
                mine, peer = ours[variant], theirs
                print(
                    f"{db:<10} {variant:<6} statem {mine:8.1f} wf/s {mine * STEPS:9.0f} steps/s | "
                    f"DBOS {peer:7.1f} wf/s {peer * STEPS:8.0f} steps/s | "
                    f"ratio {ratio:5.1f}x (target {target:g}x)"
                )
                rows.append({
                    "name": f"peer/{db}: {variant} steps/s vs DBOS", "figure": ours[variant] * STEPS,
                    "unit": "/s", "baseline": theirs * STEPS, "baseline_unit": "DBOS steps/s",
                    "ratio": ratio, "target": f">= {target:g}x DBOS", "met": ratio >= target,
                })  # fmt: skip
    print("SUMMARY " + json.dumps(rows))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
