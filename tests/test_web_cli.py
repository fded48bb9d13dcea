"""`statem demo` ends by pointing at the console; `statem serve --help` says what it does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_ends_with_the_console_hint(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    run = subprocess.run(
        [sys.executable, "-m", "statem.cli", "--db", db, "demo"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last == f"Browse it in the console: statem --db {db} serve   (then open http://127.0.0.1:8080/)"


def test_serve_help_names_its_options() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "statem.cli", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0
    for option in ("--host", "--port", "--read-only", "--token", "STATEM_TOKEN", "--worker"):
        assert option in run.stdout
