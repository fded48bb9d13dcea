"""The application factory: ``create_app(engine, read_only=False, token=None)``.

One FastAPI application with the JSON API under ``/api/v1`` (:mod:`.api`), the console
under ``/`` (:mod:`.console`), ``/healthz`` and ``/openapi.json``, behind the
guard of :mod:`.security`. Mount it in your own ASGI application or run it with
``statem serve``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..engine import Engine
from ..errors import StatemError, StoreError
from ..settings import WEB_MAX_BODY_BYTES, WEB_POLL_SECONDS, WEB_STATS_TTL_SECONDS
from . import problems
from .api import build_router
from .console import Console
from .longpoll import RestWaiter
from .models import Health
from .security import Guard, Secrets
from .stats import StatsCache

HERE = Path(__file__).resolve().parent

DESCRIPTION = """The statem HTTP API: save machines, start executions, fire actions, operate
live executions, read history and stats. Errors are `application/problem+json`. With a
token, send `Authorization: Bearer <token>`."""


def create_app(
    engine: Engine,
    read_only: bool = False,
    token: str | None = None,
    *,
    allowed_hosts: Sequence[str] = (),
    max_body: int = WEB_MAX_BODY_BYTES,
    poll_seconds: float = WEB_POLL_SECONDS,
) -> FastAPI:
    """The ASGI application serving ``engine``'s JSON API and operator console.

    ``read_only`` refuses every write (405) and shows no buttons. ``token`` requires
    ``Authorization: Bearer <token>`` on the API and a login on the console (all but
    ``/healthz``). Without a token only loopback host names are answered, plus
    ``allowed_hosts``. Bodies over ``max_body`` bytes get 413. A long-poll re-reads its
    execution every ``poll_seconds`` unless a commit in this process wakes it first.
    """
    if token is not None and not token.strip():
        raise ValueError("token must not be empty")
    keys = Secrets(token)
    waiter = RestWaiter(engine, poll_seconds)
    stats = StatsCache(engine, WEB_STATS_TTL_SECONDS)
    console = Console(engine, keys, read_only=read_only, stats=stats, templates=HERE / "templates")

    app = FastAPI(
        title="statem",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # Swagger UI loads its assets from a CDN; the console works offline
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.engine = engine
    app.state.waiter = waiter
    app.state.read_only = read_only
    app.add_exception_handler(RequestValidationError, problems.on_validation_error)
    app.add_exception_handler(HTTPException, console.on_http_error)
    app.add_exception_handler(StatemError, console.on_statem_error)
    app.add_exception_handler(Exception, problems.on_unexpected)

    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health}},
        tags=["health"],
        summary="Up (the database answers) or down; needs no token",
    )
    async def healthz() -> Response:
        try:
            await run_in_threadpool(engine.ping)
        except StoreError:
            return JSONResponse({"status": "down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    app.include_router(build_router(engine, waiter, stats))
    app.include_router(console.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(
        Guard,
        keys=keys,
        read_only=read_only,
        max_body=max_body,
        allowed_hosts=allowed_hosts,
        login_page=console.login_response,
    )
    return app
