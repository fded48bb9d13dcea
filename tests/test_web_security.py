"""Who may do what over HTTP: the token, read-only mode, loopback hosts, cross-site writes,
the console's CSRF tokens, and `statem serve` itself (a real subprocess)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from statem import Engine
from statem.web import create_app

from .test_web_api import counter, problem_of
from .webserver import free_port, running

TOKEN = "tok-3f9a1c0e-very-secret"


@pytest.fixture
def guarded(engine: Engine) -> Iterator[str]:
    """A server that requires TOKEN."""
    engine.save_machine(counter())
    with running(create_app(engine, token=TOKEN)) as base:
        yield base


def test_token_is_required_everywhere_but_healthz(guarded: str, engine: Engine) -> None:
    with httpx.Client(base_url=guarded, timeout=30) as c:
        for method, path in [("GET", "/api/v1/executions"), ("POST", "/api/v1/executions"),
                             ("GET", "/api/v1/stats"), ("GET", "/openapi.json")]:  # fmt: skip
            resp = c.request(method, path)
            problem_of(resp, 401)
            assert resp.headers["www-authenticate"] == "Bearer"
        problem_of(c.get("/api/v1/executions", headers={"Authorization": "Bearer wrong"}), 401)
        problem_of(c.get("/api/v1/executions", headers={"Authorization": TOKEN}), 401)
        page = c.get("/")
        assert page.status_code == 401 and 'name="token"' in page.text  # the console's login form
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}

        auth = {"Authorization": f"Bearer {TOKEN}"}
        made = c.post("/api/v1/executions", json={"machine": "counter"}, headers=auth)
        assert made.status_code == 201
        assert c.get("/api/v1/executions", headers=auth).json()["items"][0]["id"] == made.json()["id"]
    assert len(engine.executions()) == 1  # the refused POST made nothing


def test_console_login_sets_a_session_that_is_not_the_token(guarded: str) -> None:
    with httpx.Client(base_url=guarded, timeout=30) as c:
        login = c.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert csrf is not None
        bad = c.post("/login", data={"csrf": csrf.group(1), "token": "nope"})
        assert bad.status_code == 401 and "not the server" in bad.text
        good = c.post("/login", data={"csrf": csrf.group(1), "token": TOKEN})
        assert good.status_code == 303 and good.headers["location"] == "/"
        session = c.cookies.get("statem_session")
        assert session and TOKEN not in session
        assert c.get("/").status_code == 200
        # the session cookie opens the console, not the API (a browser would send it anywhere)
        problem_of(c.get("/api/v1/executions"), 401)


def test_read_only_refuses_writes(engine: Engine) -> None:
    engine.save_machine(counter())
    ex = engine.start("counter")
    with running(create_app(engine, read_only=True)) as base, httpx.Client(base_url=base, timeout=30) as c:
        for path, body in [
            ("/api/v1/executions", {"machine": "counter"}),
            ("/api/v1/machines", counter()),
            (f"/api/v1/executions/{ex.id}/actions/add", {}),
            (f"/api/v1/executions/{ex.id}/cancel", {"reason": "x"}),
            (f"/api/v1/executions/{ex.id}/pause", {}),
        ]:
            resp = c.post(path, json=body)
            problem_of(resp, 405)
            assert resp.headers["allow"] == "GET, HEAD"
        resp = c.post(f"/executions/{ex.id}/cancel", data={"reason": "x"})
        assert resp.status_code == 405
        assert c.get(f"/api/v1/executions/{ex.id}").json()["status"] == "waiting"
        page = c.get(f"/executions/{ex.id}").text
        assert "read-only" in page and "<form" not in page.split("</header>")[1]
    assert len(engine.history(ex.id)) == 1


def test_loopback_hosts_only_without_a_token(engine: Engine) -> None:
    engine.save_machine(counter())
    with running(create_app(engine)) as base, httpx.Client(base_url=base, timeout=30) as c:
        port = base.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        # a DNS-rebinding page reaches 127.0.0.1 under its own name: refused
        body = problem_of(c.get("/api/v1/executions", headers={"Host": f"evil.example:{port}"}), 403)
        assert "evil.example" in body["detail"]
    with (
        running(create_app(engine, allowed_hosts=["statem.internal"])) as base,
        httpx.Client(base_url=base) as c,
    ):
        assert c.get("/api/v1/executions", headers={"Host": "statem.internal"}).status_code == 200


def test_cross_site_writes_are_refused(engine: Engine) -> None:
    engine.save_machine(counter())
    with running(create_app(engine)) as base, httpx.Client(base_url=base, timeout=30) as c:
        ex = c.post("/api/v1/executions", json={"machine": "counter"}).json()
        url = f"/api/v1/executions/{ex['id']}/cancel"
        problem_of(c.post(url, headers={"Origin": "https://evil.example"}), 403)
        problem_of(c.post(url, headers={"Sec-Fetch-Site": "cross-site"}), 403)
        problem_of(c.post(url, content=b"reason=x", headers={"content-type": "text/plain"}), 415)
        assert c.get(f"/api/v1/executions/{ex['id']}").json()["status"] == "waiting"
        same = c.post(url, json={"reason": "ok"}, headers={"Origin": base})
        assert same.status_code == 200 and same.json()["status"] == "canceled"


def test_console_forms_need_their_csrf_token(engine: Engine) -> None:
    engine.save_machine(counter())
    ex = engine.start("counter")
    with running(create_app(engine)) as base, httpx.Client(base_url=base, timeout=30) as c:
        page = c.get(f"/executions/{ex.id}")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None and c.cookies.get("statem_csrf")
        refused = c.post(f"/executions/{ex.id}/actions", data={"action": "add", "input": "{}"})
        assert refused.status_code == 403 and "CSRF" in refused.text
        forged = c.post(f"/executions/{ex.id}/actions", data={"action": "add", "csrf": "0" * 64})
        assert forged.status_code == 403
        assert len(engine.history(ex.id)) == 1
        ok = c.post(
            f"/executions/{ex.id}/actions",
            data={"action": "add", "input": '{"by": 4}', "csrf": token.group(1)},
        )
        assert ok.status_code == 303
        assert engine.get(ex.id).context == {"n": 4}
        # another browser's token does not fit this browser's cookie
        with httpx.Client(base_url=base, timeout=30) as other:
            other.get("/")
            stolen = other.post(
                f"/executions/{ex.id}/actions", data={"action": "add", "csrf": token.group(1)}
            )
            assert stolen.status_code == 403


def test_create_app_refuses_an_empty_token(sqlite_engine: Engine) -> None:
    with pytest.raises(ValueError, match="token"):
        create_app(sqlite_engine, token="  ")


# --------------------------------------------------------------------------- statem serve


def _statem(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "statem.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        **kw,
    )


def test_serve_refuses_a_public_interface_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STATEM_TOKEN"}
    db = f"sqlite:///{tmp_path / 's.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "statem.cli", "--db", db, "serve", "--host", "0.0.0.0"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "STATEM_TOKEN" in proc.stderr and "0.0.0.0" in proc.stderr


@pytest.mark.slow
def test_serve_with_a_token_and_a_worker_never_logs_the_token(db_url: str, tmp_path: Path) -> None:
    engine = Engine(db_url)
    engine.save_machine(counter())
    engine.close()
    port = free_port()
    proc = _statem("--db", db_url, "serve", "--port", str(port), "--worker", env={"STATEM_TOKEN": TOKEN})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "statem serve did not come up"
            time.sleep(0.2)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        problem_of(httpx.get(f"{base}/api/v1/executions"), 401)
        problem_of(
            httpx.get(f"{base}/api/v1/executions", headers={"Authorization": "Bearer " + TOKEN[:-1]}), 401
        )
        made = httpx.post(f"{base}/api/v1/executions", json={"machine": "counter"}, headers=auth)
        assert made.status_code == 201
        eid = made.json()["id"]
        fired = httpx.post(f"{base}/api/v1/executions/{eid}/actions/add", json={"by": 2}, headers=auth)
        assert fired.json()["context"] == {"n": 2}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "console and API on http://127.0.0.1" in out and "a token is required" in out
    assert '"POST /api/v1/executions HTTP/1.1" 201' in out  # the access log is on...
    assert TOKEN not in out and TOKEN[:-1] not in out  # ...and the token is nowhere in it
