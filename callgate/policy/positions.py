"""Where a field is written: the (line, column) of a path inside a YAML or JSON document.

Documents are loaded with PyYAML's C loader, which is fast but forgets where
things were. Positions are found afterwards, only for what needs one (a
validation error, a lint finding): the file is parsed again and walked to the
path. A path that does not exist all the way points at its deepest existing
parent, so a missing field points at the object it is missing from.

JSON is YAML, so both go the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from callgate.policy import jsonpositions
from callgate.policy.yamlfast import SAFE_LOADER

Position = tuple[int | None, int | None]  # 1-based (line, column); (None, None) when unknown
FieldPath = tuple[str | int, ...]  # e.g. ("spec", "ingress", 0, "ports")


class Positions:
    """Positions of fields, composing each file once however many are asked for."""

    def __init__(self) -> None:
        self._nodes: dict[str, list[Any] | None] = {}

    def __call__(self, file: str, index: int, path: Sequence[str | int]) -> Position:
        if file not in self._nodes:
            try:
                self._nodes[file] = list(yaml.compose_all(Path(file).read_text(encoding="utf-8"), Loader=SAFE_LOADER))
            except Exception:
                self._nodes[file] = None
        nodes = self._nodes[file]
        if not nodes or index >= len(nodes) or nodes[index] is None:
            return None, None
        node = nodes[index]
        for step in path:
            nxt = None
            if isinstance(node, yaml.MappingNode):
                nxt = next((v for k, v in node.value if k.value == step), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
                nxt = node.value[step]
            if nxt is None:
                break
            node = nxt
        return node.start_mark.line + 1, node.start_mark.column + 1

    def many(self, file: str, index: int, paths: Sequence[Sequence[str | int]]) -> dict[FieldPath, Position]:
        """:meth:`__call__` for many paths of one document (see :meth:`in_documents`)."""
        return self.in_documents(file, {index: paths})[index]

    def in_documents(self, file: str, paths: Mapping[int, Sequence[Sequence[str | int]]]
                     ) -> dict[int, dict[FieldPath, Position]]:
        """:meth:`__call__` for many paths, by document index, from one pass over the
        parser's events instead of composing the file: composing a 3 MB inventory was
        1.3 s (node objects), its events 0.2 s. The events carry the same marks the
        nodes would; whatever the walk cannot vouch for (anchors, aliases, a parse
        error, a file already composed) goes the composing way. All the documents in
        one pass: a pass per document of a 10,000-document file would be quadratic."""
        wanted = {index: [tuple(p) for p in doc_paths] for index, doc_paths in paths.items()}
        if file not in self._nodes:
            try:
                text = Path(file).read_text(encoding="utf-8")
                # JSON that YAML reads the same way: the json module's scanner, faster still.
                json_marks = jsonpositions.marks(text, wanted[0]) if list(wanted) == [0] else None
                found: dict[int, dict[FieldPath, Position]] | None = (
                    {0: dict(json_marks)} if json_marks is not None else _event_marks(text, wanted))
            except Exception:
                found = None
            if found is not None:
                return found
        return {index: {p: self(file, index, p) for p in doc_paths} for index, doc_paths in wanted.items()}


class _Unsure(Exception):
    """The event walk met something only the composer answers exactly."""


def _event_marks(text: str, paths: dict[int, list[FieldPath]]) -> dict[int, dict[FieldPath, Position]]:
    tries: dict[int, dict[Any, Any]] = {}
    for index, doc_paths in paths.items():
        trie = tries[index] = {}
        for path in doc_paths:
            node = trie
            for step in path:
                node = node.setdefault(step, {})
    if "&" in text or "*" in text:
        raise _Unsure  # maybe anchors or aliases: the composer resolves those
    marks: dict[int, dict[FieldPath, tuple[int, int]]] = {index: {} for index in paths}
    events = iter(yaml.parse(text, Loader=SAFE_LOADER))
    doc = -1
    for ev in events:  # the whole stream, so a later syntax error surfaces as it would when composing
        if type(ev) is yaml.DocumentStartEvent:
            doc += 1
            if doc in tries:
                _walk(events, next(events), tries[doc], (), marks[doc])
    out: dict[int, dict[FieldPath, Position]] = {}
    for index, doc_paths in paths.items():
        found, out[index] = marks[index], {}
        for path in doc_paths:
            if () not in found:
                out[index][path] = (None, None)  # no such document
                continue
            depth = len(path)
            while path[:depth] not in found:
                depth -= 1
            out[index][path] = found[path[:depth]]
    return out


def _walk(events: Iterator[Any], ev: Any, trie: dict[Any, Any], prefix: FieldPath,
          marks: dict[FieldPath, tuple[int, int]]) -> None:
    """Record the (line, column) of the node starting with ``ev`` and of the nodes the
    trie asks for under it, consuming its events (a mapping key matches its first
    scalar key of that value, as in :meth:`Positions.__call__`)."""
    if isinstance(ev, yaml.AliasEvent) or (isinstance(ev, yaml.NodeEvent) and ev.anchor is not None):
        raise _Unsure
    marks[prefix] = (ev.start_mark.line + 1, ev.start_mark.column + 1)
    if isinstance(ev, yaml.MappingStartEvent):
        seen: set[str] = set()
        while True:
            key = next(events)
            if isinstance(key, yaml.MappingEndEvent):
                return
            if isinstance(key, yaml.NodeEvent) and key.anchor is not None:
                raise _Unsure
            name = key.value if isinstance(key, yaml.ScalarEvent) else None
            if name is None:
                _skip(events, key)
            value = next(events)
            if name is not None and name not in seen and name in trie:
                seen.add(name)
                _walk(events, value, trie[name], (*prefix, name), marks)
            else:
                if name is not None:
                    seen.add(name)
                _skip(events, value)
    elif isinstance(ev, yaml.SequenceStartEvent):
        i = 0
        while True:
            item = next(events)
            if isinstance(item, yaml.SequenceEndEvent):
                return
            if i in trie:
                _walk(events, item, trie[i], (*prefix, i), marks)
            else:
                _skip(events, item)
            i += 1


_DEPTH = {yaml.MappingStartEvent: 1, yaml.SequenceStartEvent: 1, yaml.MappingEndEvent: -1,
          yaml.SequenceEndEvent: -1}


def _skip(events: Iterator[Any], ev: Any) -> None:
    """Consume the rest of the node starting with ``ev`` (most of a big file goes through
    here: a type look-up per event, nothing more)."""
    depth = _DEPTH.get(type(ev), 0)
    while depth > 0:
        depth += _DEPTH.get(type(next(events)), 0)
