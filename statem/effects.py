"""Effects: the Python functions an ``invoke: {effect: name}`` calls, and the built-in ones.

An effect is ``fn(input: dict, *, idempotency_key: str) -> JSON`` (an ``async def`` one is
run on an event loop of its own). The executor calls it outside any database
transaction, at least once per armed task: the idempotency key is the same across
retries and crashes, so the effect (or the service it calls) can deduplicate. The
signature is checked when the effect is registered.

A typed effect (``engine.effect(name, input=Model, output=Model)``) has its input
validated before the call and its output after it; a mismatch raises
:class:`EffectFailed` (``InputError``/``OutputError``, naming the field), which the
executor never retries.

Built in: ``http.request.json``, an HTTP call on the registry's one ``httpx.Client``
(connection reuse; :meth:`EffectRegistry.use_transport` is the seam for tests).

Timeouts: Python cannot kill a thread, so an attempt that runs past its
``timeout_seconds`` is abandoned (it keeps running) and fails with EffectTimeout. Timed
attempts run on threads of their own, at most :data:`~statem.settings.EFFECT_THREADS`
per engine at once; when that many are still running (abandoned ones included), the
next timed attempt waits for one to end before it starts, and its clock starts only
then: an effect that never ran never times out. Abandoned attempts are counted in
``stats()`` (``process.tasks.abandoned``) and logged as warnings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx
from pydantic import BaseModel

from .definition import Retry
from .errors import InputError, StatemError
from .expressions import JSON, check_json
from .schemas import Mismatch, Shape
from .settings import EFFECT_THREADS
from .telemetry import Metrics

log = logging.getLogger("statem.effects")


class Effect(Protocol):
    """The shape of an effect function."""

    def __call__(self, input: Any, *, idempotency_key: str) -> Any: ...


#: What finds an effect the registry does not hold (the engine's services): name, task row.
Fallback = Callable[[str, Any], Effect | None]
#: A typed effect's declared input or output: a pydantic model class or a JSON Schema dict.
ShapeSpec = type[BaseModel] | Mapping[str, Any]


class UnknownEffect(StatemError):
    """No effect with this name is registered in this process."""


class EffectTimeout(StatemError):
    """An effect attempt ran past its ``timeout_seconds``."""


class EffectFailed(StatemError):
    """An effect failed with a result to hand to the ``error`` branch as ``output``.

    ``output`` has at least ``type`` and ``message``; ``retryable`` False means the
    executor takes the error branch at once, whatever the retry policy says (a typed
    effect's InputError/OutputError, a service's 4xx answer).
    """

    def __init__(self, output: dict[str, Any], *, retryable: bool) -> None:
        self.output = output
        self.retryable = retryable
        super().__init__(f"{output.get('type')}: {output.get('message')}")


def error_output(exc: BaseException) -> dict[str, Any]:
    """The ``output`` an error branch sees for a failed effect: ``{'type', 'message', ...}``."""
    if isinstance(exc, EffectFailed):
        return dict(exc.output)
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


def retryable(exc: BaseException) -> bool:
    """False for failures a retry cannot fix (see EffectFailed)."""
    return not (isinstance(exc, EffectFailed) and not exc.retryable)


def default_retry(fn: Effect) -> Retry | None:
    """The retry policy an effect brings (a service operation's), for invokes that set none."""
    policy = getattr(fn, "default_retry", None)
    return policy if isinstance(policy, Retry) else None


def jittered(delay: float) -> float:
    """A retry delay spread by up to +10%, so failed attempts of many tasks do not retry in step."""
    return delay * (1.0 + 0.1 * random.random())


def check_signature(name: str, fn: Any) -> None:
    """Refuse, with TypeError, what cannot be called as ``fn(input, *, idempotency_key=...)``."""
    if not callable(fn):
        raise TypeError(f"effect {name!r}: {fn!r} is not callable")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    try:
        sig.bind({}, idempotency_key="k")
    except TypeError as exc:
        raise TypeError(
            f"effect {name!r}: {getattr(fn, '__qualname__', fn)!r}{sig} cannot be called as "
            f"fn(input, *, idempotency_key=...): {exc}"
        ) from None


def _invoke(fn: Effect, input: JSON, idempotency_key: str) -> Any:
    """Call an effect; a coroutine it returns (``async def``) runs on an event loop of its own."""
    result = fn(input, idempotency_key=idempotency_key)
    if not inspect.isawaitable(result):
        return result

    async def wait() -> Any:
        return await result

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the usual case (a worker or caller thread)
        return asyncio.run(wait())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="statem-async-effect") as pool:
        return pool.submit(asyncio.run, wait()).result()


class TypedEffect:
    """An effect whose input and output are checked against declared shapes."""

    def __init__(self, name: str, fn: Effect, input: Shape | None, output: Shape | None) -> None:
        self.name = name
        self.fn = fn
        self.input = input
        self.output = output

    def __call__(self, input: Any, *, idempotency_key: str) -> Any:
        if self.input is not None:
            try:
                input = self.input.validate(input, "input")
            except Mismatch as exc:
                raise EffectFailed(
                    {"type": "InputError", "message": f"effect {self.name!r}: {exc}", "field": exc.field},
                    retryable=False,
                ) from None
        result = _invoke(self.fn, input, idempotency_key)
        if self.output is None:
            return result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        try:
            return self.output.dump(result, "output")
        except Mismatch as exc:
            raise EffectFailed(
                {"type": "OutputError", "message": f"effect {self.name!r}: {exc}", "field": exc.field},
                retryable=False,
            ) from None


class TimedCalls:
    """Runs timed effect attempts on threads of their own, at most ``limit`` alive at once."""

    def __init__(self, limit: int, metrics: Metrics | None) -> None:
        self.limit = limit
        self.metrics = metrics
        self._cond = threading.Condition()
        #: timed attempts whose thread is alive (running, or abandoned and still running)
        self.live = 0
        #: attempts abandoned after their timeout whose thread is still running
        self.abandoned = 0

    def snapshot(self) -> dict[str, int]:
        """Timed attempts alive now, how many of them were abandoned, and the bound."""
        with self._cond:
            return {"alive": self.live, "abandoned": self.abandoned, "bound": self.limit}

    def call(self, fn: Effect, input: JSON, idempotency_key: str, timeout: float) -> Any:
        """Run ``fn`` with a timeout that starts when it starts; EffectTimeout past it."""
        with self._cond:
            if self.live >= self.limit:
                log.warning(
                    "%d timed effect attempts are running (%d abandoned after their timeout); "
                    "the bound is %d: this attempt waits for one to end before it starts",
                    self.live,
                    self.abandoned,
                    self.limit,
                )
                while self.live >= self.limit:
                    self._cond.wait()
            self.live += 1
        done = threading.Event()
        box: dict[str, Any] = {}
        gave_up = [False]

        def target() -> None:
            try:
                box["result"] = _invoke(fn, input, idempotency_key)
            except BaseException as exc:
                box["error"] = exc
            finally:
                with self._cond:
                    self.live -= 1
                    if gave_up[0]:
                        self.abandoned -= 1
                    done.set()
                    self._cond.notify()

        threading.Thread(target=target, name="statem-effect", daemon=True).start()
        if not done.wait(timeout):
            with self._cond:
                if not done.is_set():
                    gave_up[0] = True
                    self.abandoned += 1
                    abandoned = self.abandoned
                else:
                    abandoned = -1
            if abandoned >= 0:
                if self.metrics is not None:
                    self.metrics.task("abandoned")
                log.warning(
                    "effect attempt abandoned after %gs (key %s); it keeps running in the background: "
                    "%d abandoned attempts alive, bound %d timed attempts per engine",
                    timeout,
                    idempotency_key,
                    abandoned,
                    self.limit,
                )
                raise EffectTimeout(f"effect timed out after {timeout:g}s")
        if "error" in box:
            raise box["error"]
        return box["result"]


class EffectRegistry:
    """Effects by name: the built-ins plus what the application registers.

    ``fallback`` (set by the engine) finds effects the registry does not hold: the
    operations of saved HTTP services (``service.operation``).
    """

    def __init__(self, metrics: Metrics | None = None, *, threads: int = EFFECT_THREADS) -> None:
        self._effects: dict[str, Effect] = {"http.request.json": self.http_request_json}
        self._typed: dict[str, TypedEffect] = {}
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._transport: httpx.BaseTransport | None = None
        self.timed = TimedCalls(threads, metrics)
        self.fallback: Fallback | None = None

    # ------------------------------------------------------------------ registering
    def register(
        self,
        name: str,
        fn: Effect,
        *,
        input: ShapeSpec | None = None,
        output: ShapeSpec | None = None,
    ) -> None:
        """Register (or replace) an effect; with ``input``/``output``, a typed one.

        Raises TypeError when ``fn`` cannot be called as ``fn(input, *, idempotency_key)``
        or a shape is neither a pydantic model nor an acceptable JSON Schema.
        """
        check_signature(name, fn)
        typed: TypedEffect | None = None
        if input is not None or output is not None:
            try:
                shapes = [Shape(s, f"effect {name!r} {w}") if s is not None else None
                          for s, w in ((input, "input"), (output, "output"))]  # fmt: skip
            except ValueError as exc:
                raise TypeError(str(exc)) from None
            typed = TypedEffect(name, fn, shapes[0], shapes[1])
        with self._lock:
            self._effects[name] = typed if typed is not None else fn
            if typed is not None:
                self._typed[name] = typed
            else:
                self._typed.pop(name, None)

    def decorator(
        self, name: str, *, input: ShapeSpec | None = None, output: ShapeSpec | None = None
    ) -> Callable[[Effect], Effect]:
        """``@registry.decorator(name)`` registers the decorated function (returned unchanged)."""

        def wrap(fn: Effect) -> Effect:
            self.register(name, fn, input=input, output=output)
            return fn

        return wrap

    def names(self) -> list[str]:
        """Registered effect names."""
        return sorted(self._effects)

    def has(self, name: str) -> bool:
        """True if an effect of exactly this name is registered."""
        return name in self._effects

    def typed(self, name: str) -> TypedEffect | None:
        """The typed effect registered under ``name``, if it is one."""
        return self._typed.get(name)

    def get(self, name: str, task: Any = None) -> Effect:
        """The effect (a registered one wins), else the fallback's, else UnknownEffect.

        ``task`` is the effect task's row (when it was armed picks the service version).
        """
        fn = self._effects.get(name)
        if fn is not None:
            return fn
        if self.fallback is not None and (found := self.fallback(name, task)) is not None:
            return found
        raise UnknownEffect(
            f"no effect {name!r} is registered in this process "
            f"(known: {', '.join(self.names())}) and no saved service has it as an operation; "
            "register it in the process that runs it: a worker, or the caller of start/trigger "
            "for a sync machine (command line: statem --app MODULE:ATTR)"
        )

    # ------------------------------------------------------------------ calling
    def call(self, fn: Effect, input: JSON, idempotency_key: str, timeout: float | None) -> JSON:
        """Call an effect (with a per-attempt timeout when given); its result must be JSON."""
        if timeout is None:
            result = _invoke(fn, input, idempotency_key)
        else:
            result = self.timed.call(fn, input, idempotency_key, timeout)
        return check_json(result, "effect result")

    # ------------------------------------------------------------------ http
    @property
    def http(self) -> httpx.Client:
        """The one HTTP client of this engine's effects (created on first use)."""
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(transport=self._transport, follow_redirects=False)
            return self._client

    def use_transport(self, transport: httpx.BaseTransport | None) -> None:
        """Send this engine's HTTP calls through ``transport`` (a test seam; None: the network)."""
        with self._lock:
            old, self._client, self._transport = self._client, None, transport
        if old is not None:
            old.close()

    def close(self) -> None:
        """Close the HTTP client (a later call opens a new one)."""
        self.use_transport(self._transport)

    def http_request_json(self, input: Mapping[str, Any], *, idempotency_key: str) -> JSON:
        """``http.request.json``: send an HTTP request, return status, headers, json and text.

        Input keys: ``url`` (required), ``method`` (default GET), ``headers``, ``json``,
        ``params``, ``timeout`` (seconds, default 30). Any HTTP status is a result (judge
        it with ``if``); connection errors and timeouts raise, and so are retried. The
        idempotency key is sent as the ``Idempotency-Key`` header.
        """
        if not isinstance(input, Mapping) or not isinstance(input.get("url"), str):
            raise InputError("http.request.json needs an input mapping with a 'url' string")
        headers = {str(k): str(v) for k, v in (input.get("headers") or {}).items()}
        headers.setdefault("Idempotency-Key", idempotency_key)
        response = self.http.request(
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


def call_effect(fn: Effect, input: JSON, idempotency_key: str, timeout: float | None) -> JSON:
    """Call an effect on a registry of its own (kept for callers outside an engine)."""
    return _default().call(fn, input, idempotency_key, timeout)


_DEFAULT: list[EffectRegistry] = []


def _default() -> EffectRegistry:
    if not _DEFAULT:
        _DEFAULT.append(EffectRegistry())
    return _DEFAULT[0]
