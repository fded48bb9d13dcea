"""Every code example in the README and docs/ runs; the SQL cookbook runs verbatim on both databases."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from statem import Engine
from statem.demo import ShippingStub
from statem.testing import run_until_idle

from .conftest import MACHINES, ROOT

FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(path.read_text(encoding="utf-8")) if kind == lang]


@pytest.mark.parametrize("doc", [d for d in DOCS if blocks(d, "python")], ids=lambda p: p.name)
def test_python_examples_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The python blocks of one document run in order, in one namespace, in a scratch directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "machines").symlink_to(MACHINES)
    namespace: dict[str, Any] = {"__name__": f"doc_{doc.stem}"}
    for i, code in enumerate(blocks(doc, "python")):
        try:
            exec(compile(code, f"{doc.name}[python block {i + 1}]", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"{doc.name} python block {i + 1} failed: {type(exc).__name__}: {exc}\n{code}")
    engine = namespace.get("engine")
    if isinstance(engine, Engine):
        engine.close()


def test_readme_cookbook_runs_on_both_databases(db_url: str) -> None:
    queries = blocks(ROOT / "README.md", "sql")
    assert len(queries) >= 6
    with ShippingStub(fail_first=1).running() as stub:
        engine = Engine(db_url, env={"shipping_url": stub.url})
        try:
            engine.save_service(MACHINES / "services" / "shipping.yaml")
            engine.save_machine(MACHINES / "shipment.yaml")
            engine.save_machine(MACHINES / "order.yaml")
            order = engine.start("order", {"n": 1234}, execution_id="order-R1234")
            for action, data in (("add", {"sku": "tea"}), ("place", {}), ("fraud-approve", {})):
                engine.trigger(order.id, action, data)
            run_until_idle(engine)
            # the 503 sent the shipment to a 1 s timer: it stays pending work
            stuck = engine.start("order", {"n": 1})
            assert stuck.status == "waiting"
            engine.save_machine(
                {
                    "id": "oops",
                    "version": 1,
                    "start_at": "a",
                    "states": {
                        "a": {"always": [{"state": "b", "wait_for": {"seconds": 0}}]},
                        "b": {"always": [{"state": "a", "context": {"x": "1 / 0"}}]},
                    },
                }
            )
            failed = engine.start("oops")
            run_until_idle(engine)
            assert engine.get(failed.id).status == "failed"
        finally:
            engine.close()
    db = create_engine(db_url)
    results = {}
    with db.connect() as conn:
        for q in queries:
            results[q] = conn.execute(text(q)).mappings().all()
    db.dispose()
    path, active, failures, counts, pending, contexts = (results[q] for q in queries[:6])
    assert [r["kind"] for r in path][:2] == ["start", "always"]
    assert [r["seq"] for r in path] == list(range(1, len(path) + 1))
    assert all(r["idle_seconds"] > 3600 for r in active)  # nothing here is an hour old
    assert [r["id"] for r in failures] == [failed.id]
    assert "division by zero" in failures[0]["error"]
    assert sum(r["executions"] for r in counts) == 4  # order, its shipment, stuck, failed
    assert not any(r["capped"] for r in counts)
    assert [r["machine_id"] for r in counts] == sorted(r["machine_id"] for r in counts)
    assert sorted((r["kind"], r["name"]) for r in pending) == [
        ("child", "ship"),
        ("timer", "retry-later"),
    ]
    assert contexts[-1]["context"] is not None
