"""The main job: an order runs end to end against a local shipping-service stub.

``statem demo`` loads ``machines/order.yaml`` and ``machines/shipment.yaml`` (both or
neither), after the shipping service they call (``machines/services/shipping.yaml``), into
its own database (:data:`DEMO_DB` unless ``--db`` is given), starts an HTTP stub of that
service on a free loopback port (its first booking answers 503, so the
shipment's retry through a durable ``wait_for`` timer runs), starts an order, adds items,
places and approves it, lets a worker run the shipment child and its service call to the
end, and prints both histories.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .engine import Engine
from .settings import WorkerSettings

PACKAGE_DIR = Path(__file__).resolve().parent
#: Where ``statem demo`` runs unless ``--db`` is given: its own file, never the user's statem.db.
DEMO_DB = "sqlite:///statem-demo.db"


def machines_dir() -> Path:
    """The example machines: the checkout's ``machines/``, or the copy bundled in the wheel."""
    checkout = PACKAGE_DIR.parent / "machines"
    return checkout if checkout.is_dir() else PACKAGE_DIR / "_machines"


class ShippingStub:
    """A tiny shipping service: ``POST /pickups`` books a pickup; the first ``fail_first`` calls get 503."""

    def __init__(self, fail_first: int = 1) -> None:
        self.fail_first = fail_first
        self.calls: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                stub.calls.append({"body": body, "key": self.headers.get("Idempotency-Key")})
                if len(stub.calls) <= stub.fail_first:
                    self._reply(503, {"error": "pickup service warming up"})
                else:
                    self._reply(201, {"tracking": f"TRK-{body.get('order', '?')}"})

            def _reply(self, status: int, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        """Where to POST bookings."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/pickups"

    @contextmanager
    def running(self) -> Iterator[ShippingStub]:
        """Serve in a background thread for the duration of the block."""
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def run_demo(url: str = DEMO_DB, *, echo: Any = print, timeout: float = 30.0) -> dict[str, Any]:
    """Run the order demo on ``url``; returns the order and shipment executions and histories.

    Raises DefinitionError, storing neither machine, when ``url`` already holds an
    ``order`` or ``shipment`` version 1 with different content.
    """
    t0 = time.monotonic()
    with ShippingStub(fail_first=1).running() as stub:
        engine = Engine(url, env={"shipping_url": stub.url})
        try:
            engine.migrate()
            engine.save_service(machines_dir() / "services" / "shipping.yaml")
            # all or nothing: a clash with a machine already saved stores neither
            for m in engine.save_machines([machines_dir() / n for n in ("shipment.yaml", "order.yaml")]):
                echo(f"loaded machine {m.id} v{m.version}")
            settings = WorkerSettings(concurrency=2, poll_seconds=0.5, name="demo-worker")
            with engine.worker(settings):
                order = engine.start("order", {"n": 1234})
                echo(f"started order execution {order.id} ({order.context['order']['id']})")
                for action, data in (
                    ("add", {"sku": "tea", "qty": 2}),
                    ("add", {"sku": "kettle"}),
                    ("place", {}),
                    ("fraud-approve", {}),
                ):
                    order = engine.trigger(order.id, action, data)
                    echo(f"  {action:<14} -> {order.state} ({order.status})")
                order = engine.wait(order.id, timeout=timeout)
            shipment = engine.executions(parent_id=order.id)[0]
            result = {
                "order": order,
                "shipment": shipment,
                "order_history": engine.history(order.id),
                "shipment_history": engine.history(shipment.id),
                "http_calls": stub.calls,
                "seconds": time.monotonic() - t0,
            }
        finally:
            engine.close()
    return result
