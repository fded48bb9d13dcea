"""The ``statem`` command: a thin layer over the Python API.

Global options go before the subcommand (``statem --db URL --json list``); ``--json`` is
also accepted after it. The database comes from ``--db`` or ``STATEM_DATABASE_URL``;
``--app module:attr`` (or ``STATEM_APP``) loads the application's own Engine, with its
effects and env. Exit status: 0 ok, 1 rejected input or a failed operation, 2 usage.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .definition import load_definition
from .engine import Engine
from .errors import DefinitionError, StatemError
from .records import Execution, Step
from .settings import LEASE_SECONDS, POLL_SECONDS, WORKER_CONCURRENCY, WorkerSettings

DEFAULT_DB = "sqlite:///statem.db"
F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    """What the global options decided, shared by every subcommand."""

    def __init__(self, db: str | None, app: str | None, as_json: bool, debug: bool) -> None:
        self.db = db
        self.app = app
        self.as_json = as_json
        self.debug = debug
        self._engine: Engine | None = None
        self.out = console()

    def engine(self) -> Engine:
        """The Engine: the application's (``--app``) or one on ``--db``."""
        if self._engine is None:
            self._engine = load_app(self.app, self.db) if self.app else Engine(self.db or DEFAULT_DB)
        return self._engine

    def emit(self, data: Any, table: Callable[[], Any] | None = None) -> None:
        """Print ``data`` as JSON with ``--json``, else the readable form ``table()`` builds."""
        if self.as_json or table is None:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            rendered = table()
            if rendered is not None:
                self.out.print(rendered)


def console() -> Console:
    """A rich console; at least 140 columns wide when output is not a terminal."""
    probe = Console()
    return Console(width=None if probe.is_terminal else max(probe.width, 140))


def load_app(spec: str, db: str | None) -> Engine:
    """Import ``module:attr``; attr is an Engine or a function returning one."""
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadUsage(f"--app {spec}: cannot import {module_name!r}: {exc}") from None
    target = getattr(module, attr or "engine", None)
    if target is None:
        raise BadUsage(f"--app {spec}: module {module_name!r} has no attribute {attr or 'engine'!r}")
    engine = target if isinstance(target, Engine) else target()
    if not isinstance(engine, Engine):
        raise BadUsage(f"--app {spec}: {attr!r} is not an Engine or a function returning one")
    if db and db != engine.url:
        raise BadUsage(f"--app {spec} uses {engine.url!r}; drop --db or make them agree")
    return engine


def json_option(f: F) -> F:
    """``--json`` after the subcommand, too."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(Ctx).as_json = True  # type: ignore[union-attr]

    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        help="Print JSON instead of a table.",
    )(f)


class Rejected(click.ClickException):
    """Bad input from the user: one line on stderr, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class BadUsage(Rejected):
    """A bad option value (``--app``, ``--older-than``): one line on stderr, exit status 2."""

    exit_code = 2


def parse_json(value: str | None, what: str) -> Any:
    """Parse a ``--input`` argument (JSON, or ``@file.json``)."""
    if value is None:
        return None
    if value.startswith("@"):
        try:
            value = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise Rejected(f"{what}: cannot read {value[1:]!r}: {exc.strerror or exc}") from None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise Rejected(f"{what} is not valid JSON: {exc}") from None


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--db",
    envvar="STATEM_DATABASE_URL",
    show_envvar=True,
    help=f"SQLAlchemy database URL [default: {DEFAULT_DB}].",
)
@click.option(
    "--app",
    envvar="STATEM_APP",
    show_envvar=True,
    help="Load your Engine (with its effects and env) from MODULE:ATTR.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(__version__, prog_name="statem")
@click.pass_context
def cli(ctx: click.Context, db: str | None, app: str | None, as_json: bool, debug: bool) -> None:
    """statem: durable state machines.

    \b
    Examples:
      statem db upgrade
      statem machines load machines/*.yaml
      statem start order --input '{"n": 1234}'
      statem trigger 3f2a... add --input '{"sku": "tea"}'
      statem history 3f2a...
      statem --app myservice.workflows:engine worker
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Ctx(db, app, as_json, debug)
    ctx.call_on_close(lambda: ctx.obj._engine.close() if ctx.obj._engine else None)


# --------------------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@json_option
@pass_ctx
def db_upgrade(c: Ctx) -> None:
    """Create or upgrade the tables (alembic upgrade head)."""
    engine = c.engine()
    engine.migrate()
    url = engine.db.url.render_as_string(hide_password=True)
    c.emit({"database": url, "schema": "head"}, lambda: f"{url}: schema is at the latest revision")


# --------------------------------------------------------------------------- machines


@cli.group()
def machines() -> None:
    """Load and inspect machine definitions."""


@machines.command("load")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@pass_ctx
def machines_load(c: Ctx, paths: Sequence[Path]) -> None:
    """Validate every file, then store them all (none if any is invalid).

    \b
    Example:
      statem machines load machines/order.yaml machines/shipment.yaml
    """
    loaded, errors = [], []
    for path in paths:
        try:
            loaded.append(load_definition(path))
        except DefinitionError as exc:
            errors.append(f"{path}: {exc}")
    if errors:
        fail("\n".join(errors) + f"\nnothing stored ({len(errors)} of {len(paths)} files invalid)")
    try:
        c.engine().save_machines(loaded)
    except DefinitionError as exc:
        where = next((p for p, m in zip(paths, loaded, strict=True) if m.id == exc.machine), None)
        fail(f"{where}: {exc}\nnothing stored")
    c.emit(
        [{"id": m.id, "version": m.version} for m in loaded],
        lambda: "\n".join(f"saved {m.id} v{m.version}" for m in loaded),
    )


@machines.command("list")
@json_option
@pass_ctx
def machines_list(c: Ctx) -> None:
    """List saved machine versions."""
    rows = c.engine().machines()
    data = [
        {
            "id": m.id,
            "version": m.version,
            "states": m.states,
            "created_at": m.created_at.isoformat(),
            "content_hash": m.content_hash,
        }
        for m in rows
    ]

    def table() -> Table:
        t = Table("machine", "version", "states", "saved at", "hash")
        for m in rows:
            t.add_row(m.id, str(m.version), str(m.states), _ts(m.created_at), m.content_hash[:12])
        return t

    c.emit(data, table)


@machines.command("show")
@click.argument("machine_id")
@click.option("--version", type=int, help="A version (default: the latest).")
@json_option
@pass_ctx
def machines_show(c: Ctx, machine_id: str, version: int | None) -> None:
    """Print a machine's definition."""
    m = c.engine().get_machine(machine_id, version)
    c.emit(m.to_json(), lambda: _yaml(m.to_json()))


@cli.command()
@click.argument("machine_id", required=False)
@click.option("--version", type=int, help="A version (default: the latest).")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
@click.option("--execution", "execution_id", help="Highlight the path this execution took.")
@pass_ctx
def graph(c: Ctx, machine_id: str | None, version: int | None, fmt: str, execution_id: str | None) -> None:
    """Draw a machine as a Mermaid or Graphviz DOT diagram.

    \b
    Examples:
      statem graph order > order.mmd
      statem graph order --format dot | dot -Tsvg > order.svg
      statem graph --execution 3f2a...
    """
    from .graph import render

    engine = c.engine()
    steps: list[Step] | None = None
    current = None
    if execution_id is not None:
        ex = engine.get(execution_id)
        machine_id, version = ex.machine_id, ex.machine_version
        steps, current = engine.history(execution_id), ex.state
    if machine_id is None:
        raise click.UsageError("give a MACHINE_ID or --execution")
    click.echo(render(engine.get_machine(machine_id, version), fmt, steps, current))


# --------------------------------------------------------------------------- executions


@cli.command()
@click.argument("machine_id")
@click.option("--input", "input_", help="Input as JSON (or @file.json).")
@click.option("--version", type=int, help="Machine version (default: the latest).")
@click.option("--id", "execution_id", help="Execution id (makes the start idempotent).")
@json_option
@pass_ctx
def start(c: Ctx, machine_id: str, input_: str | None, version: int | None, execution_id: str | None) -> None:
    """Start an execution of a machine."""
    ex = c.engine().start(
        machine_id, parse_json(input_, "--input"), version=version, execution_id=execution_id
    )
    c.emit(ex.to_json(), lambda: _execution_table(ex))


@cli.command()
@click.argument("execution_id")
@click.argument("action")
@click.option("--input", "input_", help="Input as JSON (or @file.json).")
@click.option("--key", "idempotency_key", help="Idempotency key: a repeat applies nothing.")
@json_option
@pass_ctx
def trigger(c: Ctx, execution_id: str, action: str, input_: str | None, idempotency_key: str | None) -> None:
    """Fire an action on an execution."""
    ex = c.engine().trigger(
        execution_id, action, parse_json(input_, "--input"), idempotency_key=idempotency_key
    )
    c.emit(ex.to_json(), lambda: _execution_table(ex))


@cli.command()
@click.argument("execution_id")
@click.option("--reason", default="canceled from the command line", show_default=True)
@json_option
@pass_ctx
def cancel(c: Ctx, execution_id: str, reason: str) -> None:
    """Cancel an execution and its unfinished children."""
    ex = c.engine().cancel(execution_id, reason)
    c.emit(ex.to_json(), lambda: _execution_table(ex))


@cli.command()
@click.argument("execution_id")
@json_option
@pass_ctx
def show(c: Ctx, execution_id: str) -> None:
    """Show an execution: state, status, context, output, error."""
    ex = c.engine().get(execution_id)
    c.emit(ex.to_json(), lambda: _execution_table(ex))


@cli.command()
@click.argument("execution_id")
@json_option
@pass_ctx
def history(c: Ctx, execution_id: str) -> None:
    """Show every step of an execution, with what changed in the context."""
    steps = c.engine().history(execution_id)
    c.emit(
        [s.to_json() for s in steps],
        lambda: history_table(steps, title=f"execution {execution_id}"),
    )


@cli.command("list")
@click.option("--machine", "machine_id", help="Only this machine.")
@click.option("--status", type=click.Choice(["running", "waiting", "finished", "failed", "canceled"]))
@click.option("--state", help="Only executions in this state.")
@click.option("--older-than", "older", help="Not updated for this long: 30s, 15m, 2h, 7d.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@json_option
@pass_ctx
def list_(
    c: Ctx,
    machine_id: str | None,
    status: str | None,
    state: str | None,
    older: str | None,
    limit: int,
    page: int,
) -> None:
    """List executions, newest first.

    \b
    Example:
      statem list --machine order --status waiting --older-than 2h
    """
    rows = c.engine().executions(
        machine_id,
        status,
        state,
        limit,
        older_than=_duration(older) if older else None,
        offset=(page - 1) * limit,
    )

    def table() -> Table:
        t = Table("execution", "machine", "state", "status", "updated", "error", title=f"page {page}")
        for e in rows:
            t.add_row(
                e.id,
                f"{e.machine_id} v{e.machine_version}",
                e.state,
                e.status,
                _ts(e.updated_at),
                (e.error or "")[:60],
            )
        return t

    c.emit([e.to_json() for e in rows], table)


@cli.command()
@json_option
@pass_ctx
def stats(c: Ctx) -> None:
    """Counts of executions, pending and overdue work, steps."""
    data = c.engine().stats()

    def table() -> Table:
        db = data["database"]
        t = Table("figure", "value", title="statem stats")
        for status, n in sorted(db["executions"].items()):
            t.add_row(f"executions {status}", str(n))
        for kind, n in sorted(db["tasks"].items()):
            t.add_row(f"tasks {kind}", str(n))
        t.add_row("overdue tasks", str(db["overdue_tasks"]))
        oldest = db["oldest_overdue_seconds"]
        t.add_row("oldest overdue", f"{oldest:.3f}s" if oldest is not None else "-")
        t.add_row("history steps", str(db["steps"]))
        return t

    c.emit(data, table)


# --------------------------------------------------------------------------- worker & demo


@cli.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=WORKER_CONCURRENCY,
    show_default=True,
    help="Threads running tasks.",
)
@click.option("--lease", type=float, default=LEASE_SECONDS, show_default=True, help="Lease seconds.")
@click.option("--poll", type=float, default=POLL_SECONDS, show_default=True, help="Poll every N seconds.")
@click.option("--name", help="Worker name (default host:pid:random).")
@pass_ctx
def worker(c: Ctx, concurrency: int, lease: float, poll: float, name: str | None) -> None:
    """Run a worker until SIGINT/SIGTERM: timers, effects, child machines.

    Without --app only the built-in effects (http.request.json) are known.
    """
    if not c.debug:
        logging.getLogger("statem").setLevel(logging.INFO)
    c.engine().run_worker(
        WorkerSettings(concurrency=concurrency, lease_seconds=lease, poll_seconds=poll, name=name)
    )


@cli.command()
@pass_ctx
def demo(c: Ctx) -> None:
    """Run the order demo end to end on the database (a local HTTP stub plays the shipper)."""
    from .demo import run_demo

    result = run_demo(c.db or DEFAULT_DB, echo=c.out.print)
    c.out.print(history_table(result["order_history"], title=f"order {result['order'].id}"))
    c.out.print(history_table(result["shipment_history"], title=f"shipment {result['shipment'].id}"))
    o = result["order"]
    c.out.print(
        f"order {o.id}: {o.status} in state {o.state!r}, output {json.dumps(o.output)}; "
        f"{len(result['http_calls'])} HTTP calls; {result['seconds']:.1f}s"
    )
    if o.status != "finished":
        fail(f"the demo order ended {o.status}: {o.error}")


# --------------------------------------------------------------------------- rendering


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip()


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def context_diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """What changed between two contexts, one ``+key``/``-key``/``~key`` line each."""
    if after is None:
        return ""
    before = before or {}
    lines = []
    for key in sorted(set(before) | set(after)):
        if key not in after:
            lines.append(f"-{key}")
        elif key not in before:
            lines.append(f"+{key} = {_short(after[key])}")
        elif before[key] != after[key]:
            lines.append(f"~{key} = {_short(after[key])}")
    return "\n".join(lines)


def history_table(steps: Sequence[Step], title: str = "") -> Table:
    """The readable history: seq, time, kind, name, from -> to, context changes, error."""
    t = Table("#", "at (UTC)", "kind", "name", "from → to", "context changes", "note", title=title)
    ctx: dict[str, Any] | None = None
    for s in steps:
        move = s.to_state or "" if s.from_state in (None, s.to_state) else f"{s.from_state} → {s.to_state}"
        t.add_row(
            str(s.seq),
            _ts(s.at)[11:],
            s.kind,
            s.name or "",
            move,
            context_diff(ctx, s.context),
            step_note(s),
        )
        if s.context is not None:
            ctx = s.context
    return t


def step_note(s: Step) -> str:
    """The one thing worth knowing about a step beyond its move and context change."""
    out = s.output if isinstance(s.output, dict) else {}
    if s.error:
        return s.error
    if s.kind == "invoke":
        return f"{out.get('invoke')} {_short(out.get('input'), 50)}"
    if s.kind == "wait":
        return f"timer due {out.get('due_at', '')} → {out.get('target', '')}"
    if s.kind == "result" and isinstance(s.output, dict) and "status" in s.output:
        return f"HTTP {s.output['status']}"
    if s.kind == "result":
        return _short(s.output, 50)
    return ""


def _execution_table(ex: Execution) -> Table:
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for key, value in (
        ("execution", ex.id),
        ("machine", f"{ex.machine_id} v{ex.machine_version}"),
        ("state", ex.state),
        ("status", ex.status),
        ("context", json.dumps(ex.context)),
        ("output", json.dumps(ex.output)),
        ("error", ex.error or ""),
        ("parent", ex.parent_id or ""),
        ("updated", _ts(ex.updated_at)),
    ):
        t.add_row(key, value)
    return t


def _duration(text: str) -> dt.timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return dt.timedelta(seconds=float(text[:-1]) * units[text[-1]])
    except (KeyError, ValueError, IndexError):
        raise BadUsage(f"--older-than {text!r}: use a number with s, m, h or d (e.g. 15m)") from None


def fail(message: str) -> NoReturn:
    """Exit 1 with a message on stderr."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: typed errors become one line and exit status 1 (tracebacks with --debug)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="statem", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (StatemError, TimeoutError) as exc:
        if debug:
            raise
        # one line, except a DefinitionError, which lists every problem on its own line
        lines = str(exc).splitlines() or [""]
        shown = lines if isinstance(exc, DefinitionError) else lines[:1]
        click.echo(f"error: {type(exc).__name__}: {chr(10).join(shown)}", err=True)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
