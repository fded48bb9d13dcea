"""The README's operator queries (who paused what, upgrades today, failures by error) on both databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text

from statem import Engine
from statem.testing import run_until_idle

from .conftest import ROOT
from .test_docs import blocks
from .test_operations import steps_machine


def test_operator_queries_run_on_both_databases(db_url: str) -> None:
    queries = [q for q in blocks(ROOT / "README.md", "sql") if "statem_operations" in q or "GROUP BY" in q]
    paused_q, upgraded_q, failures_q = queries
    engine = Engine(db_url)
    try:
        engine.save_machine(steps_machine())
        for eid in ("e1", "e2"):
            engine.start("steps", execution_id=eid)
        engine.pause("e1", reason="incident 12")
        v2: dict[str, Any] = {**steps_machine(), "version": 2}
        engine.save_machine(v2)
        engine.upgrade("steps", 2, execution_ids=["e2"], apply=True, reason="rollout")
        a = {"always": [{"state": "b", "wait_for": {"seconds": 0}, "context": {"x": "1 / 0"}}]}
        engine.save_machine(
            {"id": "boom", "version": 1, "start_at": "a", "states": {"a": a, "b": {"end": True}}}
        )
        for i in range(3):
            engine.start("boom", execution_id=f"b{i}")
        run_until_idle(engine)
    finally:
        engine.close()
    db = create_engine(db_url)
    with db.connect() as conn:
        paused = conn.execute(text(paused_q)).mappings().all()
        upgraded = conn.execute(text(upgraded_q)).mappings().all()
        failures = conn.execute(text(failures_q)).mappings().all()
    db.dispose()
    assert [(r["execution_id"], r["reason"], r["status"]) for r in paused] == [
        ("e1", "incident 12", "paused")
    ]
    assert [(r["execution_id"], r["to_version"], r["reason"]) for r in upgraded] == [("e2", 2, "rollout")]
    assert len(failures) == 1 and failures[0]["executions"] == 3
    assert "division by zero" in failures[0]["error"] and failures[0]["machine_id"] == "boom"
