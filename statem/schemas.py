"""JSON Schemas from definitions: checked as untrusted, validated with ``jsonschema``.

A service definition (or a typed effect) declares the shape of its input and output as a
JSON Schema. Definitions may come from people who are not trusted with the host, so a
schema is checked before it is used (:func:`schema_problems`):

* its JSON text is at most :data:`MAX_SCHEMA_BYTES` and it nests at most
  :data:`MAX_SCHEMA_DEPTH` levels;
* every ``$ref`` (and ``$dynamicRef``/``$recursiveRef``) is local (``#...``): nothing is
  ever fetched; the validator's registry refuses any retrieval as well;
* every regular expression (``pattern``, the keys of ``patternProperties``) is at most
  :data:`MAX_PATTERN_CHARS` long and has no nested unbounded repetition such as
  ``(a+)+`` (the shape that backtracks exponentially);
* it is a valid schema of its draft (2020-12 unless ``$schema`` names another).

:class:`Shape` validates a value against a pydantic model or a checked schema and names
the failing field in its error. The ``jsonschema`` package interprets schemas; nothing
generates code from them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from re import _parser as sre_parse  # type: ignore[attr-defined]  # the regex parser (3.11+)
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from pydantic import BaseModel, PydanticUserError, ValidationError

#: Largest schema accepted, as compact JSON, in bytes.
MAX_SCHEMA_BYTES = 64_000
#: Deepest nesting of a schema (objects and lists), in levels.
MAX_SCHEMA_DEPTH = 32
#: Longest regular expression (``pattern``, ``patternProperties`` key), in characters.
MAX_PATTERN_CHARS = 1_000
#: Longest validation message kept (the offending value is cut), in characters.
MAX_MESSAGE_CHARS = 300

_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


def _refuse(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


#: The registry every validator resolves ``$ref`` in: nothing is ever retrieved.
REGISTRY: referencing.Registry[Any] = referencing.Registry(retrieve=_refuse)  # type: ignore[call-arg]


def _nodes(schema: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, node) of a schema, depth first."""
    todo: list[tuple[str, Any]] = [(path, schema)]
    while todo:
        where, node = todo.pop()
        yield where, node
        if isinstance(node, Mapping):
            todo.extend((f"{where}.{k}" if where else str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            todo.extend((f"{where}[{i}]", v) for i, v in enumerate(node))


def _depth(value: Any) -> int:
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        if d > MAX_SCHEMA_DEPTH:
            break
        if isinstance(node, Mapping):
            todo.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            todo.extend((v, d + 1) for v in node)
    return deepest


def _nested_repeat(items: Any, inside: bool = False) -> bool:
    """True if a parsed regex repeats (unboundedly) something that itself repeats."""
    for op, arg in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            _low, high, sub = arg
            unbounded = high == sre_parse.MAXREPEAT or high > 100
            if unbounded and inside:
                return True
            if _nested_repeat(sub, inside or unbounded):
                return True
        elif name == "SUBPATTERN":
            if _nested_repeat(arg[-1], inside):
                return True
        elif name == "BRANCH":
            if any(_nested_repeat(alt, inside) for alt in arg[1]):
                return True
        elif name in ("ASSERT", "ASSERT_NOT") and _nested_repeat(arg[1], inside):
            return True
    return False


def pattern_problem(pattern: Any) -> str | None:
    """Why a regular expression from a definition is refused, or None."""
    if not isinstance(pattern, str):
        return "a pattern must be a string"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"pattern is {len(pattern)} characters; the limit is {MAX_PATTERN_CHARS}"
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"pattern does not compile: {exc}"
    if _nested_repeat(parsed):
        return "pattern repeats a repetition (like '(a+)+'), which can backtrack for ever; simplify it"
    return None


def schema_problems(schema: Any) -> list[tuple[str, str]]:
    """Every reason to refuse an untrusted JSON Schema, as ``(path inside it, message)``."""
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, Mapping):
        return [("", f"a JSON Schema must be a mapping (or true/false), not {type(schema).__name__}")]
    try:
        size = len(json.dumps(schema, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError) as exc:
        return [("", f"a JSON Schema must be JSON data: {exc}")]
    if size > MAX_SCHEMA_BYTES:
        return [("", f"schema is {size} bytes of JSON; the limit is {MAX_SCHEMA_BYTES}")]
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        return [("", f"schema nests deeper than {MAX_SCHEMA_DEPTH} levels")]
    problems: list[tuple[str, str]] = []
    for where, node in _nodes(schema):
        if not isinstance(node, Mapping):
            continue
        for key in _REF_KEYS:
            ref = node.get(key)
            if isinstance(ref, str) and not ref.startswith("#"):
                problems.append(
                    (
                        f"{where}.{key}" if where else key,
                        f"only local references ('#/...') are allowed: {ref!r}",
                    )
                )
        if isinstance(node.get("pattern"), str) and (why := pattern_problem(node["pattern"])) is not None:
            problems.append((f"{where}.pattern" if where else "pattern", why))
        props = node.get("patternProperties")
        if isinstance(props, Mapping):
            for regex in props:
                if (why := pattern_problem(regex)) is not None:
                    problems.append((f"{where}.patternProperties" if where else "patternProperties", why))
    if problems:
        return problems
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        return [(where, f"not a valid JSON Schema: {_short(exc.message)}")]
    return []


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def _field(root: str, path: Any) -> str:
    out = root
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class Mismatch(Exception):
    """A value does not fit its shape; ``field`` is the dotted path of the first problem."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


class Shape:
    """The declared shape of an effect's input or output: a pydantic model or a JSON Schema.

    ``validate`` returns what the effect is handed (a model instance for a model, the
    value itself for a schema); ``dump`` turns what an effect returned into JSON data.
    Both raise :class:`Mismatch` naming the field. ``schema`` is the JSON Schema, used by
    the save-time checks.
    """

    def __init__(self, spec: type[BaseModel] | Mapping[str, Any] | bool, what: str = "schema") -> None:
        self.model: type[BaseModel] | None = None
        if isinstance(spec, type) and issubclass(spec, BaseModel):
            self.model = spec
            try:
                self.schema: Any = spec.model_json_schema()
            except PydanticUserError:  # a model with types JSON Schema cannot describe
                self.schema = True  # validated by pydantic all the same; not checked at save
            return
        if not isinstance(spec, Mapping | bool):
            raise TypeError(f"{what} must be a pydantic model class or a JSON Schema dict, not {spec!r}")
        problems = schema_problems(spec)
        if problems:
            raise ValueError(f"{what} is refused: " + "; ".join(f"{p or '(root)'}: {m}" for p, m in problems))
        self.schema = dict(spec) if isinstance(spec, Mapping) else spec
        cls = jsonschema.validators.validator_for(self.schema, default=jsonschema.Draft202012Validator)
        self._validator = cls(self.schema, registry=REGISTRY)

    def validate(self, value: Any, root: str) -> Any:
        """``value`` checked against the shape (a model instance for a pydantic model)."""
        if self.model is not None:
            if isinstance(value, self.model):
                return value
            try:
                return self.model.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise Mismatch(_field(root, first["loc"]), _short(first["msg"])) from None
        try:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        except referencing.exceptions.Unresolvable as exc:
            raise Mismatch(root, f"the schema has a reference that cannot be resolved: {exc}") from None
        if error is not None:
            raise Mismatch(_field(root, error.absolute_path), _short(error.message))
        return value

    def dump(self, value: Any, root: str) -> Any:
        """What an effect returned, checked and as JSON data."""
        checked = self.validate(value, root)
        if self.model is not None:
            return checked.model_dump(mode="json")
        return checked
