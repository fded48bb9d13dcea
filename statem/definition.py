"""The definition model: what a machine is, validated before anything is stored.

A definition is data (a YAML or JSON file, or a dict). :func:`load_definition` turns it
into a frozen :class:`Machine` or raises :class:`~statem.errors.DefinitionError` listing
every problem with its dotted path. :func:`compile_machine` then parses every expression
once, giving the :class:`CompiledMachine` the engine steps with.

Keys are snake_case; the kebab-case spellings of jeffh/workflow (``start-at``,
``wait-for``, ``execution-mode``...) are accepted as aliases and normalised away, so
"same content" is compared on the normalised form.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)

from .errors import DefinitionError, ExpressionError
from .expressions import Expression, compile_expression, problem_text
from .isolation import IsolatedExpression
from .reader import check_shape, load_json, load_yaml

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$"
#: Longest machine id, state or action name (the width of the database columns).
MAX_NAME_LENGTH = 200
_NAME_RE = re.compile(NAME_PATTERN)


def _aliases(name: str) -> AliasChoices:
    """Accept a field under its snake_case name and its kebab-case spelling."""
    return AliasChoices(name, name.replace("_", "-"))


_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    populate_by_name=True,
    alias_generator=AliasGenerator(validation_alias=_aliases),
)

#: A context update: a mapping of key -> expression, or one expression yielding a mapping.
ContextUpdate = dict[str, str] | str


class Model(BaseModel):
    """Base of every definition model: frozen, no unknown keys, kebab-case aliases."""

    model_config = _CONFIG


class Retry(Model):
    """Exponential backoff of an effect: wait ``initial_seconds * multiplier**n``, capped."""

    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 3
    initial_seconds: Annotated[float, Field(ge=0)] = 1.0
    multiplier: Annotated[float, Field(ge=1)] = 2.0
    max_seconds: Annotated[float, Field(ge=0)] = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_seconds, self.initial_seconds * self.multiplier ** (attempt - 1)))


class WaitFor(Model):
    """A durable timer: a duration (``seconds``/``minutes``/``hours``/``days``) or ``until``."""

    seconds: Annotated[float, Field(ge=0)] | None = None
    minutes: Annotated[float, Field(ge=0)] | None = None
    hours: Annotated[float, Field(ge=0)] | None = None
    days: Annotated[float, Field(ge=0)] | None = None
    until: str | None = None

    def duration(self) -> float | None:
        """Total seconds of a duration timer, or None for an ``until`` timer."""
        if self.until is not None:
            return None
        return (
            (self.seconds or 0.0)
            + 60 * (self.minutes or 0.0)
            + 3600 * (self.hours or 0.0)
            + 86400 * (self.days or 0.0)
        )


class Branch(Model):
    """Where an invoke goes with its result: ``success``/``then`` or ``error``/``else``."""

    name: str | None = None
    state: str | None = None
    context: ContextUpdate | None = None


class Invoke(Model):
    """Run a child machine or a registered effect; its result picks a branch."""

    machine: tuple[str] | tuple[str, StrictInt | None] | str | None = Field(
        default=None, validation_alias=AliasChoices("machine", "state_machine", "state-machine")
    )
    effect: str | None = None
    input: str | None = None
    success: Branch | None = Field(default=None, validation_alias=AliasChoices("success", "then"))
    error: Branch | None = Field(default=None, validation_alias=AliasChoices("error", "else"))
    if_: str | None = Field(default=None, alias="if", validation_alias="if")
    retry: Retry | None = None
    timeout_seconds: Annotated[float, Field(gt=0)] | None = None

    @property
    def child(self) -> tuple[str, int | None] | None:
        """The child machine as ``(id, version or None for latest)``, or None for an effect."""
        if self.machine is None:
            return None
        if isinstance(self.machine, str):
            return (self.machine, None)
        if len(self.machine) == 1:
            return (self.machine[0], None)
        return (self.machine[0], self.machine[1])


class Transition(Model):
    """A move: to ``state`` (default: stay), if ``when`` holds, applying ``context``."""

    name: str | None = None
    state: str | None = None
    when: str | None = None
    context: ContextUpdate | None = None
    wait_for: WaitFor | None = None
    invoke: Invoke | None = None


class State(Model):
    """A state: its always-transitions, its actions, or ``end`` with a ``return`` value."""

    description: str | None = None
    always: list[Transition] = Field(default_factory=list)
    actions: dict[str, Transition] = Field(default_factory=dict)
    end: bool = False
    return_: str | None = Field(default=None, alias="return", validation_alias="return")


class Machine(Model):
    """A versioned machine definition. ``(id, version)`` is immutable once saved."""

    id: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
    version: Annotated[StrictInt, Field(gt=0, le=2**31 - 1)]
    description: str | None = None
    start_at: str
    execution_mode: Literal["async", "sync"] = "async"
    context: ContextUpdate | None = None
    states: dict[str, State]

    @field_validator("id")
    @classmethod
    def _id_is_a_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(f"machine id {value!r} must match {NAME_PATTERN}")
        return value

    def to_json(self) -> dict[str, Any]:
        """The normalised definition as plain JSON data (canonical keys, no defaults)."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        data["version"] = self.version  # always present, even though it has no default
        return data

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON form: equal for definitions with the same content."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def transitions(self) -> Iterator[tuple[str, str, Transition]]:
        """Every transition as ``(state, path, transition)``, paths dotted from the root."""
        for sname, st in self.states.items():
            for i, t in enumerate(st.always):
                yield sname, f"states.{sname}.always[{i}]", t
            for aname, t in st.actions.items():
                yield sname, f"states.{sname}.actions.{aname}", t


# --------------------------------------------------------------------------- loading


#: Fields whose type is a union: pydantic tags their errors with the member's type name.
_UNION_FIELDS = frozenset({"context", "machine", "state_machine", "state-machine"})
_TYPE_TAG = re.compile(r"^[a-z-]+\[.*\]$")  # 'dict[str,str]', 'function-after[...]': never a name


def _loc(loc: tuple[int | str, ...]) -> str:
    """A dotted path from a pydantic error location, without pydantic's union-member tags."""
    out = ""
    previous: int | str | None = None
    for part in loc:
        tag = isinstance(part, str) and (
            _TYPE_TAG.match(part) is not None or (previous in _UNION_FIELDS and part in ("str", "int"))
        )
        if not tag:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        previous = part
    return out


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "string_type":
            msg = _not_a_string(e["input"], loc, msg)
        if len(loc) >= 2 and loc[-1] == "[key]":  # pydantic reports a bad key by its position
            loc = (*loc[:-2], str(e["input"]))
        problems.append((_loc(loc), msg))
    # a union field (context) also reports its str member failing on a mapping: drop that
    # when the mapping member reported the real problem below the same path
    paths = [p for p, _ in problems]
    problems = [
        (p, m)
        for p, m in problems
        if m != "Input should be a valid string" or not any(q.startswith(p + ".") for q in paths)
    ]
    # union fields report one error per member; keep each (path, message) once
    return list(dict.fromkeys(problems))


def _not_a_string(value: object, loc: tuple[int | str, ...], msg: str) -> str:
    """Say what a YAML/JSON scalar was read as when a string (a name or an expression) was needed."""
    yaml_bools = "YAML reads unquoted true/false, yes/no and on/off as booleans"
    if isinstance(value, bool) and loc and loc[-1] == "[key]":
        return f"key {value} is a boolean, not a name ({yaml_bools}); quote it"
    if isinstance(value, bool):
        return f"{msg}, got the boolean {value} ({yaml_bools}); quote it, e.g. '{value}' for an expression"
    if isinstance(value, int | float):
        return f"{msg}, got the number {value!r}; an expression is text: quote it ('{value!r}')"
    if value is None:
        return f"{msg}, got null (an empty value)"
    return msg


def _read_text(text: str, origin: str) -> Any:
    try:
        data = load_json(text, origin) if origin.endswith(".json") else load_yaml(text, origin)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise DefinitionError(None, [("", f"{origin}: not valid YAML/JSON: {exc}")]) from None
    check_shape(data, origin)
    return data


def read_definition(source: Mapping[str, Any] | Machine | str | Path) -> Any:
    """Raw definition data from a dict, a Machine, or a path to a ``.yaml``/``.yml``/``.json`` file.

    Files are read by :mod:`statem.reader` (no alias bombs, duplicate keys or YAML 1.1
    booleans); any source is refused when nested deeper or larger than its bounds.
    """
    if isinstance(source, Machine):
        return source.to_json()
    if isinstance(source, Mapping):
        check_shape(source)
        return dict(source)
    if not isinstance(source, str | Path):
        raise DefinitionError(None, [("", "a definition must be a mapping of keys to values")])
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError(None, [("", f"cannot read {path}: {exc.strerror or exc}")]) from None
    return _read_text(text, str(path))


def load_definition(source: Mapping[str, Any] | Machine | str | Path) -> Machine:
    """Validate a definition into a :class:`Machine`, or raise DefinitionError naming every problem."""
    if isinstance(source, Machine):
        machine = source
    else:
        data = read_definition(source)
        if not isinstance(data, dict):
            raise DefinitionError(None, [("", "a definition must be a mapping of keys to values")])
        name = data.get("id") if isinstance(data.get("id"), str) else None
        try:
            machine = Machine.model_validate(data)
        except ValidationError as exc:
            raise DefinitionError(
                name, _pydantic_problems(exc) + _graph_problems_despite(data, exc)
            ) from None
    problems = check_machine(machine)
    if problems:
        raise DefinitionError(machine.id, problems)
    return machine


def _graph_problems_despite(data: dict[str, Any], err: ValidationError) -> list[tuple[str, str]]:
    """When the only structural problems are unknown keys, also report the graph problems.

    The unknown keys are dropped from a copy and the copy validated again, so one error
    lists both kinds (``bogus: unknown key`` and ``...state: unknown target state``).
    """
    if any(e["type"] != "extra_forbidden" for e in err.errors()):
        return []
    trimmed = json.loads(json.dumps(data, default=str))
    for e in err.errors():
        node: Any = trimmed
        *parents, last = e["loc"]
        try:
            for part in parents:
                node = node[part]
            del node[last]
        except (KeyError, IndexError, TypeError):
            return []
    try:
        return check_machine(Machine.model_validate(trimmed))
    except ValidationError:
        return []


# --------------------------------------------------------------------------- checks


def _expressions(m: Machine) -> Iterator[tuple[str, str]]:
    """Every expression in the machine as ``(path, source)``."""

    def ctx(path: str, update: ContextUpdate | None) -> Iterator[tuple[str, str]]:
        if isinstance(update, str):
            yield path, update
        elif update is not None:
            for key, src in update.items():
                yield f"{path}.{key}", src

    yield from ctx("context", m.context)
    for sname, st in m.states.items():
        if st.return_ is not None:
            yield f"states.{sname}.return", st.return_
    for _, path, t in m.transitions():
        if t.when is not None:
            yield f"{path}.when", t.when
        yield from ctx(f"{path}.context", t.context)
        if t.wait_for is not None and t.wait_for.until is not None:
            yield f"{path}.wait_for.until", t.wait_for.until
        if t.invoke is not None:
            inv = t.invoke
            if inv.input is not None:
                yield f"{path}.invoke.input", inv.input
            if inv.if_ is not None:
                yield f"{path}.invoke.if", inv.if_
            for bname, branch in (("success", inv.success), ("error", inv.error)):
                if branch is not None:
                    yield from ctx(f"{path}.invoke.{bname}.context", branch.context)


def _targets(m: Machine) -> Iterator[tuple[str, str, str]]:
    """Every explicit target as ``(from_state, path, target)``."""
    for sname, path, t in m.transitions():
        if t.state is not None:
            yield sname, f"{path}.state", t.state
        if t.invoke is not None:
            for bname, branch in (("success", t.invoke.success), ("error", t.invoke.error)):
                if branch is not None and branch.state is not None:
                    yield sname, f"{path}.invoke.{bname}.state", branch.state


def check_machine(m: Machine) -> list[tuple[str, str]]:
    """The graph and expression checks pydantic cannot make; one ``(path, message)`` per problem."""
    problems: list[tuple[str, str]] = []
    if not m.states:
        problems.append(("states", "a machine needs at least one state"))
    for sname, st in m.states.items():
        if not _NAME_RE.fullmatch(sname) or len(sname) > MAX_NAME_LENGTH:
            problems.append(
                (f"states.{sname}", f"state name must match {NAME_PATTERN}, at most {MAX_NAME_LENGTH} long")
            )
        for aname in st.actions:
            if not _NAME_RE.fullmatch(aname) or len(aname) > MAX_NAME_LENGTH:
                problems.append((f"states.{sname}.actions.{aname}", f"action name must match {NAME_PATTERN}"))
        if st.end and (st.always or st.actions):
            problems.append((f"states.{sname}", "a final state (end: true) cannot have transitions"))
        if st.return_ is not None and not st.end:
            problems.append((f"states.{sname}.return", "only a final state (end: true) can return"))
    if m.start_at not in m.states:
        problems.append(("start_at", f"unknown state {m.start_at!r}"))

    for _, path, t in m.transitions():
        named = [(f"{path}.name", t.name)]
        if t.invoke is not None:
            named += [
                (f"{path}.invoke.{b}.name", getattr(getattr(t.invoke, b), "name", None))
                for b in ("success", "error")
            ]
        for where, name in named:
            if name is not None and (not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME_LENGTH):
                problems.append((where, f"a step name must match {NAME_PATTERN}"))
        inv = t.invoke
        if t.wait_for is not None:
            given = [k for k, v in t.wait_for.model_dump().items() if v is not None]
            if not given:
                problems.append((f"{path}.wait_for", "give a duration (seconds/minutes/hours/days) or until"))
            elif "until" in given and len(given) > 1:
                problems.append((f"{path}.wait_for", "until cannot be combined with a duration"))
        if inv is None:
            continue
        if (inv.machine is None) == (inv.effect is None):
            which = "both" if inv.machine is not None else "neither"
            problems.append((f"{path}.invoke", f"give exactly one of machine or effect, not {which}"))
        child = inv.child
        if child is not None and child[1] is not None and child[1] < 1:
            problems.append((f"{path}.invoke.machine", "machine version must be a positive integer"))
        if t.state is not None or t.context is not None:
            problems.append((path, "a transition with invoke takes its state and context from success/error"))
        if t.wait_for is not None:
            problems.append((path, "a transition cannot both wait_for and invoke"))
        if inv.success is None:
            problems.append((f"{path}.invoke", "invoke needs a success (then) branch"))
        if inv.retry is not None and inv.machine is not None:
            problems.append((f"{path}.invoke.retry", "retry applies to effects, not child machines"))

    for _, path, target in _targets(m):
        if target not in m.states:
            problems.append((path, f"unknown target state {target!r}"))

    if m.start_at in m.states:
        reached = _reachable(m)
        for sname in m.states:
            if sname not in reached:
                problems.append((f"states.{sname}", f"state is unreachable from start_at {m.start_at!r}"))

    for path, src in _expressions(m):
        try:
            compile_expression(src, path)
        except ExpressionError as exc:
            problems.append((path, problem_text(src, exc.reason)))
    return problems


def _reachable(m: Machine) -> set[str]:
    edges: dict[str, set[str]] = {s: set() for s in m.states}
    for sname, _, t in m.transitions():
        edges[sname].add(t.state or sname)
    for sname, _, target in _targets(m):
        edges[sname].add(target)
    seen = {m.start_at}
    todo = deque([m.start_at])
    while todo:
        for nxt in edges.get(todo.popleft(), ()):
            if nxt not in seen and nxt in m.states:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# --------------------------------------------------------------------------- compiled form


@dataclass(frozen=True)
class CompiledMachine:
    """A validated machine with every expression parsed once, keyed by its dotted path."""

    machine: Machine
    content_hash: str
    expressions: Mapping[str, Expression]

    @property
    def key(self) -> tuple[str, int]:
        """``(id, version)``."""
        return (self.machine.id, self.machine.version)

    def expr(self, path: str) -> Expression:
        """The compiled expression at ``path`` (it exists: the machine was validated)."""
        return self.expressions[path]

    def state(self, name: str) -> State:
        """The state called ``name``."""
        return self.machine.states[name]

    def effects(self) -> set[str]:
        """Names of every effect the machine invokes."""
        return {
            t.invoke.effect
            for _, _, t in self.machine.transitions()
            if t.invoke is not None and t.invoke.effect is not None
        }


def compile_machine(machine: Machine, *, isolate: bool = False) -> CompiledMachine:
    """Parse every expression of a validated machine once.

    With ``isolate``, the expressions evaluate in a child process with CPU and memory
    limits (:mod:`statem.isolation`), for definitions from untrusted authors.
    """
    exprs: dict[str, Expression] = {
        path: compile_expression(src, path) for path, src in _expressions(machine)
    }
    if isolate:
        exprs = {path: IsolatedExpression.of(e) for path, e in exprs.items()}
    return CompiledMachine(machine=machine, content_hash=machine.content_hash(), expressions=exprs)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a definition, accepting every alias the loader accepts.

    pydantic lists a field under its first alias only; the other spellings (``start-at``,
    ``then``/``else``, ``state_machine``...) are added here so editors validating YAML
    against ``machine.schema.json`` agree with :func:`load_definition`.
    """
    schema = Machine.model_json_schema(by_alias=True, mode="validation")
    for cls in (Machine, State, Transition, Invoke, Branch, Retry, WaitFor):
        node = schema if cls is Machine else schema["$defs"][cls.__name__]
        props = node["properties"]
        for field in cls.model_fields.values():
            choices = field.validation_alias
            if not isinstance(choices, AliasChoices):
                continue
            names = [c for c in choices.choices if isinstance(c, str)]
            for other in names[1:]:
                props.setdefault(other, props[names[0]])
    return schema
