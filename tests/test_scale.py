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
