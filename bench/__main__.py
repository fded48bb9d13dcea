"""``python -m bench [--quick] [--only NAME ...]``: run every benchmark, then one summary table.

What ``make bench`` runs. Each benchmark module has ``run(quick) -> list[Result]``; a
benchmark that crashes is reported and the others still run (exit status 1 then). A
missed target is a figure, not a failure. ``bench/peer.py`` (the DBOS comparison), when
present, runs last.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from .common import Result, quiet_logs, say, summary

#: The benchmarks, in the order they run.
BENCHMARKS = (
    "steps",
    "executor",
    "timers",
    "memory",
    "torture",
    "isolation",
    "million",
    "fanout",
    "upgrade",
    "capacity",
)
#: Left out of ``--quick`` (filling takes minutes); ``--only million --quick`` runs it small.
NOT_QUICK = ("million",)
#: The peer comparison needs DBOS, which lives in its own virtualenv (``make bench`` makes it).
PEER_PYTHON = Path(__file__).resolve().parent.parent / ".venv-bench" / "bin" / "python"


def available() -> list[str]:
    """The benchmark names that can run here: the fixed ones, and ``peer`` when its venv exists."""
    return [*BENCHMARKS, "peer"] if PEER_PYTHON.exists() else list(BENCHMARKS)


def run_peer(quick: bool) -> list[Result]:
    """bench/peer.py in the bench virtualenv; its last line carries the summary rows."""
    args = [str(PEER_PYTHON), "-m", "bench.peer", *(["--quick"] if quick else [])]
    proc = subprocess.run(args, cwd=PEER_PYTHON.parents[2], capture_output=True, text=True, check=True)
    rows: list[Result] = []
    for line in proc.stdout.splitlines():
        if line.startswith("SUMMARY "):
            rows = [Result(**row) for row in json.loads(line.removeprefix("SUMMARY "))]
        else:
            say(line)
    return rows


def runner(module: ModuleType) -> Callable[[bool], list[Result]]:
    """A benchmark module's ``run(quick)``."""
    run: Callable[[bool], list[Result]] = module.run
    return run


def run_one(name: str, quick: bool) -> tuple[list[Result], str | None]:
    """Run one benchmark; returns its results, or the error that stopped it."""
    say(f"\n== {name}{' (quick)' if quick else ''}")
    began = time.monotonic()
    try:
        if name == "peer":
            results = run_peer(quick)
        else:
            results = runner(importlib.import_module(f"bench.{name}"))(quick)
    except Exception as exc:
        traceback.print_exc()
        return [], f"{name}: {type(exc).__name__}: {exc}"
    say(f"== {name} took {time.monotonic() - began:.0f} s")
    return results, None


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small runs (each benchmark under a minute)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help=f"run only these ({', '.join(available())})"
    )
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - set(available())
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print the summary table; 1 if any benchmark crashed."""
    args = parse(argv)
    quiet_logs()
    began = time.monotonic()
    results: list[Result] = []
    errors: list[str] = []
    names = args.only or [n for n in available() if not (args.quick and n in NOT_QUICK)]
    for name in names:
        found, error = run_one(name, args.quick)
        results += found
        if error:
            errors.append(error)
    mode = "quick" if args.quick else "default"
    say(f"\n== summary ({mode} mode, {time.monotonic() - began:.0f} s)\n{summary(results)}")
    for error in errors:
        say(f"CRASHED {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
