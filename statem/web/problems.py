"""Errors as ``application/problem+json`` (RFC 9457): one mapping from statem's exceptions
to HTTP statuses, and the handlers that answer with it.

``type`` is a ``urn:statem:problem:<slug>`` URI naming the kind of problem, ``title`` its
short summary, ``detail`` the message of this occurrence. Extra members: ``errors`` (a
list of ``{"path", "message"}`` for definitions, expressions and request validation),
``allowed`` and ``state`` (for an action that is not allowed), ``execution_id``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ..errors import (
    ActionNotAllowed,
    ConcurrencyError,
    DefinitionError,
    ExecutionNotFound,
    ExpressionError,
    InputError,
    LoopError,
    MachineNotFound,
    StatemError,
    StoreError,
)

log = logging.getLogger("statem.web")

PROBLEM_JSON = "application/problem+json"

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    501: "Not implemented",
    503: "Service unavailable",
}

SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "invalid",
    500: "internal",
    501: "not-implemented",
    503: "unavailable",
}


class ProblemError(BaseModel):
    """One problem in a definition, an expression or a request: where, and what."""

    path: str
    message: str


class Problem(BaseModel):
    """An error response (RFC 9457 problem details)."""

    type: str = Field(description="A URI naming the kind of problem: urn:statem:problem:<slug>.")
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | None = Field(
        default=None, description="Definition, expression and request-validation errors: path and message."
    )
    allowed: list[str] | None = Field(
        default=None, description="For a 409 on an action: the actions the execution's state allows now."
    )
    state: str | None = Field(default=None, description="For a 409 on an action: the execution's state.")


def problem(
    status: int, detail: str, *, slug: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": f"urn:statem:problem:{slug or SLUGS.get(status, 'error')}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def classify(exc: StatemError) -> tuple[int, str, dict[str, Any]]:
    """The HTTP status, problem slug and extra members for one of statem's errors."""
    if isinstance(exc, ExecutionNotFound):
        return 404, "execution-not-found", {"execution_id": exc.execution_id}
    if isinstance(exc, MachineNotFound):
        return 404, "machine-not-found", {}
    if isinstance(exc, ActionNotAllowed):
        return 409, "action-not-allowed", {"allowed": exc.allowed, "state": exc.state}
    if isinstance(exc, DefinitionError):
        return 422, "definition-error", {"errors": [{"path": p, "message": m} for p, m in exc.problems]}
    if isinstance(exc, ExpressionError):
        return 422, "expression-error", {"errors": [{"path": exc.path, "message": exc.reason}]}
    if isinstance(exc, InputError):
        return 422, "input-error", {}
    if isinstance(exc, LoopError):
        return 422, "loop-error", {}
    if isinstance(exc, ConcurrencyError):
        return 409, "concurrency-error", {}
    if isinstance(exc, StoreError):
        return 503, "database-unavailable", {}
    return 422, "statem-error", {}


def statem_problem(exc: StatemError) -> JSONResponse:
    """The problem response for one of statem's errors."""
    status, slug, extra = classify(exc)
    detail = str(exc) if status != 503 else "the database cannot be reached; try again later"
    if status == 503:
        log.warning("database unavailable: %s", exc)
    return problem(status, detail, slug=slug, **extra)


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """FastAPI's validation errors as ``{"path", "message"}`` pairs (``body.version``)."""
    out = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        out.append({"path": ".".join(loc), "message": str(err.get("msg", "invalid"))})
    return out


def wants_html(request: Request) -> bool:
    """True for a console page (HTML), false for the API and anything asking for JSON."""
    path = request.url.path
    if path.startswith("/api/") or path in ("/healthz", "/openapi.json"):
        return False
    return "text/html" in request.headers.get("accept", "")


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """422 with every invalid field named."""
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc)
    detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors) or "invalid request"
    return problem(422, detail, slug="invalid-request", errors=errors)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Framework errors (unknown route, wrong method, 413, ...) as problems."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "error")
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}"
    return problem(exc.status_code, detail, headers=dict(exc.headers or {}) or None)


async def on_statem_error(request: Request, exc: Exception) -> Response:
    """statem's typed errors as problems."""
    assert isinstance(exc, StatemError)
    return statem_problem(exc)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """Anything else: 500, logged with its traceback, no internals in the response."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "an unexpected error occurred; see the server log")
