"""The ``statem`` command: a thin layer over the Python API.

Global options go before the subcommand (``statem --db URL --json list``); ``--json`` is
also accepted after it. The database comes from ``--db`` or ``STATEM_DATABASE_URL``;
``--app module:attr`` (or ``STATEM_APP``) loads the application's own Engine, with its
effects and env. Exit status: 0 ok, 1 rejected input or a failed operation, 2 usage,
3 the execution ``start``/``trigger`` moved is failed (``base.EXIT_CODES``).

The package: :mod:`.base` (the group, global options, shared helpers), :mod:`.render`
(tables), and one module per family of subcommands, each registering itself on ``cli``
when imported below.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from ..errors import DefinitionError, StatemError
from . import commands as commands
from . import operations as operations
from . import purge as purge
from . import serve as serve
from . import services as services
from .base import cli

__all__ = ["cli", "main"]


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
