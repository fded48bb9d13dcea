"""Issue 14 (6): what one step costs on PostgreSQL, for the capacity section of docs/operations.md.

For each kind of step, N executions on a scratch PostgreSQL database (N = 2,000; 200 in
quick mode), measured over the phase that runs just those steps:

* ``start``: ``engine.start()`` of a machine that then waits for an action (one step);
* ``trigger``: ``engine.trigger()`` of an action on those executions (one step);
* ``timer``: a ``wait_for`` timer firing in a worker (its executions started beforehand);
* ``effect``: an effect task in a worker: its claim, the no-op call and the result step;
* ``child``: a parent invoking a child machine, in a worker: the child's start (the child
  then finishes in the same step: start + always) and the parent's result step;
* then the raw baseline and the effect task again with ``synchronous_commit = off`` (the
  commit does not wait for the WAL flush): what the flush costs.

The worker phases run an in-process worker (``engine.worker()``, 4 threads, as
``bench.executor`` (c) does) on tasks held back (due tomorrow) until it runs, then made
due at once with one UPDATE and a NOTIFY from another connection; the phase ends when all
N executions reached their end state (polled from another connection).

Figures per unit (one call, one timer, one effect task, one child round trip), and per
history row written:

* statements: ``before_cursor_execute`` events on the engine's connections (an
  ``executemany`` counts once);
* round trips: statements + transactions begun + commits and rollbacks (psycopg sends
  ``BEGIN`` on its own before a transaction's first statement);
* commits: ``pg_stat_database.xact_commit`` of the scratch database (read after the
  engine's connections are closed, so every backend has reported);
* client CPU: ``time.process_time()`` of this process (the caller's thread or the
  worker's threads, and the poll that waits for the end);
* server CPU: user + system time of the PostgreSQL backends serving the scratch database
  (``pg_stat_activity.pid``, read from ``/proc/<pid>/stat``; the server is local). WAL
  writer, checkpointer and autovacuum are not included.

The raw baseline (one UPDATE + one INSERT per transaction, ``bench.common``) runs in the
same run with the same counters, from one thread: its commits per second on this server
bound what one connection can commit.

Run: ``python -m bench.capacity [--quick]``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from statem import Engine, WorkerSettings
from statem.settings import WORKER_CONCURRENCY

from .app import effect_machine, register
from .common import (
    Result,
    main_for,
    new_engine,
    pg_commits,
    raw_engine,
    raw_setup,
    raw_transaction,
    say,
    scratch_pg,
    table,
)

#: Executions per kind (quick mode: QUICK_UNITS).
UNITS, QUICK_UNITS = 2_000, 200
#: Threads of the in-process worker.
THREADS = WORKER_CONCURRENCY
#: Longest a worker phase may take.
TIMEOUT_SECONDS = 300.0
TICKS = os.sysconf("SC_CLK_TCK")

WAITING = {
    "id": "cap_wait",
    "version": 1,
    "start_at": "open",
    "context": {"n": "0"},
    "states": {"open": {"actions": {"bump": {"context": {"n": "ctx['n'] + 1"}}, "close": {"state": "shut"}}},
               "shut": {"end": True}},
}  # fmt: skip
TIMER = {
    "id": "cap_timer",
    "version": 1,
    "start_at": "sleeping",
    "states": {
        "sleeping": {"always": [{"name": "wake", "state": "awake", "wait_for": {"days": 1}}]},
        "awake": {"end": True},
    },
}
CHILD = {
    "id": "cap_child",
    "version": 1,
    "start_at": "go",
    "states": {"go": {"always": [{"state": "done"}]}, "done": {"end": True, "return": "{'ok': True}"}},
}
PARENT = {
    "id": "cap_parent",
    "version": 1,
    "start_at": "calling",
    "states": {
        "calling": {
            "always": [
                {
                    "name": "call",
                    "invoke": {
                        "machine": ["cap_child", 1],
                        "input": "{}",
                        "success": {"state": "done"},
                        "error": {"state": "broken"},
                    },
                }
            ]
        },
        "done": {"end": True},
        "broken": {"end": True},
    },
}


# --------------------------------------------------------------------------- counters


class Statements:
    """Statements, transactions, commits and rollbacks sent on one engine."""

    def __init__(self, db: sa.Engine) -> None:
        self.db = db
        self.statements = self.begins = self.ends = 0
        sa.event.listen(db, "before_cursor_execute", self._statement)
        sa.event.listen(db, "begin", self._begin)
        sa.event.listen(db, "commit", self._end)
        sa.event.listen(db, "rollback", self._end)

    def _statement(self, *_args: Any) -> None:
        self.statements += 1

    def _begin(self, *_args: Any) -> None:
        self.begins += 1

    def _end(self, *_args: Any) -> None:
        self.ends += 1

    def reading(self) -> tuple[int, int]:
        """(statements, round trips) so far."""
        return self.statements, self.statements + self.begins + self.ends

    def close(self) -> None:
        """Stop counting."""
        sa.event.remove(self.db, "before_cursor_execute", self._statement)
        sa.event.remove(self.db, "begin", self._begin)
        sa.event.remove(self.db, "commit", self._end)
        sa.event.remove(self.db, "rollback", self._end)


def backend_cpu(admin: sa.Engine) -> dict[int, float]:
    """CPU seconds used so far by each backend serving this database (but the asking one)."""
    with admin.connect() as conn:
        pids = conn.execute(
            sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ).scalars()
        used: dict[int, float] = {}
        for pid in pids:
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
            except OSError:
                continue  # gone, or the server is not on this machine
            used[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return used


def steps_written(admin: sa.Engine) -> int:
    """History rows in the database."""
    with admin.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM statem_steps")).scalar_one())


@dataclass(frozen=True)
class Cost:
    """What one unit of a kind of step cost."""

    kind: str
    units: int
    steps: float  # history rows per unit
    statements: float
    round_trips: float
    commits: float
    client_ms: float
    server_ms: float
    seconds: float

    def row(self) -> list[str]:
        """A row of the printed table."""
        return [
            self.kind,
            f"{self.steps:.1f}",
            f"{self.statements:.1f}",
            f"{self.round_trips:.1f}",
            f"{self.commits:.2f}",
            f"{self.client_ms:.2f}",
            f"{self.server_ms:.2f}",
            f"{self.units / self.seconds:,.0f}",
        ]


HEADERS = ("kind (per unit)", "history rows", "statements", "round trips", "commits",
           "client CPU ms", "server CPU ms", "units/s")  # fmt: skip


@contextmanager
def measured(
    kind: str, url: str, db: sa.Engine, admin: sa.Engine, units: int, out: list[Cost]
) -> Iterator[None]:
    """Measure the phase inside the block; appends its Cost to ``out``."""
    db.dispose()  # earlier phases' backends exit and report their commits
    time.sleep(0.3)
    counter = Statements(db)
    rows = steps_written(admin)
    commits = pg_commits(url)
    cpu = backend_cpu(admin)
    clock, began = time.process_time(), time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - began
        client = time.process_time() - clock
        counter.close()
    server = sum(t - cpu.get(pid, 0.0) for pid, t in backend_cpu(admin).items())
    statements, trips = counter.reading()
    db.dispose()
    time.sleep(0.6)  # the closed backends report their counts
    cost = Cost(
        kind,
        units,
        (steps_written(admin) - rows) / units,
        statements / units,
        trips / units,
        # every commit in the database: the phase's, and the release of held tasks and
        # autovacuum's if it ran (the polls and the readings end with a rollback)
        (pg_commits(url) - commits) / units,
        client * 1000 / units,
        server * 1000 / units,
        seconds,
    )
    say(f"    {kind}: " + ", ".join(f"{h} {c}" for h, c in zip(HEADERS[1:], cost.row()[1:], strict=True)))
    out.append(cost)


# --------------------------------------------------------------------------- phases


def count_in(admin: sa.Engine, machine_id: str, state: str) -> int:
    """Executions of a machine in a state."""
    with admin.connect() as conn:
        q = sa.text("SELECT count(*) FROM statem_executions WHERE machine_id = :m AND state = :s")
        return int(conn.execute(q, {"m": machine_id, "s": state}).scalar_one())


def wait_until(admin: sa.Engine, machine_id: str, state: str, target: int) -> None:
    """Poll (every 50 ms, on the admin engine) until ``target`` executions reached ``state``."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while (done := count_in(admin, machine_id, state)) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {target} {machine_id} executions in {state!r}")
        time.sleep(0.05)


def release(admin: sa.Engine) -> None:
    """Make every pending task due now and wake the workers (NOTIFY)."""
    with admin.begin() as conn:
        conn.execute(sa.text("UPDATE statem_tasks SET due_at = now() WHERE status = 'pending'"))
        conn.execute(sa.text("NOTIFY statem_tasks"))


def hold(admin: sa.Engine) -> None:
    """Make every pending task due tomorrow."""
    with admin.begin() as conn:
        conn.execute(sa.text("UPDATE statem_tasks SET due_at = now() + interval '1 day'"))


def in_worker(
    kind: str, url: str, engine: Engine, admin: sa.Engine, units: int, out: list[Cost], end: tuple[str, str]
) -> None:
    """Run the held tasks through an in-process worker, measured."""
    hold(admin)
    with engine.worker(WorkerSettings(concurrency=THREADS)):
        time.sleep(1.0)  # the worker's threads are up and idle
        with measured(kind, url, engine.db, admin, units, out):
            release(admin)
            wait_until(admin, *end, units)


#: libpq options of a session that commits without waiting for the WAL flush.
NO_FLUSH_WAIT = "options=-c%20synchronous_commit%3Doff"


def no_flush_wait(url: str) -> str:
    """The URL with ``synchronous_commit = off`` for its sessions."""
    return f"{url}{'&' if '?' in url else '?'}{NO_FLUSH_WAIT}"


def raw_phase(url: str, admin: sa.Engine, units: int, out: list[Cost], label: str = "") -> None:
    """The raw baseline with the same counters: ``units`` one-UPDATE-one-INSERT transactions."""
    raw_setup(url, 100)
    raw = raw_engine(url)
    try:
        with measured(f"raw transaction{label}", url.split("?")[0], raw, admin, units, out):
            for i in range(units):
                raw_transaction(raw, i % 100)
    finally:
        raw.dispose()


def run_kinds(url: str, units: int) -> list[Cost]:
    """Every phase on one scratch database."""
    out: list[Cost] = []
    admin = sa.create_engine(url, pool_size=2)
    engine = new_engine(url)
    try:
        register(engine)
        for machine in (
            WAITING,
            TIMER,
            effect_machine(),
            CHILD,
            PARENT,
            {**effect_machine(), "id": "cap_effect"},
        ):
            engine.save_machine(machine)
        raw_phase(url, admin, units, out)
        ids: list[str] = []
        with measured("start", url, engine.db, admin, units, out):
            ids = [engine.start("cap_wait", {"i": i}, version=1).id for i in range(units)]
        with measured("trigger", url, engine.db, admin, units, out):
            for eid in ids:
                engine.trigger(eid, "bump")
        for i in range(units):
            engine.start("cap_timer", {"i": i}, version=1)
        in_worker("timer (in a worker)", url, engine, admin, units, out, ("cap_timer", "awake"))
        for i in range(units):
            engine.start("bench_effect", {"n": i}, version=1)
        in_worker("effect task (in a worker)", url, engine, admin, units, out, ("bench_effect", "done"))
        for i in range(units):
            engine.start("cap_parent", {"i": i}, version=1)
        in_worker("child + result (in a worker)", url, engine, admin, units, out, ("cap_parent", "done"))
    finally:
        engine.close()
    # the same without waiting for the WAL flush at commit (synchronous_commit = off)
    label = ", synchronous_commit off"
    engine = new_engine(no_flush_wait(url))
    try:
        register(engine)
        raw_phase(no_flush_wait(url), admin, units, out, label)
        for i in range(units):
            engine.start("cap_effect", {"n": i}, version=1)
        in_worker(f"effect task{label}", url, engine, admin, units, out, ("cap_effect", "done"))
    finally:
        engine.close()
        admin.dispose()
    return out


def run(quick: bool) -> list[Result]:
    """Issue 14 (6): the cost of each kind of step on PostgreSQL."""
    units = QUICK_UNITS if quick else UNITS
    say(f"  capacity: {units} units per kind, PostgreSQL, load average {os.getloadavg()[0]:.1f}")
    with scratch_pg("capacity") as url:
        costs = run_kinds(url, units)
    say("\n" + table(HEADERS, [c.row() for c in costs]))
    results = []
    raw = costs[0]
    for c in costs[1:]:
        ratio = c.server_ms / raw.server_ms if raw.server_ms else None
        results.append(
            Result(f"capacity {c.kind}: server CPU", c.server_ms, "ms", raw.server_ms, "ms (raw tx)", ratio)
        )
        results.append(
            Result(
                f"capacity {c.kind}: round trips",
                c.round_trips,
                "/unit",
                raw.round_trips,
                "(raw tx)",
                c.round_trips / raw.round_trips,
            )
        )
    return results


def main() -> None:
    """``python -m bench.capacity [--quick]``."""
    main_for("capacity (issue 14, 6)", run)


if __name__ == "__main__":
    main()
