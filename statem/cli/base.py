"""The ``statem`` command's shared parts: global options, the context, input parsing, errors.

Global options go before the subcommand (``statem --db URL --json list``); ``--json`` is
also accepted after it. The database comes from ``--db`` or ``STATEM_DATABASE_URL``;
``--app module:attr`` (or ``STATEM_APP``) loads the application's own Engine, with its
effects and env. Exit status: see :data:`EXIT_CODES`.

Output prints data verbatim: the console has rich markup, emoji codes and highlighting
off, so a stored ``[/]`` or ``[link=...]`` or ``:smile:`` prints as those characters
(style with :class:`rich.text.Text` objects, never with markup strings); table cells
built from stored data go through :func:`statem.cli.render.plain`, which also shows
control characters escaped.

Helpers for subcommand modules: :class:`Ctx` (``pass_ctx``), :func:`json_option`,
:func:`parse_json`, :func:`parse_duration`, :class:`Seconds` (a click type for a
positive, finite number of seconds), :class:`Rejected` / :class:`BadUsage` (one-line
errors, exit 1 / 2), :func:`fail`, :func:`exit_if_failed` (exit 3 when an execution a
command moved ended ``failed``).
"""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from .. import __version__
from ..dialects import sqlalchemy_url
from ..engine import Engine
from ..records import Execution

DEFAULT_DB = "sqlite:///statem.db"
F = TypeVar("F", bound=Callable[..., Any])

#: Exit statuses of every ``statem`` command (README and docs/operations.md list them).
EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_REJECTED: "rejected input or a failed operation (nothing was changed by it)",
    EXIT_USAGE: "usage: unknown option or command, a bad option value",
    EXIT_FAILED: "start/trigger: the execution is failed (it was stored; see its error)",
}
#: The longest ``--older-than`` accepted (100 years): past it, dates would overflow.
MAX_DURATION = dt.timedelta(days=36_500)


class Ctx:
    """What the global options decided, shared by every subcommand."""

    def __init__(
        self, db: str | None, app: str | None, as_json: bool, debug: bool, db_explicit: bool = False
    ) -> None:
        self.db = db
        #: True when ``--db`` was given on the command line (not from STATEM_DATABASE_URL)
        self.db_explicit = db_explicit
        self.app = app
        self.as_json = as_json
        self.debug = debug
        self._engine: Engine | None = None
        self.out = console()

    def engine(self) -> Engine:
        """The Engine: the application's (``--app``) or one on ``--db``."""
        if self._engine is None:
            self._engine = (
                load_app(self.app, self.db, debug=self.debug) if self.app else Engine(self.db or DEFAULT_DB)
            )
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
    """A rich console that prints text verbatim (no markup, emoji codes or highlighting);
    at least 140 columns wide when output is not a terminal."""
    probe = Console()
    return Console(
        width=None if probe.is_terminal else max(probe.width, 140),
        markup=False,
        emoji=False,
        highlight=False,
    )


def load_app(spec: str, db: str | None, *, debug: bool = False) -> Engine:
    """Import ``module:attr``; attr is an Engine or a function of no arguments returning one
    (an Engine subclass included). With ``debug``, an error importing the module propagates."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "engine"
    if not module_name:
        raise BadUsage(f"--app {spec}: give MODULE:ATTR, e.g. myservice.workflows:engine")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module's own code raised
        if debug:
            raise
        raise BadUsage(f"--app {spec}: cannot import {module_name!r}: {_one_line(exc)}") from None
    target = getattr(module, attr, None)
    if target is None:
        raise BadUsage(f"--app {spec}: module {module_name!r} has no attribute {attr!r}")
    not_engine = f"--app {spec}: {attr!r} is not an Engine or a function returning one"
    if not isinstance(target, Engine):
        if not callable(target) or (isinstance(target, type) and not issubclass(target, Engine)):
            raise BadUsage(f"{not_engine} (it is {_kind(target)})")
        try:
            inspect.signature(target).bind()
        except TypeError:
            raise BadUsage(f"{not_engine} (it takes arguments; --app calls it with none)") from None
        except ValueError:
            pass  # a builtin without a signature: calling it tells
        target = target()
        if not isinstance(target, Engine):
            raise BadUsage(f"{not_engine} (it returned {_kind(target)})")
    if db and _same_url(db) != _same_url(target.url):
        raise BadUsage(f"--app {spec} uses {target.url!r}; drop --db or make them agree")
    return target


def _kind(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__}"
    return f"a {type(value).__name__}"


def _same_url(url: str) -> str:
    try:
        return sqlalchemy_url(url)
    except Exception:  # not a URL: compare as given (the Engine reports it when used)
        return url


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def configure_logging(debug: bool) -> None:
    """WARNING to stderr (DEBUG with ``--debug``); APScheduler's per-run INFO lines are
    quiet unless ``--debug``, whatever level the root logger (or an ``--app``) sets."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.NOTSET if debug else logging.WARNING)


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

    \b
    Exit status: 0 ok; 1 rejected input or a failed operation;
    2 usage (bad option or value); 3 start/trigger left the execution failed.
    """
    configure_logging(debug)
    explicit = ctx.get_parameter_source("db") == click.core.ParameterSource.COMMANDLINE
    ctx.obj = Ctx(db, app, as_json, debug, db_explicit=explicit)
    ctx.call_on_close(lambda: ctx.obj._engine.close() if ctx.obj._engine else None)


def parse_duration(text: str, option: str = "--older-than") -> dt.timedelta:
    """A duration such as ``30s``, ``15m``, ``2h``, ``7d``: zero or more, at most
    :data:`MAX_DURATION`; anything else is a one-line BadUsage naming ``option``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    how = "use a number >= 0 with s, m, h or d (e.g. 15m)"
    try:
        seconds = float(text.strip()[:-1]) * units[text.strip()[-1]]
    except (KeyError, ValueError, IndexError):
        raise BadUsage(f"{option} {text!r}: {how}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise BadUsage(f"{option} {text!r}: {how}")
    if seconds > MAX_DURATION.total_seconds():
        raise BadUsage(f"{option} {text!r}: too long (at most {MAX_DURATION.days}d)")
    return dt.timedelta(seconds=seconds)


class Seconds(click.FloatRange):
    """A click type: a finite number of seconds above ``minimum`` and at most ``maximum``;
    anything else (NaN included, which a plain FloatRange lets through) exits 2 naming
    the option and the range."""

    name = "seconds"

    def __init__(self, minimum: float = 0.0, maximum: float = 86_400.0) -> None:
        super().__init__(min=minimum, max=maximum, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number of seconds", param, ctx)
        return number


def fail(message: str, code: int = EXIT_REJECTED) -> NoReturn:
    """Exit ``code`` (1) with a message on stderr."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def exit_if_failed(ex: Execution) -> None:
    """After printing it: exit :data:`EXIT_FAILED` (3) with the execution's error on stderr
    when a command left the execution ``failed``."""
    if ex.status == "failed":
        fail(f"execution {ex.id} failed in state {ex.state!r}: {ex.error}", EXIT_FAILED)
