"""The HTTP API as a client in another language uses it: a real uvicorn server on a
loopback port, real HTTP requests (httpx), both databases."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from statem import Engine
from statem.web import create_app
from statem.web.models import ExecutionOut, ExecutionPage, MachineOut, MachineVersionOut, StepOut, TaskOut
from statem.web.problems import Problem

from .conftest import MACHINES
from .helpers import effect_machine, timer_machine
from .webserver import free_port, running

JSON = {"content-type": "application/json"}


def counter() -> dict[str, Any]:
    return {
        "id": "counter",
        "version": 1,
        "start_at": "counting",
        "context": {"n": "input.get('start', 0)"},
        "states": {
            "counting": {
                "actions": {
                    "add": {"state": "counting", "context": {"n": "ctx['n'] + input.get('by', 1)"}},
                    "stop": {"state": "stopped", "when": "ctx['n'] > 0"},
                }
            },
            "stopped": {"end": True, "return": "ctx['n']"},
        },
    }


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    """An HTTP client on a real server serving ``engine`` (both databases)."""
    engine.save_machine(counter())
    with running(create_app(engine)) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def problem_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The problem body, after checking status and media type."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    Problem.model_validate(body)
    assert body["status"] == status and body["detail"]
    return body


def start(c: httpx.Client, **body: Any) -> dict[str, Any]:
    resp = c.post("/api/v1/executions", json={"machine": "counter", **body})
    assert resp.status_code == 201, resp.text
    return ExecutionOut.model_validate(resp.json()).model_dump(mode="json")


# --------------------------------------------------------------------------- machines


def test_save_list_and_read_machines(client: httpx.Client) -> None:
    order = (MACHINES / "order.yaml").read_text()
    import yaml

    definition = yaml.safe_load(order)
    first = client.post("/api/v1/machines", json=definition)
    assert first.status_code == 201, first.text
    assert MachineOut.model_validate(first.json()).versions == [1]
    again = client.post("/api/v1/machines", json=definition)
    assert again.status_code == 200 and again.json() == first.json()

    changed = {**definition, "description": "something else"}
    body = problem_of(client.post("/api/v1/machines", json=changed), 422)
    assert body["errors"][0]["path"] == "version" and "different content" in body["errors"][0]["message"]

    broken = {**definition, "version": 2, "start_at": "nowhere"}
    body = problem_of(client.post("/api/v1/machines", json=broken), 422)
    assert body["type"] == "urn:statem:problem:definition-error"
    assert any(e["path"] == "start_at" for e in body["errors"]), body
    assert client.get("/api/v1/machines/order", params={"version": 2}).status_code == 404

    listed = client.get("/api/v1/machines").json()
    assert {(m["id"], m["version"]) for m in listed} == {("counter", 1), ("order", 1)}
    for m in listed:
        MachineVersionOut.model_validate(m)
    got = client.get("/api/v1/machines/order").json()
    assert got["definition"]["start_at"] == "create" and got["version"] == 1
    problem_of(client.get("/api/v1/machines/nope"), 404)
    problem_of(client.post("/api/v1/machines", json=[1, 2]), 422)


def test_graph_formats_and_execution_path(client: httpx.Client) -> None:
    ex = start(client)
    client.post(f"/api/v1/executions/{ex['id']}/actions/add", json={"by": 2})
    mermaid = client.get("/api/v1/machines/counter/graph")
    assert mermaid.status_code == 200 and mermaid.text.startswith("stateDiagram-v2")
    dot = client.get("/api/v1/machines/counter/graph", params={"format": "dot", "execution": ex["id"]})
    assert dot.text.startswith('digraph "counter_v1"') and "(2) add" in dot.text
    svg = client.get("/api/v1/machines/counter/graph", params={"format": "svg", "execution": ex["id"]})
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert '<g class="sm-edge taken" data-from="counting" data-to="counting">' in svg.text
    assert '<g class="sm-node current" data-state="counting">' in svg.text
    problem_of(client.get("/api/v1/machines/counter/graph", params={"format": "png"}), 422)
    problem_of(client.get("/api/v1/machines/counter/graph", params={"execution": "nope"}), 404)


# --------------------------------------------------------------------------- executions


def test_start_trigger_history_and_cancel(client: httpx.Client) -> None:
    ex = start(client, input={"start": 1})
    assert (ex["state"], ex["status"], ex["context"]) == ("counting", "waiting", {"n": 1})

    resp = client.post(f"/api/v1/executions/{ex['id']}/actions/add", json={"by": 5})
    assert resp.status_code == 200 and resp.json()["context"] == {"n": 6}
    resp = client.post(f"/api/v1/executions/{ex['id']}/actions/add")  # no body: input {}
    assert resp.json()["context"] == {"n": 7}

    body = problem_of(client.post(f"/api/v1/executions/{ex['id']}/actions/fly", json={}), 409)
    assert body["allowed"] == ["add", "stop"] and body["state"] == "counting"
    assert "fly" in body["detail"]

    history = client.get(f"/api/v1/executions/{ex['id']}/history").json()
    assert [(s["seq"], s["kind"], s["name"]) for s in history] == [
        (1, "start", None), (2, "action", "add"), (3, "action", "add"),
    ]  # fmt: skip
    for s in history:
        StepOut.model_validate(s)
    assert history[1]["input"] == {"by": 5}
    assert client.get(f"/api/v1/executions/{ex['id']}/actions").json() == ["add", "stop"]

    resp = client.post(f"/api/v1/executions/{ex['id']}/cancel", json={"reason": "customer called"})
    assert resp.json()["status"] == "canceled" and resp.json()["error"] == "customer called"
    body = problem_of(client.post(f"/api/v1/executions/{ex['id']}/actions/add", json={}), 409)
    assert body["allowed"] == []
    got = client.get(f"/api/v1/executions/{ex['id']}").json()
    assert got["status"] == "canceled" and got["context"] == {"n": 7}


def test_start_with_id_is_idempotent_and_bad_starts_change_nothing(
    client: httpx.Client, engine: Engine
) -> None:
    named = {"machine": "counter", "id": "R1234", "input": {"start": 3}}
    first = client.post("/api/v1/executions", json=named)
    assert first.status_code == 201
    again = client.post("/api/v1/executions", json=named)
    assert again.status_code == 200 and again.json()["id"] == "R1234"

    body = problem_of(client.post("/api/v1/executions", json={"machine": "counter", "version": "1"}), 422)
    assert body["errors"][0]["path"] == "body.version"
    body = problem_of(client.post("/api/v1/executions", json={"machine": "counter", "colour": "red"}), 422)
    assert body["errors"][0]["path"] == "body.colour"
    problem_of(client.post("/api/v1/executions", json={"machine": "ghost"}), 404)
    problem_of(client.post("/api/v1/executions", json={"machine": "counter", "version": 9}), 404)
    nan = b'{"machine": "counter", "input": {"x": NaN}}'
    problem_of(client.post("/api/v1/executions", content=nan, headers=JSON), 422)
    body = problem_of(client.post("/api/v1/executions", content=b'{"machine": ', headers=JSON), 422)
    assert "JSON" in body["detail"]
    expr = {**counter(), "id": "bad-expr", "context": {"n": "input['missing']"}}
    client.post("/api/v1/machines", json=expr)
    body = problem_of(client.post("/api/v1/executions", json={"machine": "bad-expr"}), 422)
    assert body["type"] == "urn:statem:problem:expression-error" and body["errors"][0]["path"]
    assert [e.id for e in engine.executions()] == ["R1234"]


def test_idempotency_key_header(client: httpx.Client) -> None:
    ex = start(client)
    url = f"/api/v1/executions/{ex['id']}/actions/add"
    for _ in range(3):
        resp = client.post(url, json={"by": 10}, headers={"Idempotency-Key": "pay-1"})
        assert resp.status_code == 200 and resp.json()["context"] == {"n": 10}
    client.post(url, json={"by": 1}, headers={"Idempotency-Key": "pay-2"})
    history = client.get(f"/api/v1/executions/{ex['id']}/history").json()
    assert [s["kind"] for s in history] == ["start", "action", "action"]
    problem_of(client.post(url, json={}, headers={"Idempotency-Key": "k" * 201}), 422)


def test_unknown_execution_is_404_everywhere(client: httpx.Client) -> None:
    for method, path in [
        ("GET", "/api/v1/executions/nope"),
        ("GET", "/api/v1/executions/nope?wait=1"),
        ("GET", "/api/v1/executions/nope/history"),
        ("GET", "/api/v1/executions/nope/pending"),
        ("POST", "/api/v1/executions/nope/actions/add"),
        ("POST", "/api/v1/executions/nope/cancel"),
    ]:
        body = problem_of(client.request(method, path), 404)
        assert body["type"] == "urn:statem:problem:execution-not-found", path
    body = problem_of(client.get("/api/v1/nothing-here"), 404)
    assert body["detail"] == "no route /api/v1/nothing-here"
    problem_of(client.delete("/api/v1/executions"), 405)


def test_pages_are_stable_while_executions_are_added(client: httpx.Client) -> None:
    originals = [start(client, input={"start": i})["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, "machine": "counter"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/executions", params=params).json()
        ExecutionPage.model_validate(page)
        seen += [e["id"] for e in page["items"]]
        start(client)  # a newer execution arrives between pages: it must not shift them
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(originals))
    assert len(client.get("/api/v1/executions", params={"limit": 500}).json()["items"]) == 10
    assert client.get("/api/v1/executions", params={"status": "finished"}).json() == {
        "items": [], "next_cursor": None,
    }  # fmt: skip
    body = problem_of(client.get("/api/v1/executions", params={"cursor": "garbage"}), 422)
    assert "cursor" in body["detail"]
    problem_of(client.get("/api/v1/executions", params={"limit": 0}), 422)
    problem_of(client.get("/api/v1/executions", params={"limit": 501}), 422)
    problem_of(client.get("/api/v1/executions", params={"older_than": "soon"}), 422)
    assert client.get("/api/v1/executions", params={"older_than": "1h"}).json()["items"] == []
    empty = {"machine": "", "status": "", "state": "", "limit": 2}  # an empty filter filters nothing
    assert len(client.get("/api/v1/executions", params=empty).json()["items"]) == 2


def test_long_poll_returns_when_the_execution_comes_to_rest(engine: Engine) -> None:
    engine.save_machine(effect_machine("work"))
    release = threading.Event()

    @engine.effect("work")
    def work(input: Any, *, idempotency_key: str) -> Any:
        release.wait(10)
        return {"ok": True}

    app = create_app(engine)
    with running(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        ex = c.post("/api/v1/executions", json={"machine": "fx"}).json()
        assert ex["status"] == "running"
        # not at rest: a short wait returns the execution as it is, after the wait
        t0 = time.monotonic()
        got = c.get(f"/api/v1/executions/{ex['id']}", params={"wait": 0.5}).json()
        assert got["status"] == "running" and time.monotonic() - t0 >= 0.5

        results: list[dict[str, Any]] = []

        def wait_for_rest() -> None:
            results.append(c.get(f"/api/v1/executions/{ex['id']}", params={"wait": 20}).json())

        waiters = [threading.Thread(target=wait_for_rest) for _ in range(12)]
        for w in waiters:
            w.start()
        # while they wait, they hold no database connection (and no thread: see RestWaiter)
        deadline = time.monotonic() + 10
        while app.state.waiter.waiting < 12 and time.monotonic() < deadline:
            time.sleep(0.005)
        samples = []
        for _ in range(20):
            samples.append((app.state.waiter.waiting, engine.db.pool.checkedout()))  # type: ignore[attr-defined]
            time.sleep(0.01)
        assert any(w == 12 and conns == 0 for w, conns in samples), samples
        runner = threading.Thread(target=engine.run_once)
        runner.start()
        release.set()
        runner.join(10)
        t0 = time.monotonic()
        for w in waiters:
            w.join(15)
        assert time.monotonic() - t0 < 10
        assert len(results) == 12
        assert {(r["state"], r["status"]) for r in results} == {("done", "finished")}


def test_long_poll_on_an_armed_timer_waits_then_returns_as_is(engine: Engine) -> None:
    engine.save_machine(timer_machine(hours=1))
    with running(create_app(engine, poll_seconds=0.05)) as base, httpx.Client(base_url=base, timeout=30) as c:
        ex = c.post("/api/v1/executions", json={"machine": "t"}).json()
        t0 = time.monotonic()
        got = c.get(f"/api/v1/executions/{ex['id']}", params={"wait": 0.3})
        assert got.status_code == 200 and got.json()["status"] == "waiting"
        assert time.monotonic() - t0 >= 0.3
        pending = c.get(f"/api/v1/executions/{ex['id']}/pending").json()
        assert [(t["kind"], t["status"]) for t in pending] == [("timer", "pending")]
        TaskOut.model_validate(pending[0])
        problem_of(c.get(f"/api/v1/executions/{ex['id']}", params={"wait": 61}), 422)
        problem_of(c.get(f"/api/v1/executions/{ex['id']}", params={"wait": "soon"}), 422)


def test_body_limits_and_media_types(engine: Engine) -> None:
    engine.save_machine(counter())
    with running(create_app(engine, max_body=1000)) as base, httpx.Client(base_url=base, timeout=30) as c:
        ex = c.post("/api/v1/executions", json={"machine": "counter"}).json()
        url = f"/api/v1/executions/{ex['id']}/actions/add"
        big = {"by": 1, "pad": "x" * 2000}
        body = problem_of(c.post(url, json=big), 413)
        assert "1000 bytes" in body["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
            yield b'{"by": 1, "pad": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}'

        problem_of(c.post(url, content=chunks(), headers=JSON), 413)
        form = {"content-type": "application/x-www-form-urlencoded"}
        problem_of(c.post(url, content=b"by=1", headers=form), 415)
        problem_of(c.post(url, content=b'{"by": 1}', headers={"content-type": "text/plain"}), 415)
        assert c.get(f"/api/v1/executions/{ex['id']}").json()["context"] == {"n": 0}  # nothing applied


def test_stats_and_healthz(client: httpx.Client) -> None:
    start(client)
    stats = client.get("/api/v1/stats").json()
    assert stats["database"]["executions"] == {"waiting": 1}
    assert client.get("/healthz").json() == {"status": "ok"}


def test_database_unreachable_is_503(tmp_path: Any) -> None:
    engine = Engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    try:
        with running(create_app(engine)) as base, httpx.Client(base_url=base, timeout=30) as c:
            health = c.get("/healthz")
            assert health.status_code == 503 and health.json() == {"status": "down"}
            body = problem_of(c.get("/api/v1/executions"), 503)
            assert body["detail"] == "the database cannot be reached; try again later"
            problem_of(c.post("/api/v1/executions", json={"machine": "counter"}), 503)
    finally:
        engine.close()


def test_openapi_is_served_and_lists_every_route(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    expected = {
        "/api/v1/machines": {"get", "post"},
        "/api/v1/machines/{machine_id}": {"get"},
        "/api/v1/machines/{machine_id}/graph": {"get"},
        "/api/v1/executions": {"get", "post"},
        "/api/v1/executions/{execution_id}": {"get"},
        "/api/v1/executions/{execution_id}/history": {"get"},
        "/api/v1/executions/{execution_id}/actions/{action}": {"post"},
        "/api/v1/executions/{execution_id}/cancel": {"post"},
        "/api/v1/executions/{execution_id}/pause": {"post"},
        "/api/v1/executions/{execution_id}/resume": {"post"},
        "/api/v1/executions/{execution_id}/retry": {"post"},
        "/api/v1/executions/{execution_id}/move": {"post"},
        "/api/v1/stats": {"get"},
        "/healthz": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    trigger = paths["/api/v1/executions/{execution_id}/actions/{action}"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in trigger["parameters"])
    assert "application/problem+json" in trigger["responses"]["409"]["content"]
    listing = paths["/api/v1/executions"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"machine", "status", "state", "limit", "cursor"}
    wait = paths["/api/v1/executions/{execution_id}"]["get"]["parameters"]
    assert any(p["name"] == "wait" for p in wait)
    assert not any(p.startswith("/executions") or p == "/" for p in paths)  # the console is not API
    assert client.get("/docs").status_code == 404  # Swagger UI would need a CDN: not served
