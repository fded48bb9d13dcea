"""`make demo` ends by pointing at the console; `statem serve --help` says what it does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_make_demo_ends_with_the_console_hint(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STATEM_", "MAKE"))}
    run = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "demo", f"DEMO_DB={db}", f"VENV={venv}"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last == (
        f"Browse it in the console: {venv}/bin/statem --db {db} serve   (then open http://127.0.0.1:8080/)"
    )
    assert (tmp_path / "demo.db").is_file()


def test_serve_help_names_its_options() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "statem.cli", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0
    for option in ("--host", "--port", "--read-only", "--token", "STATEM_TOKEN", "--worker"):
        assert option in run.stdout
