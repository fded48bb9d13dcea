"""Operator operations over HTTP and in the console: pause, resume, retry, move (DESIGN
section 8). They call Engine.pause/resume/retry/move, which land with the operations
branch; until then this module is skipped as a whole (the lead removes the guard)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from statem import Engine
from statem.web import create_app

from .browser import chromium, screenshot
from .conftest import MACHINES
from .helpers import effect_machine
from .test_web_api import counter, problem_of
from .test_web_console import history_heads, wait_for
from .webserver import running


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    engine.save_machine(counter())
    with running(create_app(engine)) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def test_pause_keeps_triggers_and_resume_applies_them(client: httpx.Client, engine: Engine) -> None:
    ex = client.post("/api/v1/executions", json={"machine": "counter"}).json()
    base = f"/api/v1/executions/{ex['id']}"
    paused = client.post(f"{base}/pause", json={"reason": "investigating"})
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    kept = client.post(f"{base}/actions/add", json={"by": 3})
    assert (
        kept.status_code == 200 and kept.json()["status"] == "paused" and kept.json()["context"] == {"n": 0}
    )
    again = client.post(f"{base}/pause", json={})
    assert again.json()["status"] == "paused"  # a no-op
    resumed = client.post(f"{base}/resume", json={"reason": "fixed"})
    assert resumed.status_code == 200 and resumed.json()["status"] in ("waiting", "running")
    engine.run_once()
    assert client.get(base).json()["context"] == {"n": 3}
    kinds = [(s["kind"], s["input"]) for s in client.get(f"{base}/history").json()]
    assert ("pause", {"reason": "investigating"}) in kinds and ("resume", {"reason": "fixed"}) in kinds
    body = problem_of(client.post(f"{base}/resume", json={}), 409)
    assert "waiting" in body["detail"]


def test_retry_a_failed_execution(client: httpx.Client, engine: Engine) -> None:
    engine.save_machine(effect_machine("flaky", error=None))
    calls: list[Any] = []

    @engine.effect("flaky")
    def flaky(input: Any, *, idempotency_key: str) -> Any:
        calls.append(idempotency_key)
        if len(calls) == 1:
            raise RuntimeError("down")
        return {"ok": True}

    ex = client.post("/api/v1/executions", json={"machine": "fx"}).json()
    engine.run_once()
    base = f"/api/v1/executions/{ex['id']}"
    assert client.get(base).json()["status"] == "failed"
    problem_of(client.post(f"{base}/actions/skip", json={}), 409)
    retried = client.post(f"{base}/retry", json={"reason": "service is back"})
    assert retried.status_code == 200 and retried.json()["status"] == "running"
    engine.run_once()
    assert client.get(base).json()["state"] == "done"
    assert calls[0] == calls[1]  # the same idempotency key
    problem_of(client.post(f"{base}/retry", json={}), 409)


def test_move_with_context_and_refusals(client: httpx.Client) -> None:
    ex = client.post("/api/v1/executions", json={"machine": "counter"}).json()
    base = f"/api/v1/executions/{ex['id']}"
    moved = client.post(
        f"{base}/move", json={"state": "counting", "context": {"n": 41}, "reason": "fix count"}
    )
    assert moved.status_code == 200 and moved.json()["context"] == {"n": 41}
    problem_of(client.post(f"{base}/move", json={"state": "nowhere"}), 422)
    problem_of(client.post(f"{base}/move", json={"state": "counting", "context": [1]}), 422)
    problem_of(client.post(f"{base}/move", json={"context": {}}), 422)
    client.post(f"{base}/actions/stop", json={})
    body = problem_of(client.post(f"{base}/move", json={"state": "counting"}), 409)
    assert "finished" in body["detail"]
    problem_of(client.post("/api/v1/executions/nope/pause", json={}), 404)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def test_pause_and_resume_in_the_console(browser: WebDriver, engine: Engine) -> None:
    engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
    ex = engine.start("order", {"n": 99})
    with running(create_app(engine)) as base:
        browser.get(f"{base}/executions/{ex.id}")
        browser.find_element(By.ID, "r-pause").send_keys("customer on the phone")
        browser.find_element(By.CSS_SELECTOR, "#op-pause button").click()
        wait_for(browser, "#status", "paused")
        assert history_heads(browser)[0].startswith("#3 pause")
        assert browser.find_elements(By.ID, "op-resume") and not browser.find_elements(By.ID, "op-pause")
        screenshot(browser, f"paused-{engine.db.dialect.name}")
        browser.find_element(By.ID, "r-resume").send_keys("done talking")
        browser.find_element(By.CSS_SELECTOR, "#op-resume button").click()
        wait_for(browser, "#status", "waiting")
        assert history_heads(browser)[0].startswith("#4 resume")
        browser.find_element(By.ID, "m-context").send_keys('{"note": "moved by hand"}')
        browser.find_element(By.ID, "r-move").send_keys("re-enter the cart")
        browser.find_element(By.CSS_SELECTOR, "#op-move button").click()
        wait_for(browser, ".alert.ok", "move")
        assert '"moved by hand"' in browser.find_element(By.ID, "context").text
    assert [s.kind for s in engine.history(ex.id)][-3:] == ["pause", "resume", "move"]
