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

from dataclasses import dataclass
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
    StreamStartEvent,
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
        parser.get_event()  # StreamStartEvent
        return _walk(parser.get_event, _PlainScalars(), [], [], None)
    finally:
        parser.dispose()


def _walk(next_event: Any, plain: _PlainScalars, stack: list[Any], keys: list[tuple[Any] | None],
          watch: list[tuple[Any, Any]] | None) -> list[Any]:
    """The documents of the events up to the stream's end, built from ``stack``: the open
    collections, innermost last; for a mapping, ``keys`` holds the key waiting for its
    value (a 1-tuple) or None when a key comes next. ``watch`` (when given) gets each
    event that opens or closes a document's root or a value of it, with that collection,
    and the stream's end: what :func:`load_head` checks the shape of the text by."""
    docs: list[Any] = []
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
            if watch is not None and len(stack) <= 2:
                watch.append((ev, stack[-1]))
            continue
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            value = stack.pop()
            keys.pop()
            if watch is not None and len(stack) <= 1:
                watch.append((ev, value))
        elif kind is DocumentStartEvent or kind is DocumentEndEvent:
            continue
        elif kind is StreamEndEvent:
            if watch is not None:
                watch.append((ev, None))
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


# -- one text parsed in two parts, on two cores -------------------------------
#
# A big inventory is one document whose list of endpoints is most of its text,
# written as PyYAML, kubectl and yq write a list: an item per "- " at column 0.
# Cut before such a line, the head parses alone and the tail parses after a
# one-line head of its own ("x:"), each with the walk above; joined, they are
# the documents of the whole text exactly when the head's last document ends
# inside that list. Why: at a line's column 0 no scalar and no comment is still
# open (a block or plain scalar of a mapping at column 0 is indented more; a
# quoted scalar or a flow collection left open fails the head's parse), so the
# whole text's parser reads that "- " as the next item of whatever list is open
# there. :func:`load_head` checks that this is the head's last node: a block
# list at column 0, the value of a block mapping at column 0 that is its
# document's root, with nothing but comments and blank lines after its last
# item (its end is where the stream ends). Anything else (an error in either
# part, an anchor, a tag, a merge key: whatever the walk leaves to the safe
# loader) and the caller parses the whole text as before, so every result and
# every error stays load_all's.

TAIL_HEAD = "x:\n"
_CONTINUED = object()  # the tail's stand-in for the key of the list it continues: equal to no YAML key


@dataclass
class Head:
    """The documents of a text's head and the list its tail goes on with."""

    docs: list[Any]
    continued: list[Any]


@dataclass
class Tail:
    """A text's tail: the items that continue the head's list, the pairs of the head's
    root mapping after that list (in their order), and the documents after that one."""

    items: list[Any]
    pairs: dict[Any, Any]
    later: list[Any]


def cut_point(text: str, start: int) -> int | None:
    """Where ``text`` may be cut in two: the first line from ``start`` on that begins
    with ``- ``; None when there is none, or the text has a directive (``%YAML``,
    ``%TAG``: they would hold for the head's document only)."""
    if text.startswith("%") or "\n%" in text:
        return None
    at = text.find("\n- ", start)
    return None if at < 0 else at + 1


def load_head(text: str) -> Head | None:
    """The documents of ``text``, the head of a cut (see above); None when a tail cannot
    be joined to it, or the walk leaves it to the safe loader."""
    watch: list[tuple[Any, Any]] = []
    try:
        parser = SAFE_LOADER(text)
        try:
            parser.get_event()  # StreamStartEvent
            docs = _walk(parser.get_event, _PlainScalars(), [], [], watch)
        finally:
            parser.dispose()
    except (_Unsupported, yaml.YAMLError, TypeError):
        return None
    # The last events opening or closing a root or a root's value must be: the list opens,
    # the list closes where the stream ends, the root closes, the stream ends.
    if len(watch) < 5 or not docs:
        return None
    (opened, seq), (closed, _), (root_closed, root), (end, _) = watch[-4:]
    if not (opened.__class__ is SequenceStartEvent and closed.__class__ is SequenceEndEvent
            and root_closed.__class__ is MappingEndEvent and root is docs[-1] and opened.flow_style is False
            and _column(opened) == 0 and _place(closed) == _place(end) is not None):
        return None
    root_opened = next(ev for ev, value in reversed(watch) if value is root and ev.__class__ is MappingStartEvent)
    if root_opened.flow_style is not False or _column(root_opened) != 0:
        return None
    return Head(docs, seq)


def _place(event: Any) -> tuple[int, int] | None:
    mark = event.start_mark
    return None if mark is None else (mark.line, mark.column)


def _column(event: Any) -> int | None:
    place = _place(event)
    return None if place is None else place[1]


def load_tail(text: str) -> Tail | None:
    """The tail of a cut (see above), or None when the walk cannot build it."""
    try:
        parser = SAFE_LOADER(TAIL_HEAD + text)
        try:
            for expected in (StreamStartEvent, DocumentStartEvent, MappingStartEvent, ScalarEvent):
                if parser.get_event().__class__ is not expected:
                    return None
            pairs: dict[Any, Any] = {}
            docs = _walk(parser.get_event, _PlainScalars(), [pairs], [(_CONTINUED,)], None)
        finally:
            parser.dispose()
    except (_Unsupported, yaml.YAMLError, TypeError):
        return None
    items = pairs.pop(_CONTINUED, None)
    if not docs or docs[0] is not pairs or items.__class__ is not list:
        return None
    return Tail(items, pairs, docs[1:])


def joined(head: Head, tail: Tail) -> list[Any]:
    """The documents of the whole text: as its parser would, the head's list takes the
    tail's items, then the root mapping the tail's pairs (a key it has already keeps
    its place and takes the later value), then the later documents follow."""
    head.continued.extend(tail.items)
    root = head.docs[-1]
    for key, value in tail.pairs.items():
        root[key] = value
    return head.docs + tail.later
