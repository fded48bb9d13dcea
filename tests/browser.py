"""Test helper: a real headless Chromium (Debian's ``chromium`` + ``chromedriver``) driven by
Selenium, and the page checks the console tests share (axe-core, screenshots)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "web"
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
CHROMIUM = os.environ.get("STATEM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("STATEM_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1400",
]


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A fresh headless Chromium; fails (never skips) when it is not installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"the console tests need a headless Chromium: {', '.join(missing)} missing. "
            "Run `make test` (scripts/ensure-chromium.sh installs Debian's chromium and chromium-driver) "
            "or set STATEM_CHROMIUM / STATEM_CHROMEDRIVER.",
            pytrace=False,
        )
    profile = tempfile.mkdtemp(prefix="statem-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save the whole page as ``test-artifacts/web/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height) + 120, 800), 4000))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1400)
    return path


def axe_violations(driver: WebDriver) -> list[dict[str, Any]]:
    """Run axe-core (vendored, WCAG 2 A/AA rules) on the current page; its violations."""
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    driver.set_script_timeout(60)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
        ".then(r => done(JSON.stringify(r.violations))).catch(e => done(JSON.stringify([{id: 'axe-error', "
        "help: String(e), nodes: []}])));"
    )
    violations: list[dict[str, Any]] = json.loads(result)
    return violations


def describe(violations: list[dict[str, Any]]) -> str:
    """Violations, one line each with the offending elements."""
    return "\n".join(
        f"{v['id']}: {v['help']} at {[n.get('target') for n in v.get('nodes', [])][:5]}" for v in violations
    )
