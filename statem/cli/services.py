"""``statem services``: load, list and show HTTP service definitions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from rich.table import Table

from ..errors import DefinitionError
from ..services import CompiledService, load_service
from .base import Ctx, cli, fail, json_option, pass_ctx
from .render import as_yaml, ts


@cli.group()
def services() -> None:
    """Load and inspect HTTP service definitions (invoked as `effect: service.operation`)."""


@services.command("load")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@pass_ctx
def services_load(c: Ctx, paths: Sequence[Path]) -> None:
    """Validate every file, then store them all (none if any is invalid).

    \b
    Example:
      statem services load machines/services/shipping.yaml
    """
    loaded: list[CompiledService] = []
    errors: list[str] = []
    for path in paths:
        try:
            loaded.append(load_service(path))
        except DefinitionError as exc:
            errors.append(f"{path}: {exc}")
    if errors:
        fail("\n".join(errors) + f"\nnothing stored ({len(errors)} of {len(paths)} files invalid)")
    try:
        saved = c.engine().catalog.save([cs.service for cs in loaded])
    except DefinitionError as exc:
        where = next((p for p, cs in zip(paths, loaded, strict=True) if cs.service.id == exc.machine), None)
        fail(f"{where}: {exc}\nnothing stored")
    c.emit(
        [{"id": s.id, "version": s.version, "operations": list(s.operations)} for s in saved],
        lambda: "\n".join(f"saved service {s.id} v{s.version}" for s in saved),
    )


@services.command("list")
@json_option
@pass_ctx
def services_list(c: Ctx) -> None:
    """List saved service versions."""
    rows = c.engine().services()
    data = [
        {
            "id": s.id,
            "version": s.version,
            "operations": s.operations,
            "created_at": s.created_at.isoformat(),
            "content_hash": s.content_hash,
        }
        for s in rows
    ]

    def table() -> Table:
        t = Table("service", "version", "operations", "saved at", "hash")
        for s in rows:
            t.add_row(s.id, str(s.version), ", ".join(s.operations), ts(s.created_at), s.content_hash[:12])
        return t

    c.emit(data, table)


@services.command("show")
@click.argument("service_id")
@click.option("--version", type=int, help="A version (default: the latest).")
@json_option
@pass_ctx
def services_show(c: Ctx, service_id: str, version: int | None) -> None:
    """Print a service's definition."""
    s = c.engine().get_service(service_id, version)
    c.emit(s.to_json(), lambda: as_yaml(s.to_json()))
