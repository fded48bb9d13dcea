"""The wheel carries the console's templates and stylesheet: the console works from a plain
``pip install``, not only from a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_wheel_serves_the_console_from_an_installed_copy(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = dist.glob("statem-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    templates = {p.name for p in (ROOT / "statem" / "web" / "templates").iterdir()}
    assert {f"statem/web/templates/{t}" for t in templates} <= names
    assert "statem/web/static/console.css" in names
    assert not any("axe" in n for n in names)  # the test-only checker stays out

    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    script = """
import asyncio, httpx, statem
from statem import Engine
from statem.web import create_app
e = Engine('sqlite:///x.db')
e.migrate()
async def main():
    transport = httpx.ASGITransport(app=create_app(e))
    async with httpx.AsyncClient(transport=transport, base_url='http://127.0.0.1') as c:
        page, css = await c.get('/'), await c.get('/static/console.css')
    print(statem.__file__, page.status_code, 'Executions' in page.text, css.status_code, 'skip' in css.text)
asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STATEM_DATABASE_URL")}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    file, *checks = run.stdout.split()
    assert Path(file).resolve().is_relative_to(site)
    assert checks == ["200", "True", "200", "True"]
