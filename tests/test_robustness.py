"""Issue 10: nothing lost, nothing stuck. Ids, text, numbers, sizes, depth and lock errors.

Each test here failed before its fix: the values it sends were accepted at the door and
then wedged an execution in a worker step (PostgreSQL refusing them), overflowed, or
escaped untyped. On both databases unless the defect is SQLite's own.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from statem import (
    DefinitionError,
    Engine,
    ExecutionNotFound,
    ExpressionError,
    InputError,
    StoreError,
)
from statem.definition import Retry
from statem.limits import CHILD_SEPARATOR, child_execution_id
from statem.settings import MAX_CHILD_DEPTH, MAX_EXECUTION_ID_LENGTH, MAX_STEP_CLAIMS, WorkerSettings
from statem.testing import FakeClock, run_until_idle

from .helpers import effect_machine, timer_machine

# --------------------------------------------------------------------------- 3, 10: ids


NEST: dict[str, Any] = {
    "id": "nest",
    "version": 1,
    "start_at": "go",
    "context": {"d": "input.get('d', 0)", "limit": "input.get('limit', 1000)"},
    "states": {
        "go": {
            "always": [
                {"name": "deep-enough", "state": "done", "when": "ctx['d'] >= ctx['limit']"},
                {"name": "recurse", "invoke": {
                    "machine": ["nest"],
                    "input": "{'d': ctx['d'] + 1, 'limit': ctx['limit']}",
                    "success": {"state": "done", "context": {"below": "output"}},
                    "error": {"state": "refused", "context": {"why": "output"}},
                }},
            ]
        },
        "done": {"end": True, "return": "ctx.get('below', ctx['d'])"},
        "refused": {"end": True, "return": "ctx['why']"},
    },
}  # fmt: skip


def test_execution_id_rule_is_checked_in_start(engine: Engine) -> None:
    engine.save_machine(NEST)
    longest = "x" * MAX_EXECUTION_ID_LENGTH
    for bad, why in [
        ("", "must not be empty"),
        (longest + "y", "129 characters long"),
        ("has space", "contains ' '"),
        (f"p{CHILD_SEPARATOR}1", "contains '~'"),
        ("a/b", "contains '/'"),
        ("caf\u00e9", "contains"),
        ("nul\x00", "contains"),
    ]:
        with pytest.raises(InputError, match=why):
            engine.start("nest", {"limit": 0}, execution_id=bad)
    assert engine.executions() == []
    for good in (longest, "order-R1.x:y@z_9"):
        assert engine.start("nest", {"limit": 0}, execution_id=good).status == "finished"


def test_child_ids_fit_the_column_at_the_deepest_level(engine: Engine) -> None:
    """A 128-character root id with children 32 deep: every id fits 200 characters."""
    engine.save_machine(NEST)
    root = engine.start("nest", {"limit": MAX_CHILD_DEPTH}, execution_id="r" * MAX_EXECUTION_ID_LENGTH)
    run_until_idle(engine)
    ex = engine.get(root.id)
    assert (ex.status, ex.output) == ("finished", MAX_CHILD_DEPTH)
    ids = [root.id]
    while children := engine.executions(parent_id=ids[-1]):
        ids.append(children[0].id)
    assert len(ids) == MAX_CHILD_DEPTH + 1
    assert all(len(i) <= 200 and CHILD_SEPARATOR in i for i in ids[1:])
    assert all(engine.get(i).status == "finished" for i in ids)


def test_child_ids_never_collide_with_a_callers_id(engine: Engine) -> None:
    """The old derived form ``<parent>.<task id>`` is a caller's id now; a child's is not."""
    engine.save_machine(NEST)
    for task_id in range(1, 6):  # whatever task id the child gets
        engine.start("nest", {"limit": 0}, execution_id=f"p.{task_id}")
    parent = engine.start("nest", {"limit": 1}, execution_id="p")
    run_until_idle(engine)
    assert engine.get(parent.id).status == "finished"
    (child,) = engine.executions(parent_id="p")
    assert child.id.startswith("p~") and child.status == "finished"
    with pytest.raises(InputError, match="contains '~'"):
        engine.start("nest", {"limit": 0}, execution_id=child.id)


def test_child_execution_id_shortens_long_parents() -> None:
    short = child_execution_id("order-1", 42)
    assert short == "order-1~42"
    deep = "a" * 128
    for task_id in range(10**15, 10**15 + 40):  # 40 levels of large task ids
        deep = child_execution_id(deep, task_id)
        assert len(deep) <= 200
    assert deep.endswith(f"~{10**15 + 39}") and child_execution_id(deep, 1) != child_execution_id(deep, 2)


# --------------------------------------------------------------------------- 6: depth and sizes


def test_a_machine_invoking_itself_stops_at_the_depth_limit(engine: Engine) -> None:
    engine.save_machine(NEST)
    root = engine.start("nest")  # no limit of its own: it would recurse forever
    run_until_idle(engine)
    ids = [root.id]
    while children := engine.executions(parent_id=ids[-1]):
        ids.append(children[0].id)
    assert len(ids) == MAX_CHILD_DEPTH + 1  # depths 0..32, no 33rd level
    deepest = engine.get(ids[-1])
    assert deepest.state == "refused" and deepest.status == "finished"
    assert isinstance(deepest.output, dict) and deepest.output["type"] == "LimitExceeded"
    assert f"past the limit of {MAX_CHILD_DEPTH}" in deepest.output["message"]
    assert engine.get(root.id).status == "finished"  # every level got its child's result


BIG = {
    "id": "big",
    "version": 1,
    "start_at": "idle",
    "context": {"blob": "input.get('blob', '')", "n": "0"},
    "states": {
        "idle": {
            "actions": {
                "grow": {"context": {"more": "input['blob']"}},
                "spin": {"state": "spinning"},
            }
        },
        "spinning": {"always": [
            {"name": "stop", "state": "idle", "when": "ctx['n'] >= 30"},
            {"name": "again", "context": {"n": "ctx['n'] + 1"}},
        ]},
    },
}  # fmt: skip


def test_history_rows_and_contexts_are_bounded(engine: Engine) -> None:
    engine.save_machine(BIG)
    # a 600 KB input copied into the context: the start row would hold 1.2 MB
    with pytest.raises(InputError, match=r"history row 1 of the step \(start\).*limit is 1000000"):
        engine.start("big", {"blob": "x" * 600_000})
    assert engine.executions() == []
    ex = engine.start("big", {"blob": "x" * 300_000})
    # the context would grow past 1 MB: refused, nothing applied
    with pytest.raises(InputError, match="the context is not acceptable"):
        engine.trigger(ex.id, "grow", {"blob": "y" * 800_000})
    # 31 always-steps each storing a 300 KB context: 9 MB of history from one trigger
    with pytest.raises(InputError, match=r"the history rows of one step.*limit is 8000000"):
        engine.trigger(ex.id, "spin")
    assert len(engine.history(ex.id)) == 1 and engine.get(ex.id).state == "idle"


# --------------------------------------------------------------------------- 4: text


@pytest.mark.parametrize("bad", ["a\x00b", "lone \ud800 surrogate", "pair \ud83d\ude00 as two code points"])
def test_unstorable_text_is_refused_at_the_door(engine: Engine, bad: str) -> None:
    engine.save_machine(NEST)
    for value, where in [
        ({"k": bad}, "input['k']"),
        ({bad: 1}, "input"),
        ({"l": [1, {"m": bad}]}, "input['l'][1]['m']"),
    ]:
        with pytest.raises(InputError, match=r"(NUL character|surrogate code point).*at " + _re(where)):
            engine.start("nest", value)
    ex = engine.start("nest", {"limit": 0, "ok": "fine"})
    with pytest.raises(InputError):
        engine.start("nest", {"limit": 0}, execution_id=bad)
    with pytest.raises(InputError, match="action"):
        engine.trigger(ex.id, bad)
    with pytest.raises(InputError, match="idempotency key"):
        engine.trigger(ex.id, "x", idempotency_key=bad)
    with pytest.raises(InputError, match="execution id"):
        engine.trigger(bad, "x")
    with pytest.raises(InputError, match="input"):
        engine.trigger(ex.id, "x", {"v": bad})
    assert [e.id for e in engine.executions()] == [ex.id]


def _re(text: str) -> str:
    import re

    return re.escape(text)


NUL_STEPS = {
    "id": "nul",
    "version": 1,
    "start_at": "idle",
    "context": {"v": "'ok'"},
    "states": {
        "idle": {
            "actions": {
                "poison": {"context": {"v": "'a\\x00b'"}},
                "later": {"state": "later"},
            }
        },
        "later": {"always": [{"name": "tick", "wait_for": {"seconds": 0}, "state": "done",
                              "context": {"v": "'a\\x00b'"}}]},
        "done": {"end": True},
    },
}  # fmt: skip


def test_unstorable_text_made_by_a_step_fails_it_clearly(engine: Engine) -> None:
    engine.save_machine(NUL_STEPS)
    ex = engine.start("nul")
    with pytest.raises(InputError, match=r"NUL character.*at the context\['v'\]"):
        engine.trigger(ex.id, "poison")
    assert engine.get(ex.id).context == {"v": "ok"}
    engine.trigger(ex.id, "later")
    run_until_idle(engine)  # the timer step makes the NUL: the execution fails, the task is gone
    failed = engine.get(ex.id)
    assert failed.status == "failed" and "NUL character" in (failed.error or "")
    assert engine.history(ex.id)[-1].error == failed.error and engine.pending(ex.id) == []


@pytest.mark.parametrize(
    "result, why",
    [({"x": "a\x00"}, "NUL character"), ({"x": "\udcff"}, "surrogate"), ({"n": 10**5000}, "4300 digits")],
)
def test_an_unstorable_effect_result_takes_the_error_branch(engine: Engine, result: Any, why: str) -> None:
    engine.save_machine(effect_machine())
    engine.effects.register("work", lambda input, *, idempotency_key: result)
    ex = engine.start("fx")
    run_until_idle(engine)
    done = engine.get(ex.id)
    assert (done.state, done.status) == ("broken", "finished")
    assert done.context["why"]["type"] == "InputError" and why in done.context["why"]["message"]


# --------------------------------------------------------------------------- 8: numbers


def test_overflowing_and_non_finite_durations_are_refused_at_save(engine: Engine) -> None:
    for wait_for, why in [
        ({"days": 3_000_000}, "longer than the limit of 100 years"),
        ({"seconds": float("inf")}, "finite number"),
        ({"hours": float("nan")}, "finite number"),
    ]:
        with pytest.raises(DefinitionError, match=r"states\.w\.always\[0\]\.wait_for.*" + why):
            engine.save_machine(timer_machine(**wait_for))
    for invoke, why in [
        ({"timeout_seconds": float("inf")}, "timeout_seconds"),
        ({"retry": {"initial_seconds": float("inf")}}, "initial_seconds"),
        ({"retry": {"max_seconds": 1e300}}, "max_seconds"),
    ]:
        with pytest.raises(DefinitionError, match=why):
            engine.save_machine(effect_machine(**invoke))
    assert engine.machines() == []


def test_yaml_infinity_is_refused(tmp_path: Path, sqlite_engine: Engine) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "id: t\nversion: 1\nstart_at: w\nstates:\n"
        "  w: {always: [{state: done, wait_for: {minutes: .inf}}]}\n  done: {end: true}\n"
    )
    with pytest.raises(DefinitionError, match="finite number"):
        sqlite_engine.save_machine(path)


def test_retry_delays_are_capped_before_they_are_computed() -> None:
    policy = Retry(max_attempts=1000, initial_seconds=1, multiplier=3, max_seconds=300)
    assert [policy.delay(a) for a in (1, 2, 6, 648, 1000)] == [1.0, 3.0, 243.0, 300.0, 300.0]
    assert Retry(max_attempts=1000, initial_seconds=1e-300, multiplier=1000).delay(1000) == 300.0


UNTIL = {
    "id": "until",
    "version": 1,
    "start_at": "idle",
    "states": {
        "idle": {"actions": {"wait": {"state": "w"}}},
        "w": {"always": [{"name": "nap", "state": "done", "wait_for": {"until": "input['at']"}}]},
        "done": {"end": True},
    },
}


@pytest.mark.parametrize("at", ["9999-12-31T23:00:00-05:00", "2600-01-01T00:00:00Z", 1e18])
def test_an_until_out_of_range_is_refused(engine: Engine, at: Any) -> None:
    engine.save_machine(UNTIL)
    ex = engine.start("until")
    with pytest.raises(ExpressionError, match=r"out of range|until must be"):
        engine.trigger(ex.id, "wait", {"at": at})
    assert engine.get(ex.id).state == "idle" and engine.pending(ex.id) == []


def test_huge_integers_are_refused_at_the_door(engine: Engine) -> None:
    engine.save_machine(NEST)
    with pytest.raises(InputError, match=r"more than 4300 digits.*at input\['n'\]"):
        engine.start("nest", {"n": 10**4300})
    ex = engine.start("nest", {"limit": 0, "n": 10**4299})  # 4,300 digits: the largest accepted
    assert engine.get(ex.id).input == {"limit": 0, "n": 10**4299}


# --------------------------------------------------------------------------- 9: SQLite lock timeouts


def _locked_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, sqlite3.Connection]:
    import statem.dialects

    monkeypatch.setattr(statem.dialects, "DB_TIMEOUT_SECONDS", 0.2)
    db = tmp_path / "locked.db"
    engine = Engine(f"sqlite:///{db}")
    engine.migrate()
    return engine, sqlite3.connect(db, isolation_level=None, check_same_thread=False)


def test_a_sqlite_lock_timeout_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, holder = _locked_engine(tmp_path, monkeypatch)
    engine.save_machine(NEST)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="database is locked"):
        engine.start("nest", {"limit": 0})
    holder.execute("ROLLBACK")
    assert engine.start("nest", {"limit": 0}).status == "finished"  # the pool is fine afterwards
    engine.close()


def test_a_worker_backs_off_while_sqlite_is_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine, holder = _locked_engine(tmp_path, monkeypatch)
    engine.save_machine(timer_machine(seconds=0.3))
    ex = engine.start("t")
    caplog.set_level(logging.WARNING)
    settings = WorkerSettings(poll_seconds=0.05, lease_seconds=2)
    with engine.worker(settings):
        holder.execute("BEGIN IMMEDIATE")
        time.sleep(1.0)
        holder.execute("ROLLBACK")
        assert engine.wait(ex.id, timeout=20).status == "finished"
    engine.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("lost the database" in m and "database is locked" in m for m in messages), messages
    assert any("reconnected after" in m for m in messages), messages
    assert not [r for r in caplog.records if r.exc_info or r.name.startswith("apscheduler")], messages


# --------------------------------------------------------------------------- 7: one lock order

WAITS_FOR_CHILD = {
    "id": "holder",
    "version": 1,
    "start_at": "go",
    "states": {
        "go": {"always": [{"name": "spawn", "invoke": {
            "machine": ["finisher", 1], "success": {"state": "done"}, "error": {"state": "done"}}}]},
        "done": {"end": True},
    },
}  # fmt: skip
FINISHER = {
    "id": "finisher",
    "version": 1,
    "start_at": "open",
    "states": {"open": {"actions": {"finish": {"state": "done"}}}, "done": {"end": True}},
}
SLOW_RESUME = """
CREATE OR REPLACE FUNCTION statem_test_slow_resume() RETURNS trigger AS $$
BEGIN
    IF NEW.kind = 'resume' THEN PERFORM pg_sleep(1.5); END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER statem_test_slow_resume BEFORE INSERT ON statem_tasks
    FOR EACH ROW EXECUTE FUNCTION statem_test_slow_resume();
"""


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_cancel_of_a_parent_and_its_childs_last_step_do_not_deadlock(engine: Engine) -> None:
    """The child's last step holds the child's row and inserts the parent's resume task
    (its foreign key check locks the parent's key); cancel(parent) holds the parent and
    waits for the child. A trigger slows the resume insert so the two always overlap."""
    import threading

    from sqlalchemy import text

    engine.save_machine(FINISHER)
    engine.save_machine(WAITS_FOR_CHILD)
    parent = engine.start("holder")
    run_until_idle(engine)
    (child,) = engine.executions(parent_id=parent.id)
    with engine.db.begin() as conn:
        conn.execute(text(SLOW_RESUME))
    errors: list[BaseException] = []

    def finish() -> None:
        try:
            engine.trigger(child.id, "finish")
        except BaseException as exc:
            errors.append(exc)

    try:
        thread = threading.Thread(target=finish)
        thread.start()
        time.sleep(0.5)  # the child's step now sits in the slowed insert, holding the child's row
        canceled = engine.cancel(parent.id, "stop")
        thread.join()
    finally:
        with engine.db.begin() as conn:
            conn.execute(text("DROP TRIGGER IF EXISTS statem_test_slow_resume ON statem_tasks"))
    assert errors == []
    assert canceled.status == "canceled"
    assert engine.get(child.id).status == "finished"  # the child's step committed first
    assert engine.pending(parent.id) == []  # its result was discarded by the cancel, and recorded
    kinds = [s.kind for s in engine.history(parent.id)]
    assert kinds == ["start", "invoke", "cancel", "discard", "discard"], kinds


# --------------------------------------------------------------------------- 0: nothing escapes a step

REFUSE = {
    "sqlite": [
        "CREATE TRIGGER statem_test_refuse BEFORE INSERT ON statem_steps WHEN NEW.to_state = 'forbidden' "
        "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION statem_test_refuse() RETURNS trigger AS $$ BEGIN "
        "IF NEW.to_state = 'forbidden' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER statem_test_refuse BEFORE INSERT ON statem_steps "
        "FOR EACH ROW EXECUTE FUNCTION statem_test_refuse()",
    ],
}


class refusing_steps:
    """A real database trigger that refuses any history row entering state ``forbidden``:
    a value the database will not take, which no check up front knows about."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        from sqlalchemy import text

        with self.engine.db.begin() as conn:
            for statement in REFUSE[conn.dialect.name]:
                conn.execute(text(statement))

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import text

        with self.engine.db.begin() as conn:
            on = "" if conn.dialect.name == "sqlite" else " ON statem_steps"
            conn.execute(text(f"DROP TRIGGER IF EXISTS statem_test_refuse{on}"))
            if on:  # PostgreSQL: its function too (test_batches makes one of that name)
                conn.execute(text("DROP FUNCTION IF EXISTS statem_test_refuse()"))


def test_a_step_the_database_refuses_fails_its_execution(engine: Engine) -> None:
    machine = timer_machine(seconds=0)
    machine["states"]["w"]["always"][0]["state"] = "forbidden"
    machine["states"]["forbidden"] = machine["states"].pop("done")
    engine.save_machine(machine)
    ex = engine.start("t")
    with refusing_steps(engine):
        assert run_until_idle(engine) == 1  # one claim: it fails, it does not come back
    failed = engine.get(ex.id)
    assert (failed.status, failed.state) == ("failed", "w")
    assert "refused by a test trigger" in (failed.error or "")
    last = engine.history(ex.id)[-1]
    assert (last.kind, last.error) == ("timer", failed.error)
    assert engine.pending(ex.id) == []


def test_an_effect_result_the_database_refuses_takes_the_error_branch(engine: Engine) -> None:
    machine = effect_machine()
    machine["states"]["go"]["always"][0]["invoke"]["success"]["state"] = "forbidden"
    machine["states"]["forbidden"] = machine["states"].pop("done")
    engine.save_machine(machine)
    engine.effects.register("work", lambda input, *, idempotency_key: {"fine": 1})
    ex = engine.start("fx")
    with refusing_steps(engine):
        run_until_idle(engine)
    done = engine.get(ex.id)
    assert (done.state, done.status) == ("broken", "finished")
    assert "refused by a test trigger" in done.context["why"]["message"]
    assert engine.pending(ex.id) == []


# --------------------------------------------------------------------------- 2: attempts counted at claim


def _abandon(engine: Engine, clock: FakeClock, times: int) -> None:
    """Claim the ready tasks and never finish them, ``times`` over: a worker dying each time."""
    for _ in range(times):
        assert engine._executor.claim("doomed", 10, lease_seconds=1)
        clock.advance(2)


def test_an_effect_whose_worker_dies_is_attempted_at_most_max_attempts(db_url: str) -> None:
    clock = FakeClock()
    engine = Engine(db_url, clock=clock)
    calls: list[str] = []
    engine.effects.register("work", lambda input, *, idempotency_key: calls.append(idempotency_key))
    engine.save_machine(effect_machine(retry={"max_attempts": 2}))
    ex = engine.start("fx")
    _abandon(engine, clock, 2)
    assert run_until_idle(engine) == 1
    done = engine.get(ex.id)
    assert (done.state, calls) == ("broken", [])  # the third claim does not run it again
    assert done.context["why"]["type"] == "TaskAbandoned"
    assert "the worker died (or lost its lease) running this effect" in done.context["why"]["message"]
    engine.close()


def test_a_step_whose_worker_dies_is_claimed_at_most_its_bound(db_url: str) -> None:
    clock = FakeClock()
    engine = Engine(db_url, clock=clock)
    engine.save_machine(timer_machine(seconds=0))
    ex = engine.start("t")
    _abandon(engine, clock, MAX_STEP_CLAIMS)
    assert run_until_idle(engine) == 1
    failed = engine.get(ex.id)
    assert (failed.status, failed.state) == ("failed", "w")
    assert f"claimed {MAX_STEP_CLAIMS} times and never finished" in (failed.error or "")
    assert engine.pending(ex.id) == []
    engine.close()


# --------------------------------------------------------------------------- 5: late results recorded


@pytest.mark.parametrize("fails", [False, True])
def test_a_late_effect_result_is_recorded_with_its_output(engine: Engine, fails: bool) -> None:
    def charge(input: Any, *, idempotency_key: str) -> Any:
        engine.cancel(ex.id, "customer gave up")  # lands while the charge is in flight
        if fails:
            raise RuntimeError("card declined")
        return {"charged": 42}

    engine.save_machine(effect_machine(effect="charge"))
    engine.effects.register("charge", charge)
    ex = engine.start("fx")
    run_until_idle(engine)
    assert engine.get(ex.id).status == "canceled"
    steps = engine.history(ex.id)
    assert [s.kind for s in steps] == ["start", "invoke", "cancel", "discard", "discard"]
    late = steps[-1]
    if fails:
        assert late.output == {"task": "effect", "effect": "charge", "late": True,
                               "error": {"type": "RuntimeError", "message": "card declined"}}  # fmt: skip
        assert "the effect failed: RuntimeError: card declined" in (late.error or "")
    else:
        assert late.output == {"task": "effect", "effect": "charge", "late": True, "output": {"charged": 42}}
    assert "late result" in (late.error or "")


# --------------------------------------------------------------------------- 1: claims by effect name


def test_a_worker_does_not_wake_for_effects_it_cannot_run(engine: Engine) -> None:
    """Its next wake-up ignores effect tasks it would not claim (else it would poll in a
    tight loop: due now, claimed never)."""
    from statem import claims

    engine.save_machine(effect_machine(effect="elsewhere"))
    ex = engine.start("fx")
    worker = engine.worker(WorkerSettings(poll_seconds=0.05))
    assert worker._claim() is None  # claims nothing, and nothing it can run is due
    with engine.db.connect() as conn:
        due = claims.next_due(conn, ["elsewhere"])
        assert due is not None and due <= engine.clock()
        assert claims.claim_tasks(conn, owner="w", claim="c", now=engine.clock(), lease_until=engine.clock(),
                                 limit=10, effects=["http.request.json"]) == []  # fmt: skip
    assert [t.attempts for t in engine.pending(ex.id)] == [0]


def test_a_row_the_database_refuses_in_start_is_a_store_error(engine: Engine) -> None:
    """Issue 10 item 27: an IntegrityError that is not a concurrent start of the same id
    reaches the caller as a StoreError (here: the machine row was deleted under a warm cache,
    so the execution's foreign key fails), and nothing is stored."""
    engine.save_machine(timer_machine(seconds=60))
    engine.start("t", execution_id="warm")  # compiles and caches version 1
    with engine.db.begin() as conn:
        for table in ("statem_tasks", "statem_steps", "statem_executions", "statem_machines"):
            conn.execute(text(f"DELETE FROM {table}"))
    with pytest.raises(StoreError, match="database error"):
        engine.start("t", version=1, execution_id="refused")
    with pytest.raises(ExecutionNotFound):
        engine.get("refused")
