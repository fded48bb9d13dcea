"""Steps committed in batches (statem.batch): due timers, and effect results by group commit
(SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text

from statem import Engine
from statem.batch import GroupCommit, run_timers
from statem.leases import LeaseRenewer
from statem.schema import tasks
from statem.settings import WorkerSettings
from statem.testing import FakeClock

MACHINE: dict[str, Any] = {
    "id": "nag",
    "version": 1,
    "start_at": "wait",
    "context": {"bad": "input.get('bad', False)"},
    "states": {
        "wait": {
            "always": [
                {
                    "name": "late",
                    "state": "late",
                    "wait_for": {"hours": 1},
                    "context": {"x": "1 / 0 if ctx['bad'] else 1"},
                }
            ],
            "actions": {"skip": {"state": "skipped"}},
        },
        "late": {"end": True},
        "skipped": {"end": True},
    },
}

QUICK: dict[str, Any] = {
    "id": "quick",
    "version": 1,
    "start_at": "wait",
    "states": {
        "wait": {"always": [{"name": "late", "state": "late", "wait_for": {"seconds": 1}}]},
        "late": {"end": True},
    },
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fengine(db_url: str, clock: FakeClock) -> Iterator[Engine]:
    e = Engine(db_url, clock=clock)
    e.save_machine(MACHINE)
    yield e
    e.close()


def contiguous(engine: Engine, eid: str) -> bool:
    return [s.seq for s in engine.history(eid)] == list(range(1, len(engine.history(eid)) + 1))


def test_a_batch_commits_every_step_but_the_stale_and_records_the_failed(
    fengine: Engine, clock: FakeClock
) -> None:
    ok = [fengine.start("nag").id for _ in range(5)]
    bad = fengine.start("nag", {"bad": True}).id
    moved = fengine.start("nag").id
    clock.advance(hours=2)
    claimed = fengine._executor.claim("test", 100, 30.0)
    assert len(claimed) == 7 and {t.kind for t in claimed} == {"timer"}
    fengine.trigger(moved, "skip")  # discards its timer: that claim is now stale

    run_timers(fengine._executor, claimed)

    for eid in ok:
        ex = fengine.get(eid)
        assert (ex.state, ex.status, ex.context["x"]) == ("late", "finished", 1)
        assert [s.kind for s in fengine.history(eid)] == ["start", "wait", "timer"]
    failed = fengine.get(bad)
    assert failed.status == "failed" and "division by zero" in (failed.error or "")
    assert fengine.get(moved).state == "skipped"  # the trigger's step stands; no timer step
    assert "timer" not in [s.kind for s in fengine.history(moved)]
    assert all(contiguous(fengine, e) for e in [*ok, bad, moved])
    assert fengine.run_once() == 0  # nothing left claimed or pending
    assert fengine.stats()["process"]["tasks"].get("stale") == 1


def test_a_batch_of_timers_logs_one_info_line_and_each_step_at_debug(
    fengine: Engine, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ids = sorted(fengine.start("nag").id for _ in range(4))
    bad = fengine.start("nag", {"bad": True}).id
    clock.advance(hours=2)
    claimed = fengine._executor.claim("test", 100, 30.0)
    with caplog.at_level(logging.DEBUG, logger="statem"):
        run_timers(fengine._executor, claimed)

    batch = [r for r in caplog.records if r.levelno == logging.INFO and r.name == "statem.executor"]
    assert [r.getMessage() for r in batch] == [
        f"fired 5 timers in one transaction (executions {min(*ids, bad)} .. {max(*ids, bad)})"
    ]
    assert sorted(batch[0].execution_ids) == sorted([*ids, bad])
    per_step = [r for r in caplog.records if r.levelno == logging.DEBUG and "-> state" in r.getMessage()]
    assert sorted(r.execution_id for r in per_step) == sorted([*ids, bad])
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.execution_id for r in failures] == [bad]  # a failure is still a WARNING of its own


def test_a_batch_of_one_runs_as_a_single_task(fengine: Engine, clock: FakeClock) -> None:
    eid = fengine.start("nag").id
    clock.advance(hours=2)
    run_timers(fengine._executor, fengine._executor.claim("test", 10, 30.0))
    assert fengine.get(eid).status == "finished"


def test_a_worker_fires_many_due_timers_in_batches(db_url: str) -> None:
    engine = Engine(db_url)
    try:
        engine.save_machine(QUICK)
        ids = [engine.start("quick").id for _ in range(300)]
        time.sleep(1.1)  # all due before the worker starts: its claims come back full
        with engine.worker() as worker:
            for eid in ids:
                engine.wait(eid, timeout=60)
            largest = worker.largest_batch
        assert all(engine.get(e).status == "finished" for e in ids)
        assert all([s.kind for s in engine.history(e)] == ["start", "wait", "timer"] for e in ids)
        assert all(contiguous(engine, e) for e in ids)
        assert largest > 1  # the batch grew under load
    finally:
        engine.close()


# --------------------------------------------------------------------------- set-based batches

TO_MAP: dict[str, Any] = {
    "id": "tomap",
    "version": 1,
    "start_at": "wait",
    "states": {
        "wait": {"always": [{"name": "later", "state": "fan", "wait_for": {"hours": 1}}]},
        "fan": {
            "always": [
                {
                    "name": "each",
                    "invoke": {
                        "map": "[1, 2, 3]",
                        "effect": "double",
                        "input": "{'n': item}",
                        "success": {"state": "done", "context": {"r": "output"}},
                    },
                }
            ]
        },
        "done": {"end": True},
    },
}
PARENT: dict[str, Any] = {
    "id": "parent",
    "version": 1,
    "start_at": "calling",
    "states": {
        "calling": {
            "always": [{"name": "call", "invoke": {"machine": ["nag", 1], "success": {"state": "done"}}}]
        },
        "done": {"end": True},
    },
}
EFFECT: dict[str, Any] = {
    "id": "fx",
    "version": 1,
    "start_at": "calling",
    "context": {"n": "input['n']"},
    "states": {
        "calling": {
            "always": [
                {
                    "name": "call",
                    "invoke": {
                        "effect": "double",
                        "input": "{'n': ctx['n']}",
                        "success": {"state": "done", "context": {"twice": "output['n']"}},
                    },
                }
            ]
        },
        "done": {"end": True},
    },
}


def test_a_batch_mixes_set_based_steps_with_the_ordinary_paths(fengine: Engine, clock: FakeClock) -> None:
    """One batch: plain timers and a child's last step (set-based), a timer whose step arms
    a fan-out (the locking path, same transaction), a paused execution (its timer kept), a
    canceled one (its timer dropped), a stale claim."""
    fengine.save_machines([TO_MAP, PARENT])
    fengine.effect("double")(lambda input, *, idempotency_key: {"n": input["n"] * 2})
    plain = [fengine.start("nag").id for _ in range(3)]
    fan = fengine.start("tomap").id
    parent = fengine.start("parent").id
    fengine.run_once()  # starts the child, which arms its timer
    (child,) = [c.id for c in fengine.executions(parent_id=parent)]
    paused = fengine.start("nag").id
    canceled = fengine.start("nag").id
    moved = fengine.start("nag").id
    clock.advance(hours=2)
    claimed = fengine._executor.claim("test", 100, 30.0)
    assert len(claimed) == 8 and {t.kind for t in claimed} == {"timer"}
    fengine.pause(paused, "hold it")
    fengine.cancel(canceled, "not wanted")
    fengine.trigger(moved, "skip")

    run_timers(fengine._executor, claimed)

    for eid in plain:
        assert [s.kind for s in fengine.history(eid)] == ["start", "wait", "timer"]
        assert fengine.get(eid).status == "finished"
    assert [s.kind for s in fengine.history(fan)] == ["start", "wait", "timer", "invoke"]
    assert fengine.get(child).status == "finished"
    fengine.run_once()  # the parent applies its child's result; the fan-out's elements run
    fengine.run_once()
    assert fengine.get(fan).context["r"] == [{"n": 2}, {"n": 4}, {"n": 6}]
    assert fengine.get(parent).state == "done"
    assert fengine.get(paused).status == "paused" and fengine.get(paused).state == "wait"
    fengine.resume(paused, "go on")
    fengine.run_once()
    assert fengine.get(paused).state == "late"  # the kept timer, applied after resume
    assert fengine.get(canceled).status == "canceled"
    assert "timer" not in [s.kind for s in fengine.history(canceled)]
    assert fengine.get(moved).state == "skipped"
    for eid in [*plain, fan, parent, child, paused, canceled, moved]:
        assert contiguous(fengine, eid), eid
    assert fengine.run_once() == 0


def test_a_step_the_database_refuses_does_not_take_its_batch_down(pg_url: str) -> None:
    """PostgreSQL refuses one execution's write (a trigger raises): the batch rolls back,
    its steps run one by one, every other one commits, and the refused one stays
    claimed (its lease lapses) with nothing of it half-written."""
    from sqlalchemy import create_engine, text

    from tests.conftest import _truncate

    _truncate(pg_url)
    clock = FakeClock()
    engine = Engine(pg_url, clock=clock)
    raw = create_engine(pg_url)
    try:
        engine.save_machine(MACHINE)
        ids = [engine.start("nag", execution_id=f"ok-{i}").id for i in range(4)]
        poison = engine.start("nag", execution_id="poison").id
        with raw.begin() as conn:
            conn.execute(text(
                "CREATE OR REPLACE FUNCTION statem_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN "
                "IF NEW.id = 'poison' AND NEW.version >= 2 THEN RAISE EXCEPTION 'refused by test'; END IF; "
                "RETURN NEW; END $$"
            ))  # fmt: skip
            conn.execute(text(
                "CREATE TRIGGER statem_test_refuse BEFORE UPDATE ON statem_executions "
                "FOR EACH ROW EXECUTE FUNCTION statem_test_refuse()"
            ))  # fmt: skip
        clock.advance(hours=2)
        run_timers(engine._executor, engine._executor.claim("test", 10, 30.0))
        for eid in ids:
            assert engine.get(eid).status == "finished" and contiguous(engine, eid)
        refused = engine.get(poison)
        assert (refused.state, refused.status) == ("wait", "waiting")
        assert [s.kind for s in engine.history(poison)] == ["start", "wait"]
    finally:
        with raw.begin() as conn:
            conn.execute(text("DROP TRIGGER IF EXISTS statem_test_refuse ON statem_executions"))
            conn.execute(text("DROP FUNCTION IF EXISTS statem_test_refuse()"))
        raw.dispose()
        engine.close()


def test_effect_results_share_transactions_under_load(tmp_path: Path) -> None:
    """Group commit: results submitted while a batch is being written wait and are
    written together by the next leader. The first leader (its batch: its own result) is
    held up by another connection holding SQLite's write lock, so the five other results
    queue behind it and share the next transaction."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'g.db'}"
    engine = Engine(url)
    try:
        engine.migrate()
        engine.save_machine(EFFECT)
        engine.effect("double")(lambda input, *, idempotency_key: {"n": input["n"] * 2})
        ids = [engine.start("fx", {"n": i}).id for i in range(6)]
        tasks = engine._executor.claim("test", 10, 30.0)
        assert len(tasks) == 6
        group = GroupCommit(engine._executor)
        engine._executor.committer = group.submit
        blocker = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        threads = [threading.Thread(target=engine._executor.run, args=(t,)) for t in tasks]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(group._queue) < 5 and time.monotonic() < deadline:  # all but the leader's own
            time.sleep(0.01)
        blocker.execute("ROLLBACK")
        blocker.close()
        for t in threads:
            t.join(30)
        for i, eid in enumerate(ids):
            ex = engine.get(eid)
            assert (ex.state, ex.context["twice"]) == ("done", 2 * i)
            assert [s.kind for s in engine.history(eid)] == ["start", "invoke", "result"]
            assert contiguous(engine, eid)
        assert group.largest == 5  # the leader wrote its own; the next one the five queued meanwhile
        assert engine.run_once() == 0
    finally:
        engine.close()


def test_a_worker_commits_many_effect_results_correctly(db_url: str) -> None:
    engine = Engine(db_url, worker_settings=WorkerSettings(concurrency=8, poll_seconds=0.2))
    try:
        engine.save_machine(EFFECT)
        engine.effect("double")(lambda input, *, idempotency_key: {"n": input["n"] * 2})
        ids = [engine.start("fx", {"n": i}).id for i in range(120)]
        with engine.worker():
            for eid in ids:
                engine.wait(eid, timeout=60)
        for i, eid in enumerate(ids):
            ex = engine.get(eid)
            assert (ex.status, ex.context["twice"]) == ("finished", 2 * i)
            assert [s.kind for s in engine.history(eid)] == ["start", "invoke", "result"]
    finally:
        engine.close()


def counted_doubles(db_url: str, pause: float) -> tuple[Engine, list[int]]:
    """An engine (a 4-thread worker's settings) with EFFECT saved and its effect counting
    its calls (the ``n`` of each) in the list returned, each call taking ``pause`` s."""
    engine = Engine(db_url, worker_settings=WorkerSettings(concurrency=4, poll_seconds=0.2))
    calls: list[int] = []
    engine.save_machine(EFFECT)

    @engine.effect("double")
    def double(input: dict[str, Any], *, idempotency_key: str) -> Any:
        calls.append(input["n"])
        time.sleep(pause)
        return {"n": input["n"] * 2}

    return engine, calls


def test_a_busy_thread_gets_its_next_task_in_its_results_transaction(db_url: str) -> None:
    """GroupCommit's refill: a batch of results ends by claiming the next task of each
    thread it frees, so a busy worker runs most tasks without a claim transaction of its
    own; every task still runs once, under its own claim, and nothing stays claimed."""
    engine, calls = counted_doubles(db_url, pause=0.0)
    try:
        ids = [engine.start("fx", {"n": i}).id for i in range(80)]
        with engine.worker() as worker:
            for eid in ids:
                engine.wait(eid, timeout=60)
            handed, claimed = worker.results.handed, worker.claimed
        assert sorted(calls) == list(range(80))  # each once
        assert handed > 0 and claimed + handed == 80  # each task claimed once, by a poll or handed
        for i, eid in enumerate(ids):
            ex = engine.get(eid)
            assert (ex.status, ex.context["twice"]) == ("finished", 2 * i)
            assert [s.kind for s in engine.history(eid)] == ["start", "invoke", "result"]
        with engine.db.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM statem_tasks")).scalar() == 0
    finally:
        engine.close()


def test_a_worker_stopping_runs_or_releases_every_task_it_was_handed(db_url: str) -> None:
    """Stopped while results hand threads their next tasks: what it was handed it runs
    before stop() returns, what it had not started it releases; nothing is left claimed,
    and a second worker finishes the rest, each effect called once."""
    engine, calls = counted_doubles(db_url, pause=0.002)
    try:
        ids = [engine.start("fx", {"n": i}).id for i in range(150)]
        worker = engine.worker().start()
        deadline = time.monotonic() + 30
        while len(calls) < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
        worker.stop()
        assert 40 <= len(calls) < 150 and worker.results.handed > 0
        with engine.db.connect() as conn:
            assert (
                conn.execute(text("SELECT COUNT(*) FROM statem_tasks WHERE status = 'claimed'")).scalar() == 0
            )
        with engine.worker():
            for eid in ids:
                engine.wait(eid, timeout=60)
        assert sorted(calls) == list(range(150))
        assert all(engine.get(eid).status == "finished" for eid in ids)
    finally:
        engine.close()


def test_a_batched_step_writes_exactly_what_a_lone_step_writes(fengine: Engine, clock: FakeClock) -> None:
    """The set-based writes store the same rows, byte for byte in SQL, as the one-step
    path: execution columns (JSON null outputs included), history rows and armed tasks."""
    from sqlalchemy import text

    fengine.save_machine(PARENT)
    alone = fengine.start("parent", execution_id="alone").id
    fengine.run_once()  # starts child alone~N, whose timer is armed
    batched = [fengine.start("parent", execution_id=f"batched-{i}").id for i in range(2)]
    fengine.run_once()
    clock.advance(hours=2)
    claims = {t.execution_id: t for t in fengine._executor.claim("test", 10, 30.0)}
    assert len(claims) == 3
    run_timers(fengine._executor, [t for e, t in claims.items() if e.startswith("alone")])
    run_timers(fengine._executor, [t for e, t in claims.items() if e.startswith("batched")])

    def rows(prefix: str) -> list[tuple[Any, ...]]:
        with fengine.db.connect() as conn:
            execution = conn.execute(text(
                "SELECT state, status, CAST(context AS TEXT), CAST(output AS TEXT), output IS NULL, error, "
                "seq, version, armed FROM statem_executions WHERE parent_id = :p"
            ), {"p": prefix}).all()  # fmt: skip
            history = conn.execute(text(
                "SELECT s.seq, s.kind, s.name, s.from_state, s.to_state, CAST(s.input AS TEXT), "
                "CAST(s.output AS TEXT), s.output IS NULL, CAST(s.context AS TEXT), s.error, s.event IS NULL "
                "FROM statem_steps s JOIN statem_executions e ON e.id = s.execution_id "
                "WHERE e.parent_id = :p ORDER BY s.seq"), {"p": prefix}).all()  # fmt: skip
            resume = conn.execute(text(
                "SELECT kind, status, CAST(payload AS TEXT), attempts, claim IS NULL, effect IS NULL "
                "FROM statem_tasks WHERE execution_id = :p"), {"p": prefix}).all()  # fmt: skip
        tasks = [(*r[:2], {k: v for k, v in json.loads(r[2]).items() if k != "task"}, *r[3:]) for r in resume]
        return [tuple(r) for r in [*execution, *history, *tasks]]  # the parent's task ids differ

    assert rows(alone) and rows(alone) == rows(batched[0]) == rows(batched[1])


def test_an_idle_worker_fires_a_lone_timer_on_its_own_never_early(db_url: str) -> None:
    engine = Engine(db_url)
    try:
        engine.save_machine(QUICK)
        eid = engine.start("quick").id
        (due,) = [t.due_at for t in engine.pending(eid)]
        with engine.worker() as worker:
            engine.wait(eid, timeout=30)
            assert worker.largest_batch == 1 and worker.results.largest == 0  # no batch, no result
        timer = [s for s in engine.history(eid) if s.kind == "timer"]
        assert len(timer) == 1 and timer[0].at >= due
    finally:
        engine.close()


def test_timers_a_dead_worker_held_come_back_one_at_a_time(fengine: Engine, clock: FakeClock) -> None:
    """A worker that died holding a batch costs its timers one claim each, once: their
    lapsed claims are never taken by a batch claim again (only fresh timers are), and
    when a poll takes them back they are fired on their own."""
    ids = [fengine.start("nag").id for _ in range(3)]
    clock.advance(hours=2)
    held = fengine._executor.claim("dead", 10, 1.0)  # claimed by a worker that then died
    assert len(held) == 3
    clock.advance(seconds=5)  # its lease lapsed
    assert fengine._executor.claim("batcher", 100, 30.0, timers=True) == []  # not fresh
    again = fengine._executor.claim("next", 10, 30.0)
    assert sorted(t.attempts for t in again) == [2, 2, 2]
    run_timers(fengine._executor, again)
    assert all(fengine.get(e).status == "finished" and contiguous(fengine, e) for e in ids)


def test_one_renewal_extends_every_held_lease_fenced_by_its_own_claim(
    fengine: Engine, clock: FakeClock
) -> None:
    """A worker firing a burst holds thousands of claims; one renewal (one statement, or
    one executemany on SQLite) extends each lease still held under its token, and no
    other."""
    for _ in range(300):
        fengine.start("nag")
    clock.advance(hours=2)
    claimed = fengine._executor.claim("test", 300, 30.0)
    assert len(claimed) == 300
    wrong, unheld, *held = claimed
    renewer = LeaseRenewer(fengine._runtime, lease_seconds=600.0)
    renewer.hold(wrong.id, "not-its-claim")
    for task in held:
        renewer.hold(task.id, task.claim)
    clock.advance(seconds=10)
    statements: list[str] = []
    listen = (fengine.db, "before_cursor_execute", lambda c, cur, sql, *a: statements.append(sql))
    event.listen(*listen)
    renewer.renew()
    event.remove(*listen)
    assert len([sql for sql in statements if sql.lstrip().startswith("UPDATE")]) == 1

    with fengine.db.connect() as conn:
        leases = dict(conn.execute(select(tasks.c.id, tasks.c.lease_expires_at)).all())
    assert leases[wrong.id] == leases[unheld.id] == wrong.lease_expires_at  # as claimed
    assert {leases[t.id] for t in held} == {clock() + dt.timedelta(seconds=600)}
