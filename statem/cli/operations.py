"""The ``statem`` subcommands that operate live executions: pause, resume, retry, move, upgrade.

Each is a thin layer over the Engine method of the same name; bad input (an unknown
execution or state, an operation the status forbids, a bad ``--map`` or ``--context``)
prints one line and exits 1 with nothing changed. ``upgrade`` is a dry run unless
``--apply``, prints the report as a table (``--json``: ``{"items": [...], "counts": {...}}``)
and exits 0 even when some executions are refused; on a terminal it shows a progress bar.
"""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .. import upgrade as upgrading
from .base import Ctx, Rejected, cli, json_option, parse_json, pass_ctx
from .render import execution_table

REASON = click.option("--reason", help="Why (recorded in the step's input).")


@cli.command()
@click.argument("execution_id")
@REASON
@json_option
@pass_ctx
def pause(c: Ctx, execution_id: str, reason: str | None) -> None:
    """Pause an execution (and its unfinished children): nothing moves it until resumed."""
    ex = c.engine().pause(execution_id, reason)
    c.emit(ex.to_json(), lambda: execution_table(ex))


@cli.command()
@click.argument("execution_id")
@REASON
@json_option
@pass_ctx
def resume(c: Ctx, execution_id: str, reason: str | None) -> None:
    """Resume a paused execution; what arrived meanwhile is applied in order of arrival."""
    ex = c.engine().resume(execution_id, reason)
    c.emit(ex.to_json(), lambda: execution_table(ex))


@cli.command()
@click.argument("execution_id")
@REASON
@json_option
@pass_ctx
def retry(c: Ctx, execution_id: str, reason: str | None) -> None:
    """Re-run what failed a failed execution (on the version it is pinned to now)."""
    ex = c.engine().retry(execution_id, reason)
    c.emit(ex.to_json(), lambda: execution_table(ex))


@cli.command()
@click.argument("execution_id")
@click.argument("state")
@click.option("--context", "context_", help="JSON object merged into the context (values, not expressions).")
@REASON
@json_option
@pass_ctx
def move(c: Ctx, execution_id: str, state: str, context_: str | None, reason: str | None) -> None:
    """Put an execution in STATE (operator override): discards its armed work, enters the state."""
    changes = parse_json(context_, "--context")
    if changes is not None and not isinstance(changes, dict):
        raise Rejected(f"--context must be a JSON object, not {type(changes).__name__}")
    ex = c.engine().move(execution_id, state, changes, reason)
    c.emit(ex.to_json(), lambda: execution_table(ex))


def parse_map(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--map OLD=NEW`` options as a state map."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise Rejected(f"--map {pair!r}: use OLD=NEW (state names)")
        mapping[old] = new
    return mapping


@cli.command()
@click.argument("machine_id")
@click.option("--to", "to_version", type=int, required=True, help="The version to move executions to.")
@click.option("--from", "from_version", type=int, help="Only executions on this version.")
@click.option("--map", "maps", multiple=True, metavar="OLD=NEW", help="Rename a state (repeatable).")
@click.option(
    "--context", "context_expr", metavar="EXPR", help="Expression yielding a mapping merged into ctx."
)
@click.option("--id", "ids", multiple=True, metavar="EID", help="Only this execution (repeatable).")
@click.option(
    "--only-if-replays", is_flag=True, help="Upgrade only executions whose history replays the same."
)
@REASON
@click.option("--apply", is_flag=True, help="Write the upgrade (default: a dry run that changes nothing).")
@json_option
@pass_ctx
def upgrade(
    c: Ctx,
    machine_id: str,
    to_version: int,
    from_version: int | None,
    maps: tuple[str, ...],
    context_expr: str | None,
    ids: tuple[str, ...],
    only_if_replays: bool,
    reason: str | None,
    apply: bool,
) -> None:
    """Move unfinished executions of MACHINE to version --to (a dry run unless --apply).

    \b
    Examples:
      statem upgrade order --to 2                       # what would happen, with the replay check
      statem upgrade order --to 2 --map paid=settled --only-if-replays --apply
      statem upgrade order --to 2 --id 3f2a... --context "{'currency': 'EUR'}" --apply
    """
    rt = c.engine()._runtime  # the streaming form of Engine.upgrade, for the progress bar
    req = upgrading.request(
        rt, machine_id, to_version, from_version, parse_map(maps), context_expr, list(ids) or None, apply,
        only_if_replays, reason,
    )  # fmt: skip
    total = upgrading.count(rt, req)
    report = upgrading.UpgradeReport()
    show_bar = not c.as_json and c.out.is_terminal and total > 0
    err_console = c.out
    with Progress(
        TextColumn("upgrading" if apply else "checking"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not show_bar,
        transient=True,
    ) as bar:
        task = bar.add_task("executions", total=total)
        for item in upgrading.run(rt, req):
            report.add(item)
            bar.advance(task)
    c.emit(report.to_json(), lambda: report_table(report, apply))


def report_table(report: upgrading.UpgradeReport, applied: bool) -> Table:
    """The readable upgrade report: one row per execution, then the counts."""
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items() if v or k in ("refused",))
    title = f"{'upgrade' if applied else 'dry run (nothing written; --apply to upgrade)'}: {counts}"
    t = Table("execution", "from", "state", "outcome", "replay", "why", title=title)
    for i in report.items:
        moved = i.from_state or "" if i.to_state in (None, i.from_state) else f"{i.from_state} → {i.to_state}"
        why = i.reason or ""
        if i.replay_detail:
            why = f"{why}; {i.replay_detail}" if why else i.replay_detail
        t.add_row(
            i.execution_id,
            f"v{i.from_version}" if i.from_version else "",
            moved,
            i.outcome,
            i.replay or "",
            why,
        )
    return t
