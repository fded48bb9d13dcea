"""Test helpers: a real HTTP server on loopback, small machine builders."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[str, dict[str, Any], dict[str, str]], tuple[int, Any]]


@contextmanager
def http_server(respond: Responder) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server on a free loopback port; yields (base url, calls seen)."""
    calls: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = dict(self.headers.items())
            calls.append({"method": self.command, "path": self.path, "json": body, "headers": headers})
            status, data = respond(self.path, body, headers)
            out = data.encode() if isinstance(data, str) else json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(data, str) else "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


def effect_machine(effect: str = "work", **invoke: Any) -> dict[str, Any]:
    """start -> (invoke effect) -> done | broken."""
    inv: dict[str, Any] = {
        "effect": effect,
        "input": "{'n': ctx['n']}",
        "success": {"state": "done", "context": {"result": "output"}},
        "error": {"state": "broken", "context": {"why": "output"}},
    }
    inv.update(invoke)
    inv = {k: v for k, v in inv.items() if v is not None}
    return {
        "id": "fx",
        "version": 1,
        "start_at": "go",
        "context": {"n": "input.get('n', 1)"},
        "states": {
            "go": {
                "always": [{"name": "call", "invoke": inv}],
                "actions": {"skip": {"state": "skipped"}, "abandon": {"state": "broken"}},
            },
            "done": {"end": True, "return": "ctx['result']"},
            "broken": {"end": True},
            "skipped": {"end": True},
        },
    }


def timer_machine(**wait_for: float) -> dict[str, Any]:
    """w -> (timer) -> done."""
    return {
        "id": "t",
        "version": 1,
        "start_at": "w",
        "states": {"w": {"always": [{"state": "done", "wait_for": wait_for}]}, "done": {"end": True}},
    }
