"""Reads that must stay fast at scale: stats() from the planner's estimates on big tables."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from statem import Engine, store

from .conftest import TABLES
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
        ids = [engine.start("counter").id for _ in range(6)]
        for eid in ids[:2]:
            engine.trigger(eid, "inc", {"by": 3})
            engine.trigger(eid, "finish")
        with engine.db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE statem_executions"))
            conn.execute(text("ANALYZE statem_steps"))
        monkeypatch.setattr(store, "STATS_EXACT_ROWS", 1)  # these 6 rows count as big
        db = engine.stats()["database"]
        # ANALYZE read every row of these small tables, so the estimates are exact here
        assert db["estimated"] == ["executions", "steps"]
        assert db["executions"] == {"waiting": 4, "finished": 2}
        assert db["steps"] == 6 + 2 * 2
    finally:
        engine.close()
