"""The operator console: server-rendered pages (Jinja2) and plain HTML forms.

Pages: ``/`` the executions list (filters, keyset paging), ``/executions/{id}`` (status,
context, diagram, pending work, timeline, actions), ``/machines`` and ``/machines/{id}``
(versions, definition, diagram, bounded counts per state), ``/stats``, ``/login``.
Every form posts with a CSRF token (:mod:`.security`) and redirects back (303) on
success; a refused action re-renders the page with the error and the input kept.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response
from starlette.types import Scope

from ..engine import Engine
from ..errors import ExecutionNotFound, InputError, StatemError
from ..settings import WEB_PAGE_SIZE, WEB_STATE_COUNT_CAP
from . import problems, views
from .diagram import render_svg
from .models import decode_cursor, encode_cursor, parse_age
from .security import CSRF_COOKIE, SESSION_COOKIE, Secrets, new_browser_id, session_value
from .stats import StatsCache

OPERATOR_OPS = ("cancel", "pause", "resume", "retry", "move")


class Console:
    """The console's routes and pages over one engine."""

    def __init__(
        self, engine: Engine, keys: Secrets, *, read_only: bool, stats: StatsCache, templates: Path
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.read_only = read_only
        self.stats = stats
        self.templates = Jinja2Templates(directory=str(templates))
        self.templates.env.filters["pretty"] = views.pretty
        self.templates.env.filters["compact"] = views.compact
        self.router = APIRouter(include_in_schema=False)
        r = self.router
        r.add_api_route("/", self.executions_page, methods=["GET"])
        r.add_api_route("/executions/{eid}", self.execution_page, methods=["GET"])
        r.add_api_route("/executions/{eid}/actions", self.fire_action, methods=["POST"])
        r.add_api_route("/executions/{eid}/{op}", self.operate, methods=["POST"])
        r.add_api_route("/machines", self.machines_page, methods=["GET"])
        r.add_api_route("/machines/{mid}", self.machine_page, methods=["GET"])
        r.add_api_route("/stats", self.stats_page, methods=["GET"])
        r.add_api_route("/login", self.login_form, methods=["GET"])
        r.add_api_route("/login", self.login, methods=["POST"])
        r.add_api_route("/logout", self.logout, methods=["POST"])

    # ------------------------------------------------------------------ rendering
    def render(self, request: Request, name: str, status: int = 200, **data: Any) -> Response:
        """A page, with the CSRF token its forms need (a new browser gets its cookie)."""
        browser = request.cookies.get(CSRF_COOKIE)
        fresh = browser is None
        if browser is None:
            browser = new_browser_id()
        data.update(
            csrf=self.keys.csrf_token(browser),
            read_only=self.read_only,
            logged_in=self.keys.token is not None,
            now=self.engine.clock(),
            ago=views.ago,
        )
        response = self.templates.TemplateResponse(request, name, data, status_code=status)
        if fresh:
            response.set_cookie(CSRF_COOKIE, browser, httponly=True, samesite="strict")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def login_response(self, scope: Scope) -> Response:
        """401 with the login form (the guard's answer to a console request without a session)."""
        return self.render(Request(scope), "login.html", status=401, error=None)

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        """An HTML error page for the console, a problem for the API."""
        assert isinstance(exc, HTTPException)
        if problems.wants_html(request):
            return self.render(
                request,
                "error.html",
                status=exc.status_code,
                message=str(exc.detail),
                title=problems.TITLES.get(exc.status_code, "Error"),
            )
        return await problems.on_http_error(request, exc)

    async def on_statem_error(self, request: Request, exc: Exception) -> Response:
        """statem's errors: a problem for the API, an error page for the console."""
        assert isinstance(exc, StatemError)
        if problems.wants_html(request):
            status, _, _ = problems.classify(exc)
            return self.render(
                request,
                "error.html",
                status=status,
                message=str(exc),
                title=problems.TITLES.get(status, "Error"),
            )
        return problems.statem_problem(exc)

    async def form(self, request: Request) -> dict[str, str]:
        """The posted form's fields, after the CSRF check (403 without a valid token)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/x-www-form-urlencoded":
            raise HTTPException(415, "console forms are sent as application/x-www-form-urlencoded")
        raw = (await request.body()).decode("utf-8", errors="replace")
        fields = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if not self.keys.csrf_ok(request.cookies.get(CSRF_COOKIE), fields.get("csrf")):
            raise HTTPException(
                403, "the form's CSRF token is missing or wrong; reload the page and try again"
            )
        return fields

    # ------------------------------------------------------------------ executions
    async def executions_page(self, request: Request) -> Response:
        """The executions list: filters (machine, status, state, age) and keyset paging."""
        q = request.query_params
        filters = {k: (q.get(k) or "").strip() for k in ("machine", "status", "state", "age")}
        cursor = q.get("cursor") or None
        error = None
        try:
            after = decode_cursor(cursor) if cursor else None
            age = parse_age(filters["age"]) if filters["age"] else None
        except InputError as exc:
            after, age, error = None, None, str(exc)

        def read() -> tuple[list[Any], list[str]]:
            rows = self.engine.executions(
                filters["machine"] or None,
                filters["status"] or None,
                filters["state"] or None,
                WEB_PAGE_SIZE + 1,
                older_than=age,
                after=after,
            )
            machine_ids = sorted({m.id for m in self.engine.machines()})
            return rows, machine_ids

        rows, machine_ids = await run_in_threadpool(read)
        items = rows[:WEB_PAGE_SIZE]
        active = {k: v for k, v in filters.items() if v}
        next_url = None
        if len(rows) > WEB_PAGE_SIZE:
            next_url = "/?" + urlencode({**active, "cursor": encode_cursor(items[-1])})
        first_url = "/?" + urlencode(active) if cursor else None
        return self.render(
            request,
            "executions.html",
            status=422 if error else 200,
            items=items,
            filters=filters,
            machine_ids=machine_ids,
            statuses=views.STATUSES,
            ages=views.AGES,
            next_url=next_url,
            first_url=first_url,
            error=error,
        )

    def _execution_data(self, eid: str) -> dict[str, Any]:
        ex = self.engine.get(eid)
        steps = self.engine.history(eid)
        machine = self.engine.get_machine(ex.machine_id, ex.machine_version)
        ops = views.operations(ex)
        return {
            "ex": ex,
            "timeline": views.timeline(steps),
            "tasks": self.engine.pending(eid),
            "children": self.engine.executions(parent_id=eid, limit=50),
            "allowed": self.engine.allowed_actions(eid),
            "ops": ops,
            "can_move": ex.status not in views.FINAL,
            "states": list(machine.states),
            "svg": render_svg(machine, steps, ex.state),
        }

    async def execution_page(self, request: Request, eid: str) -> Response:
        """One execution: status, context, diagram, pending work, actions, history."""
        data = await run_in_threadpool(self._execution_data, eid)
        done = request.query_params.get("done")
        return self.render(request, "execution.html", notice=done, error=None, form={}, **data)

    async def _redo(self, request: Request, eid: str, exc: StatemError, form: dict[str, str]) -> Response:
        """The execution page again, with the error and what was typed."""
        if isinstance(exc, ExecutionNotFound):
            raise exc
        status, _, _ = problems.classify(exc)
        data = await run_in_threadpool(self._execution_data, eid)
        return self.render(
            request, "execution.html", status=status, notice=None, error=str(exc), form=form, **data
        )

    async def fire_action(self, request: Request, eid: str) -> Response:
        """Trigger the chosen action with the JSON typed in the input box."""
        form = await self.form(request)
        action = form.get("action", "").strip()
        try:
            if not action:
                raise InputError("choose an action")
            data = _json_field(form.get("input", ""), "input")
            await run_in_threadpool(self.engine.trigger, eid, action, data)
        except StatemError as exc:
            return await self._redo(request, eid, exc, form)
        return RedirectResponse(
            f"/executions/{eid}?{urlencode({'done': f'action {action}'})}", status_code=303
        )

    async def operate(self, request: Request, eid: str, op: str) -> Response:
        """Cancel, pause, resume, retry or move, with the operator's reason."""
        if op not in OPERATOR_OPS:
            raise HTTPException(404, f"no console operation {op!r}")
        form = await self.form(request)
        reason = form.get("reason", "").strip() or None
        try:
            if op == "cancel":
                await run_in_threadpool(self.engine.cancel, eid, reason or "canceled by an operator")
            elif op == "move":
                state = form.get("state", "").strip()
                if not state:
                    raise InputError("choose the state to move to")
                context = _json_field(form.get("context", ""), "context")
                if context is not None and not isinstance(context, dict):
                    raise InputError('context: type a JSON object, e.g. {"key": 1}')
                await run_in_threadpool(self.engine.move, eid, state, context=context, reason=reason)
            else:
                await run_in_threadpool(getattr(self.engine, op), eid, reason=reason)
        except StatemError as exc:
            return await self._redo(request, eid, exc, form)
        return RedirectResponse(f"/executions/{eid}?{urlencode({'done': op})}", status_code=303)

    # ------------------------------------------------------------------ machines, stats
    async def machines_page(self, request: Request) -> Response:
        """Every saved machine with its versions."""
        infos = await run_in_threadpool(self.engine.machines)
        by_id: dict[str, list[Any]] = {}
        for info in infos:
            by_id.setdefault(info.id, []).append(info)
        return self.render(request, "machines.html", machines=by_id)

    async def machine_page(self, request: Request, mid: str) -> Response:
        """A machine version: definition, diagram, and executions per state (bounded counts)."""
        raw = request.query_params.get("version")
        if raw is not None and not raw.isdigit():
            raise InputError(f"version {raw!r} is not a positive integer")
        version = int(raw) if raw else None

        def read() -> dict[str, Any]:
            machine = self.engine.get_machine(mid, version)
            versions = sorted((i for i in self.engine.machines() if i.id == mid), key=lambda i: i.version)
            states = list(machine.states)
            return {
                "machine": machine,
                "versions": versions,
                "definition": machine.to_json(),
                "svg": render_svg(machine),
                "counts": self.engine.state_counts(mid, states, WEB_STATE_COUNT_CAP),
                "cap": WEB_STATE_COUNT_CAP,
            }

        return self.render(request, "machine.html", **(await run_in_threadpool(read)))

    async def stats_page(self, request: Request) -> Response:
        """Executions by status, tasks by kind, overdue work, this process's counters."""
        figures = await self.stats.get()
        read_at = dt.datetime.fromtimestamp(figures["read_at"], dt.UTC)
        return self.render(request, "stats.html", stats=figures, read_at=read_at)

    # ------------------------------------------------------------------ login
    async def login_form(self, request: Request) -> Response:
        """The login form (only useful when the server has a token)."""
        return self.render(request, "login.html", error=None)

    async def login(self, request: Request) -> Response:
        """Check the typed token; on success set the session cookie and go to the list."""
        form = await self.form(request)
        if not self.keys.token_ok(form.get("token", "")):
            return self.render(
                request, "login.html", status=401, error="That token is not the server's token."
            )
        response = RedirectResponse("/", status_code=303)
        assert self.keys.token is not None
        response.set_cookie(SESSION_COOKIE, session_value(self.keys.token), httponly=True, samesite="strict")
        return response

    async def logout(self, request: Request) -> Response:
        """Forget the session."""
        await self.form(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response


def _json_field(text: str, what: str) -> Any:
    """A form field holding JSON; empty means none."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
