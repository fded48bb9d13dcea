"""``statem serve``: the HTTP API and the operator console (:mod:`statem.web`) under uvicorn."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import click

from .base import BadUsage, Ctx, cli, pass_ctx


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token (BadUsage, exit status 2)."""
    from ..web.security import is_loopback

    if not is_loopback(host) and not token:
        raise BadUsage(
            f"--host {host} is reachable from other machines: set a token with STATEM_TOKEN "
            "(or --token) so every request must carry it, or bind to 127.0.0.1"
        )


@contextlib.contextmanager
def _maybe_worker(ctx: Ctx, run: bool) -> Iterator[None]:
    if not run:
        yield
        return
    with ctx.engine().worker():
        yield


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--read-only", is_flag=True, help="Refuse every write (405); the console shows no buttons.")
@click.option(
    "--token",
    envvar="STATEM_TOKEN",
    show_envvar=True,
    help="Require 'Authorization: Bearer TOKEN' (prefer the environment variable: arguments show in ps).",
)
@click.option("--worker", "run_worker", is_flag=True, help="Also run a worker in this process.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@pass_ctx
def serve(
    ctx: Ctx, host: str, port: int, read_only: bool, token: str | None, run_worker: bool, log_level: str
) -> None:
    """Serve the JSON API (/api/v1) and the operator console (/).

    \b
    Loopback only by default; any other --host needs a token (STATEM_TOKEN).
    It runs no worker unless given --worker.
    """
    check_bind(host, token)
    import uvicorn

    from ..web import create_app

    engine = ctx.engine()
    app = create_app(engine, read_only=read_only, token=token or None)
    mode = " read-only" if read_only else ""
    guard = "a token is required" if token else "no token: loopback only"
    click.echo(f"statem{mode} console and API on http://{_shown(host)}:{port}/ ({guard})", err=True)
    os.environ.pop("STATEM_TOKEN", None)  # not inherited by anything this process starts
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        proxy_headers=False,
        server_header=False,
        access_log=log_level in ("info", "debug"),
    )
    with _maybe_worker(ctx, run_worker):
        uvicorn.Server(config).run()


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host
