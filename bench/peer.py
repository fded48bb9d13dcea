"""statem next to DBOS Transact: the same 10-step process, on the same databases, in one run.

Run it from the bench virtualenv, which has ``dbos`` (never a dependency of statem)::

    .venv-bench/bin/python bench/peer.py [--quick] [--profile] [--seconds S]
    .venv-bench/bin/python -m bench.peer --quick      # the same, from the checkout's root

The process, run sequentially (one workflow after the other, in the caller's thread):

* statem **chain**: ``start()`` of a machine whose start state chains 10 always-transitions,
  each updating the context (one transaction for the whole chain).
* statem **effect**: 10 states, each invoking a no-op effect whose result updates the
  context. The machine has ``execution_mode: sync``: ``start()`` calls each effect in the
  caller's thread and commits its result as a step (one transaction per step) until the
  execution ends. That is how DBOS runs a workflow's steps (in the caller's thread, a
  checkpoint per step), so it is the fair analogue; an in-process worker would add thread
  hand-offs and ``engine.wait`` polling that DBOS does not have.
* **DBOS**: a ``@DBOS.workflow()`` calling 10 ``@DBOS.step()`` functions, each returning the
  updated dict (the analogue of the context). The baseline of both statem variants.

Databases: the engines write to a SQLite file each, in one temporary folder (same file
system), and to a scratch database each on the same PostgreSQL server (``STATEM_BENCH_PG_URL``,
else ``STATEM_TEST_PG_URL``, else the local test server). statem runs SQLite in WAL mode with
``synchronous=NORMAL`` (no fsync per commit); DBOS as shipped keeps SQLite's rollback journal
with ``synchronous=FULL`` (fsyncs on every commit), so on SQLite DBOS runs twice: on an
engine with statem's pragmas ("same durability": the targets are judged against it) and as
shipped (its ratio is printed too). On PostgreSQL both use the server's settings.

Time: the run is split into rounds; in each round every (engine, database, variant) cell
runs for the same slice of time, after a short untimed warm-up, so drift on the machine
hits every cell alike. ``--quick`` measures for about 22 s (about 30 s in all), the default
for about 140 s (about 2.5 min in all). DBOS is launched before and destroyed after each of
its slices (its background threads never run during statem's). The SQL statements and
commits per workflow are counted (SQLAlchemy events) on a few untimed workflows.

With ``--profile`` (and in default mode whenever a statem variant misses its target) each
such variant is run under cProfile and its hot path printed.

The last line printed is ``SUMMARY <json>``: the rows ``bench/__main__.py`` shows.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

#: Steps per workflow, for every engine and variant.
STEPS = 10
#: statem steps/s over DBOS steps/s, per statem variant.
TARGETS = {"chain": 10.0, "effect": 2.0}
#: Measured seconds (all cells and rounds together), and rounds, per mode.
BUDGET = {"quick": (22.0, 2), "default": (140.0, 3)}
#: Untimed workflows before each timed slice, and workflows counted for SQL/commits.
WARMUP, COUNTED = 3, 5
#: Seconds of workflows run under the profiler, per profiled variant.
PROFILE_SECONDS = 2.0
PG_ADMIN_URL = os.environ.get(
    "STATEM_BENCH_PG_URL",
    os.environ.get("STATEM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
)

Run = Callable[[int], Any]


# --------------------------------------------------------------------------- the process


def chain_machine() -> dict[str, Any]:
    """s0 -> s1 -> ... -> s10 (final): 10 always-transitions, each updating the context."""
    states: dict[str, Any] = {
        f"s{i}": {"always": [{"state": f"s{i + 1}", "context": {f"k{i}": f"ctx.get('k{i - 1}', 0) + {i}"}}]}
        for i in range(STEPS)
    }
    states[f"s{STEPS}"] = {"end": True, "return": "ctx"}
    return {"id": "peer_chain", "version": 1, "start_at": "s0", "states": states}


def effect_machine() -> dict[str, Any]:
    """10 states, each invoking the no-op effect; its result updates the context (sync mode)."""
    states: dict[str, Any] = {}
    for i in range(STEPS):
        invoke = {
            "effect": "noop",
            "input": f"{{'i': {i}}}",
            "success": {"state": f"s{i + 1}", "context": {f"k{i}": "output['i']"}},
        }
        states[f"s{i}"] = {"always": [{"invoke": invoke}]}
    states[f"s{STEPS}"] = {"end": True, "return": "ctx"}
    return {"id": "peer_effect", "version": 1, "start_at": "s0", "execution_mode": "sync", "states": states}


def noop(input: Any, *, idempotency_key: str) -> Any:
    """The no-op effect: hands its input back."""
    return input


def chain_expected() -> dict[str, int]:
    """The context the chain (and the DBOS workflow) ends with."""
    ctx: dict[str, int] = {}
    for i in range(STEPS):
        ctx[f"k{i}"] = ctx.get(f"k{i - 1}", 0) + i
    return ctx


def effect_expected() -> dict[str, int]:
    """The context the effect machine ends with."""
    return {f"k{i}": i for i in range(STEPS)}


# --------------------------------------------------------------------------- engines


def statem_engine(url: str) -> Any:
    """A migrated statem engine with both machines and the no-op effect."""
    from statem import Engine

    engine = Engine(url)
    engine.migrate()
    engine.save_machine(chain_machine())
    engine.save_machine(effect_machine())
    engine.effects.register("noop", noop)
    return engine


def statem_run(engine: Any, machine_id: str) -> Run:
    """One statem workflow: ``start()`` to the end; returns the execution's output."""

    def run(i: int) -> Any:
        ex = engine.start(machine_id, {"i": i}, version=1)
        if ex.status != "finished":
            raise RuntimeError(f"statem {machine_id} ended {ex.status}: {ex.error}")
        return ex.output

    return run


def sqlite_like_statem(url: str) -> sa.Engine:
    """A SQLite engine for DBOS with statem's pragmas (WAL, synchronous=NORMAL), else as DBOS's own."""
    engine = sa.create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"  # what DBOS sets on its own SQLite engine
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return engine


@contextmanager
def dbos_app(url: str, define: Callable[[], Any], same_durability: bool = False) -> Iterator[Any]:
    """DBOS configured on ``url``; ``define()`` registers its functions before launch and
    its return value is yielded; DBOS is destroyed on exit."""
    from dbos import DBOS

    config: dict[str, Any] = {
        "name": "statem-peer",
        "system_database_url": url,
        "run_admin_server": False,  # no HTTP port taken on a shared machine
        "log_level": "WARNING",
    }
    engine = sqlite_like_statem(url) if same_durability else None
    if engine is not None:
        config["system_database_engine"] = engine
    DBOS(config=config)  # type: ignore[arg-type]
    try:
        defined = define()
        DBOS.launch()
        yield defined
    finally:
        DBOS.destroy(destroy_registry=True)
        if engine is not None:
            engine.dispose()


def ten_steps() -> Run:
    """The 10-step DBOS workflow (registered with DBOS)."""
    from dbos import DBOS

    @DBOS.step()
    def step(ctx: dict[str, Any], i: int) -> dict[str, Any]:
        return {**ctx, f"k{i}": ctx.get(f"k{i - 1}", 0) + i}

    @DBOS.workflow()
    def workflow(n: int) -> dict[str, Any]:
        ctx: dict[str, Any] = {}
        for i in range(STEPS):
            ctx = step(ctx, i)
        return ctx

    return workflow


@contextmanager
def dbos_launched(url: str, same_durability: bool = False) -> Iterator[Run]:
    """DBOS launched on ``url`` with the 10-step workflow registered; destroyed on exit."""
    with dbos_app(url, ten_steps, same_durability) as workflow:
        yield workflow


# --------------------------------------------------------------------------- measuring


@dataclass
class Cell:
    """One (engine, database, variant): how to run a workflow, and what it measured."""

    engine: str
    db: str
    variant: str
    note: str
    open: Callable[[], AbstractContextManager[Run]]
    expected: dict[str, int]
    runs: int = 0
    seconds: float = 0.0
    rates: list[float] = field(default_factory=list)
    sql: float | None = None
    commits: float | None = None
    next_input: int = 0

    @property
    def rate(self) -> float:
        """Workflows per second over all timed slices."""
        return self.runs / self.seconds if self.seconds else 0.0

    def measure(self, seconds: float) -> None:
        """One timed slice: warm up (checking the result once), count SQL once, then time."""
        with self.open() as run:
            for _ in range(WARMUP):
                out = run(self.take())
                if out != self.expected:
                    raise RuntimeError(f"{self.engine} {self.db} {self.variant}: got {out!r}")
            if self.sql is None:
                with counting() as counts:
                    for _ in range(COUNTED):
                        run(self.take())
                self.sql, self.commits = counts["sql"] / COUNTED, counts["commits"] / COUNTED
            n, began = 0, time.perf_counter()
            deadline = began + seconds
            while True:
                run(self.take())
                n += 1
                now = time.perf_counter()
                if now >= deadline:
                    break
        self.runs += n
        self.seconds += now - began
        self.rates.append(n / (now - began))

    def take(self) -> int:
        self.next_input += 1
        return self.next_input


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Count SQL statements and commits sent through any SQLAlchemy engine meanwhile."""
    counts = {"sql": 0, "commits": 0}

    def on_sql(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):  # DBOS's BEGIN is implicit in the driver
            counts["sql"] += 1

    def on_commit(*_args: Any) -> None:
        counts["commits"] += 1

    event.listen(sa.engine.Engine, "before_cursor_execute", on_sql)
    event.listen(sa.engine.Engine, "commit", on_commit)
    try:
        yield counts
    finally:
        event.remove(sa.engine.Engine, "before_cursor_execute", on_sql)
        event.remove(sa.engine.Engine, "commit", on_commit)


@contextmanager
def databases() -> Iterator[dict[str, dict[str, str]]]:
    """A SQLite folder and a scratch PostgreSQL database per engine: db -> name -> URL."""
    tmp = tempfile.mkdtemp(prefix="statem-peer-")
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    names = {tag: f"statem_bench_peer_{tag}_{uuid.uuid4().hex[:6]}" for tag in ("statem", "dbos")}
    pg = sa.engine.make_url(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield {
            "sqlite": {
                "statem": f"sqlite:///{tmp}/statem.db",
                "dbos": f"sqlite:///{tmp}/dbos.db",
                "dbos-same": f"sqlite:///{tmp}/dbos-same-durability.db",
            },
            "postgresql": {
                "statem": pg.set(database=names["statem"]).render_as_string(hide_password=False),
                # DBOS takes a plain postgresql:// URL and picks psycopg 3 itself, as statem does
                "dbos": pg.set(drivername="postgresql", database=names["dbos"]).render_as_string(
                    hide_password=False
                ),
            },
        }
    finally:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


def make_cells(urls: dict[str, dict[str, str]], engines: dict[str, Any]) -> list[Cell]:
    """Every cell, in the order each round runs them (statem and DBOS alternate)."""
    cells: list[Cell] = []
    for db, url in urls.items():
        engine = engines[db]
        chain, effect = statem_run(engine, "peer_chain"), statem_run(engine, "peer_effect")
        cells.append(Cell("statem", db, "chain", "start(): 10 always-transitions, 1 tx",
                          lambda run=chain: nullcontext(run), chain_expected()))  # fmt: skip
        if db == "sqlite":
            cells.append(Cell("DBOS", db, "workflow", "same durability (WAL, synchronous=NORMAL)",
                              lambda u=url["dbos-same"]: dbos_launched(u, same_durability=True),
                              chain_expected()))  # fmt: skip
        cells.append(Cell("statem", db, "effect", "sync: effects inline in the caller, 1 tx/step",
                          lambda run=effect: nullcontext(run), effect_expected()))  # fmt: skip
        shipped = "as shipped (rollback journal, synchronous=FULL)" if db == "sqlite" else "as shipped"
        cells.append(Cell("DBOS", db, "workflow", shipped,
                          lambda u=url["dbos"]: dbos_launched(u), chain_expected()))  # fmt: skip
    return cells


def baseline(cells: list[Cell], db: str, shipped: bool = False) -> Cell:
    """The DBOS cell statem's targets are judged against on ``db`` (or DBOS as shipped)."""
    dbos = [c for c in cells if c.engine == "DBOS" and c.db == db]
    return dbos[-1] if shipped else dbos[0]


def behind(cell: Cell, cells: list[Cell]) -> bool:
    """True for a statem cell that misses its target."""
    return cell.engine == "statem" and cell.rate < TARGETS[cell.variant] * baseline(cells, cell.db).rate


# --------------------------------------------------------------------------- reporting


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            numeric = cell[:1].isdigit() or (cell[:1] == "-" and len(cell) > 1)
            out.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def report(cells: list[Cell]) -> str:
    """The table: engine, database, variant, workflows/s, steps/s, ratio, target, met."""
    headers = ["engine", "database", "variant", "workflows/s", "steps/s", "spread", "SQL/wf",
               "commits/wf", "ratio statem/DBOS", "vs DBOS as shipped", "target", "met"]  # fmt: skip
    rows = []
    for c in cells:
        spread = f"{min(c.rates) / c.rate:.0%}-{max(c.rates) / c.rate:.0%}" if c.rates else "-"
        row = [c.engine, c.db, f"{c.variant}: {c.note}", f"{c.rate:,.1f}", f"{c.rate * STEPS:,.0f}",
               spread, f"{c.sql:.1f}", f"{c.commits:.1f}"]  # fmt: skip
        if c.engine == "statem":
            ratio = c.rate / baseline(cells, c.db).rate
            target = TARGETS[c.variant]
            row += [f"{ratio:.2f}x", f"{c.rate / baseline(cells, c.db, shipped=True).rate:.2f}x",
                    f">= {target:g}x", "yes" if ratio >= target else "NO"]  # fmt: skip
        else:
            row += ["-", "-", "-", "-"]
        rows.append(row)
    return table(headers, rows)


def summary_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    """The rows for bench/__main__.py's summary (its ratio column shows percentages)."""
    rows: list[dict[str, Any]] = []
    for c in cells:
        if c.engine != "statem":
            continue
        base, shipped = baseline(cells, c.db), baseline(cells, c.db, shipped=True)
        ratio, target = c.rate / base.rate, TARGETS[c.variant]
        same = " (statem's SQLite pragmas)" if shipped is not base else ""
        rows.append({
            "name": f"peer/{c.db}: {c.variant} steps/s vs DBOS{same}", "figure": c.rate * STEPS, "unit": "/s",
            "baseline": base.rate * STEPS, "baseline_unit": "DBOS steps/s", "ratio": ratio,
            "target": f">= {target:g}x DBOS ({target:.0%})", "met": ratio >= target,
        })  # fmt: skip
        if shipped is not base:
            rows.append({
                "name": f"peer/{c.db}: {c.variant} steps/s vs DBOS as shipped (fsync/commit)",
                "figure": c.rate * STEPS, "unit": "/s", "baseline": shipped.rate * STEPS,
                "baseline_unit": "DBOS steps/s", "ratio": c.rate / shipped.rate, "target": "", "met": None,
            })  # fmt: skip
    return rows


def profile(cell: Cell, rate: float) -> str:
    """Run ``cell`` under cProfile for about PROFILE_SECONDS; its hot path as text."""
    import statem

    root = str(Path(statem.__file__).resolve().parent) + os.sep
    n = max(20, min(5_000, int(rate * PROFILE_SECONDS)))
    prof = cProfile.Profile()
    with cell.open() as run:
        run(cell.take())
        prof.enable()
        for _ in range(n):
            run(cell.take())
        prof.disable()
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(tt for _cc, _nc, tt, _ct, _callers in stats.values()) or 1e-9
    ours, own, groups = [], [], dict.fromkeys(("statem", "asteval", "sqlalchemy", "driver", "other"), 0.0)
    for (filename, line, func), (_cc, ncalls, tt, ct, _callers) in stats.items():
        where = f"{Path(filename).name}:{line}" if line else ""
        if filename.startswith(root):
            ours.append((ct, ncalls, f"statem/{Path(filename).relative_to(root)}:{line}({func})"))
            groups["statem"] += tt
        elif "/sqlalchemy/" in filename:
            groups["sqlalchemy"] += tt
        elif "/psycopg" in filename or "sqlite3" in func or "psycopg" in func:
            groups["driver"] += tt
        elif "/asteval/" in filename:
            groups["asteval"] += tt
        else:
            groups["other"] += tt
        own.append((tt, ncalls, f"{where}({func})" if where else func))
    ours.sort(reverse=True)
    own.sort(reverse=True)
    out = [
        f"-- profile: statem {cell.db} {cell.variant}, {n} workflows under cProfile "
        f"({total:.2f} s profiled; cProfile inflates Python-heavy code)",
        "   own time by package: " + ", ".join(f"{k} {v / total:.0%}" for k, v in groups.items()),
    ]
    path = [(ct, name) for ct, _calls, name in ours if ct >= 0.8 * total]
    out.append("   call path (>= 80% of the run): " + " > ".join(
        f"{name.split('(')[-1].rstrip(')')} {ct / total:.0%}" for ct, name in path))  # fmt: skip
    out.append("   below it, statem functions by cumulative time (% of the run, calls per workflow):")
    below = [row for row in ours if row[0] < 0.8 * total][:14]
    out += [f"   {ct / total:6.1%}  {calls / n:6.1f}/wf  {name}" for ct, calls, name in below]
    out.append("   top functions by own time:")
    out += [f"   {tt / total:6.1%}  {calls / n:6.1f}/wf  {name}" for tt, calls, name in own[:10]]
    return "\n".join(out)


def versions(pg_url: str) -> str:
    """What ran: Python, SQLite, PostgreSQL, statem, DBOS, SQLAlchemy."""
    eng = sa.create_engine(pg_url)
    try:
        with eng.connect() as conn:
            server = conn.execute(sa.text("SHOW server_version")).scalar()
            sync = conn.execute(sa.text("SHOW synchronous_commit")).scalar()
    finally:
        eng.dispose()
    pkgs = ", ".join(f"{p} {metadata.version(p)}" for p in ("statem", "dbos", "sqlalchemy", "psycopg"))
    return (
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, PostgreSQL {server} "
        f"(synchronous_commit={sync}), {pkgs}, {os.cpu_count()} CPUs"
    )


# --------------------------------------------------------------------------- main


def main(
    quick: bool, profile_missed: bool | None = None, seconds: float | None = None
) -> list[dict[str, Any]]:
    """Run every cell in rounds; print the table (and profiles); return the summary rows.

    ``profile_missed``: profile every statem variant that misses its target (default: in
    default mode, not in quick mode). ``seconds``: the measured time budget.
    """
    began = time.monotonic()
    budget, rounds = BUDGET["quick" if quick else "default"]
    budget = seconds if seconds is not None else budget
    if profile_missed is None:
        profile_missed = not quick
    print(f"peer: statem vs DBOS Transact, {STEPS} steps per workflow, workflows run one after "
          f"another in this thread ({'quick' if quick else 'default'} mode)", flush=True)  # fmt: skip
    print(f"peer: {versions(PG_ADMIN_URL)}", flush=True)
    with databases() as urls:
        engines = {db: statem_engine(url["statem"]) for db, url in urls.items()}
        try:
            cells = make_cells(urls, engines)
            slice_s = budget / (len(cells) * rounds)
            print(f"peer: {rounds} rounds x {len(cells)} cells x {slice_s:.1f} s", flush=True)
            for r in range(rounds):
                for cell in cells:
                    cell.measure(slice_s)
                print(f"peer: round {r + 1}/{rounds} done ({time.monotonic() - began:.0f} s)", flush=True)
            print()
            print(report(cells))
            print(
                "\nSQL/wf and commits/wf: statements and commits through SQLAlchemy per workflow "
                "(not counted: BEGIN, a round trip of its own per transaction on PostgreSQL)."
                "\nspread: the slowest and fastest round's rate, relative to the whole.",
                flush=True,
            )
            rows = summary_rows(cells)
            for cell in cells:
                if profile_missed and behind(cell, cells):
                    print("\n" + profile(cell, cell.rate), flush=True)
        finally:
            for engine in engines.values():
                engine.close()
    print(f"\npeer took {time.monotonic() - began:.0f} s", flush=True)
    print("SUMMARY " + json.dumps(rows), flush=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 30 s in all (default: about 2.5 min)")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile the statem variants that miss their target (default: in default mode only)",
    )
    parser.add_argument("--seconds", type=float, help="measured seconds, all cells and rounds together")
    args = parser.parse_args()
    main(args.quick, args.profile, args.seconds)
