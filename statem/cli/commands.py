"""The ``statem`` subcommands over machines and executions: db, machines, graph, start,
trigger, cancel, show, history, list, stats, worker, demo."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import click
from rich.table import Table

from ..definition import load_definition
from ..errors import DefinitionError
from ..records import Step
from ..settings import LEASE_SECONDS, POLL_SECONDS, WORKER_CONCURRENCY, WorkerSettings
from .base import (
    Ctx,
    Seconds,
    cli,
    exit_if_failed,
    fail,
    json_option,
    parse_duration,
    parse_json,
    pass_ctx,
)
from .render import as_yaml, definition_error, execution_table, history_table, plain, show_view, ts

#: ``--version N``: a saved machine version (a positive 32-bit integer, as stored).
VERSION = click.IntRange(1, 2**31 - 1)

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
            errors.append(definition_error(str(path), exc))
    if len(paths) == 1 and errors and "\n" not in errors[0]:
        fail(f"{errors[0]}; nothing stored")
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
            t.add_row(plain(m.id), str(m.version), str(m.states), ts(m.created_at), m.content_hash[:12])
        return t

    c.emit(data, table)


@machines.command("show")
@click.argument("machine_id")
@click.option("--version", type=VERSION, help="A version (default: the latest).")
@json_option
@pass_ctx
def machines_show(c: Ctx, machine_id: str, version: int | None) -> None:
    """Print a machine's definition."""
    m = c.engine().get_machine(machine_id, version)
    c.emit(m.to_json(), lambda: as_yaml(m.to_json()))


@cli.command()
@click.argument("machine_id", required=False)
@click.option("--version", type=VERSION, help="A version (default: the latest).")
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
    from ..graph import render

    engine = c.engine()
    steps: list[Step] | None = None
    current = None
    if execution_id is not None:
        ex = engine.get(execution_id)
        from ..replay import path_on_version  # across an upgrade: --version picks the old one

        shown = version if version is not None else ex.machine_version
        machine_id, version = ex.machine_id, shown
        history = engine.history(execution_id)
        steps = path_on_version(history, ex.machine_version, shown)
        current = ex.state if shown == ex.machine_version else None
    if machine_id is None:
        raise click.UsageError("give a MACHINE_ID or --execution")
    click.echo(render(engine.get_machine(machine_id, version), fmt, steps, current))


# --------------------------------------------------------------------------- executions


@cli.command()
@click.argument("machine_id")
@click.option("--input", "input_", help="Input as JSON (or @file.json).")
@click.option("--version", type=VERSION, help="Machine version (default: the latest).")
@click.option("--id", "execution_id", help="Execution id (makes the start idempotent).")
@json_option
@pass_ctx
def start(c: Ctx, machine_id: str, input_: str | None, version: int | None, execution_id: str | None) -> None:
    """Start an execution of a machine (exit status 3 if it ends failed)."""
    ex = c.engine().start(
        machine_id, parse_json(input_, "--input"), version=version, execution_id=execution_id
    )
    c.emit(ex.to_json(), lambda: execution_table(ex))
    exit_if_failed(ex)


@cli.command()
@click.argument("execution_id")
@click.argument("action")
@click.option("--input", "input_", help="Input as JSON (or @file.json).")
@click.option("--key", "idempotency_key", help="Idempotency key: a repeat applies nothing.")
@json_option
@pass_ctx
def trigger(c: Ctx, execution_id: str, action: str, input_: str | None, idempotency_key: str | None) -> None:
    """Fire an action on an execution (exit status 3 if it ends failed)."""
    ex = c.engine().trigger(
        execution_id, action, parse_json(input_, "--input"), idempotency_key=idempotency_key
    )
    c.emit(ex.to_json(), lambda: execution_table(ex))
    exit_if_failed(ex)


@cli.command()
@click.argument("execution_id")
@click.option("--reason", default="canceled from the command line", show_default=True)
@json_option
@pass_ctx
def cancel(c: Ctx, execution_id: str, reason: str) -> None:
    """Cancel an execution and its unfinished children."""
    ex = c.engine().cancel(execution_id, reason)
    c.emit(ex.to_json(), lambda: execution_table(ex))


@cli.command()
@click.argument("execution_id")
@json_option
@pass_ctx
def show(c: Ctx, execution_id: str) -> None:
    """Show an execution: state, status, context, output, error; its pending work (timers
    with due times, effects with attempts and last error, children) and the actions its
    state allows. --json adds the keys pending, children and allowed_actions."""
    engine = c.engine()
    ex = engine.get(execution_id)
    pending = engine.pending(execution_id)
    children = engine.executions(parent_id=execution_id, limit=1000)
    actions = engine.allowed_actions(execution_id)
    data = {
        **ex.to_json(),
        "pending": [t.to_json() for t in pending],
        "children": [
            {"id": k.id, "machine_id": k.machine_id, "state": k.state, "status": k.status, "error": k.error}
            for k in children
        ],
        "allowed_actions": actions,
    }
    c.emit(data, lambda: show_view(ex, pending, children, actions, engine.clock()))


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
@click.option("--parent", "parent_id", metavar="EID", help="Only the children of this execution.")
@click.option(
    "--status", type=click.Choice(["running", "waiting", "paused", "finished", "failed", "canceled"])
)
@click.option("--state", help="Only executions in this state.")
@click.option("--older-than", "older", help="Not updated for this long: 30s, 15m, 2h, 7d.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--page", type=click.IntRange(1, 1_000_000), default=1, show_default=True)
@json_option
@pass_ctx
def list_(
    c: Ctx,
    machine_id: str | None,
    parent_id: str | None,
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
      statem list --parent 3f2a...
    """
    rows = c.engine().executions(
        machine_id,
        status,
        state,
        limit,
        parent_id=parent_id,
        older_than=parse_duration(older) if older is not None else None,
        offset=(page - 1) * limit,
    )

    def table() -> Table:
        t = Table("execution", "machine", "state", "status", "updated", "error", title=f"page {page}")
        for e in rows:
            t.add_row(
                plain(e.id),
                plain(f"{e.machine_id} v{e.machine_version}"),
                plain(e.state),
                e.status,
                ts(e.updated_at),
                plain((e.error or "")[:60]),
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
        for warning in db.get("warnings", []):
            t.add_row("warning", plain(warning))
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
@click.option(
    "--lease",
    type=Seconds(minimum=0.0, maximum=86_400.0),
    default=LEASE_SECONDS,
    show_default=True,
    help="Lease seconds (> 0, at most a day).",
)
@click.option(
    "--poll",
    type=Seconds(minimum=0.0, maximum=3_600.0),
    default=POLL_SECONDS,
    show_default=True,
    help="Poll every N seconds (> 0, at most an hour).",
)
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
    """Run the order demo end to end (a local HTTP stub plays the shipper).

    It uses its own database, sqlite:///statem-demo.db in the working directory, unless
    --db is given on the command line (STATEM_DATABASE_URL is not used). It loads its two
    machines (order, shipment) all or nothing.
    """
    from sqlalchemy.engine import make_url

    from ..demo import DEMO_DB, run_demo

    url = c.db if c.db_explicit and c.db else DEMO_DB
    shown = make_url(url).render_as_string(hide_password=True) if url != DEMO_DB else url
    try:
        result = run_demo(url, echo=c.out.print)
    except DefinitionError as exc:
        fail(
            f"the demo's machines clash with those saved in {shown} ({str(exc).splitlines()[0]}); "
            f"nothing was stored: run the demo on its own database (without --db: {DEMO_DB})"
        )
    c.out.print(history_table(result["order_history"], title=f"order {result['order'].id}"))
    c.out.print(history_table(result["shipment_history"], title=f"shipment {result['shipment'].id}"))
    o = result["order"]
    click.echo(
        f"order {o.id}: {o.status} in state {o.state!r}, output {json.dumps(o.output)}; "
        f"{len(result['http_calls'])} HTTP calls; {result['seconds']:.1f}s"
    )
    click.echo(f"inspect it: statem --db {shown} show {o.id}  (or history, or list --parent)")
    if o.status != "finished":
        fail(f"the demo order ended {o.status}: {o.error}")
