"""The JSON API under ``/api/v1``: machines, executions, actions, operator operations, stats.

Every route calls the Python API (:class:`statem.Engine`) on the thread pool and answers
with the same data as JSON; errors are problems (:mod:`.problems`). Read-only mode and
the token are enforced before any route runs (:mod:`.security`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .. import graph
from ..engine import Engine
from ..errors import ExecutionNotFound, InputError, MachineNotFound
from ..settings import WEB_MAX_PAGE_SIZE, WEB_MAX_WAIT_SECONDS, WEB_PAGE_SIZE
from .diagram import render_svg
from .longpoll import RestWaiter
from .models import (
    ExecutionOut,
    ExecutionPage,
    MachineOut,
    MachineVersionOut,
    MoveRequest,
    ReasonRequest,
    StartRequest,
    StepOut,
    TaskOut,
    decode_cursor,
    encode_cursor,
    execution_json,
    machine_version_json,
    parse_age,
    step_json,
    task_json,
)
from .problems import PROBLEM_JSON, Problem
from .stats import StatsCache

OPERATIONS = ("pause", "resume", "retry")


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "A bearer token is required.",
        404: "No such execution or machine.",
        405: "The server is read-only.",
        409: "The action or operation is not allowed now (the problem lists the allowed actions).",
        413: "The request body is too large.",
        415: "The body is not application/json.",
        422: "Bad input: the body, a definition, an expression or a parameter.",
        503: "The database cannot be reached.",
    }
    return {
        s: {"model": Problem, "description": described[s], "content": {PROBLEM_JSON: {}}} for s in statuses
    }


READ = _problems(401, 404, 422, 503)
WRITE = _problems(401, 404, 405, 409, 413, 415, 422, 503)

ExecutionId = Annotated[str, Path(min_length=1, max_length=200, description="The execution id.")]


def machine_json(engine: Engine, machine_id: str, version: int | None) -> dict[str, Any]:
    """A machine version with its definition and the list of its versions (blocking)."""
    m = engine.get_machine(machine_id, version)
    versions = sorted(i.version for i in engine.machines() if i.id == machine_id)
    return {"id": m.id, "version": m.version, "definition": m.to_json(), "versions": versions}


def build_router(engine: Engine, waiter: RestWaiter, stats: StatsCache) -> APIRouter:
    """The ``/api/v1`` routes over ``engine``."""
    api = APIRouter(prefix="/api/v1")

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kwargs)

    # ------------------------------------------------------------------ machines
    @api.post(
        "/machines",
        response_model=MachineOut,
        status_code=201,
        responses={200: {"model": MachineOut, "description": "The same content was already saved."}, **WRITE},
        tags=["machines"],
        summary="Save a machine version",
    )
    async def save_machine(
        definition: Annotated[dict[str, Any], Body(description="A machine definition as JSON.")],
    ) -> Response:
        mid, version = definition.get("id"), definition.get("version")

        def save() -> tuple[bool, dict[str, Any]]:
            existed = False
            if isinstance(mid, str) and type(version) is int:
                try:
                    engine.get_machine(mid, version)
                    existed = True
                except MachineNotFound:
                    pass
            m = engine.save_machine(definition)
            return existed, machine_json(engine, m.id, m.version)

        existed, body = await call(save)
        return JSONResponse(body, status_code=200 if existed else 201)

    @api.get(
        "/machines",
        response_model=list[MachineVersionOut],
        responses=READ,
        tags=["machines"],
        summary="List every saved machine version",
    )
    async def list_machines() -> Response:
        infos = await call(engine.machines)
        return JSONResponse([machine_version_json(i) for i in infos])

    @api.get(
        "/machines/{machine_id}",
        response_model=MachineOut,
        responses=READ,
        tags=["machines"],
        summary="A machine version (the latest by default)",
    )
    async def get_machine(
        machine_id: Annotated[str, Path(max_length=200)],
        version: Annotated[int | None, Query(gt=0)] = None,
    ) -> Response:
        return JSONResponse(await call(machine_json, engine, machine_id, version))

    @api.get(
        "/machines/{machine_id}/graph",
        response_class=PlainTextResponse,
        responses={
            200: {
                "content": {"text/plain": {}, "image/svg+xml": {}},
                "description": "Mermaid or DOT source, or an SVG picture.",
            },
            **READ,
        },
        tags=["machines"],
        summary="The machine's diagram, optionally with an execution's path highlighted",
    )
    async def machine_graph(
        machine_id: Annotated[str, Path(max_length=200)],
        format: Literal["mermaid", "dot", "svg"] = "mermaid",
        version: Annotated[int | None, Query(gt=0)] = None,
        execution: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Response:
        def draw() -> str:
            steps, current, pinned = None, None, version
            if execution is not None:
                ex = engine.get(execution)
                if ex.machine_id != machine_id:
                    raise InputError(
                        f"execution {execution!r} runs machine {ex.machine_id!r}, not {machine_id!r}"
                    )
                steps, current, pinned = engine.history(execution), ex.state, ex.machine_version
            m = engine.get_machine(machine_id, pinned)
            if format == "svg":
                return render_svg(m, steps, current)
            return graph.render(m, format, steps, current)

        text = await call(draw)
        media = "image/svg+xml" if format == "svg" else "text/plain; charset=utf-8"
        return Response(text, media_type=media)

    # ------------------------------------------------------------------ executions
    @api.post(
        "/executions",
        response_model=ExecutionOut,
        status_code=201,
        responses={
            200: {"model": ExecutionOut, "description": "An execution with this `id` exists."},
            **WRITE,
        },
        tags=["executions"],
        summary="Start an execution",
    )
    async def start(body: StartRequest) -> Response:
        def run() -> tuple[bool, dict[str, Any]]:
            existed = False
            if body.id is not None:
                try:
                    engine.get(body.id)
                    existed = True
                except ExecutionNotFound:
                    pass
            ex = engine.start(body.machine, body.input, version=body.version, execution_id=body.id)
            return existed, execution_json(ex)

        existed, data = await call(run)
        return JSONResponse(data, status_code=200 if existed else 201)

    @api.get(
        "/executions",
        response_model=ExecutionPage,
        responses=READ,
        tags=["executions"],
        summary="Executions, newest first, one page at a time",
    )
    async def list_executions(
        machine: Annotated[str | None, Query(max_length=200)] = None,
        status: Annotated[str | None, Query(max_length=16)] = None,
        state: Annotated[str | None, Query(max_length=200)] = None,
        older_than: Annotated[
            str | None, Query(max_length=20, description="Not updated for this long: 15m, 2h, 7d.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=WEB_MAX_PAGE_SIZE)] = WEB_PAGE_SIZE,
        cursor: Annotated[
            str | None, Query(max_length=1000, description="`next_cursor` of the previous page.")
        ] = None,
    ) -> Response:
        after = decode_cursor(cursor) if cursor else None
        age = parse_age(older_than) if older_than else None
        rows = await call(
            engine.executions,
            machine or None,
            status or None,
            state or None,
            limit + 1,
            older_than=age,
            after=after,
        )
        items = rows[:limit]
        next_cursor = encode_cursor(items[-1]) if len(rows) > limit else None
        return JSONResponse({"items": [execution_json(e) for e in items], "next_cursor": next_cursor})

    @api.get(
        "/executions/{execution_id}",
        response_model=ExecutionOut,
        responses=READ,
        tags=["executions"],
        summary="An execution; with `wait`, long-polls until it comes to rest",
    )
    async def get_execution(
        execution_id: ExecutionId,
        wait: Annotated[
            float | None,
            Query(
                ge=0,
                le=WEB_MAX_WAIT_SECONDS,
                description="Seconds to wait for the execution to come to rest.",
            ),
        ] = None,
    ) -> Response:
        if wait:
            ex = await waiter.wait(execution_id, wait)
        else:
            ex = await call(engine.get, execution_id)
        return JSONResponse(execution_json(ex))

    @api.get(
        "/executions/{execution_id}/history",
        response_model=list[StepOut],
        responses=READ,
        tags=["executions"],
        summary="Every step of an execution, by seq",
    )
    async def history(execution_id: ExecutionId) -> Response:
        steps = await call(engine.history, execution_id)
        return JSONResponse([step_json(s) for s in steps])

    @api.get(
        "/executions/{execution_id}/pending",
        response_model=list[TaskOut],
        responses=READ,
        tags=["executions"],
        summary="An execution's pending work: timers, effects, children",
    )
    async def pending(execution_id: ExecutionId) -> Response:
        tasks = await call(engine.pending, execution_id)
        return JSONResponse([task_json(t) for t in tasks])

    @api.get(
        "/executions/{execution_id}/actions",
        response_model=list[str],
        responses=READ,
        tags=["executions"],
        summary="The actions the execution's state allows now",
    )
    async def allowed(execution_id: ExecutionId) -> Response:
        return JSONResponse(await call(engine.allowed_actions, execution_id))

    @api.post(
        "/executions/{execution_id}/actions/{action}",
        response_model=ExecutionOut,
        responses=WRITE,
        tags=["executions"],
        summary="Fire an action; the body is its input",
    )
    async def trigger(
        execution_id: ExecutionId,
        action: Annotated[str, Path(min_length=1, max_length=200)],
        input: Annotated[Any, Body(description="The action's input: any JSON value.")] = None,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=200,
                description="Repeat-safe: a repeated key applies nothing.",
            ),
        ] = None,
    ) -> Response:
        ex = await call(engine.trigger, execution_id, action, input, idempotency_key=idempotency_key)
        return JSONResponse(execution_json(ex))

    @api.post(
        "/executions/{execution_id}/cancel",
        response_model=ExecutionOut,
        responses=WRITE,
        tags=["operations"],
        summary="Cancel an execution and its unfinished children",
    )
    async def cancel(execution_id: ExecutionId, body: ReasonRequest | None = None) -> Response:
        reason = body.reason if body and body.reason else "canceled"
        ex = await call(engine.cancel, execution_id, reason)
        return JSONResponse(execution_json(ex))

    def operation(name: str) -> None:
        async def run(execution_id: ExecutionId, body: ReasonRequest | None = None) -> Response:
            ex = await call(getattr(engine, name), execution_id, reason=body.reason if body else None)
            return JSONResponse(execution_json(ex))

        api.add_api_route(
            f"/executions/{{execution_id}}/{name}",
            run,
            methods=["POST"],
            response_model=ExecutionOut,
            responses=WRITE,
            tags=["operations"],
            name=name,
            summary=f"{name.capitalize()} an execution (recorded with the reason)",
        )

    for name in OPERATIONS:
        operation(name)

    @api.post(
        "/executions/{execution_id}/move",
        response_model=ExecutionOut,
        responses=WRITE,
        tags=["operations"],
        summary="Put an execution in a state, merging JSON into its context",
    )
    async def move(execution_id: ExecutionId, body: MoveRequest) -> Response:
        ex = await call(engine.move, execution_id, body.state, context=body.context, reason=body.reason)
        return JSONResponse(execution_json(ex))

    @api.get(
        "/stats",
        response_model=dict[str, Any],
        responses=_problems(401, 503),
        tags=["stats"],
        summary="Operator figures: executions by status, tasks, overdue work, this process",
    )
    async def get_stats() -> Response:
        return JSONResponse(await stats.get())

    return api
