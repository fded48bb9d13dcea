"""The ``statem`` command line: in-process through ``statem.cli.main`` and as real subprocesses.

In-process runs capture stdout/stderr with ``capsys`` and the exit status from the
``SystemExit`` ``main`` raises on errors (it returns normally on success). Tests marked
``xfail(strict=True)`` assert the right behaviour for a known CLI bug named in the reason.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from statem import Engine, ExecutionNotFound, StoreError
from statem.cli import main
from statem.testing import FakeClock, run_until_idle

from .conftest import MACHINES, ROOT
from .helpers import http_server

HAS_GRAPH = importlib.util.find_spec("statem.graph") is not None
NEEDS_GRAPH = pytest.mark.skipif(
    not HAS_GRAPH, reason="statem/graph.py does not exist yet (another engineer is writing it)"
)
ORDER = str(MACHINES / "order.yaml")
SHIPMENT = str(MACHINES / "shipment.yaml")
UNREACHABLE_PG = "postgresql+psycopg://nobody@127.0.0.1:1/nope"
EXECUTION_FIELDS = {
    "id",
    "machine_id",
    "machine_version",
    "state",
    "status",
    "context",
    "input",
    "output",
    "error",
    "parent_id",
    "created_at",
    "updated_at",
}
#: What ``statem show --json`` adds to the execution's fields.
SHOW_FIELDS = {"pending", "children", "allowed_actions"}
STEP_FIELDS = {"seq", "at", "kind", "name", "from_state", "to_state", "input", "output", "context", "error"}

TALLY = """\
id: tally
version: 1
start_at: open
context:
  attempts: "0"
states:
  open:
    actions:
      bump: {context: {attempts: "ctx['attempts'] + 1"}}
      close: {state: closed}
  closed: {end: true, return: "ctx['attempts']"}
"""

BAD_EXPRESSION = """\
id: bad-expr
version: 1
start_at: a
context: {x: "1 +"}
states:
  a: {end: true}
"""

BAD_STATES = """\
id: bad-states
version: 1
start_at: nowhere
states:
  a: {actions: {go: {state: missing}}}
"""


# --------------------------------------------------------------------------- harness


@dataclass
class Result:
    """One CLI run: exit status and what it printed."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """The non-blank lines on stderr."""
        return [line for line in self.err.splitlines() if line.strip()]

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


class CLI:
    """Runs ``statem.cli.main`` in this process; ``cli(...)`` adds ``--db URL`` when bound."""

    def __init__(self, capsys: pytest.CaptureFixture[str], url: str | None = None) -> None:
        self.capsys = capsys
        self.url = url

    def raw(self, *args: str) -> Result:
        """Exactly these arguments."""
        self.capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def __call__(self, *args: str) -> Result:
        return self.raw(*(["--db", self.url] if self.url else []), *args)

    def ok(self, *args: str) -> Result:
        """Run, and require exit status 0 with nothing on stderr."""
        r = self(*args)
        assert r.code == 0, f"statem {' '.join(args)} exited {r.code}: {r.err}"
        assert r.err == ""
        return r

    def data(self, *args: str) -> Any:
        """Run with ``--json`` before the subcommand and parse stdout."""
        return self.ok("--json", *args).json()

    def bind(self, url: str) -> CLI:
        """The same runner on another database."""
        return CLI(self.capsys, url)


def assert_one_line_error(r: Result, *fragments: str, code: int = 1) -> None:
    """Exit ``code``, nothing on stdout, one ``error:`` line on stderr naming every fragment."""
    assert r.code == code, (r.code, r.err)
    assert r.out == ""
    assert "Traceback" not in r.err
    assert len(r.err_lines) == 1, r.err
    assert r.err_lines[0].startswith("error: "), r.err
    for fragment in fragments:
        assert fragment in r.err, (fragment, r.err)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's own STATEM_* variables and FORCE_COLOR must not leak into these tests."""
    monkeypatch.delenv("STATEM_DATABASE_URL", raising=False)
    monkeypatch.delenv("STATEM_APP", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)  # rich would colour and narrow its tables


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], db_url: str) -> CLI:
    """The CLI on a migrated, empty database (SQLite and PostgreSQL)."""
    return CLI(capsys, db_url)


@pytest.fixture
def sqlite_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> CLI:
    """The CLI on a migrated, empty SQLite file (for dialect-independent behaviour)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    e = Engine(url)
    e.migrate()
    e.close()
    return CLI(capsys, url)


@pytest.fixture
def bare(capsys: pytest.CaptureFixture[str]) -> CLI:
    """The CLI with no ``--db`` added."""
    return CLI(capsys)


@pytest.fixture
def loaded(cli: CLI) -> CLI:
    """The CLI with order and shipment loaded."""
    cli.ok("machines", "load", ORDER, SHIPMENT)
    return cli


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def statem_process(
    *args: str, tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m statem.cli ARGS`` as a real process, in ``tmp_path``, with this checkout on the path."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STATEM_") and k != "FORCE_COLOR"}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "statem.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**base, **(env or {})},
        check=False,
    )


# --------------------------------------------------------------------------- help and usage


def test_main_returns_normally_on_success(sqlite_cli: CLI, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--db", sqlite_cli.url or "", "machines", "list", "--json"])  # no SystemExit on success
    assert json.loads(capsys.readouterr().out) == []


def test_group_help_lists_every_command_examples_and_env_vars(bare: CLI) -> None:
    r = bare.raw("--help")
    assert r.code == 0
    assert r.out.startswith("Usage: statem [OPTIONS] COMMAND [ARGS]...")
    assert "Examples:" in r.out
    assert "statem machines load machines/*.yaml" in r.out
    assert "3 start/trigger left the execution failed" in r.out
    for option in ("--db", "--app", "--json", "--debug", "STATEM_DATABASE_URL", "STATEM_APP"):
        assert option in r.out
    for command in (
        "cancel",
        "db",
        "demo",
        "graph",
        "history",
        "list",
        "machines",
        "show",
        "start",
        "stats",
        "trigger",
        "worker",
    ):
        assert f"\n  {command} " in r.out, command
    assert bare.raw("-h").out == r.out


HELP_CASES: list[tuple[list[str], list[str]]] = [
    (["db"], ["upgrade"]),
    (["db", "upgrade"], ["alembic upgrade head"]),
    (["machines"], ["load", "list", "show"]),
    (["machines", "load"], ["PATHS...", "Example:", "statem machines load machines/order.yaml"]),
    (["machines", "list"], ["--json"]),
    (["machines", "show"], ["MACHINE_ID", "--version"]),
    (["graph"], ["Examples:", "--format", "mermaid", "dot", "--execution"]),
    (["start"], ["MACHINE_ID", "--input", "--id", "--version", "--json"]),
    (["trigger"], ["EXECUTION_ID ACTION", "--input", "--key"]),
    (["cancel"], ["EXECUTION_ID", "--reason"]),
    (["show"], ["EXECUTION_ID", "--json"]),
    (["history"], ["EXECUTION_ID", "--json"]),
    (["list"], ["Example:", "--machine", "--status", "--state", "--older-than", "--limit", "--page"]),
    (["stats"], ["--json"]),
    (["worker"], ["--concurrency", "--lease", "--poll", "--name"]),
    (["demo"], ["demo"]),
]


@pytest.mark.parametrize(("command", "expected"), [pytest.param(c, e, id=" ".join(c)) for c, e in HELP_CASES])
def test_subcommand_help(bare: CLI, command: list[str], expected: list[str]) -> None:
    r = bare.raw(*command, "--help")
    assert r.code == 0
    assert r.err == ""
    assert r.out.startswith(f"Usage: statem {' '.join(command)} ")
    for text in expected:
        assert text in r.out, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--bogus"], "No such option '--bogus'"),
        (["show"], "Missing argument 'EXECUTION_ID'"),
        (["trigger", "abc"], "Missing argument 'ACTION'"),
        (["machines", "load"], "Missing argument 'PATHS...'"),
        (["machines", "show"], "Missing argument 'MACHINE_ID'"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
        (["list", "--status", "bogus"], "'bogus' is not one of"),
        (["list", "--limit", "0"], "0 is not in the range"),
        (["list", "--page", "0"], "0 is not in the range"),
        (["start", "order", "--version", "one"], "'one' is not a valid integer"),
        (["graph", "order", "--format", "png"], "'png' is not one of 'mermaid', 'dot'"),
        (["--bogus-global", "list"], "No such option '--bogus-global'"),
    ],
)
def test_usage_errors_exit_2(sqlite_cli: CLI, args: list[str], message: str) -> None:
    r = sqlite_cli(*args)
    assert r.code == 2, r.err
    assert r.out == ""
    assert "Usage: statem" in r.err
    assert message in r.err
    assert "Traceback" not in r.err


# --------------------------------------------------------------------------- db upgrade


def test_db_upgrade_is_idempotent(cli: CLI) -> None:
    for _ in range(2):
        assert cli.ok("db", "upgrade").out.strip().endswith(": schema is at the latest revision")
    assert cli.data("machines", "list") == []


def test_db_upgrade_json(cli: CLI) -> None:
    for args in (["--json", "db", "upgrade"], ["db", "upgrade", "--json"]):
        r = cli(*args)
        assert r.code == 0, r.err
        assert isinstance(json.loads(r.out), dict)


def test_db_upgrade_creates_the_tables_on_a_new_sqlite_file(bare: CLI, tmp_path: Path) -> None:
    db = bare.bind(f"sqlite:///{tmp_path / 'new.db'}")
    assert db.ok("db", "upgrade").out.strip().endswith(": schema is at the latest revision")
    assert (tmp_path / "new.db").exists()
    db.ok("machines", "load", ORDER)
    assert [m["id"] for m in db.data("machines", "list")] == ["order"]


def test_default_database_is_statem_db_in_the_working_directory(
    bare: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = bare.raw("db", "upgrade")
    assert r.code == 0, r.err
    assert (tmp_path / "statem.db").exists()


def test_db_option_overrides_the_environment_variable(
    bare: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_db, flag_db = tmp_path / "env.db", tmp_path / "flag.db"
    monkeypatch.setenv("STATEM_DATABASE_URL", f"sqlite:///{env_db}")
    assert bare.raw("db", "upgrade").code == 0
    assert env_db.exists() and not flag_db.exists()
    assert bare.raw("--db", f"sqlite:///{flag_db}", "db", "upgrade").code == 0
    assert flag_db.exists()


# --------------------------------------------------------------------------- machines


def test_machines_load_stores_every_valid_file(cli: CLI) -> None:
    r = cli.ok("machines", "load", ORDER, SHIPMENT)
    assert r.out.splitlines() == ["saved order v1", "saved shipment v1"]
    # loading the same content again is a no-op; --json after the subcommand
    assert cli.ok("machines", "load", SHIPMENT, "--json").json() == [{"id": "shipment", "version": 1}]
    listed = cli.data("machines", "list")
    assert [(m["id"], m["version"], m["states"]) for m in listed] == [("order", 1, 6), ("shipment", 1, 5)]
    for m in listed:
        assert set(m) == {"id", "version", "states", "created_at", "content_hash"}
        assert dt.datetime.fromisoformat(m["created_at"]).tzinfo is not None
        assert len(m["content_hash"]) >= 12
    table = cli.ok("machines", "list").out
    for text in ("machine", "version", "states", "hash", "order", "shipment", listed[0]["content_hash"][:12]):
        assert text in table


def test_machines_load_with_invalid_files_reports_every_error_and_stores_nothing(
    cli: CLI, tmp_path: Path
) -> None:
    bad_expr = write(tmp_path, "bad_expr.yaml", BAD_EXPRESSION)
    bad_states = write(tmp_path, "bad_states.yaml", BAD_STATES)
    bad_yaml = write(tmp_path, "bad_yaml.yaml", "id: [\n")
    missing = str(tmp_path / "missing.yaml")
    r = cli("machines", "load", ORDER, bad_expr, bad_states, bad_yaml, missing, SHIPMENT)
    assert r.code == 1
    assert r.out == ""
    assert "Traceback" not in r.err
    assert r.err.startswith("error: ")
    for path, problem in (
        (bad_expr, "context.x: expression does not parse"),
        (bad_states, "start_at: unknown state 'nowhere'"),
        (bad_states, "states.a.actions.go.state: unknown target state 'missing'"),
        (f"{bad_yaml}:2:1", "not valid YAML"),
        (missing, "No such file or directory"),
    ):
        assert f"{path}: " in r.err
        assert problem in r.err
    assert ORDER not in r.err and SHIPMENT not in r.err
    assert r.err_lines[-1] == "nothing stored (4 of 6 files invalid)"
    assert cli.data("machines", "list") == []


def test_machines_load_missing_file(cli: CLI, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    r = cli("machines", "load", missing)
    assert r.code == 1
    assert r.out == ""
    assert "Traceback" not in r.err
    assert r.err_lines == [f"error: {missing}: cannot read: No such file or directory; nothing stored"]
    assert cli.data("machines", "list") == []


def test_machines_load_version_conflict_stores_nothing(cli: CLI, tmp_path: Path) -> None:
    cli.ok("machines", "load", ORDER)
    shipment_v2 = write(
        tmp_path,
        "shipment_v2.yaml",
        (MACHINES / "shipment.yaml").read_text().replace("version: 1", "version: 2"),
    )
    order_changed = write(
        tmp_path,
        "order_changed.yaml",
        (MACHINES / "order.yaml").read_text().replace("An order from cart", "A changed order from cart"),
    )
    r = cli("machines", "load", shipment_v2, order_changed)
    assert r.code == 1
    assert "already saved with different content" in r.err
    assert [(m["id"], m["version"]) for m in cli.data("machines", "list")] == [("order", 1)]
    assert order_changed in r.err


def test_machines_show(cli: CLI, tmp_path: Path) -> None:
    cli.ok("machines", "load", ORDER, SHIPMENT)
    text = cli.ok("machines", "show", "order").out
    assert text.startswith("id: order\nversion: 1\n")
    assert "start_at: create" in text
    assert "fraud-approve:" in text
    data = cli.ok("machines", "show", "order", "--json").json()
    assert (data["id"], data["version"], data["start_at"]) == ("order", 1, "create")
    assert set(data["states"]) == {"create", "cart", "submitted", "released", "shipped", "canceled"}
    assert cli.data("machines", "show", "order") == data
    v2 = (MACHINES / "shipment.yaml").read_text().replace("version: 1", "version: 2")
    cli.ok("machines", "load", write(tmp_path, "shipment_v2.yaml", v2))
    assert cli.data("machines", "show", "shipment")["version"] == 2
    assert cli.data("machines", "show", "shipment", "--version", "1")["version"] == 1
    assert "version: 1" in cli.ok("machines", "show", "shipment", "--version", "1").out


def test_machines_show_unknown(loaded: CLI) -> None:
    assert_one_line_error(loaded("machines", "show", "nope"), "MachineNotFound", "no machine 'nope' is saved")
    assert_one_line_error(
        loaded("machines", "show", "order", "--version", "9"), "machine 'order' has no version 9"
    )


# --------------------------------------------------------------------------- start, trigger, show


def test_start_with_input_file_and_id(loaded: CLI, tmp_path: Path) -> None:
    table = loaded.ok("start", "order", "--input", '{"n": 7}').out
    for text in ("execution", "order v1", "cart", "waiting", '"R7"'):
        assert text in table
    payload = write(tmp_path, "input.json", '{"n": 42}')
    ex = loaded.ok("start", "order", "--input", f"@{payload}", "--id", "order-42", "--json").json()
    assert set(ex) == EXECUTION_FIELDS
    assert (ex["id"], ex["machine_id"], ex["machine_version"]) == ("order-42", "order", 1)
    assert (ex["state"], ex["status"], ex["input"]) == ("cart", "waiting", {"n": 42})
    assert ex["context"] == {"order": {"id": "R42", "line_items": []}}
    # the same --id again is idempotent: the existing execution, not a new one
    again = loaded.data("start", "order", "--id", "order-42", "--input", '{"n": 1}')
    assert again == ex
    assert loaded.data("start", "order", "--version", "1")["context"]["order"]["id"] == "R1000"
    assert len(loaded.data("list")) == 3


def test_trigger_with_input_and_idempotency_key(loaded: CLI, tmp_path: Path) -> None:
    loaded.ok("start", "order", "--id", "o1")
    ex = loaded.data("trigger", "o1", "add", "--input", '{"sku": "tea", "qty": 2}', "--key", "k1")
    assert ex["context"]["order"]["line_items"] == ["tea", "tea"]
    repeat = loaded.ok("trigger", "o1", "add", "--input", '{"sku": "tea", "qty": 2}', "--key", "k1", "--json")
    assert repeat.json()["context"]["order"]["line_items"] == ["tea", "tea"]
    kettle = write(tmp_path, "kettle.json", '{"sku": "kettle"}')
    ex = loaded.data("trigger", "o1", "add", "--input", f"@{kettle}")
    assert ex["context"]["order"]["line_items"] == ["tea", "tea", "kettle"]
    table = loaded.ok("trigger", "o1", "place").out
    assert "submitted" in table and "waiting" in table
    assert [s["name"] for s in loaded.data("history", "o1")] == [None, "created", "add", "add", "place"]


def test_show(loaded: CLI) -> None:
    loaded.ok("start", "order", "--id", "o1", "--input", '{"n": 5}')
    ex = loaded.data("show", "o1")
    assert set(ex) == EXECUTION_FIELDS | SHOW_FIELDS
    assert (ex["id"], ex["state"], ex["status"], ex["output"], ex["error"]) == (
        "o1",
        "cart",
        "waiting",
        None,
        None,
    )
    assert loaded.ok("show", "o1", "--json").json() == ex
    table = loaded.ok("show", "o1").out
    for label, value in (
        ("execution", "o1"),
        ("machine", "order v1"),
        ("state", "cart"),
        ("status", "waiting"),
    ):
        assert any(line.split() == [label, *value.split()] for line in table.splitlines()), (label, table)
    assert '{"order": {"id": "R5", "line_items": []}}' in table


def test_history_table_shows_kinds_and_context_changes(loaded: CLI, tmp_path: Path) -> None:
    loaded.ok("machines", "load", write(tmp_path, "tally.yaml", TALLY))
    loaded.ok("start", "order", "--id", "o1", "--input", '{"n": 9}')
    loaded.ok("trigger", "o1", "add", "--input", '{"sku": "tea"}')
    table = loaded.ok("history", "o1").out
    assert "execution o1" in table
    for header in ("#", "kind", "name", "from → to", "context changes", "note"):
        assert header in table
    rows = [line for line in table.splitlines() if line.startswith("│ ") and line[2].isdigit()]
    assert [row.split("│")[4].strip() for row in rows] == ["start", "always", "action"]
    assert '+order = {"id": "R9", "line_items": []}' in rows[0]
    assert "create → cart" in rows[1]
    assert '~order = {"id": "R9", "line_items": ["tea"]}' in rows[2]

    loaded.ok("start", "tally", "--id", "t1")
    loaded.ok("trigger", "t1", "bump")
    loaded.ok("trigger", "t1", "bump")
    loaded.ok("trigger", "t1", "close")
    table = loaded.ok("history", "t1").out
    assert "+attempts = 0" in table
    assert "~attempts = 1" in table and "~attempts = 2" in table
    assert "open → closed" in table

    steps = loaded.data("history", "t1")
    assert [s["seq"] for s in steps] == [1, 2, 3, 4]
    assert [s["kind"] for s in steps] == ["start", "action", "action", "action"]
    assert [s["context"]["attempts"] for s in steps] == [0, 1, 2, 2]
    for s in steps:
        assert set(s) == STEP_FIELDS
        dt.datetime.fromisoformat(s["at"])
    assert loaded.ok("history", "t1", "--json").json() == steps


def test_history_of_an_http_effect_shows_invoke_result_and_timer(db_url: str, cli: CLI) -> None:
    with http_server(lambda *_: (503, {"error": "busy"})) as (base, calls):
        engine = Engine(db_url, env={"shipping_url": f"{base}/pickups"})
        try:
            engine.save_service(MACHINES / "services" / "shipping.yaml")
            engine.save_machine(MACHINES / "shipment.yaml")
            engine.start("shipment", {"order": "R1"}, execution_id="s1")
            run_until_idle(engine)
        finally:
            engine.close()
    assert len(calls) == 1
    table = cli.ok("history", "s1").out
    for text in (
        "invoke",
        "book-pickup",
        "shipping.create-shipment",
        "result",
        "refused",
        "outstanding → failed",
        "~attempts = 1",
        "+last_error = 503",
        "HTTP 503",
        "wait",
        "retry-later",
        "timer due",
    ):
        assert text in table, text
    assert [s["kind"] for s in cli.data("history", "s1")] == ["start", "invoke", "result", "wait"]
    assert cli.data("show", "s1")["state"] == "failed"


# --------------------------------------------------------------------------- list, cancel, stats


def test_list_filters_and_pages(loaded: CLI, tmp_path: Path) -> None:
    loaded.ok("machines", "load", write(tmp_path, "tally.yaml", TALLY))
    loaded.ok("start", "order", "--id", "o1")
    loaded.ok("start", "order", "--id", "o2")
    loaded.ok("trigger", "o2", "add", "--input", '{"sku": "tea"}')
    loaded.ok("trigger", "o2", "place")
    loaded.ok("start", "order", "--id", "o3")
    loaded.ok("cancel", "o3")
    loaded.ok("start", "tally", "--id", "t1")

    def ids(*args: str) -> list[str]:
        rows = loaded.data("list", *args)
        for row in rows:
            assert set(row) == EXECUTION_FIELDS
        return [row["id"] for row in rows]

    assert ids() == ["t1", "o3", "o2", "o1"]  # newest first
    assert ids("--machine", "order") == ["o3", "o2", "o1"]
    assert ids("--machine", "tally") == ["t1"]
    assert ids("--machine", "nope") == []
    assert ids("--status", "waiting") == ["t1", "o2", "o1"]
    assert ids("--status", "canceled") == ["o3"]
    assert ids("--machine", "order", "--status", "waiting") == ["o2", "o1"]
    assert ids("--state", "submitted") == ["o2"]
    assert ids("--state", "cart", "--status", "waiting") == ["o1"]
    assert ids("--older-than", "1h") == []
    assert ids("--older-than", "7d") == []
    assert ids("--older-than", "0s") == ["t1", "o3", "o2", "o1"]
    assert ids("--limit", "3") == ["t1", "o3", "o2"]
    assert ids("--limit", "3", "--page", "2") == ["o1"]
    assert ids("--limit", "2", "--page", "1") == ["t1", "o3"]
    assert ids("--limit", "2", "--page", "2") == ["o2", "o1"]
    assert ids("--limit", "2", "--page", "3") == []
    assert loaded.ok("list", "--limit", "2", "--page", "2", "--json").json() == loaded.data(
        "list", "--limit", "2", "--page", "2"
    )

    table = loaded.ok("list", "--machine", "order", "--limit", "2", "--page", "2").out
    assert "page 2" in table
    assert "o1" in table and "order v1" in table and "cart" in table and "waiting" in table
    assert "o3" not in table and "t1" not in table
    table = loaded.ok("list", "--status", "canceled").out
    assert "canceled from the command line" in table


def test_cancel(loaded: CLI) -> None:
    loaded.ok("start", "order", "--id", "o1")
    table = loaded.ok("cancel", "o1", "--reason", "changed my mind").out
    assert "canceled" in table and "changed my mind" in table
    ex = loaded.data("show", "o1")
    assert (ex["status"], ex["error"]) == ("canceled", "changed my mind")
    # canceling a final execution is a no-op
    assert loaded.data("cancel", "o1")["error"] == "changed my mind"
    assert_one_line_error(
        loaded("trigger", "o1", "add", "--input", '{"sku": "x"}'),
        "ActionNotAllowed",
        "the execution is canceled",
    )
    loaded.ok("start", "order", "--id", "o2")
    assert loaded.ok("cancel", "o2", "--json").json()["error"] == "canceled from the command line"


def test_stats(loaded: CLI) -> None:
    assert loaded.data("stats")["database"]["executions"] == {}
    loaded.ok("start", "order", "--id", "o1")
    loaded.ok("start", "order", "--id", "o2")
    loaded.ok("cancel", "o2")
    data = loaded.data("stats")
    assert set(data) == {"database", "process"}
    db = data["database"]
    assert db["executions"] == {"waiting": 1, "canceled": 1}
    assert db["steps"] == len(loaded.data("history", "o1")) + len(loaded.data("history", "o2"))
    assert db["overdue_tasks"] == 0
    assert db["oldest_overdue_seconds"] is None
    assert loaded.ok("stats", "--json").json()["database"] == db
    table = loaded.ok("stats").out
    assert "statem stats" in table
    for label, value in (
        ("executions canceled", "1"),
        ("executions waiting", "1"),
        ("overdue tasks", "0"),
        ("oldest overdue", "-"),
        ("history steps", str(db["steps"])),
    ):
        assert any(label in line and f" {value} " in line for line in table.splitlines()), label


@pytest.mark.parametrize(
    "command",
    [
        ["machines", "list"],
        ["machines", "show", "order"],
        ["show", "o1"],
        ["history", "o1"],
        ["list", "--machine", "order"],
        ["cancel", "o1"],
    ],
    ids=" ".join,
)
def test_json_before_and_after_the_subcommand_agree(loaded: CLI, command: list[str]) -> None:
    loaded.ok("start", "order", "--id", "o1")
    before = loaded.ok("--json", *command).json()
    after = loaded.ok(*command, "--json").json()
    assert before == after
    assert before  # not empty


# --------------------------------------------------------------------------- rejected input


@pytest.mark.parametrize(
    "args",
    [["show", "nope"], ["history", "nope"], ["cancel", "nope"], ["trigger", "nope", "add"]],
    ids=" ".join,
)
def test_unknown_execution(loaded: CLI, args: list[str]) -> None:
    assert_one_line_error(loaded(*args), "error: ExecutionNotFound: no execution 'nope'")


def test_unknown_machine(cli: CLI) -> None:
    assert_one_line_error(cli("start", "nope"), "MachineNotFound", "no machine 'nope' is saved")
    cli.ok("machines", "load", ORDER)
    assert_one_line_error(cli("start", "order", "--version", "3"), "machine 'order' has no version 3")
    assert cli.data("list") == []


def test_action_not_allowed_changes_nothing(loaded: CLI) -> None:
    loaded.ok("start", "order", "--id", "o1")
    before = loaded.data("history", "o1")
    assert_one_line_error(
        loaded("trigger", "o1", "fraud-approve"),
        "ActionNotAllowed",
        "action 'fraud-approve' not allowed",
        "in state 'cart'",
        "the state has no such action",
        "'add', 'place', 'cancel'",
    )
    assert_one_line_error(loaded("trigger", "o1", "place"), "ActionNotAllowed", "its guard is false")
    assert loaded.data("history", "o1") == before
    assert loaded.data("show", "o1")["state"] == "cart"


@pytest.mark.parametrize(
    "args",
    [
        ["start", "order", "--input", "{bad"],
        ["start", "order", "--input", "@{missing}"],
        ["trigger", "o1", "add", "--input", "not json"],
        ["trigger", "o1", "add", "--input", "@{missing}"],
    ],
    ids=" ".join,
)
def test_invalid_input_is_rejected_and_applies_nothing(loaded: CLI, tmp_path: Path, args: list[str]) -> None:
    loaded.ok("start", "order", "--id", "o1")
    args = [a.replace("{missing}", str(tmp_path / "missing.json")) for a in args]
    r = loaded(*args)
    assert r.code != 0
    assert r.out == ""
    assert "Traceback" not in r.err
    assert "--input" in r.err
    assert [e["id"] for e in loaded.data("list")] == ["o1"]
    assert len(loaded.data("history", "o1")) == 2


def test_input_that_the_machine_rejects(loaded: CLI) -> None:
    assert_one_line_error(loaded("start", "order", "--input", "[1, 2]"), "ExpressionError", "context.order")
    assert loaded.data("list") == []


@pytest.mark.parametrize(
    "args",
    [
        ["start", "order", "--input", "{bad"],
        ["start", "order", "--input", "@/nonexistent/input.json"],
        ["--app", "no_such_module_xyz:engine", "list"],
        ["list", "--older-than", "soon"],
    ],
    ids=" ".join,
)
def test_rejected_values_are_one_line(sqlite_cli: CLI, args: list[str]) -> None:
    r = sqlite_cli(*args)
    assert r.code != 0
    assert "Traceback" not in r.err
    assert len(r.err_lines) == 1, r.err


def test_input_file_that_cannot_be_read_says_so(sqlite_cli: CLI, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    r = sqlite_cli("start", "order", "--input", f"@{missing}")
    assert r.code != 0
    assert str(missing) in r.err
    assert "not valid JSON" not in r.err


def test_bad_older_than_names_the_option(sqlite_cli: CLI) -> None:
    r = sqlite_cli("list", "--older-than", "soon")
    assert r.code == 2
    assert "'soon'" in r.err
    assert "--older-than" in r.err


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (UNREACHABLE_PG, "Connection refused"),
        ("bogus://x", "bogus"),
        ("notaurl", "URL"),
        ("sqlite:////nonexistent/dir/x.db", "unable to open database file"),
    ],
)
def test_bad_database_url_is_one_line(bare: CLI, url: str, fragment: str) -> None:
    assert_one_line_error(bare.raw("--db", url, "list"), fragment)


@pytest.mark.parametrize("url", ["bogus://x", "notaurl"])
def test_bad_database_url_names_the_url(bare: CLI, url: str) -> None:
    r = bare.raw("--db", url, "list")
    assert r.code == 1
    assert url in r.err
    assert "--debug" not in r.err


@pytest.mark.parametrize("url", [UNREACHABLE_PG, "sqlite:////nonexistent/dir/x.db"])
def test_db_upgrade_on_an_unreachable_database_is_one_line(bare: CLI, url: str) -> None:
    r = bare.raw("--db", url, "db", "upgrade")
    assert_one_line_error(r, "StoreError")
    assert "sqlalche.me" not in r.err


UNINITIALISED_COMMANDS = [
    ["list"],
    ["machines", "list"],
    ["machines", "load", ORDER],
    ["show", "x"],
    ["stats"],
]


@pytest.fixture
def empty_sqlite(bare: CLI, tmp_path: Path) -> CLI:
    """The CLI on a SQLite file that exists but has no tables (never migrated)."""
    path = tmp_path / "empty.db"
    path.touch()
    return bare.bind(f"sqlite:///{path}")


@pytest.mark.parametrize("command", UNINITIALISED_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_uninitialised_database_is_one_line(empty_sqlite: CLI, command: list[str]) -> None:
    assert_one_line_error(empty_sqlite(*command), "no such table")


@pytest.mark.parametrize("command", UNINITIALISED_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_uninitialised_database_says_to_run_db_upgrade(empty_sqlite: CLI, command: list[str]) -> None:
    r = empty_sqlite(*command)
    assert r.code == 1
    assert "statem db upgrade" in r.err


# --------------------------------------------------------------------------- --app and --debug


def test_app_loads_the_application_engine(
    sqlite_cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATEM_DATABASE_URL", sqlite_cli.url or "")
    monkeypatch.setenv("FX_CALLS", str(tmp_path / "calls.txt"))
    app = CLI(sqlite_cli.capsys)
    r = app.raw("--app", "tests.apps.fxapp:make", "machines", "load", ORDER)
    assert (r.code, r.out) == (0, "saved order v1\n"), r.err
    monkeypatch.setenv("STATEM_APP", "tests.apps.fxapp:make")
    r = app.raw("--json", "machines", "list")
    assert r.code == 0, r.err
    assert [m["id"] for m in r.json()] == ["order"]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    r = app.raw("--db", other, "machines", "list")
    assert r.code == 2
    assert "drop --db or make them agree" in r.err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:engine", "cannot import 'no_such_module_xyz'"),
        ("tests.apps.fxapp:nothing", "has no attribute 'nothing'"),
        ("tests.apps.fxapp:Path", "is not an Engine or a function returning one"),
    ],
)
def test_app_that_cannot_be_loaded(sqlite_cli: CLI, spec: str, message: str) -> None:
    r = sqlite_cli.raw("--app", spec, "list")
    assert r.code == 2
    assert r.out == ""
    assert "Traceback" not in r.err
    assert f"--app {spec}" in r.err
    assert message in r.err


def test_debug_lets_the_exception_through(sqlite_cli: CLI) -> None:
    with pytest.raises(ExecutionNotFound):
        sqlite_cli("--debug", "show", "nope")
    with pytest.raises(StoreError, match="invalid database URL 'bogus://x'"):
        sqlite_cli.raw("--debug", "--db", "bogus://x", "list")


# --------------------------------------------------------------------------- graph


@NEEDS_GRAPH
def test_graph_mermaid_and_dot(loaded: CLI) -> None:
    states = ("create", "cart", "submitted", "released", "shipped", "canceled")
    mermaid = loaded.ok("graph", "order").out
    assert mermaid.strip()
    assert loaded.ok("graph", "order", "--format", "mermaid").out == mermaid
    dot = loaded.ok("graph", "order", "--format", "dot").out
    assert "digraph" in dot
    for state in states:
        assert state in mermaid and state in dot
    assert "fraud-approve" in mermaid and "fraud-approve" in dot
    loaded.ok("start", "order", "--id", "o1")
    assert "cart" in loaded.ok("graph", "--execution", "o1").out
    assert "outstanding" in loaded.ok("graph", "shipment", "--version", "1").out


@NEEDS_GRAPH
def test_graph_errors(loaded: CLI) -> None:
    assert_one_line_error(loaded("graph", "nope"), "no machine 'nope' is saved")
    assert_one_line_error(loaded("graph", "--execution", "nope"), "no execution 'nope'")
    r = loaded("graph")
    assert r.code == 2
    assert "give a MACHINE_ID or --execution" in r.err


# --------------------------------------------------------------------------- real processes


def test_process_exit_codes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    ok = statem_process("--db", db, "db", "upgrade", tmp_path=tmp_path)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{db}: schema is at the latest revision\n", "")
    missing = statem_process("--db", db, "show", "nope", tmp_path=tmp_path)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr == "error: ExecutionNotFound: no execution 'nope'\n"
    usage = statem_process("--db", db, "list", "--bogus", tmp_path=tmp_path)
    assert usage.returncode == 2
    assert "No such option '--bogus'" in usage.stderr
    unreachable = statem_process("--db", UNREACHABLE_PG, "list", tmp_path=tmp_path)
    assert unreachable.returncode == 1
    assert len(unreachable.stderr.strip().splitlines()) == 1
    assert unreachable.stderr.startswith("error: StoreError: ")


def test_process_takes_the_database_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "env.db"
    env = {"STATEM_DATABASE_URL": f"sqlite:///{db}"}
    assert statem_process("db", "upgrade", tmp_path=tmp_path, env=env).returncode == 0
    r = statem_process("--json", "machines", "load", ORDER, tmp_path=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"id": "order", "version": 1}]
    assert not (tmp_path / "statem.db").exists()
    e = Engine(f"sqlite:///{db}")
    try:
        assert [m.id for m in e.machines()] == ["order"]
    finally:
        e.close()


def test_process_debug_prints_the_traceback(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    assert statem_process("--db", db, "db", "upgrade", tmp_path=tmp_path).returncode == 0
    r = statem_process("--db", db, "--debug", "show", "nope", tmp_path=tmp_path)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr
    assert "statem.errors.ExecutionNotFound: no execution 'nope'" in r.stderr


# --------------------------------------------------------------------------- packaging


def test_pyproject_declares_the_console_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"] == {"statem": "statem.cli:main"}


def installed_distribution() -> importlib.metadata.Distribution:
    """statem's installed distribution; fails the test, saying what to do, when it is missing."""
    try:
        dist: importlib.metadata.Distribution | None = importlib.metadata.distribution("statem")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is None:
        pytest.fail(
            "the statem package is not installed in this environment (no distribution metadata), "
            "so there is no `statem` console script: run `make install`",
            pytrace=False,
        )
    return dist


def test_console_script_entry_point(bare: CLI) -> None:
    dist = installed_distribution()
    scripts = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
    assert [(ep.name, ep.value) for ep in scripts] == [("statem", "statem.cli:main")]
    assert scripts[0].load() is main
    r = bare.raw("--version")
    assert r.code == 0
    assert r.out.strip() == f"statem, version {dist.version}"


# --------------------------------------------------------------------------- stored text is printed verbatim

#: Stored text that rich would take as markup (a closing tag with nothing open, a terminal
#: hyperlink, a style), an emoji code, and a terminal escape sequence.
MARKUP = "[/] [link=https://evil.example]pay here[/link] [bold red]x :smile: \x1b[2J"

ECHO = """\
id: echo
version: 1
start_at: open
context:
  note: "input['note']"
states:
  open:
    actions:
      note: {context: {note: "input['note']"}}
"""


def test_stored_markup_prints_verbatim_in_every_view(loaded: CLI, tmp_path: Path) -> None:
    loaded.ok("machines", "load", write(tmp_path, "echo.yaml", ECHO))
    note = json.dumps({"note": MARKUP})
    # start exits 0 once it has committed, and prints the value as it is stored
    started = loaded.ok("start", "echo", "--id", "e1", "--input", note)
    assert json.dumps(MARKUP)[1:-1] in started.out  # the context is JSON: "\u001b[2J"
    assert loaded.ok("trigger", "e1", "note", "--input", note).code == 0
    loaded.ok("cancel", "e1", "--reason", MARKUP)
    shown = loaded.ok("show", "e1").out
    history = loaded.ok("history", "e1").out
    listed = loaded.ok("list").out
    for out in (started.out, shown, history):
        assert "[/]" in out and "[link=https://evil.example]" in out and ":smile:" in out, out
    for out in (started.out, shown, history, listed):
        assert "\x1b" not in out  # no escape sequence reaches the terminal
        assert "😄" not in out
    # the cancel reason is plain text (not JSON): its ESC is shown escaped
    assert "[/] [link=https://evil.example]pay here[/link] [bold red]x :smile: \\x1b[2J" in shown
    assert "[/] [link=https://evil.example]pay here[/link] [bold red]x" in listed  # the error, cut at 60
    assert loaded.data("show", "e1")["error"] == MARKUP
    assert loaded.data("show", "e1")["context"] == {"note": MARKUP}
    assert [s["input"] for s in loaded.data("history", "e1")][:2] == [{"note": MARKUP}, {"note": MARKUP}]
    assert len(loaded.data("list")) == 1  # one execution: nothing started twice


def test_console_interprets_no_markup(sqlite_cli: CLI) -> None:
    from statem.cli.base import console

    out = console()
    with out.capture() as captured:
        out.print("[/] [link=x]y[/link] :smile:")
    assert captured.get().strip() == "[/] [link=x]y[/link] :smile:"


# --------------------------------------------------------------------------- numeric options


# The worker's options are checked by parsing alone (click's make_context, no callback):
# run in-process before the fix, `worker --poll -1` started a worker that spun at 100% CPU
# and grew without bound, so no in-process test may get that far.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--poll", "-1"], "Invalid value for '--poll': -1.0 is not in the range 0.0<x<=3600.0"),
        (["--poll", "0"], "Invalid value for '--poll': 0.0 is not in the range"),
        (["--poll", "nan"], "Invalid value for '--poll': nan is not a finite number of seconds"),
        (["--poll", "soon"], "Invalid value for '--poll': 'soon' is not a number of seconds"),
        (["--lease", "0"], "Invalid value for '--lease': 0.0 is not in the range 0.0<x<=86400.0"),
        (["--lease", "-5"], "Invalid value for '--lease': -5.0 is not in the range"),
        (["--lease", "inf"], "Invalid value for '--lease': inf is not in the range"),
        (["--concurrency", "0"], "Invalid value for '--concurrency': 0 is not in the range"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_worker_numeric_options_are_refused_before_it_starts(args: list[str], message: str) -> None:
    import click

    from statem.cli.commands import worker

    with pytest.raises(click.BadParameter) as caught:
        worker.make_context("worker", list(args))
    assert caught.value.exit_code == 2
    assert message in caught.value.format_message()


def test_worker_poll_minus_one_exits_2_as_a_process(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "statem.cli",
            "--db",
            f"sqlite:///{tmp_path / 'w.db'}",
            "worker",
            "--poll",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("STATEM_")}, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert "Invalid value for '--poll': -1.0 is not in the range 0.0<x<=3600.0" in r.stderr
    assert not (tmp_path / "w.db").exists()  # refused before anything ran


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["start", "order", "--version", "0"], "Invalid value for '--version': 0 is not in the range"),
        (["machines", "show", "order", "--version", "-1"], "-1 is not in the range"),
        (["graph", "order", "--version", "99999999999"], "99999999999 is not in the range"),
        (["list", "--page", "99999999999"], "99999999999 is not in the range"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_numeric_options_out_of_range_exit_2(sqlite_cli: CLI, args: list[str], message: str) -> None:
    r = sqlite_cli(*args)
    assert r.code == 2, r.err
    assert r.out == ""
    assert message in r.err, r.err
    assert "Traceback" not in r.err


# --------------------------------------------------------------------------- history dates and gaps


def test_history_shows_dates_past_a_day_and_the_time_between_steps(
    cli: CLI, db_url: str, tmp_path: Path
) -> None:
    clock = FakeClock(dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC))
    engine = Engine(db_url, clock=clock)
    try:
        engine.save_machine(write(tmp_path, "tally.yaml", TALLY))
        engine.start("tally", execution_id="weeks")
        clock.advance(1.5)
        engine.trigger("weeks", "bump")
        clock.advance(days=17, hours=2)
        engine.trigger("weeks", "close")
        engine.start("tally", execution_id="morning")
        clock.advance(minutes=5, seconds=7)
        engine.trigger("morning", "bump")
    finally:
        engine.close()

    def rows(table: str) -> list[list[str]]:
        lines = [line for line in table.splitlines() if line.startswith("│ ") and line[2].isdigit()]
        return [[cell.strip() for cell in line.split("│")[1:4]] for line in lines]

    weeks = cli.ok("history", "weeks").out
    assert "at (UTC)" in weeks and "+Δ" in weeks
    assert rows(weeks) == [
        ["1", "2026-03-01 09:00:00.000", ""],
        ["2", "2026-03-01 09:00:01.500", "+1.500s"],
        ["3", "2026-03-18 11:00:01.500", "+17d02h"],
    ]
    morning = cli.ok("history", "morning").out
    assert "time (UTC)" in morning and "2026-03-18" not in morning
    assert rows(morning) == [["1", "11:00:01.500", ""], ["2", "11:05:08.500", "+5m07s"]]


def test_delta_formats() -> None:
    from statem.cli.render import delta

    assert [delta(s) for s in (0, 0.004, 9.9994, 12.34, 60, 187, 3600, 7500, 86400, 273600)] == [
        "0.000s",
        "0.004s",
        "9.999s",
        "12.3s",
        "1m00s",
        "3m07s",
        "1h00m",
        "2h05m",
        "1d00h",
        "3d04h",
    ]


# --------------------------------------------------------------------------- failed executions exit 3


#: A sync machine that POSTs to ``ctx['url']`` (no error branch) on start, or on ``go``.
BOOK = """\
id: book
version: 1
start_at: idle
execution_mode: sync
context:
  url: "input.get('url', '')"
states:
  idle:
    always:
      - {state: calling, when: "ctx['url'] != ''"}
    actions:
      go: {state: calling, context: {url: "input['url']"}}
  calling:
    always:
      - name: book
        invoke:
          effect: http.request.json
          input: "{'url': ctx['url'], 'method': 'POST'}"
          success: {state: done}
  done: {end: true}
"""


def test_start_and_trigger_exit_3_and_say_why_when_the_execution_fails(cli: CLI, tmp_path: Path) -> None:
    cli.ok("machines", "load", write(tmp_path, "book.yaml", BOOK))
    refused = json.dumps({"url": "http://127.0.0.1:1/book"})  # nothing listens on port 1

    r = cli("start", "book", "--id", "b1", "--input", refused)
    assert r.code == 3, r.err
    assert "failed" in r.out and "b1" in r.out  # the execution, as stored, on stdout
    assert len(r.err_lines) == 1, r.err
    assert r.err_lines[0].startswith("error: execution b1 failed in state 'calling': ")
    stored = cli.data("show", "b1")
    assert stored["status"] == "failed"
    assert stored["error"] in r.err_lines[0]

    cli.ok("start", "book", "--id", "b2")
    r = cli("--json", "trigger", "b2", "go", "--input", refused)
    assert r.code == 3, r.err
    assert r.json()["status"] == "failed"
    assert r.err_lines == [f"error: execution b2 failed in state 'calling': {r.json()['error']}"]
    assert cli("start", "book", "--id", "b1").code == 3  # a replay reports the same
    # success still exits 0
    cli.ok("machines", "load", ORDER)
    assert cli.ok("start", "order").code == 0


def test_unknown_effect_hint_names_what_is_needed() -> None:
    from statem.effects import EffectRegistry, UnknownEffect

    with pytest.raises(UnknownEffect) as caught:
        EffectRegistry().get("charge")
    message = str(caught.value)
    assert "run the worker with --app" not in message
    assert "no effect 'charge' is registered in this process" in message
    assert "a worker, or the caller of start/trigger for a sync machine" in message
    assert "statem --app MODULE:ATTR" in message


# --------------------------------------------------------------------------- YAML errors in machines load


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        (
            "flow.yaml",
            "id: x\nstates:\n  a: {b: 1\n  c: 2\n",
            "{path}:4:4: not valid YAML: expected ',' or '}}', but got ':' "
            "(while parsing a flow mapping that starts at 3:6); nothing stored",
        ),
        (
            "tab.yaml",
            "id: x\n\tstates: {}\n",
            "{path}:2:1: not valid YAML: found character '\\t' that cannot start any token "
            "(while scanning for the next token); nothing stored",
        ),
        (
            "bad.json",
            '{"id": "x",\n "states": }',
            "{path}:2:12: not valid JSON: Expecting value; nothing stored",
        ),
    ],
)
def test_yaml_syntax_error_is_one_line_with_file_line_and_column(
    sqlite_cli: CLI, tmp_path: Path, name: str, text: str, line: str
) -> None:
    path = write(tmp_path, name, text)
    r = sqlite_cli("machines", "load", path)
    assert r.code == 1
    assert r.out == ""
    assert r.err_lines == ["error: " + line.format(path=path)]
    assert r.err.count(path) == 1


def test_yaml_syntax_errors_among_several_files(sqlite_cli: CLI, tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "id: [\n")
    r = sqlite_cli("machines", "load", ORDER, bad)
    assert r.code == 1
    assert len(r.err_lines) == 2, r.err
    assert r.err_lines[0].startswith(f"error: {bad}:2:1: not valid YAML: expected the node content")
    assert r.err_lines[1] == "nothing stored (1 of 2 files invalid)"
    assert sqlite_cli.data("machines", "list") == []


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "use a number >= 0 with s, m, h or d"),
        ("-5m", "use a number >= 0 with s, m, h or d"),
        ("nanm", "use a number >= 0 with s, m, h or d"),
        ("infd", "use a number >= 0 with s, m, h or d"),
        ("1e20d", "too long (at most 36500d)"),
        ("999999999d", "too long (at most 36500d)"),
        ("5", "use a number >= 0 with s, m, h or d"),
    ],
)
def test_older_than_refuses_what_is_not_a_duration(sqlite_cli: CLI, value: str, fragment: str) -> None:
    r = sqlite_cli("list", "--older-than", value)
    assert_one_line_error(r, f"--older-than {value!r}: {fragment}", code=2)


def test_older_than_takes_its_largest_value(sqlite_cli: CLI) -> None:
    assert sqlite_cli.data("list", "--older-than", "36500d") == []
    assert sqlite_cli.data("list", "--older-than", " 2.5h ") == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("os:path", "'path' is not an Engine or a function returning one (it is a module)"),
        ("os:getcwd", "'getcwd' is not an Engine or a function returning one (it returned a str)"),
        ("os:sep", "'sep' is not an Engine or a function returning one (it is a str)"),
        ("os.path:join", "'join' is not an Engine or a function returning one (it takes arguments"),
        (
            "tests.apps.fxapp:Path",
            "'Path' is not an Engine or a function returning one (it is the class Path)",
        ),
        (":engine", "give MODULE:ATTR"),
    ],
)
def test_app_that_is_not_an_engine_is_one_line(sqlite_cli: CLI, spec: str, message: str) -> None:
    assert_one_line_error(sqlite_cli.raw("--app", spec, "list"), f"--app {spec}", message, code=2)


def test_app_module_that_fails_to_import_is_one_line(
    sqlite_cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "broken_app_cli.py", "raise RuntimeError('no config')\n")
    monkeypatch.chdir(tmp_path)
    r = sqlite_cli.raw("--app", "broken_app_cli:engine", "list")
    assert_one_line_error(r, "cannot import 'broken_app_cli': RuntimeError: no config", code=2)


def test_app_may_name_an_engine_subclass(
    sqlite_cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        "subclass_app_cli.py",
        "import os\nfrom statem import Engine\n\n"
        "class AppEngine(Engine):\n"
        "    def __init__(self):\n"
        "        super().__init__(os.environ['STATEM_DATABASE_URL'])\n",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STATEM_DATABASE_URL", sqlite_cli.url or "")
    r = sqlite_cli.raw("--app", "subclass_app_cli:AppEngine", "--json", "list")
    assert (r.code, r.out.strip()) == (0, "[]"), r.err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://app:s%40cret@db:5432/orders", "postgresql+psycopg://app:s%40cret@db:5432/orders"),
        ("postgresql://db/orders?sslmode=require", "postgresql+psycopg://db/orders?sslmode=require"),
        ("postgres+psycopg://db/orders", "postgresql+psycopg://db/orders"),
        ("postgresql+psycopg2://db/orders", "postgresql+psycopg2://db/orders"),
        ("sqlite:///statem.db", "sqlite:///statem.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_sqlalchemy_url_maps_postgres_urls_to_psycopg(url: str, expected: str) -> None:
    from statem.dialects import sqlalchemy_url

    assert sqlalchemy_url(url) == expected


def test_postgres_urls_work_for_the_engine_and_the_command(bare: CLI, pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    from .conftest import _truncate

    _truncate(pg_url)
    for scheme in ("postgres", "postgresql"):
        url = make_url(pg_url).set(drivername=scheme).render_as_string(hide_password=False)
        engine = Engine(url)
        try:
            assert engine.db.url.drivername == "postgresql+psycopg"
            engine.migrate()
            engine.save_machine(MACHINES / "order.yaml")
            assert [m.id for m in engine.machines()] == ["order"]
        finally:
            engine.close()
        db = bare.bind(url)
        assert [m["id"] for m in db.data("machines", "list")] == ["order"]
        db.ok("db", "upgrade")


# --------------------------------------------------------------------------- show: pending work, actions


def test_show_lists_pending_work_children_and_allowed_actions(db_url: str, cli: CLI, tmp_path: Path) -> None:
    from .helpers import effect_machine, timer_machine

    engine = Engine(db_url, env={"shipping_url": "http://127.0.0.1:9/unused"})

    @engine.effect("boom")
    def boom(input: Any, *, idempotency_key: str) -> Any:
        raise RuntimeError("kaput [/]")

    try:
        engine.save_machine(timer_machine(hours=3))
        engine.save_machine(effect_machine("boom", retry={"max_attempts": 3, "initial_seconds": 3600}))
        engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
        engine.start("t", execution_id="t1")
        engine.start("fx", execution_id="f1")
        assert engine.run_once() == 1  # the first attempt fails; the next is due in an hour
        engine.start("order", execution_id="o1")
        for action, data in (("add", {"sku": "tea"}), ("place", {}), ("fraud-approve", {})):
            engine.trigger("o1", action, data)
        child_task = engine.pending("o1")[0]
        assert engine.run_once(limit=1) == 1  # starts the shipment child
    finally:
        engine.close()

    timer = cli.data("show", "t1")
    (task,) = timer["pending"]
    assert (task["kind"], task["status"], task["attempts"], task["last_error"]) == (
        "timer",
        "pending",
        0,
        None,
    )
    due = dt.datetime.fromisoformat(task["due_at"]) - dt.datetime.fromisoformat(timer["updated_at"])
    assert dt.timedelta(hours=3) - dt.timedelta(seconds=1) <= due <= dt.timedelta(hours=3, seconds=1)
    assert (timer["children"], timer["allowed_actions"]) == ([], [])
    table = cli.ok("show", "t1").out
    assert "pending" in table and "timer" in table
    assert dt.datetime.fromisoformat(task["due_at"]).strftime("%Y-%m-%d %H:%M:%S") in table
    assert "2h59m" in table or "3h00m" in table
    assert "actions: none" in table

    fx = cli.data("show", "f1")
    (call,) = fx["pending"]
    assert (call["kind"], call["name"], call["effect"], call["attempts"]) == ("effect", "call", "boom", 1)
    assert "kaput [/]" in call["last_error"]
    assert fx["allowed_actions"] == ["skip", "abandon"]
    table = cli.ok("show", "f1").out
    for text in ("effect", "call boom", "kaput [/]", "actions: skip, abandon"):
        assert text in table, text
    assert any(" 1 " in line and "kaput" in line for line in table.splitlines())

    order = cli.data("show", "o1")
    (child,) = cli.data("list", "--parent", "o1")
    assert (child["machine_id"], child["parent_id"]) == ("shipment", "o1")
    assert order["children"] == [
        {
            "id": child["id"],
            "machine_id": "shipment",
            "state": child["state"],
            "status": child["status"],
            "error": None,
        }
    ]
    assert [t["kind"] for t in order["pending"]] == ["child"]
    assert order["pending"][0]["id"] == child_task.id
    assert order["pending"][0]["child_id"] == child["id"]
    table = cli.ok("show", "o1").out
    assert "children" in table and child["id"] in table and "shipment v1" in table
    assert f"ship → {child['id']}" in table
    assert cli.data("list", "--parent", child["id"]) == []
    assert cli.data("list", "--parent", "nope") == []
    assert child["id"] in cli.ok("list", "--parent", "o1").out

    cli.ok("cancel", "t1")
    done = cli.data("show", "t1")
    assert (done["pending"], done["allowed_actions"]) == ([], [])
    assert "no actions: the execution is canceled" in cli.ok("show", "t1").out


# --------------------------------------------------------------------------- demo database


def test_demo_clash_with_the_users_order_stores_nothing(cli: CLI, tmp_path: Path) -> None:
    mine = (MACHINES / "order.yaml").read_text().replace("An order from cart", "My own order")
    cli.ok("machines", "load", write(tmp_path, "order.yaml", mine))
    r = cli("demo")
    assert r.code == 1
    assert len(r.err_lines) == 1, r.err
    assert r.err_lines[0].startswith("error: the demo's machines clash with those saved in ")
    assert "version 1 is already saved with different content" in r.err
    assert "nothing was stored" in r.err and "without --db" in r.err
    assert [(m["id"], m["version"]) for m in cli.data("machines", "list")] == [("order", 1)]
    assert cli.data("list") == []


def test_demo_uses_its_own_database_unless_db_is_given(
    bare: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STATEM_DATABASE_URL", f"sqlite:///{tmp_path / 'mine.db'}")
    r = bare.raw("demo")
    assert r.code == 0, r.err
    assert (tmp_path / "statem-demo.db").exists()
    assert not (tmp_path / "mine.db").exists() and not (tmp_path / "statem.db").exists()
    lines = r.out.strip().splitlines()
    assert lines[-2].startswith("order ") and ": finished in state 'shipped'" in lines[-2]
    order_id = lines[-2].split()[1].rstrip(":")
    assert (
        lines[-1]
        == f"inspect it: statem --db sqlite:///statem-demo.db show {order_id}  (or history, or list --parent)"
    )
    demo_db = bare.bind("sqlite:///statem-demo.db")
    assert demo_db.data("show", order_id)["status"] == "finished"


# --------------------------------------------------------------------------- worker logging


def test_worker_keeps_apscheduler_quiet_even_when_the_app_logs_at_info(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    assert statem_process("--db", db, "db", "upgrade", tmp_path=tmp_path).returncode == 0
    write(
        tmp_path,
        "chatty_app.py",
        "import logging, os\nfrom statem import Engine\n"
        "logging.getLogger().setLevel(logging.INFO)\n"
        "engine = Engine(os.environ['STATEM_DATABASE_URL'])\n",
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("STATEM_") and k != "FORCE_COLOR"}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    base["STATEM_DATABASE_URL"] = db
    proc = subprocess.Popen(
        [sys.executable, "-m", "statem.cli", "--app", "chatty_app:engine", "worker", "--poll", "0.1"],
        cwd=tmp_path,
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # the worker's own INFO line comes once it runs
        assert " started (" in first, first
        time.sleep(1.5)  # 15 polls: APScheduler would log two INFO lines for each
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "apscheduler" not in err and "Running job" not in err, err
    assert "stopped after 0 tasks" in err
