"""statem pause|resume|retry|move|upgrade, and graph --execution across an upgrade (both databases)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from statem import Engine

from .test_cli import CLI, assert_one_line_error
from .test_cli import _clean_env as _clean_env
from .test_cli import cli as cli
from .test_operations import steps_machine


def v2() -> dict[str, Any]:
    """steps v2: state 'c' renamed 'checked'."""
    m = copy.deepcopy(steps_machine())
    m["version"] = 2
    m["states"]["checked"] = m["states"].pop("c")
    m["states"]["b"]["actions"]["next"]["state"] = "checked"
    return m


@pytest.fixture
def engine_on(cli: CLI) -> Engine:
    e = Engine(cli.url or "")
    e.save_machine(steps_machine())
    return e


def test_pause_resume_list_and_move(cli: CLI, engine_on: Engine) -> None:
    engine_on.start("steps", execution_id="e1")
    out = cli.data("pause", "e1", "--reason", "incident 7")
    assert out["status"] == "paused"
    assert [e["id"] for e in cli.data("list", "--status", "paused")] == ["e1"]
    assert cli.data("trigger", "e1", "next")["status"] == "paused"  # kept
    r = cli.ok("resume", "e1", "--reason", "over")
    assert "e1" in r.out
    engine_on.run_once()
    assert engine_on.get("e1").state == "b"
    out = cli.data("move", "e1", "c", "--context", '{"notes": ["by hand"]}', "--reason", "ticket 12")
    assert (out["state"], out["context"]["notes"]) == ("c", ["by hand"])
    history = cli.data("history", "e1")
    assert [h["kind"] for h in history if h["kind"] in ("pause", "resume", "move")] == [
        "pause",
        "resume",
        "move",
    ]
    assert next(h for h in history if h["kind"] == "move")["input"]["reason"] == "ticket 12"
    engine_on.close()


def test_bad_input_is_one_line_and_changes_nothing(cli: CLI, engine_on: Engine) -> None:
    engine_on.start("steps", execution_id="e1")
    before = engine_on.history("e1")
    assert_one_line_error(cli("resume", "e1"), "cannot resume", "it is waiting, not paused")
    assert_one_line_error(cli("retry", "e1"), "it is waiting, not failed")
    assert_one_line_error(cli("move", "e1", "nowhere"), "no state 'nowhere'")
    assert_one_line_error(cli("move", "e1", "b", "--context", "[1]"), "--context must be a JSON object")
    assert_one_line_error(cli("pause", "nope"), "no execution 'nope'")
    assert_one_line_error(cli("upgrade", "steps", "--to", "9"), "no version 9")
    engine_on.save_machine(v2())
    assert_one_line_error(cli("upgrade", "steps", "--to", "2", "--map", "c"), "--map 'c'", "OLD=NEW")
    assert_one_line_error(cli("upgrade", "steps", "--to", "2", "--map", "c=zz"), "no state 'zz'")
    assert_one_line_error(cli("upgrade", "steps", "--to", "2", "--context", "{'a':"), "upgrade.context")
    assert engine_on.history("e1") == before
    engine_on.close()


def test_upgrade_dry_run_then_apply(cli: CLI, engine_on: Engine) -> None:
    for eid in ("e1", "e2"):
        engine_on.start("steps", execution_id=eid)
        engine_on.trigger(eid, "next")
    engine_on.trigger("e2", "next")  # e2 in 'c'
    engine_on.save_machine(v2())
    r = cli.ok("upgrade", "steps", "--to", "2")
    assert "dry run" in r.out and "would_upgrade 1" in r.out and "refused 1" in r.out
    assert "state 'c' is not in version 2" in r.out
    data = cli.data("upgrade", "steps", "--to", "2", "--map", "c=checked")
    assert data["counts"] == {"upgraded": 0, "would_upgrade": 2, "refused": 0, "skipped": 0}
    assert {i["replay"] for i in data["items"]} == {"same"}
    fields = "execution_id from_version from_state to_state outcome reason replay replay_detail"
    assert set(data["items"][0]) == set(fields.split())
    r = cli.ok("upgrade", "steps", "--to", "2", "--map", "c=checked", "--only-if-replays", "--apply",
               "--reason", "rename c")  # fmt: skip
    assert "upgraded 2" in r.out
    e2 = engine_on.get("e2")
    assert (e2.machine_version, e2.state) == (2, "checked")
    # the graph of e2 on version 2 shows its whole path (states renamed), on version 1 the old part
    now = cli.ok("graph", "--execution", "e2").out
    assert "class checked current" in now and "visited" in now
    old = cli.ok("graph", "--execution", "e2", "--version", "1").out
    assert "class a,b,c visited" in old and " current\n" not in old.replace("classDef current", "")
    engine_on.close()
