"""Effects: the Python functions an ``invoke: {effect: name}`` calls, and the built-in ones.

An effect is ``fn(input: dict, *, idempotency_key: str) -> JSON``. The executor calls it
outside any database transaction, at least once per armed task: the idempotency key is
the same across retries and crashes, so the effect (or the service it calls) can
deduplicate.

Built in: ``http.request.json``, an HTTP call with httpx.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx

from .errors import InputError, StatemError
from .expressions import JSON, check_json


class Effect(Protocol):
    """The shape of an effect function."""

    def __call__(self, input: Any, *, idempotency_key: str) -> Any: ...


class UnknownEffect(StatemError):
    """No effect with this name is registered in this process."""


class EffectTimeout(StatemError):
    """An effect attempt ran past its ``timeout_seconds``."""


def http_request_json(input: Mapping[str, Any], *, idempotency_key: str) -> JSON:
    """``http.request.json``: send an HTTP request, return status, headers, json and text.

    Input keys: ``url`` (required), ``method`` (default GET), ``headers``, ``json``,
    ``params``, ``timeout`` (seconds, default 30). Any HTTP status is a result (judge it
    with ``if``); connection errors and timeouts raise, and so are retried. The
    idempotency key is sent as the ``Idempotency-Key`` header.
    """
    if not isinstance(input, Mapping) or not isinstance(input.get("url"), str):
        raise InputError("http.request.json needs an input mapping with a 'url' string")
    headers = {str(k): str(v) for k, v in (input.get("headers") or {}).items()}
    headers.setdefault("Idempotency-Key", idempotency_key)
    response = httpx.request(
        str(input.get("method", "GET")).upper(),
        input["url"],
        headers=headers,
        json=input.get("json"),
        params=input.get("params"),
        timeout=float(input.get("timeout", 30.0)),
    )
    try:
        body: JSON = response.json() if response.content else None
    except ValueError:
        body = None
    return {
        "status": response.status_code,
        "headers": dict(response.headers),
        "json": body,
        "text": response.text,
    }


BUILTINS: dict[str, Effect] = {"http.request.json": http_request_json}


class EffectRegistry:
    """Effects by name: the built-ins plus what the application registers."""

    def __init__(self) -> None:
        self._effects: dict[str, Effect] = dict(BUILTINS)
        self._lock = threading.Lock()

    def register(self, name: str, fn: Effect) -> None:
        """Register (or replace) an effect."""
        with self._lock:
            self._effects[name] = fn

    def decorator(self, name: str) -> Callable[[Effect], Effect]:
        """``@registry.decorator(name)`` registers the decorated function."""

        def wrap(fn: Effect) -> Effect:
            self.register(name, fn)
            return fn

        return wrap

    def names(self) -> list[str]:
        """Registered effect names."""
        return sorted(self._effects)

    def get(self, name: str) -> Effect:
        """The effect, or UnknownEffect."""
        try:
            return self._effects[name]
        except KeyError:
            raise UnknownEffect(
                f"no effect {name!r} is registered in this process "
                f"(known: {', '.join(self.names())}); register it in the process that runs it: a worker, "
                "or the caller of start/trigger for a sync machine (command line: statem --app MODULE:ATTR)"
            ) from None


_pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="statem-effect")


def call_effect(fn: Effect, input: JSON, idempotency_key: str, timeout: float | None) -> JSON:
    """Call an effect with a per-attempt timeout; its result must be JSON.

    Python cannot kill a thread: an attempt that times out is abandoned (it keeps running
    in the background) and the attempt fails with EffectTimeout.
    """
    if timeout is None:
        result = fn(input, idempotency_key=idempotency_key)
    else:
        future = _pool.submit(fn, input, idempotency_key=idempotency_key)
        try:
            result = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise EffectTimeout(f"effect timed out after {timeout:g}s") from None
    return check_json(result, "effect result")
