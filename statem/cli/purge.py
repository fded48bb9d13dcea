"""``statem purge``: delete old finished and canceled executions (retention)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..retention import PurgeCounts
from .base import Ctx, cli, json_option, parse_duration, pass_ctx


@cli.command()
@click.option(
    "--older-than", "older", required=True, help="Finished or canceled at least this long ago: 12h, 30d."
)
@click.option("--machine", "machine_id", help="Only executions of this machine (their children go along).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Executions per transaction.",
)
@json_option
@pass_ctx
def purge(c: Ctx, older: str, machine_id: str | None, dry_run: bool, batch: int) -> None:
    """Delete finished and canceled executions with their history and tasks.

    Runs in short transactions of --batch executions each, so workers and callers are
    never held up for long; safe to interrupt and run again. Unfinished executions
    (running, waiting, failed, paused) are never touched, nor a child whose parent is
    still stored, nor a parent with an unfinished child.

    \b
    Examples:
      statem purge --older-than 30d --dry-run
      statem purge --older-than 90d --machine order
    """
    engine = c.engine()
    cutoff = engine.clock() - parse_duration(older)
    err = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=c.as_json) as bar:
        task = bar.add_task("dry run" if dry_run else "purging", total=None)

        def advance(counts: PurgeCounts) -> None:
            bar.update(task, total=max(counts.total, counts.examined), completed=counts.examined)

        counts = engine.purge(cutoff, machine_id, batch, dry_run=dry_run, progress=advance)
    data = {**counts.as_dict(), "finished_before": cutoff.isoformat()}

    def table() -> Table:
        verb = "would delete" if dry_run else "deleted"
        t = Table("", verb, title=f"finished or canceled before {cutoff:%Y-%m-%d %H:%M:%S} UTC")
        t.add_row("executions", f"{counts.executions:,}")
        t.add_row("history steps", f"{counts.steps:,}")
        t.add_row("tasks", f"{counts.tasks:,}")
        t.add_row("kept (unfinished child)", f"{counts.kept:,}")
        return t

    c.emit(data, table)
