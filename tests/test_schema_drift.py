"""Checked-in artefacts that must follow the code: machine.schema.json, service.schema.json
and ``statem.__all__``.

Regenerate the schemas after changing ``statem/definition.py`` or ``statem/services.py`` with::

    .venv/bin/python -m tests.test_schema_drift
"""

from __future__ import annotations

import copy
import importlib
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

import statem
from statem import services
from statem.definition import json_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "machine.schema.json"
SERVICE_SCHEMA_FILE = ROOT / "service.schema.json"
REGENERATE = (
    "regenerate it from the repository root with `.venv/bin/python -m tests.test_schema_drift` "
    "and commit the result"
)


def generate_schema() -> str:
    """The JSON Schema of a machine definition, as machine.schema.json must contain it."""
    schema = json_schema()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate_service_schema() -> str:
    """The JSON Schema of a service definition, as service.schema.json must contain it."""
    return json.dumps(services.json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_service_schema_json_is_up_to_date() -> None:
    assert SERVICE_SCHEMA_FILE.is_file(), f"{SERVICE_SCHEMA_FILE.name} is missing: {REGENERATE}"
    checked_in = SERVICE_SCHEMA_FILE.read_text(encoding="utf-8")
    assert checked_in == generate_service_schema(), (
        f"{SERVICE_SCHEMA_FILE.name} is out of date with statem/services.py: {REGENERATE}"
    )


def test_machine_schema_json_is_up_to_date() -> None:
    assert SCHEMA_FILE.is_file(), f"{SCHEMA_FILE.name} is missing: {REGENERATE}"
    checked_in = SCHEMA_FILE.read_text(encoding="utf-8")
    assert checked_in == generate_schema(), (
        f"{SCHEMA_FILE.name} is out of date with statem/definition.py: {REGENERATE}"
    )


def test_schema_describes_the_definition_model() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["title"] == "Machine" and schema["type"] == "object"
    assert set(schema["required"]) == {"id", "version", "start_at", "states"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["version"] == {
        "exclusiveMinimum": 0,
        "maximum": 2**31 - 1,
        "title": "Version",
        "type": "integer",
    }
    assert set(schema["$defs"]) == {"Branch", "Invoke", "Leg", "Retry", "State", "Transition", "WaitFor"}
    # python-side field names never leak: the JSON spellings are used
    assert "if" in schema["$defs"]["Invoke"]["properties"]
    assert "return" in schema["$defs"]["State"]["properties"]
    assert not {"if_", "return_"} & set(schema["$defs"]["Invoke"]["properties"])


# --------------------------------------------------------------------------- a tiny validator
# (jsonschema is not a dependency; this covers the keywords pydantic emits for Machine)


def _errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return _errors(value, root["$defs"][name], root, path)
    if "anyOf" in schema:
        found = [_errors(value, alt, root, path) for alt in schema["anyOf"]]
        if any(not f for f in found):
            return []
        # report the alternative that matched the value's type, not "is not of type null"
        typed = [f for f in found if not (len(f) == 1 and f[0].startswith(f"{path}: ") and "of type" in f[0])]
        return min(typed or found, key=len)
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} not in {schema['enum']}"]
    kind = schema.get("type")
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
    }
    if kind is not None and not checks[kind](value):
        return [f"{path}: {value!r} is not of type {kind}"]
    out: list[str] = []
    if kind in ("integer", "number"):
        if "exclusiveMinimum" in schema and not value > schema["exclusiveMinimum"]:
            out.append(f"{path}: {value} <= {schema['exclusiveMinimum']}")
        if "minimum" in schema and not value >= schema["minimum"]:
            out.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and not value <= schema["maximum"]:
            out.append(f"{path}: {value} > {schema['maximum']}")
    if kind == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        out += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if key in props:
                out += _errors(item, props[key], root, sub)
            elif extra is False:
                out.append(f"{sub}: not allowed by the schema")
            elif isinstance(extra, dict):
                out += _errors(item, extra, root, sub)
    if kind == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            out.append(f"{path}: {len(value)} items")
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub_schema = prefix[i] if i < len(prefix) else schema.get("items", {})
            out += _errors(item, sub_schema, root, f"{path}[{i}]")
    return out


def schema_errors(value: Any, file: Path = SCHEMA_FILE) -> list[str]:
    schema = json.loads(file.read_text(encoding="utf-8"))
    return _errors(value, schema, schema, "")


SNAKE: dict[str, Any] = {
    "id": "snake",
    "version": 1,
    "start_at": "a",
    "execution_mode": "sync",
    "context": {"n": "1"},
    "states": {
        "a": {
            "always": [
                {
                    "name": "call",
                    "invoke": {
                        "effect": "work",
                        "input": "{}",
                        "retry": {"max_attempts": 2},
                        "timeout_seconds": 3,
                        "if": "output",
                        "success": {"state": "b"},
                        "error": {"state": "b", "context": "{'x': 1}"},
                    },
                }
            ],
            "actions": {"kid": {"invoke": {"machine": ["k", 1], "success": {"state": "b"}}}},
        },
        "b": {"always": [{"state": "c", "wait_for": {"minutes": 0.5}}]},
        "c": {"end": True, "return": "ctx"},
    },
}


def test_schema_accepts_a_snake_case_machine_and_rejects_bad_ones() -> None:
    assert schema_errors(SNAKE) == []
    bad = copy.deepcopy(SNAKE)
    bad["bogus"] = 1
    bad["version"] = "1"
    bad["states"]["a"]["always"][0]["invoke"]["retry"]["tries"] = 3
    bad["states"]["b"]["always"][0]["wait_for"]["minutes"] = -1
    errors = schema_errors(bad)
    assert any(e.startswith("bogus:") for e in errors)
    assert any(e.startswith("version:") for e in errors)
    assert any(e.startswith("states.a.always[0].invoke.retry.tries:") for e in errors)
    assert any(e.startswith("states.b.always[0].wait_for.minutes:") for e in errors)
    del bad["states"]
    assert ": missing states" in schema_errors(bad)


@pytest.mark.parametrize("name", ["order", "shipment"])
def test_schema_accepts_the_shipped_machines(name: str) -> None:
    data = yaml.safe_load((ROOT / "machines" / f"{name}.yaml").read_text(encoding="utf-8"))
    assert schema_errors(data) == []


@pytest.mark.parametrize(
    "path", sorted((ROOT / "machines" / "services").glob("*.yaml")), ids=lambda p: p.name
)
def test_service_schema_accepts_the_shipped_services(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert schema_errors(data, SERVICE_SCHEMA_FILE) == []
    services.load_service(path)  # and the loader agrees


def test_service_schema_rejects_bad_services() -> None:
    data = yaml.safe_load((ROOT / "machines" / "services" / "shipping.yaml").read_text(encoding="utf-8"))
    data["operations"]["create-shipment"]["method"] = "BREW"
    data["operations"]["create-shipment"]["verb"] = "POST"
    data["timeout-seconds"] = 0
    del data["base_url"]
    errors = schema_errors(data, SERVICE_SCHEMA_FILE)
    assert any(e.startswith("operations.create-shipment.method:") for e in errors)
    assert any(e.startswith("operations.create-shipment.verb:") for e in errors)
    assert any(e.startswith("timeout-seconds:") for e in errors)
    assert ": missing base_url" in errors


# --------------------------------------------------------------------------- the public API

PUBLIC = {
    "ActionNotAllowed",
    "ConcurrencyError",
    "DefinitionError",
    "Engine",
    "Execution",
    "ExecutionNotFound",
    "ExpressionError",
    "IdempotencyConflict",
    "InputError",
    "LimitExceeded",
    "LoopError",
    "Machine",
    "MachineInfo",
    "MachineNotFound",
    "OperationNotAllowed",
    "StateNotFound",
    "StatemError",
    "Step",
    "StoreError",
    "Task",
    "Worker",
    "WorkerSettings",
    "__version__",
    "load_definition",
}
ERRORS = {
    "ActionNotAllowed",
    "ConcurrencyError",
    "DefinitionError",
    "ExecutionNotFound",
    "ExpressionError",
    "IdempotencyConflict",
    "InputError",
    "LimitExceeded",
    "LoopError",
    "MachineNotFound",
    "OperationNotAllowed",
    "StateNotFound",
    "StoreError",
}


def test_all_is_exactly_the_public_api() -> None:
    assert len(statem.__all__) == len(set(statem.__all__)), "duplicates in statem.__all__"
    assert set(statem.__all__) == PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_is_importable(name: str) -> None:
    module = importlib.import_module("statem")
    assert getattr(module, name) is not None
    namespace: dict[str, Any] = {}
    exec(f"from statem import {name}", namespace)
    assert namespace[name] is getattr(statem, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from statem import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC


def test_errors_share_one_root() -> None:
    for name in ERRORS:
        assert issubclass(getattr(statem, name), statem.StatemError), name
    assert issubclass(statem.StatemError, Exception)


def test_version_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert statem.__version__ == project["version"]


if __name__ == "__main__":
    SCHEMA_FILE.write_text(generate_schema(), encoding="utf-8")
    SERVICE_SCHEMA_FILE.write_text(generate_service_schema(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE} and {SERVICE_SCHEMA_FILE}")
