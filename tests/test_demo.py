"""The main job: ``statem demo`` runs the order end to end, as a real process and in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from statem import Engine
from statem.demo import run_demo
from statem.records import Execution, Step

from .conftest import ROOT

ORDER_OUTPUT = {"delivered": True, "order": "R1234"}
SHIPMENT_OUTPUT = {"delivered": True, "tracking": "TRK-R1234"}
#: The shipment's way through the 503 refusal and the retry timer, as (kind, name).
SHIPMENT_PATH = [
    ("invoke", "book-pickup"),
    ("result", "refused"),
    ("wait", "retry-later"),
    ("timer", "retry-later"),
    ("invoke", "book-pickup"),
    ("result", "booked"),
]


def assert_contiguous(steps: list[Step]) -> None:
    assert [s.seq for s in steps] == list(range(1, len(steps) + 1))


def assert_demo_end_state(url: str) -> tuple[Execution, Execution]:
    """Read the demo's order and shipment back from ``url`` with a fresh Engine and check them."""
    engine = Engine(url)
    try:
        orders = engine.executions("order")
        assert len(orders) == 1
        order = orders[0]
        assert (order.status, order.state, order.output) == ("finished", "shipped", ORDER_OUTPUT)
        assert order.context["order"] == {"id": "R1234", "line_items": ["tea", "tea", "kettle"]}
        assert (order.context["delivered"], order.context["tracking"]) == (True, "TRK-R1234")

        children = engine.executions(parent_id=order.id)
        assert len(children) == 1
        shipment = children[0]
        assert (shipment.machine_id, shipment.parent_id) == ("shipment", order.id)
        assert (shipment.status, shipment.state, shipment.output) == (
            "finished",
            "delivered",
            SHIPMENT_OUTPUT,
        )
        assert shipment.context["attempts"] == 1

        order_steps = engine.history(order.id)
        assert_contiguous(order_steps)
        assert [s.kind for s in order_steps] == ["start", "always"] + ["action"] * 4 + ["invoke", "result"]
        assert order_steps[-1].to_state == "shipped"

        steps = engine.history(shipment.id)
        assert_contiguous(steps)
        path = [(s.kind, s.name) for s in steps if s.kind in {"invoke", "result", "wait", "timer"}]
        assert path == SHIPMENT_PATH
        by_name = {(s.kind, s.name): s for s in steps}
        refused, booked = by_name["result", "refused"], by_name["result", "booked"]
        assert isinstance(refused.output, dict) and refused.output["status"] == 503
        assert (refused.from_state, refused.to_state) == ("outstanding", "failed")
        assert refused.context is not None and refused.context["attempts"] == 1
        assert booked.output == {"tracking": "TRK-R1234"}  # the service's JSON body
        assert (booked.from_state, booked.to_state) == ("outstanding", "booked")
        wait, timer = by_name["wait", "retry-later"], by_name["timer", "retry-later"]
        assert timer.at >= wait.at
        assert steps[-1].to_state == "delivered"
        assert engine.stats()["database"]["tasks"] == {}
        return order, shipment
    finally:
        engine.close()


def test_statem_demo_as_a_process(tmp_path: Path) -> None:
    """As `make demo` runs it: no --db, so its own statem-demo.db (STATEM_DATABASE_URL is not used)."""
    url = f"sqlite:///{tmp_path}/statem-demo.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEM_") and k != "FORCE_COLOR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["STATEM_DATABASE_URL"] = f"sqlite:///{tmp_path}/users-own.db"
    proc = subprocess.run(
        [sys.executable, "-m", "statem.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout

    order, shipment = assert_demo_end_state(url)
    assert not (tmp_path / "users-own.db").exists() and not (tmp_path / "statem.db").exists()

    assert "loaded machine shipment v1" in out and "loaded machine order v1" in out
    assert f"started order execution {order.id} (R1234)" in out
    assert "fraud-approve  -> released" in out
    # both history tables, each with its title and header
    assert f"order {order.id}" in out
    assert f"shipment {shipment.id}" in out
    assert out.count("context changes") == 2
    # the order reached shipped; the shipment went through a 503, the retry timer, and a booking
    assert "released → shipped" in out
    for text in (
        "book-pickup",
        "refused",
        "HTTP 503",
        "~attempts = 1",
        "retry-later",
        "timer due",
        "failed → outstanding",
        "booked",
        '{"tracking": "TRK-R1234"}',
        "booked → delivered",
    ):
        assert text in out, text
    *_, last, hint = out.strip().splitlines()
    assert (
        hint
        == f"inspect it: statem --db sqlite:///statem-demo.db show {order.id}  (or history, or list --parent)"
    )
    assert last.startswith(f"order {order.id}: finished in state 'shipped', output ")
    assert '{"delivered": true, "order": "R1234"}' in last
    assert "2 HTTP calls" in last


def test_run_demo_in_process(db_url: str) -> None:
    lines: list[str] = []
    result = run_demo(db_url, echo=lambda *a: lines.append(" ".join(map(str, a))))
    order, shipment = assert_demo_end_state(db_url)
    assert result["order"] == order
    assert result["shipment"] == shipment
    assert [s.seq for s in result["shipment_history"]] == list(range(1, len(result["shipment_history"]) + 1))
    assert [(s.kind, s.name) for s in result["shipment_history"]][1:7] == SHIPMENT_PATH
    assert len(result["order_history"]) == 8
    calls = result["http_calls"]
    assert [c["body"] for c in calls] == [{"order": "R1234"}] * 2
    assert all(c["key"] for c in calls)
    assert 1.0 <= result["seconds"] < 30
    assert lines[:2] == ["loaded machine shipment v1", "loaded machine order v1"]
    assert lines[-1].strip().startswith("fraud-approve")


def test_run_demo_again_on_the_same_database(tmp_path: Path) -> None:
    """`make demo` twice reuses statem-demo.db: the machines are saved again as no-ops, a new order runs."""
    url = f"sqlite:///{tmp_path}/again.db"
    first = run_demo(url, echo=lambda *a: None)
    second = run_demo(url, echo=lambda *a: None)
    assert second["order"].id != first["order"].id
    assert second["order"].output == ORDER_OUTPUT
    assert second["shipment"].parent_id == second["order"].id
    engine = Engine(url)
    try:
        assert {e.status for e in engine.executions("order")} == {"finished"}
        assert len(engine.executions("order")) == 2
        assert [(m.id, m.version) for m in engine.machines()] == [("order", 1), ("shipment", 1)]
    finally:
        engine.close()
