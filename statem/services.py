"""HTTP services as data: the definition model, validated before anything is stored.

A service definition names a base URL, default headers, a timeout and a retry policy,
and its operations: method, path, headers, body, the ``ok`` test of a response, and
JSON Schemas for the operation's input and output. Machines invoke an operation as
``effect: service.operation``; :mod:`statem.http_service` makes the call.

Strings in ``base_url``, ``headers``, ``path`` and ``body`` are expressions, evaluated
per call in the sandbox with ``input`` (the invoke's input) and ``env`` bound; ``ok``
also sees the response as ``status``, ``headers`` and ``json``. Schemas are untrusted
and checked by :func:`statem.schemas.schema_problems`.

Services are saved and versioned like machines: ``(id, version)`` is immutable once
saved, the same content again is a no-op.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, StrictInt, ValidationError, field_validator

from .definition import MAX_NAME_LENGTH, NAME_PATTERN, Model, Retry, read_definition
from .errors import DefinitionError, ExpressionError, StatemError
from .expressions import BINDINGS, Expression, compile_expression
from .schemas import schema_problems

#: Names a service expression may read (besides the helpers).
SERVICE_NAMES = frozenset({"input", "env"})
#: The response, as ``ok`` sees it: each name stands for ``output[name]``.
RESPONSE_NAMES = ("status", "headers", "json")
#: The default ``ok``: any 2xx status.
DEFAULT_OK = "200 <= status < 300"
#: Methods whose request carries the invoke's input as its JSON body unless ``body`` says otherwise.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_NAME_RE = re.compile(NAME_PATTERN)

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]


class ServiceDefinitionError(DefinitionError):
    """A service definition is invalid (a DefinitionError naming the service, not a machine)."""

    def __init__(self, service: str | None, problems: list[tuple[str, str]]) -> None:
        super().__init__(service, problems)
        where = f"service {service!r}" if service else "service definition"
        lines = [f"{where}: {path}: {msg}" if path else f"{where}: {msg}" for path, msg in problems]
        text = lines[0] if len(lines) == 1 else f"{len(lines)} problems in {where}:\n  " + "\n  ".join(lines)
        self.args = (text,)

    def __str__(self) -> str:
        return str(self.args[0])


class ServiceNotFound(StatemError):
    """No service is saved under this id (and version)."""

    def __init__(self, service_id: str, version: int | None = None) -> None:
        self.service_id = service_id
        self.version = version
        if version is None:
            super().__init__(f"no service {service_id!r} is saved")
        else:
            super().__init__(f"service {service_id!r} has no version {version}")


class Operation(Model):
    """One call a service offers."""

    description: str | None = None
    method: Method = "POST"
    path: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    input_schema: dict[str, Any] | bool | None = None
    output_schema: dict[str, Any] | bool | None = None
    ok: str = DEFAULT_OK
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] | None = None
    retry: Retry | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Service(Model):
    """A versioned HTTP service definition. ``(id, version)`` is immutable once saved."""

    id: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
    version: Annotated[StrictInt, Field(gt=0, le=2**31 - 1)]
    description: str | None = None
    base_url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    retry: Retry | None = None
    operations: dict[str, Operation]

    @field_validator("id")
    @classmethod
    def _id_is_a_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(f"service id {value!r} must match {NAME_PATTERN} (no dots)")
        return value

    def to_json(self) -> dict[str, Any]:
        """The normalised definition as plain JSON data (canonical keys, no defaults)."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        data["version"] = self.version
        return data

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON form: equal for definitions with the same content."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def operation(self, name: str) -> Operation:
        """The operation called ``name``; KeyError if there is none."""
        return self.operations[name]

    def retry_for(self, name: str) -> Retry | None:
        """The operation's retry policy, else the service's default."""
        return self.operations[name].retry or self.retry

    def timeout_for(self, name: str) -> float:
        """The operation's timeout, else the service's."""
        return self.operations[name].timeout_seconds or self.timeout_seconds


@dataclass(frozen=True)
class ServiceInfo:
    """A saved service version, as listed by :meth:`Engine.services`."""

    id: str
    version: int
    content_hash: str
    created_at: dt.datetime
    operations: list[str]


@dataclass(frozen=True)
class CompiledService:
    """A validated service with every expression parsed once, keyed by its dotted path."""

    service: Service
    content_hash: str
    expressions: Mapping[str, Expression]

    @property
    def key(self) -> tuple[str, int]:
        """``(id, version)``."""
        return (self.service.id, self.service.version)

    def expr(self, path: str) -> Expression:
        """The compiled expression at ``path``."""
        return self.expressions[path]


def split_operation(name: str) -> tuple[str, str] | None:
    """``service.operation`` split at its first dot, or None when there is no dot."""
    service, dot, operation = name.partition(".")
    return (service, operation) if dot and service and operation else None


# --------------------------------------------------------------------------- checks


class _Response(ast.NodeTransformer):
    """``status`` -> ``output['status']`` (and ``headers``, ``json``): how ``ok`` sees the response."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in RESPONSE_NAMES:
            return ast.copy_location(
                ast.Subscript(
                    value=ast.Name("output", ast.Load()), slice=ast.Constant(node.id), ctx=node.ctx
                ),
                node,
            )
        return node


def ok_source(source: str) -> str:
    """The ``ok`` expression as the sandbox runs it (the response names read ``output``)."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return source  # compile_expression reports it
    return ast.unparse(_Response().visit(tree))


def _expressions(s: Service) -> list[tuple[str, str]]:
    """Every expression of the service as ``(path, source)``."""
    out = [("base_url", s.base_url)]
    out += [(f"headers.{k}", v) for k, v in s.headers.items()]
    for name, op in s.operations.items():
        where = f"operations.{name}"
        if op.path is not None:
            out.append((f"{where}.path", op.path))
        if op.body is not None:
            out.append((f"{where}.body", op.body))
        out += [(f"{where}.headers.{k}", v) for k, v in op.headers.items()]
        out.append((f"{where}.ok", op.ok))
    return out


def _unbound(src: str, allowed: frozenset[str]) -> list[str]:
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return []
    return sorted(
        {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in BINDINGS and n.id not in allowed}
    )


def check_service(s: Service) -> tuple[list[tuple[str, str]], dict[str, Expression]]:
    """The checks pydantic cannot make, and the compiled expressions; one problem per line."""
    problems: list[tuple[str, str]] = []
    compiled: dict[str, Expression] = {}
    if not s.operations:
        problems.append(("operations", "a service needs at least one operation"))
    for name, op in s.operations.items():
        if not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
            problems.append((f"operations.{name}", f"operation name must match {NAME_PATTERN}"))
        for key in ("input_schema", "output_schema"):
            schema = getattr(op, key)
            if schema is not None:
                for where, msg in schema_problems(schema):
                    problems.append((f"operations.{name}.{key}" + (f".{where}" if where else ""), msg))
    for path, src in _expressions(s):
        names = _unbound(src, SERVICE_NAMES)
        if path.endswith(".ok"):
            src = ok_source(src)
        if names:
            allowed = "input, env" + (", status, headers, json" if path.endswith(".ok") else "")
            problems.append((path, f"a service expression can read only {allowed}, not {', '.join(names)}"))
            continue
        try:
            compiled[path] = compile_expression(src, path)
        except ExpressionError as exc:
            problems.append((path, f"expression does not parse: {exc.reason}"))
    return problems, compiled


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and "[" in p))
        msg = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(
            e["type"], e["msg"]
        )
        out.append((path, msg))
    return list(dict.fromkeys(out))


def load_service(source: Mapping[str, Any] | Service | str | Path) -> CompiledService:
    """Validate a service definition (a dict, a Service, or a YAML/JSON file) and compile it.

    Raises ServiceDefinitionError listing every problem with its dotted path.
    """
    if isinstance(source, Service):
        service = source
    else:
        try:
            data = read_definition(source)
        except DefinitionError as exc:
            raise ServiceDefinitionError(None, exc.problems) from None
        if not isinstance(data, dict):
            raise ServiceDefinitionError(
                None, [("", "a service definition must be a mapping of keys to values")]
            )
        name = data.get("id") if isinstance(data.get("id"), str) else None
        try:
            service = Service.model_validate(data)
        except ValidationError as exc:
            raise ServiceDefinitionError(name, _problems(exc)) from None
    problems, compiled = check_service(service)
    if problems:
        raise ServiceDefinitionError(service.id, problems)
    return CompiledService(service, service.content_hash(), compiled)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a service definition, for editors (``service.schema.json``),
    accepting the kebab-case spellings the loader accepts too."""
    schema = Service.model_json_schema(by_alias=True, mode="validation")
    for cls in (Service, Operation, Retry):
        node = schema if cls is Service else schema["$defs"][cls.__name__]
        props = node["properties"]
        for field in cls.model_fields.values():
            choices = field.validation_alias
            if isinstance(choices, AliasChoices):
                names = [c for c in choices.choices if isinstance(c, str)]
                for other in names[1:]:
                    props.setdefault(other, props[names[0]])
    return schema
