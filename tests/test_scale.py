"""Reads that must stay fast at scale: stats() from the planner's estimates on big tables."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from statem import Engine, store_stats

from .conftest import TABLES
from .helpers import timer_machine
from .test_engine import counter


def test_stats_counts_exactly_on_small_tables(engine: Engine) -> None:
    engine.save_machine(counter())
    for _ in range(3):
        engine.start("counter")
    db = engine.stats()["database"]
    assert db["executions"] == {"waiting": 3} and db["steps"] == 3
    assert "estimated" not in db


def test_stats_estimates_on_big_postgresql_tables(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(pg_url)
    try:
        with engine.db.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
        engine.save_machine(counter())
        engine.save_machine(timer_machine(hours=1))
        for _ in range(3):
            engine.start("t")
        ids = [engine.start("counter").id for _ in range(6)]
        for eid in ids[:2]:
            engine.trigger(eid, "inc", {"by": 3})
            engine.trigger(eid, "finish")
        with engine.db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in TABLES:
                conn.execute(text(f"ANALYZE {table}"))
            history = conn.execute(text("SELECT count(*) FROM statem_steps")).scalar()
        monkeypatch.setattr(store_stats, "STATS_EXACT_ROWS", 0)  # these few rows count as big
        db = engine.stats()["database"]
        # ANALYZE read every row of these small tables, so the estimates are exact here
        assert db["estimated"] == ["executions", "tasks", "steps"]
        assert db["executions"] == {"waiting": 7, "finished": 2}
        assert db["tasks"] == {"timer/pending": 3}
        assert db["steps"] == history
    finally:
        engine.close()


def test_live_counts_are_exact_below_the_cap_and_capped_above(engine: Engine) -> None:
    """statem_live_counts: every group of unfinished executions (machine, version, state,
    status), exact up to 1,000, capped above; finished and canceled ones left out."""
    engine.save_machine(counter())
    engine.save_machine({**counter(), "version": 2})
    started = [engine.start("counter", version=v).id for v in (1, 1, 2)]
    engine.trigger(started[0], "inc", {"by": 5})
    engine.trigger(started[0], "finish")  # finished: not counted
    engine.cancel(started[1])  # canceled: not counted
    # 1,003 more unfinished executions in one group, 7 in another, in bulk
    series = (
        "WITH RECURSIVE g(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM g WHERE g < :n) SELECT g FROM g"
        if engine.db.dialect.name == "sqlite"
        else "SELECT generate_series(1, :n) AS g"
    )
    with engine.db.begin() as conn:
        for prefix, state, status, n in (("big", "idle", "failed", 1_003), ("few", "done", "running", 7)):
            conn.execute(
                text(
                    "INSERT INTO statem_executions (id, machine_id, machine_version, state, status, context,"
                    " input, seq, version, armed, created_at, updated_at)"
                    f" SELECT '{prefix}-' || g, 'counter', 1, '{state}', '{status}', '{{}}', '{{}}', 1, 1,"
                    f" false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM ({series}) AS s"
                ),
                {"n": n},
            )
    with engine.db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT machine_id, machine_version, state, status, executions, capped"
                " FROM statem_live_counts ORDER BY machine_version, state, status"
            )
        ).all()
    assert [(*r[:5], bool(r[5])) for r in rows] == [
        ("counter", 1, "done", "running", 7, False),
        ("counter", 1, "idle", "failed", 1_000, True),
        ("counter", 2, "idle", "waiting", 1, False),
    ]
