"""Save-time checks of a machine's invokes against the schemas they call.

When a machine invokes a typed effect or a service operation, saving it checks, before
anything runs:

* the ``input`` expression's literal keys (``{'order': ..., 'qty': ...}``) against the
  input schema: every required key present (unless the literal merges ``**others``), and
  no key the schema does not declare when it sets ``additionalProperties: false``;
* every ``output['...']`` chain (subscripts and ``.get('...')``) in the ``success``
  branch and ``if`` against the output schema, and in the ``error`` branch against the
  error's keys (``type``, ``message``, and for services ``status`` and ``json``; plus
  the output schema's when an ``if`` can send a result there).

A key is unknown when the schema at that point declares its ``properties`` (or forbids
others) and the key is not among them: ``output['trackng']`` against a schema with
``tracking`` is a problem with a "did you mean 'tracking'?" hint. Schemas that declare
no properties leave the chain unchecked from there on.

An effect name that is neither a registered effect nor an operation of a saved service
is reported only with ``strict_effects`` (the worker's application may register it, or
the service may be saved later); an operation missing from a saved service is always
reported.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .definition import ContextUpdate, Invoke, Machine
from .effects import EffectRegistry
from .services import CompiledService, split_operation

Problem = tuple[str, str]
#: Keys of the output an error branch sees for any failed effect (``field`` for typed ones).
ERROR_KEYS = ("type", "message", "field")
#: And for a failed service call.
SERVICE_ERROR_KEYS = (*ERROR_KEYS, "status", "json")
_ANY = object()  # a subscript the check cannot read (not a constant)


def _hint(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (it has: {', '.join(known)})" if known else ""


def _resolve(schema: Any, root: Any) -> Any:
    """Follow local ``$ref`` pointers (``#/$defs/X``) a few times; anything else as is."""
    for _ in range(16):
        if not isinstance(schema, Mapping) or not isinstance(schema.get("$ref"), str):
            return schema
        node = root
        for part in schema["$ref"].removeprefix("#").strip("/").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                return True  # unresolvable: leave it to the validator at run time
            node = node[part]
        schema = node
    return schema


def _alternatives(schema: Any, root: Any) -> list[Any]:
    """The schemas a value must (allOf) or may (anyOf/oneOf) meet, resolved: the schema itself
    unless it only combines others, and the branches of its combinators."""
    schema = _resolve(schema, root)
    if not isinstance(schema, Mapping):
        return [schema]
    subs = [sub for key in ("allOf", "anyOf", "oneOf") for sub in schema.get(key) or []]
    out = [schema] if not subs or _declares(schema) else []
    for sub in subs:
        out.extend(_alternatives(sub, root))
    return out


def _declares(schema: Any) -> bool:
    """True if the schema says which properties an object has."""
    return isinstance(schema, Mapping) and (
        "properties" in schema or "patternProperties" in schema or schema.get("additionalProperties") is False
    )


def _step(schema: Any, key: Any, root: Any) -> tuple[Any, list[str] | None]:
    """The schema at ``key`` inside ``schema`` (None: not checked further), or the keys it has."""
    alts = _alternatives(schema, root)
    if isinstance(key, int):
        for alt in alts:
            if isinstance(alt, Mapping) and isinstance(alt.get("items"), Mapping):
                return alt["items"], None
        return None, None
    declared = [a for a in alts if _declares(a)]
    if not declared or any(not _declares(a) and _objecty(a) for a in alts):
        return None, None  # some alternative does not say which keys an object has
    known: list[str] = []
    for alt in declared:
        props = alt.get("properties") or {}
        if key in props:
            return props[key], None
        for regex, sub in (alt.get("patternProperties") or {}).items():
            if re.search(regex, key):
                return sub, None
        if isinstance(alt.get("additionalProperties"), Mapping):
            return alt["additionalProperties"], None
        known += [k for k in props if k not in known]
    return None, known


def _objecty(schema: Any) -> bool:
    """A schema without declared properties that could still hold an object (so: open)."""
    if not isinstance(schema, Mapping):
        return schema is True
    kind = schema.get("type")
    return kind is None or kind == "object" or (isinstance(kind, list) and "object" in kind)


def _chain(node: ast.AST) -> list[Any] | None:
    """``output['a'][0].get('b')`` as ``['a', 0, 'b']``; None when not rooted at ``output``."""
    if isinstance(node, ast.Name):
        return [] if node.id == "output" else None
    if isinstance(node, ast.Subscript):
        base = _chain(node.value)
        if base is None:
            return None
        s = node.slice
        if isinstance(s, ast.Constant) and isinstance(s.value, str | int) and not isinstance(s.value, bool):
            return [*base, s.value]
        return [*base, _ANY]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        base = _chain(node.func.value)
        return None if base is None else [*base, node.args[0].value]
    return None


def output_chains(source: str) -> list[list[Any]]:
    """Every ``output[...]`` chain in an expression, longest first, each once."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return []
    found = [c for n in ast.walk(tree) if (c := _chain(n))]
    unique = {tuple(map(repr, c)): c for c in found}
    return sorted(unique.values(), key=len, reverse=True)


def _text(chain: list[Any]) -> str:
    return "output" + "".join("[?]" if k is _ANY else f"[{k!r}]" for k in chain)


def check_chain(chain: list[Any], schema: Any, label: str) -> str | None:
    """Why ``chain`` cannot be in an output of ``schema``, or None."""
    node: Any = schema
    for i, key in enumerate(chain):
        if key is _ANY or node is None:
            return None
        sub, known = _step(node, key, schema)
        if known is not None:
            return f"{_text(chain[: i + 1])}: {key!r} is not in {label}{_hint(str(key), known)}"
        node = sub
    return None


def _contexts(where: str, update: ContextUpdate | None) -> Iterator[tuple[str, str]]:
    if isinstance(update, str):
        yield where, update
    elif update is not None:
        for key, src in update.items():
            yield f"{where}.{key}", src


def input_keys(source: str | None) -> tuple[list[str], bool] | None:
    """The literal keys of an input expression, and whether it also merges ``**others``."""
    if source is None:
        return [], False
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None
    if not isinstance(tree.body, ast.Dict):
        return None
    keys, spread = [], False
    for k in tree.body.keys:
        if k is None:
            spread = True
        elif isinstance(k, ast.Constant) and isinstance(k.value, str):
            keys.append(k.value)
        else:
            return None
    return keys, spread


def check_input(path: str, source: str | None, schema: Any, label: str) -> list[Problem]:
    """The input expression's literal keys against ``schema``."""
    literal = input_keys(source)
    if literal is None or schema is None:
        return []
    keys, spread = literal
    where = f"{path}.invoke.input"
    problems: list[Problem] = []
    alts = [a for a in _alternatives(schema, schema) if isinstance(a, Mapping)]
    required = {r for a in alts for r in a.get("required") or [] if isinstance(r, str)}
    declared = [k for a in alts for k in a.get("properties") or {}]
    closed = bool(alts) and all(a.get("additionalProperties") is False for a in alts if _declares(a))
    closed = closed and any(_declares(a) for a in alts)
    if not spread:
        for key in sorted(required - set(keys)):
            problems.append((where, f"required key {key!r} is missing from the input of {label}"))
    if closed:
        for key in keys:
            if key not in declared:
                problems.append(
                    (where, f"key {key!r} is not in the input schema of {label}{_hint(key, declared)}")
                )
    return problems


def _branch_sources(path: str, inv: Invoke) -> Iterator[tuple[str, str, str]]:
    """Every expression that reads an invoke's ``output``, as ``(branch kind, path, source)``."""
    if inv.if_ is not None:
        yield "success", f"{path}.invoke.if", inv.if_
    if inv.success is not None:
        for where, src in _contexts(f"{path}.invoke.success.context", inv.success.context):
            yield "success", where, src
    if inv.error is not None:
        for where, src in _contexts(f"{path}.invoke.error.context", inv.error.context):
            yield "error", where, src


def check_outputs(
    path: str, inv: Invoke, schema: Any, label: str, error_keys: tuple[str, ...]
) -> list[Problem]:
    """Every ``output[...]`` chain in the invoke's branches against the schemas it can meet."""
    error_schema: dict[str, Any] = {"type": "object", "properties": {k: {} for k in error_keys}}
    if inv.if_ is not None and schema is not None:  # a false `if` sends the result to else
        error_schema = {"anyOf": [error_schema, schema]}
        if isinstance(schema, Mapping) and "$defs" in schema:  # keep the result's local references
            error_schema["$defs"] = schema["$defs"]
    problems: list[Problem] = []
    for kind, where, src in _branch_sources(path, inv):
        target = schema if kind == "success" else error_schema
        what = f"the output schema of {label}" if kind == "success" else f"the error output of {label}"
        if kind == "error" and inv.if_ is not None:
            what = f"the error output or the output schema of {label}"
        if target is None:
            continue
        for chain in output_chains(src):
            why = check_chain(chain, target, what)
            if why is not None:
                problems.append((where, why))
    return list(dict.fromkeys(problems))


def check_invokes(
    m: Machine,
    effects: EffectRegistry,
    service: Callable[[str], CompiledService | None],
    *,
    strict: bool,
) -> list[Problem]:
    """The problems of ``m``'s effect invokes against typed effects and saved services.

    ``service(id)`` is the latest saved version of a service, or None.
    """
    problems: list[Problem] = []
    for _, path, t in m.transitions():
        inv = t.invoke
        if inv is None or inv.effect is None:
            continue
        name = inv.effect
        if effects.has(name):
            typed = effects.typed(name)
            if typed is None:
                continue
            label = f"effect {name!r}"
            in_schema = typed.input.schema if typed.input is not None else None
            out_schema = typed.output.schema if typed.output is not None else None
            error_keys: tuple[str, ...] = ERROR_KEYS
        else:
            split = split_operation(name)
            cs = service(split[0]) if split is not None else None
            if split is None or cs is None:
                if strict:
                    what = f"no service {split[0]!r} is saved" if split else "it names no service.operation"
                    problems.append(
                        (
                            f"{path}.invoke.effect",
                            f"unknown effect {name!r}: no effect of that name is registered and {what}; "
                            "register it with @engine.effect or save the service first",
                        )
                    )
                continue
            svc = cs.service
            if split[1] not in svc.operations:
                problems.append(
                    (
                        f"{path}.invoke.effect",
                        f"service {svc.id!r} v{svc.version} has no operation {split[1]!r}"
                        + _hint(split[1], list(svc.operations)),
                    )
                )
                continue
            op = svc.operations[split[1]]
            label = f"{name} v{svc.version}"
            in_schema, out_schema, error_keys = op.input_schema, op.output_schema, SERVICE_ERROR_KEYS
        problems += check_input(path, inv.input, in_schema, label)
        problems += check_outputs(path, inv, out_schema, label, error_keys)
    return problems
