"""YAML documents as PyYAML's safe loader reads them, built ~10x faster.

``yaml.load_all(text, Loader=CSafeLoader)`` parses in C (libyaml) but composes
a node object per scalar, mapping and sequence and then constructs the Python
values from those nodes in Python: for a 50,000-pod inventory (2.3 million
parser events) that was ~90% of loading it. :func:`load_all` reads the same C
parser's events and builds the values directly:

* the parser is the same (libyaml through PyYAML's ``CParser``), so the
  structure and every parse error are the same;
* a plain scalar's type is decided by PyYAML's own resolver and its value by
  PyYAML's own ``SafeConstructor`` (once per distinct text: a big inventory
  repeats its keys and label values thousands of times); a quoted scalar is a
  string, as with the safe loader;
* whatever this walk does not handle itself — anchors and aliases, explicit
  tags, merge keys, a collection as a key, anything that fails — makes
  :func:`load_all` start over with ``yaml.load_all``, so the result and any
  error are exactly the safe loader's.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from callgate.errors import shown

try:  # pragma: no cover - depends on how PyYAML was built
    _BASE_LOADER: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _BASE_LOADER = yaml.SafeLoader


class _Loader(_BASE_LOADER):  # type: ignore[misc,valid-type]
    """The safe loader, with a checked constructor for every scalar tag whose PyYAML
    constructor trusts its input.

    PyYAML builds ints, floats, booleans and timestamps from text its implicit
    resolver has already matched; an explicit tag skips that match, and ``!!float web``
    or ``!!int ""`` then end in ValueError, IndexError, KeyError or AttributeError. Here they
    are a ConstructorError with the node's position, like every other YAML mistake."""


_UNTRUSTED = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


def _checked(kind: str, construct: Any) -> Any:
    def construct_checked(loader: Any, node: yaml.Node) -> Any:
        try:
            return construct(loader, node)
        except _UNTRUSTED:
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown(node.value)} is not a valid {kind}", node.start_mark) from None

    return construct_checked


for _kind in ("int", "float", "bool", "timestamp"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_kind}",
                            _checked(_kind, getattr(yaml.constructor.SafeConstructor, f"construct_yaml_{_kind}")))

SAFE_LOADER: Any = _Loader

_STR = "tag:yaml.org,2002:str"
# Plain-scalar tags whose value SafeConstructor builds from the scalar alone.
_SCALAR_TAGS = frozenset({_STR, "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                          "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"})


class _Unsupported(Exception):
    """Something only the full safe loader handles exactly."""


class _PlainScalars:
    """Plain scalar text → the value the safe loader builds for it, memoised."""

    def __init__(self) -> None:
        self._resolver = yaml.resolver.Resolver()
        self._constructor = yaml.constructor.SafeConstructor()
        # text -> text (a string) or a 1-tuple holding another value
        self._seen: dict[str, Any] = {}

    def value(self, text: str) -> Any:
        found = self._seen.get(text)
        if found is None:
            tag = self._resolver.resolve(yaml.ScalarNode, text, (True, False))
            if tag not in _SCALAR_TAGS:
                raise _Unsupported(tag)  # a merge key '<<', the value tag '='
            try:
                found = text if tag == _STR else (self._constructor.construct_object(yaml.ScalarNode(tag, text)),)
            except _UNTRUSTED:
                raise _Unsupported(tag) from None  # the safe loader says where and why
            self._seen[text] = found
        return found if found.__class__ is str else found[0]


def load_all(text: str) -> list[Any]:
    """Every document of ``text``, equal to ``list(yaml.load_all(text, Loader=SAFE_LOADER))``."""
    try:
        return _events_to_values(text)
    except (_Unsupported, yaml.YAMLError, TypeError):
        # TypeError: an unhashable key. The safe loader gives the exact result
        # or raises its own error for it.
        return list(yaml.load_all(text, Loader=SAFE_LOADER))


def _events_to_values(text: str) -> list[Any]:
    parser = SAFE_LOADER(text)
    try:
        return _build(parser.get_event, _PlainScalars())
    finally:
        parser.dispose()


def _build(next_event: Any, plain: _PlainScalars) -> list[Any]:
    docs: list[Any] = []
    # Open collections, innermost last; for a mapping, `keys` holds the key
    # waiting for its value (a 1-tuple) or None when a key comes next.
    stack: list[Any] = []
    keys: list[tuple[Any] | None] = []
    next_event()  # StreamStartEvent
    while True:
        ev = next_event()
        kind = ev.__class__
        if kind is ScalarEvent:
            if ev.anchor is not None or ev.tag is not None:
                raise _Unsupported("anchor or tag")
            value = plain.value(ev.value) if ev.implicit[0] else ev.value
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            if ev.anchor is not None or ev.tag is not None:
                raise _Unsupported("anchor or tag")
            stack.append({} if kind is MappingStartEvent else [])
            keys.append(None)
            continue
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            value = stack.pop()
            keys.pop()
        elif kind is DocumentStartEvent or kind is DocumentEndEvent:
            continue
        elif kind is StreamEndEvent:
            return docs
        else:
            raise _Unsupported(kind.__name__)  # AliasEvent
        if not stack:
            docs.append(value)
            continue
        top = stack[-1]
        if top.__class__ is list:
            top.append(value)
        elif (key := keys[-1]) is None:
            keys[-1] = (value,)
        else:
            top[key[0]] = value  # TypeError for a collection as the key: the safe loader reports it
            keys[-1] = None
