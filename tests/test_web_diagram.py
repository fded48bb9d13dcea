"""The console's diagram: well-formed SVG for every example machine, escaped names, the
path an execution took highlighted (a real execution on both databases)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from statem import Engine, load_definition
from statem.graph import edges
from statem.web.diagram import layers, render_svg

from .conftest import MACHINES

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    return root


def groups(root: ET.Element, cls: str) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if cls in (g.get("class") or "").split()]


def test_every_example_machine_draws_as_well_formed_svg() -> None:
    for path in sorted(MACHINES.glob("*.yaml")):
        machine = load_definition(path)
        root = parse(render_svg(machine))
        states = {g.get("data-state") for g in groups(root, "sm-node")}
        assert states == set(machine.states), path.name
        assert not groups(root, "taken") and not groups(root, "current")


def test_labels_are_escaped_and_columns_follow_distance() -> None:
    guard = "ctx.get('n', 0) < 3 and 'a&b' != \"<c>\""
    machine = load_definition({
        "id": "odd", "version": 1, "start_at": "s", "context": {"n": "0"},
        "states": {
            "s": {"actions": {"go": {"state": "t", "when": guard}, "stay": {"state": "s"}}},
            "t": {"always": [{"state": "end"}], "actions": {"back": {"state": "s"}}},
            "end": {"end": True},
        },
    })  # fmt: skip
    svg = render_svg(machine)
    parse(svg)  # well-formed despite the guard's < & and quotes
    assert "&lt; 3 and &#x27;a&amp;b&#x27; != &quot;&lt;c&gt;&quot;" in svg
    assert layers(machine, edges(machine)) == [["s"], ["t"], ["end"]]


def test_the_path_taken_is_highlighted(engine: Engine) -> None:
    engine.save_machines([MACHINES / "order.yaml", MACHINES / "shipment.yaml"])
    ex = engine.start("order", {"n": 1})
    engine.trigger(ex.id, "add", {"sku": "tea"})
    engine.trigger(ex.id, "place")
    machine = engine.get_machine("order")
    root = parse(render_svg(machine, engine.history(ex.id), engine.get(ex.id).state))
    taken = {(g.get("data-from"), g.get("data-to")) for g in groups(root, "taken")}
    assert taken == {("create", "cart"), ("cart", "cart"), ("cart", "submitted")}
    assert [g.get("data-state") for g in groups(root, "current")] == ["submitted"]
    assert {g.get("data-state") for g in groups(root, "visited")} == {"create", "cart"}
    desc = root.find(f"{SVG}desc")
    assert desc is not None and "Path taken: create → cart → submitted" in (desc.text or "")
