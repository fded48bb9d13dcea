"""The console as an operator uses it: a real headless Chromium against a real server.

One browser for the module; each test gets its own server and database."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from statem import Engine
from statem.web import create_app

from .browser import ROOT, axe_violations, chromium, describe, screenshot
from .conftest import MACHINES
from .webserver import running

#: The README's picture of the execution page; rewritten when STATEM_WRITE_SCREENSHOT=1.
README_SHOT = ROOT / "docs" / "img" / "console-execution.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def orders(engine: Engine) -> Engine:
    engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
    return engine


def wait_for(driver: WebDriver, css: str, text: str | None = None, timeout: float = 20) -> None:
    condition = (
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text)
        if text is not None
        else ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )
    # a form's POST navigates to a new page: until it is in, Chromium may answer a read of
    # the old page's element with a generic "node does not belong to the document" error
    # instead of a stale-element one; both mean "not yet", the timeout still fails the test
    WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,)).until(condition)


def fire(driver: WebDriver, action: str, data: str) -> None:
    Select(driver.find_element(By.ID, "a-action")).select_by_value(action)
    box = driver.find_element(By.ID, "a-input")
    box.clear()
    box.send_keys(data)
    driver.find_element(By.CSS_SELECTOR, "#action-form button[type=submit]").click()


def history_heads(driver: WebDriver) -> list[str]:
    """The history rows' first lines, newest first, whitespace collapsed."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#history > li")
    return [" ".join(li.find_element(By.CSS_SELECTOR, ".line").text.split()) for li in rows]


def test_find_an_order_act_and_see_the_new_state(browser: WebDriver, orders: Engine) -> None:
    other = orders.start("order", {"n": 77})
    target = orders.start("order", {"n": 1234})
    with running(create_app(orders)) as base:
        browser.get(base + "/")
        rows = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
        assert [r.find_element(By.CSS_SELECTOR, "td a").text for r in rows] == [target.id, other.id]
        screenshot(browser, f"list-{orders.db.dialect.name}")
        browser.find_element(By.LINK_TEXT, target.id).click()
        wait_for(browser, "h1", target.id)
        assert browser.find_element(By.ID, "state").text == "cart"
        assert '"R1234"' in browser.find_element(By.ID, "context").text

        fire(browser, "add", '{"sku": "tea", "qty": 2}')
        wait_for(browser, ".alert.ok", "action add")
        assert browser.find_element(By.ID, "state").text == "cart"
        newest = browser.find_element(By.CSS_SELECTOR, "#history > li")
        assert newest.get_attribute("data-seq") == "3"
        assert "add" in newest.text and "cart → cart" in newest.text
        diff = newest.find_element(By.CSS_SELECTOR, "ul.diff").text
        assert "order.line_items" in diff and '["tea", "tea"]' in diff

        fire(browser, "place", "")
        wait_for(browser, "#state", "submitted")
        assert history_heads(browser)[0].startswith("#4 action place cart → submitted")
        current = browser.find_element(By.CSS_SELECTOR, ".sm-node.current")
        assert current.get_attribute("data-state") == "submitted"
        taken = {(g.get_attribute("data-from"), g.get_attribute("data-to"))
                 for g in browser.find_elements(By.CSS_SELECTOR, ".sm-edge.taken")}  # fmt: skip
        assert taken == {("create", "cart"), ("cart", "cart"), ("cart", "submitted")}
        shot = screenshot(browser, f"execution-{orders.db.dialect.name}")
        if os.environ.get("STATEM_WRITE_SCREENSHOT") == "1" and orders.db.dialect.name == "sqlite":
            README_SHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, README_SHOT)
    assert orders.get(target.id).state == "submitted"
    assert [s.kind for s in orders.history(target.id)] == ["start", "always", "action", "action"]


def test_a_refused_action_shows_why_and_keeps_the_input(browser: WebDriver, orders: Engine) -> None:
    ex = orders.start("order", {"n": 5})
    with running(create_app(orders)) as base:
        browser.get(f"{base}/executions/{ex.id}")
        fire(browser, "place", '{"note": "rush"}')  # the cart is empty: the guard refuses it
        wait_for(browser, "#error", "not allowed")
        assert "place" in browser.find_element(By.ID, "error").text
        assert browser.find_element(By.ID, "a-input").get_attribute("value") == '{"note": "rush"}'
        fire(browser, "add", '{"sku": ')
        wait_for(browser, "#error", "not valid JSON")
        screenshot(browser, "refused")
    assert len(orders.history(ex.id)) == 2


def test_cancel_asks_for_a_reason(browser: WebDriver, sqlite_engine: Engine) -> None:
    sqlite_engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
    ex = sqlite_engine.start("order", {"n": 9})
    with running(create_app(sqlite_engine)) as base:
        browser.get(f"{base}/executions/{ex.id}")
        button = browser.find_element(By.CSS_SELECTOR, "#op-cancel button")
        button.click()  # no reason typed: the browser refuses to send the form
        assert browser.execute_script("return document.getElementById('r-cancel').validity.valueMissing")
        assert sqlite_engine.get(ex.id).status == "waiting"
        browser.find_element(By.ID, "r-cancel").send_keys("duplicate order")
        browser.find_element(By.CSS_SELECTOR, "#op-cancel button").click()
        wait_for(browser, "#status", "canceled")
        assert history_heads(browser)[0].startswith("#3 cancel")
        assert "duplicate order" in browser.find_element(By.CSS_SELECTOR, "#history > li").text
        assert not browser.find_elements(By.ID, "action-form")  # a canceled order offers nothing
    assert sqlite_engine.get(ex.id).error == "duplicate order"


def test_keyboard_only(browser: WebDriver, sqlite_engine: Engine) -> None:
    sqlite_engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
    ex = sqlite_engine.start("order", {"n": 42})
    with running(create_app(sqlite_engine)) as base:
        browser.get(base + "/")
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        active = browser.switch_to.active_element
        assert active.text == "Skip to content"
        for _ in range(40):  # Tab to the execution's link, then Enter
            if active.get_attribute("href") == f"{base}/executions/{ex.id}":
                break
            active.send_keys(Keys.TAB)
            active = browser.switch_to.active_element
        else:
            pytest.fail("Tab never reached the execution's link")
        active.send_keys(Keys.ENTER)
        wait_for(browser, "h1", ex.id)
        for _ in range(40):  # Tab to the input box, type, Tab to "Fire action", Enter
            active = browser.switch_to.active_element
            if active.get_attribute("id") == "a-input":
                break
            active.send_keys(Keys.TAB)
        else:
            pytest.fail("Tab never reached the action's input box")
        active.send_keys('{"sku": "kb"}')
        active.send_keys(Keys.TAB)
        active = browser.switch_to.active_element
        assert active.text == "Fire action"
        outline = browser.execute_script("return getComputedStyle(arguments[0]).outlineStyle", active)
        assert outline != "none"  # focus is visible
        active.send_keys(Keys.ENTER)
        wait_for(browser, ".alert.ok", "action add")
    assert sqlite_engine.get(ex.id).context["order"]["line_items"] == ["kb"]


def test_pages_pass_axe(browser: WebDriver, sqlite_engine: Engine, tmp_path: Path) -> None:
    sqlite_engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
    ex = sqlite_engine.start("order", {"n": 3})
    sqlite_engine.trigger(ex.id, "add", {"sku": "a"})
    report: dict[str, object] = {}
    with running(create_app(sqlite_engine)) as base:
        for path in ["/", f"/executions/{ex.id}", "/machines", "/machines/order", "/stats", "/login",
                     "/executions/missing"]:  # fmt: skip
            browser.get(base + path)
            violations = axe_violations(browser)
            report[path] = violations
            assert not violations, f"{path}:\n{describe(violations)}"
    (tmp_path / "axe.json").write_text(json.dumps(report))


def test_read_only_console_shows_no_buttons(browser: WebDriver, sqlite_engine: Engine) -> None:
    sqlite_engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
    ex = sqlite_engine.start("order", {"n": 8})
    with running(create_app(sqlite_engine, read_only=True)) as base:
        browser.get(f"{base}/executions/{ex.id}")
        wait_for(browser, "#state", "cart")
        assert browser.find_element(By.CSS_SELECTOR, ".badge.ro").text == "read-only"
        assert browser.find_elements(By.CSS_SELECTOR, "main form, main button") == []
        screenshot(browser, "read-only")


def test_filters_paging_and_the_machine_page(browser: WebDriver, sqlite_engine: Engine) -> None:
    sqlite_engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
    ids = [sqlite_engine.start("order", {"n": i}).id for i in range(55)]
    for eid in ids[:3]:
        sqlite_engine.cancel(eid, "test")
    with running(create_app(sqlite_engine)) as base:
        browser.get(base + "/")
        assert len(browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")) == 50
        browser.find_element(By.LINK_TEXT, "Older »").click()
        wait_for(browser, ".pager", "Newest")
        later = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.list tbody td:first-child a")]
        assert later == list(reversed(ids))[50:]
        assert not browser.find_elements(By.LINK_TEXT, "Older »")

        browser.get(base + "/")
        Select(browser.find_element(By.ID, "f-status")).select_by_value("canceled")
        browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
        # the new page's table, not the old one's (present until the navigation lands)
        WebDriverWait(browser, 20).until(ec.url_contains("status=canceled"))
        wait_for(browser, "table.list")
        shown = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.list tbody td:first-child a")]
        assert sorted(shown) == sorted(ids[:3])

        browser.get(base + "/machines/order")
        counts = {r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1].text
                  for r in browser.find_elements(By.CSS_SELECTOR, "#counts tbody tr")}  # fmt: skip
        # cancel keeps the state: all 55 are in cart
        assert counts["cart"] == "55" and counts["create"] == "0" and counts["shipped"] == "0"
        assert browser.find_elements(By.CSS_SELECTOR, "svg.sm-diagram .sm-node")
        screenshot(browser, "machine")
        browser.get(base + "/stats")
        assert "waiting" in browser.find_element(By.TAG_NAME, "main").text
        screenshot(browser, "stats")


def test_token_login_in_the_browser(browser: WebDriver, sqlite_engine: Engine) -> None:
    sqlite_engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
    ex = sqlite_engine.start("order", {"n": 1})
    with running(create_app(sqlite_engine, token="s3cret-console")) as base:
        browser.get(base + "/")
        wait_for(browser, "h1", "Log in")
        browser.find_element(By.ID, "token").send_keys("s3cret-console" + Keys.ENTER)
        wait_for(browser, "h1", "Executions")
        assert browser.find_element(By.LINK_TEXT, ex.id)
        browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
        wait_for(browser, "h1", "Log in")
