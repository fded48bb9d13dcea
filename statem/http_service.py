"""Saved HTTP services at work: the engine's catalog of them, and the call of an operation.

:class:`ServiceCatalog` saves, reads and caches service versions (a saved version never
changes), and hands the executor a :class:`ServiceCall` for ``effect: service.operation``
when no effect of that exact name is registered: the version is the latest one saved when
the task was armed (its ``created_at``), so every attempt of one armed call, retries and
re-claims alike, calls the same version.

A call evaluates the operation's expressions with ``input`` and ``env``, validates the
input against ``input_schema`` (InputError, never retried), sends the request with the
task's ``Idempotency-Key`` on the engine's one HTTP client, judges the response with
``ok`` (a failure is an ``HTTPError`` with ``status`` and ``json``, retried only for
5xx; connection errors and timeouts raise and are retried), and returns the JSON body
validated against ``output_schema`` (OutputError, never retried).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from . import store_definitions
from .definition import Retry
from .effects import Effect, EffectFailed, EffectRegistry, UnknownEffect
from .errors import InputError, StatemError, version_taken
from .expressions import JSON, check_json
from .schema import services
from .schemas import Mismatch, Shape
from .services import (
    BODY_METHODS,
    CompiledService,
    Service,
    ServiceDefinitionError,
    ServiceInfo,
    ServiceNotFound,
    load_service,
    split_operation,
)
from .settings import MAX_VALUE_BYTES


class Host(Protocol):
    """What the catalog needs of its engine."""

    env: dict[str, Any]
    effects: EffectRegistry

    def clock(self) -> dt.datetime: ...

    def transaction(self, *, write: bool = True) -> AbstractContextManager[Connection]: ...


#: Longest response text kept in an HTTPError message, in characters.
MAX_ERROR_TEXT = 500


def join_url(base: str, path: str, where: str) -> str:
    """``base`` + ``path`` joined as URLs are: a path starting with ``/`` replaces the base's path.

    The base must be an http(s) URL; a path cannot change the host (no scheme, no ``//``).
    """
    url = httpx.URL(base)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{where}: base_url must be an http(s) URL, not {base!r}")
    if not path:
        return str(url)
    if path.startswith("//") or httpx.URL(path).scheme:
        raise ValueError(f"{where}: path must be relative to base_url, not {path!r}")
    return str(url.join(path))


def _failed(kind: str, message: str, **extra: Any) -> EffectFailed:
    return EffectFailed({"type": kind, "message": message, **extra}, retryable=False)


class ServiceCall:
    """The effect that calls one operation of one service version."""

    def __init__(self, compiled: CompiledService, operation: str, catalog: ServiceCatalog) -> None:
        self.compiled = compiled
        self.operation = operation
        self.catalog = catalog
        svc = compiled.service
        op = svc.operation(operation)
        self.where = f"{svc.id}.{operation} v{svc.version}"
        self.default_retry: Retry | None = svc.retry_for(operation)
        self.timeout = svc.timeout_for(operation)
        self.input_shape = Shape(op.input_schema) if op.input_schema is not None else None
        self.output_shape = Shape(op.output_schema) if op.output_schema is not None else None

    def _eval(self, path: str, bindings: Mapping[str, Any]) -> JSON:
        try:
            return self.compiled.expr(path).evaluate(bindings)
        except StatemError as exc:
            raise _failed("ExpressionError", f"{self.where}: {exc}") from None

    def _text(self, path: str, bindings: Mapping[str, Any]) -> str:
        value = self._eval(path, bindings)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise _failed(
                "ExpressionError", f"{self.where}: {path} must give a string, not {type(value).__name__}"
            )
        return str(value)

    def request(self, input: JSON) -> tuple[str, str, dict[str, str], JSON]:
        """The request this call sends: method, URL, headers, JSON body."""
        svc = self.compiled.service
        op = svc.operation(self.operation)
        at = f"operations.{self.operation}"
        bindings = {"input": input, "env": self.catalog.engine.env}
        base = self._text("base_url", bindings)
        path = self._text(f"{at}.path", bindings) if op.path is not None else ""
        try:
            url = join_url(base, path, self.where)
        except ValueError as exc:
            raise _failed("ExpressionError", str(exc)) from None
        headers = {k: self._text(f"headers.{k}", bindings) for k in svc.headers}
        headers.update({k: self._text(f"{at}.headers.{k}", bindings) for k in op.headers})
        if op.body is not None:
            body = self._eval(f"{at}.body", bindings)
        else:
            body = input if op.method in BODY_METHODS else None
        return op.method, url, headers, body

    def __call__(self, input: Any, *, idempotency_key: str) -> JSON:
        if self.input_shape is not None:
            try:
                self.input_shape.validate(input, "input")
            except Mismatch as exc:
                raise _failed("InputError", f"{self.where}: {exc}", field=exc.field) from None
        method, url, headers, body = self.request(input)
        headers.setdefault("Idempotency-Key", idempotency_key)
        # connection errors and timeouts raise: retried under the retry policy
        with self.catalog.engine.effects.http.stream(
            method, url, headers=headers, json=body, timeout=self.timeout
        ) as response:
            content = bytearray()
            for chunk in response.iter_bytes():
                content += chunk
                if len(content) > MAX_VALUE_BYTES:
                    raise _failed(
                        "OutputError", f"{self.where}: the response is over {MAX_VALUE_BYTES} bytes"
                    )
        unreadable = None
        try:
            data: JSON = check_json(json.loads(bytes(content)), "the response body") if content else None
        except (ValueError, RecursionError, InputError) as exc:  # not JSON, or too deep
            data, unreadable = (
                None,
                str(exc) if isinstance(exc, InputError) else "the response body is not JSON",
            )
        seen = {"status": response.status_code, "headers": dict(response.headers), "json": data}
        op_path = f"operations.{self.operation}.ok"
        if not bool(self._eval(op_path, {"input": input, "env": self.catalog.engine.env, "output": seen})):
            text = bytes(content).decode(response.encoding or "utf-8", errors="replace")
            text = text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"
            raise EffectFailed(
                {
                    "type": "HTTPError",
                    "message": f"{self.where}: {method} {url} answered HTTP {response.status_code}: {text}",
                    "status": response.status_code,
                    "json": data,
                },
                retryable=response.status_code >= 500,
            )
        if unreadable is not None:
            raise _failed("OutputError", f"{self.where}: {unreadable}")
        if self.output_shape is not None:
            try:
                self.output_shape.validate(data, "output")
            except Mismatch as exc:
                raise _failed("OutputError", f"{self.where}: {exc}", field=exc.field) from None
        return data


class ServiceCatalog:
    """The services of one engine: saved in SQL, cached by version, resolved for the executor."""

    def __init__(self, engine: Host) -> None:
        self.engine = engine
        self._services: dict[tuple[str, int], CompiledService] = {}
        self._calls: dict[tuple[str, int, str], ServiceCall] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ saving
    def save(self, definitions: Sequence[Mapping[str, Any] | Service | str | Path]) -> list[Service]:
        """Validate every definition, then store them all in one transaction, or none.

        The same content again is a no-op; different content under a saved (id, version)
        is a ServiceDefinitionError.
        """
        compiled = [load_service(d) for d in definitions]
        now = self.engine.clock()
        try:
            with self.engine.transaction() as conn:
                for cs in compiled:
                    svc = cs.service
                    if not store_definitions.save_definition(
                        conn, services, svc.id, svc.version, svc.to_json(), cs.content_hash, now
                    ):
                        raise ServiceDefinitionError(svc.id, [("version", version_taken(svc.version))])
        except IntegrityError:  # a concurrent save of the same version won the race: compare again
            return self.save([cs.service for cs in compiled])
        with self._lock:
            for cs in compiled:
                self._services[cs.key] = cs
        return [cs.service for cs in compiled]

    # ------------------------------------------------------------------ reading
    def compiled(
        self,
        service_id: str,
        version: int | None = None,
        conn: Connection | None = None,
        *,
        saved_by: dt.datetime | None = None,
    ) -> CompiledService:
        """A saved service version; ServiceNotFound.

        With ``version`` None: the latest version, or with ``saved_by``, the latest saved
        by then (the latest of all if none was saved by then).
        """
        if version is not None and (cached := self._services.get((service_id, version))) is not None:
            return cached
        if conn is None:
            with self.engine.transaction(write=False) as c:
                return self.compiled(service_id, version, c, saved_by=saved_by)
        if version is None:
            if saved_by is not None:
                version = store_definitions.latest_service_version(conn, service_id, saved_by)
            if version is None:
                version = store_definitions.latest_service_version(conn, service_id)
            if version is None:
                raise ServiceNotFound(service_id)
            if (cached := self._services.get((service_id, version))) is not None:
                return cached
        row = store_definitions.get_service(conn, service_id, version)
        if row is None:
            raise ServiceNotFound(service_id, version)
        cs = load_service(row.definition)
        with self._lock:
            self._services[cs.key] = cs
        return cs

    def latest(self, service_id: str) -> CompiledService | None:
        """The latest saved version, or None when the service is not saved."""
        try:
            return self.compiled(service_id)
        except ServiceNotFound:
            return None

    def infos(self) -> list[ServiceInfo]:
        """Every saved service version, by id then version."""
        with self.engine.transaction(write=False) as conn:
            rows = store_definitions.list_services(conn)
        return [
            ServiceInfo(
                r.service_id,
                r.version,
                r.content_hash,
                r.created_at,
                list((r.definition.get("operations") or {}).keys()),
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ running
    def effect(self, name: str, task: Any = None) -> Effect | None:
        """The call of ``service.operation`` at the latest version saved when ``task`` (an
        effect task row) was armed; None when no such service is saved."""
        split = split_operation(name)
        if split is None:
            return None
        service_id, operation = split
        armed_at = getattr(task, "created_at", None)
        try:
            cs = self.compiled(service_id, saved_by=armed_at if isinstance(armed_at, dt.datetime) else None)
        except ServiceNotFound:
            return None
        if operation not in cs.service.operations:
            known = ", ".join(cs.service.operations)
            version = cs.service.version
            raise UnknownEffect(
                f"service {service_id!r} v{version} has no operation {operation!r} (has: {known})"
            )
        key = (*cs.key, operation)
        call = self._calls.get(key)
        if call is None:
            call = ServiceCall(cs, operation, self)
            with self._lock:
                self._calls[key] = call
        return call
