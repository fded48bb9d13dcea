"""The ``statem`` command's shared parts: global options, the context, input parsing, errors.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from .. import __version__
from ..engine import Engine

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


def parse_duration(text: str) -> dt.timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return dt.timedelta(seconds=float(text[:-1]) * units[text[-1]])
    except (KeyError, ValueError, IndexError):
        raise BadUsage(f"--older-than {text!r}: use a number with s, m, h or d (e.g. 15m)") from None


def fail(message: str) -> NoReturn:
    """Exit 1 with a message on stderr."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)
