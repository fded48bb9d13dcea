"""Issue 13: what the HTTP layer costs. Start and trigger through ``statem serve`` (a real
uvicorn process, JSON over loopback HTTP with keep-alive) next to the same calls through
the Python API, with 16 concurrent clients each, on one scratch PostgreSQL database.

* Python API: 16 threads in this process calling ``engine.start`` / ``engine.trigger``;
* HTTP API: 16 threads in this process, each with its own keep-alive connection
  (``http.client``, the lightest client: the clients share the machine's cores with the
  server), calling
  ``POST /api/v1/executions`` / ``POST /api/v1/executions/{id}/actions/bump`` on a
  ``statem serve`` subprocess (one uvicorn worker, access log off).

Each client triggers its own executions (round-robin), so the figures measure the layer,
not row-lock contention. The two sides take turns, start then trigger, twice, and the
better run of each is kept. N calls per series (4,000; 800 in quick mode). Reported:
calls/s and p99 latency per series, and HTTP as a share of the Python API's rate.
Target: the HTTP layer costs at most 30% (HTTP rate >= 70% of the Python rate).
On a 2-core machine the HTTP clients compete with the server for the same cores; the
Python API's callers pay no client cost, so the ratio is a pessimistic bound.
Run: ``python -m bench.api [--quick]``.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from .app import counter_machine
from .common import ROOT, Result, main_for, new_engine, percentile, say, scratch

CLIENTS = 16
START = {"machine": "bench_counter", "version": 1}
QUICK, FULL = 800, 4_000
ROUNDS = 2


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_clients(calls: int, make: Callable[[int], Callable[[int], Any]]) -> tuple[float, list[float]]:
    """``calls`` calls split over CLIENTS threads; ``make(client)`` gives each its call(i).
    Returns (calls per second, latencies in seconds)."""
    per = calls // CLIENTS
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLIENTS + 1)

    def client(k: int) -> None:
        call = make(k)
        barrier.wait()
        try:
            for i in range(per):
                t0 = time.perf_counter()
                call(i)
                latencies[k].append(time.perf_counter() - t0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    flat = [x for lat in latencies for x in lat]
    return len(flat) / elapsed, flat


class Client:
    """One keep-alive HTTP/1.1 connection posting JSON."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"content-type": "application/json"} if body is not None else {}
        try:
            self.conn.request("POST", path, body=data, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # uvicorn closes a keep-alive connection idle for 5 s (while the other side ran):
            # the request never reached it, so send it again on a new connection
            self.conn.close()
            self.conn.request("POST", path, body=data, headers=headers)
            resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"POST {path}: {resp.status} {payload[:300]!r}")
        return json.loads(payload)

    def close(self) -> None:
        self.conn.close()


class Server:
    """``statem serve`` on a free port, as a subprocess."""

    def __init__(self, url: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "STATEM_TOKEN"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "statem.cli", "--db", url, "serve", "--port", str(self.port),
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"statem serve did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run(quick: bool) -> list[Result]:
    n = QUICK if quick else FULL
    results: list[Result] = []
    with scratch("postgresql", "api") as url:
        engine = new_engine(url)
        engine.save_machine(counter_machine())
        server = Server(url)
        clients = [Client(server.port) for _ in range(CLIENTS)]
        try:
            # warm up both sides (pools, compiled SQL, the server's caches)
            for k in range(CLIENTS):
                clients[k].post("/api/v1/executions", START)
                engine.start("bench_counter", version=1)
            best: dict[str, tuple[float, list[float]]] = {}
            for _ in range(ROUNDS):
                py_ids: list[list[str]] = [[] for _ in range(CLIENTS)]
                http_ids: list[list[str]] = [[] for _ in range(CLIENTS)]

                def py_start(k: int, py_ids: list[list[str]] = py_ids) -> Callable[[int], Any]:
                    return lambda i: py_ids[k].append(engine.start("bench_counter", version=1).id)

                def http_start(k: int, http_ids: list[list[str]] = http_ids) -> Callable[[int], Any]:
                    def call(i: int) -> None:
                        http_ids[k].append(clients[k].post("/api/v1/executions", START)["id"])

                    return call

                def py_trigger(k: int, py_ids: list[list[str]] = py_ids) -> Callable[[int], Any]:
                    ids = py_ids[k]
                    return lambda i: engine.trigger(ids[i % len(ids)], "bump")

                def http_trigger(k: int, http_ids: list[list[str]] = http_ids) -> Callable[[int], Any]:
                    ids = http_ids[k]

                    def call(i: int) -> None:
                        clients[k].post(f"/api/v1/executions/{ids[i % len(ids)]}/actions/bump")

                    return call

                series: list[tuple[str, Callable[[int], Callable[[int], Any]]]] = [
                    ("python start", py_start),
                    ("http start", http_start),
                    ("python trigger", py_trigger),
                    ("http trigger", http_trigger),
                ]
                for name, make in series:
                    rate, lat = run_clients(n, make)
                    say(f"  {name:<15} {rate:8.0f} calls/s  p50 {percentile(lat, 0.5) * 1000:6.1f} ms  "
                        f"p99 {percentile(lat, 0.99) * 1000:6.1f} ms")  # fmt: skip
                    if name not in best or rate > best[name][0]:
                        best[name] = (rate, lat)
        finally:
            for c in clients:
                c.close()
            server.close()
            engine.close()
    for op in ("start", "trigger"):
        py_rate, py_lat = best[f"python {op}"]
        http_rate, http_lat = best[f"http {op}"]
        ratio = http_rate / py_rate
        results.append(Result(f"api: HTTP {op}/s, {CLIENTS} clients (pg)", http_rate, "calls/s", py_rate,
                              "calls/s (Python API)", ratio, ">= 70% of Python", ratio >= 0.7))  # fmt: skip
        results.append(Result(f"api: HTTP {op} p99 (pg)", percentile(http_lat, 0.99) * 1000, "ms",
                              percentile(py_lat, 0.99) * 1000, "ms (Python API)"))  # fmt: skip
    return results


def main() -> None:
    main_for("HTTP API vs Python API (bench.api)", run)


if __name__ == "__main__":
    main()
