"""Retention: Engine.purge and ``statem purge``, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from statem import Engine, ExecutionNotFound
from statem.cli import main
from statem.retention import PurgeCounts
from statem.schema import executions, steps, tasks
from statem.testing import FakeClock, run_until_idle

from .helpers import effect_machine, timer_machine
from .test_engine import counter
from .test_executor import child_machines

DAY = dt.timedelta(days=1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))


@pytest.fixture
def fengine(db_url: str, clock: FakeClock) -> Iterator[Engine]:
    e = Engine(db_url, clock=clock)
    yield e
    e.close()


def rows(engine: Engine, table: Any, eid: str | None = None) -> int:
    """How many rows the table holds (for one execution when ``eid`` is given)."""
    q = select(func.count()).select_from(table)
    if eid is not None:
        q = q.where((table.c.id if table is executions else table.c.execution_id) == eid)
    with engine.db.connect() as conn:
        return int(conn.execute(q).scalar() or 0)


def exists(engine: Engine, eid: str) -> bool:
    try:
        engine.get(eid)
    except ExecutionNotFound:
        return False
    return True


def finished(engine: Engine) -> str:
    ex = engine.start("counter", {"start": 3})
    return engine.trigger(ex.id, "finish").id


def test_purge_deletes_old_final_executions_only(fengine: Engine, clock: FakeClock) -> None:
    fengine.save_machine(counter())
    fengine.save_machine(timer_machine(days=365))

    def broken(input: Any, *, idempotency_key: str) -> Any:
        raise RuntimeError("the service is down")

    fengine.effects.register("broken", broken)  # no error branch: the execution fails
    fengine.save_machine(effect_machine(effect="broken", error=None))
    done = finished(fengine)
    canceled = fengine.cancel(fengine.start("counter").id).id
    waiting = fengine.start("counter").id
    timer = fengine.start("t").id
    failed = fengine.start("fx").id
    run_until_idle(fengine)
    assert fengine.get(failed).status == "failed"
    old_steps = rows(fengine, steps, done) + rows(fengine, steps, canceled)
    clock.advance(days=40)
    recent = finished(fengine)
    clock.advance(days=1)

    counts = fengine.purge(clock() - 30 * DAY)

    assert (counts.executions, counts.steps, counts.tasks, counts.kept) == (2, old_steps, 0, 0)
    assert (counts.total, counts.examined, counts.dry_run) == (2, 2, False)
    assert not exists(fengine, done) and not exists(fengine, canceled)
    assert rows(fengine, steps, done) == 0 and rows(fengine, steps, canceled) == 0
    for kept in (waiting, timer, failed, recent):
        assert exists(fengine, kept)
        assert len(fengine.history(kept)) >= 1
    assert rows(fengine, tasks, timer) == 1  # the live timer is untouched
    assert fengine.purge(clock() - 30 * DAY).executions == 0  # nothing left to do


def test_children_go_with_their_parent_never_before(fengine: Engine, clock: FakeClock) -> None:
    child_machines(fengine)
    live = fengine.start("parent", {"x": 0}).id  # its child waits for an action
    run_until_idle(fengine)
    live_child = fengine.executions(parent_id=live)[0].id
    ended = fengine.start("parent", {"x": 1}).id  # the child ends at once; its result is queued
    assert fengine.run_once(limit=1) == 1
    ended_child = fengine.executions(parent_id=ended)[0].id
    assert fengine.get(ended_child).status == "finished" and fengine.get(ended).status == "running"
    clock.advance(days=40)

    counts = fengine.purge(clock() - 30 * DAY)  # a finished child of an unfinished parent stays
    assert (counts.executions, counts.total) == (0, 0)
    assert all(exists(fengine, e) for e in (live, live_child, ended, ended_child))

    run_until_idle(fengine)  # the parent takes its child's result and finishes
    assert fengine.get(ended).status == "finished"
    clock.advance(days=40)
    counts = fengine.purge(clock() - 30 * DAY, machine_id="child")  # children go only with a parent
    assert counts.executions == 0 and exists(fengine, ended_child)
    counts = fengine.purge(clock() - 30 * DAY, machine_id="parent")
    assert counts.executions == 2 and counts.tasks == 0
    assert not exists(fengine, ended) and not exists(fengine, ended_child)
    assert exists(fengine, live) and exists(fengine, live_child)


def test_a_final_parent_with_an_unfinished_child_is_kept_whole(fengine: Engine, clock: FakeClock) -> None:
    child_machines(fengine)
    parent = fengine.start("parent", {"x": 0}).id
    run_until_idle(fengine)
    child = fengine.executions(parent_id=parent)[0].id
    with fengine.db.begin() as conn:  # a state no step makes today (fan-out may): final over live
        conn.execute(update(executions).where(executions.c.id == parent).values(status="finished"))
    clock.advance(days=40)
    counts = fengine.purge(clock() - 30 * DAY, batch=1)
    assert (counts.executions, counts.kept, counts.examined) == (0, 1, 1)
    assert exists(fengine, parent) and exists(fengine, child)


def test_batches_progress_and_dry_run(fengine: Engine, clock: FakeClock) -> None:
    fengine.save_machine(counter())
    ids = [finished(fengine) for _ in range(7)] + [fengine.cancel(fengine.start("counter").id).id]
    history = rows(fengine, steps)
    clock.advance(days=40)
    seen: list[tuple[int, int, int]] = []

    def progress(c: PurgeCounts) -> None:
        seen.append((c.examined, c.total, c.executions))

    dry = fengine.purge(clock() - 30 * DAY, batch=3, dry_run=True, progress=progress)
    assert (dry.executions, dry.steps, dry.dry_run) == (8, history, True)
    assert rows(fengine, executions) == 8 and rows(fengine, steps) == history
    # finished ones in batches of 3 (3, 3, 1), then the canceled one
    assert seen == [(3, 8, 3), (6, 8, 6), (7, 8, 7), (8, 8, 8)]

    seen.clear()
    real = fengine.purge(clock() - 30 * DAY, batch=3, progress=progress)
    assert (real.executions, real.steps, real.batches) == (8, history, 4)
    assert seen[-1] == (8, 8, 8)
    assert rows(fengine, executions) == 0 and rows(fengine, steps) == 0
    assert not any(exists(fengine, e) for e in ids)


def test_the_cutoff_is_when_it_ended(fengine: Engine, clock: FakeClock) -> None:
    fengine.save_machine(counter())
    ex = fengine.start("counter", {"start": 3})  # started long ago ...
    clock.advance(days=60)
    fengine.trigger(ex.id, "finish")  # ... finished recently
    clock.advance(days=10)
    assert fengine.purge(clock() - 30 * DAY).executions == 0
    assert fengine.purge(clock() - 5 * DAY).executions == 1


def test_bad_arguments_are_named(fengine: Engine) -> None:
    with pytest.raises(ValueError, match="finished_before must be an aware datetime"):
        fengine.purge(dt.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="batch must be at least 1, got 0"):
        fengine.purge(dt.datetime(2030, 1, 1, tzinfo=dt.UTC), batch=0)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_purge(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    then = FakeClock(dt.datetime.now(dt.UTC) - 60 * DAY)
    engine = Engine(db_url, clock=then)
    try:
        engine.save_machine(counter())
        old = [finished(engine) for _ in range(3)]
        live = engine.start("counter").id
    finally:
        engine.close()

    code, out, err = run_cli(capsys, "--db", db_url, "--json", "purge", "--older-than", "30d", "--dry-run")
    assert (code, err) == (0, "")
    dry = json.loads(out)
    assert (dry["executions"], dry["dry_run"], dry["total"]) == (3, True, 3)

    code, out, _ = run_cli(capsys, "--db", db_url, "purge", "--older-than", "30d", "--batch", "2")
    assert code == 0
    assert "deleted" in out and "executions" in out and " 3 " in out
    code, out, _ = run_cli(capsys, "--db", db_url, "--json", "purge", "--older-than", "30d")
    assert json.loads(out)["executions"] == 0

    check = Engine(db_url)
    try:
        assert not any(exists(check, e) for e in old) and exists(check, live)
    finally:
        check.close()

    code, _, err = run_cli(capsys, "--db", db_url, "purge", "--older-than", "30 days")
    assert code == 2 and "--older-than '30 days'" in err
    code, _, err = run_cli(capsys, "--db", db_url, "purge")
    assert code == 2 and "--older-than" in err
