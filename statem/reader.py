"""Reading definition text (YAML or JSON) into plain data, refusing what YAML would hide.

PyYAML's ``safe_load`` is safe from code execution, not from surprises: it expands
aliases (a 477-byte "billion laughs" file becomes gigabytes once anything walks it), it
recurses on nesting (``RecursionError``), the last of two equal keys silently wins, and
YAML 1.1 reads unquoted ``on``/``off``/``yes``/``no`` as booleans. The loader here
composes the document first and checks the node graph before building any value:

* at most :data:`MAX_DEPTH` levels of nesting (checked while composing, so no
  ``RecursionError``);
* at most :data:`MAX_ALIASES` aliases, no alias to a node containing itself, and at most
  :data:`MAX_NODES` nodes once aliases are expanded;
* no key twice in one mapping (the error names the key and both lines);
* no ``on``/``off``/``yes``/``no`` read as a boolean, except as the value of ``end``.

:func:`check_shape` bounds the same depth and size for data from JSON or a Python dict.
Every problem is a :class:`~statem.errors.DefinitionError` naming the file, the line and
the path.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import DefinitionError

#: Deepest nesting of mappings and lists in a definition (a real one needs about 10).
MAX_DEPTH = 50
#: Most values (mappings, lists and scalars) in a definition, counting aliases expanded.
MAX_NODES = 100_000
#: Most YAML aliases (``*name``) in one file.
MAX_ALIASES = 100

_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"
#: Keys whose value is a boolean in the model: ``end: yes`` means what it says.
_BOOLEAN_KEYS = frozenset({"end"})


class _Refused(Exception):
    """A shape problem found while composing: its path, line (0: none) and message."""

    def __init__(self, path: str, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting and counts aliases while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _Refused("", f"more than {MAX_ALIASES} YAML aliases", mark.line + 1)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _Refused("", f"nested deeper than {MAX_DEPTH} levels", mark.line + 1)
        try:
            node: Node | None = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        return node


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _expanded_size(root: Node) -> None:
    """Refuse a node graph that is cyclic or larger than MAX_NODES with aliases expanded."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise _Refused("", "a YAML alias refers to a node that contains it", _line(node))
        open_.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child)
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
        open_.discard(key)
        if total > MAX_NODES:
            raise _Refused(
                "",
                f"the document expands to more than {MAX_NODES} values through its aliases (an alias bomb?)",
            )
        sizes[key] = total
        return total

    size(root)


def _is_yaml11_bool(node: Node) -> bool:
    return (
        isinstance(node, ScalarNode)
        and node.tag == _BOOL_TAG
        and node.style is None
        and str(node.value).lower() not in ("true", "false")
    )


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _surprises(loader: _Loader, root: Node) -> list[tuple[str, int, str]]:
    """Duplicate keys and YAML 1.1 booleans, as ``(path, line, message)``."""
    problems: list[tuple[str, int, str]] = []
    todo: list[tuple[Node, str, str | None]] = [(root, "", None)]
    while todo:
        node, path, parent_key = todo.pop()
        if _is_yaml11_bool(node) and parent_key not in _BOOLEAN_KEYS:
            value = loader.construct_object(node)
            problems.append(
                (path, _line(node), f"value {node.value!r} was read by YAML as the boolean {value}; "
                 f"quote it ('{node.value}') if you meant the text")
            )  # fmt: skip
        if isinstance(node, SequenceNode):
            todo.extend((child, f"{path}[{i}]", None) for i, child in enumerate(node.value))
        elif isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for k, v in node.value:
                if k.tag == _MERGE_TAG:
                    todo.append((v, path, None))
                    continue
                key = loader.construct_object(k) if isinstance(k, ScalarNode) else None
                if _is_yaml11_bool(k):
                    problems.append(
                        (path, _line(k), f"key {k.value!r} was read by YAML as the boolean {key}; "
                         f"quote it ('{k.value}')")
                    )  # fmt: skip
                if isinstance(k, ScalarNode):
                    try:
                        first = seen.get(key)
                    except TypeError:
                        first = None
                    if first is not None:
                        problems.append(
                            (_join(path, key), _line(k), f"duplicate key {k.value!r} (first at line "
                             f"{first}); the last one would silently win")
                        )  # fmt: skip
                    else:
                        with contextlib.suppress(TypeError):  # an unhashable key: YAML refuses it later
                            seen[key] = _line(k)
                todo.append((v, _join(path, key if key is not None else "?"), str(key)))
    return problems


def _flow_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting, counted naively (brackets inside quotes count too).

    PyYAML's scanner is quadratic in the depth of flow collections, so a deep one is
    refused before the scanner sees it.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return deepest


def load_yaml(text: str, origin: str) -> Any:
    """Plain data from YAML text, or DefinitionError naming every surprise (see the module doc)."""
    if _flow_depth(text) > 4 * MAX_DEPTH:  # room for brackets inside expressions
        raise DefinitionError(None, [("", f"{origin}: nested deeper than {MAX_DEPTH} levels")])
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_size(root)
        problems = _surprises(loader, root)
        if problems:
            ordered = sorted(problems, key=lambda p: p[1])
            raise DefinitionError(None, [(path, f"{origin}:{line}: {msg}") for path, line, msg in ordered])
        return loader.construct_document(root)
    except _Refused as exc:
        where = f"{origin}:{exc.line}" if exc.line else origin
        raise DefinitionError(None, [(exc.path, f"{where}: {exc.message}")]) from None
    except RecursionError:
        raise DefinitionError(None, [("", f"{origin}: nested deeper than {MAX_DEPTH} levels")]) from None
    finally:
        loader.dispose()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(key, f"duplicate key {key!r}; the last one would silently win")
        out[key] = value
    return out


def load_json(text: str, origin: str) -> Any:
    """Plain data from JSON text; duplicate keys and deep nesting are DefinitionErrors."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _Refused as exc:
        raise DefinitionError(None, [("", f"{origin}: {exc.message}")]) from None
    except RecursionError:
        raise DefinitionError(None, [("", f"{origin}: nested deeper than {MAX_DEPTH} levels")]) from None


def check_shape(data: Any, origin: str = "definition") -> None:
    """Refuse data nested deeper than MAX_DEPTH or holding more than MAX_NODES values.

    Shared parts count every time they are reached (what a walk over the data costs).
    """
    count = 0
    todo: list[tuple[Any, int]] = [(data, 1)]
    while todo:
        value, depth = todo.pop()
        count += 1
        if count > MAX_NODES:
            raise DefinitionError(None, [("", f"{origin} holds more than {MAX_NODES} values")])
        if depth > MAX_DEPTH:
            raise DefinitionError(None, [("", f"{origin} is nested deeper than {MAX_DEPTH} levels")])
        if isinstance(value, Mapping):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list | tuple):
            todo.extend((v, depth + 1) for v in value)
