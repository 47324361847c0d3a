"""Positions in a JSON text without a YAML parser: the fast way for :mod:`callgate.policy.positions`.

A JSON text is a YAML flow collection, and PyYAML's nodes start where their JSON
values start (the ``{``, the ``[``, a string's opening quote, a number's first
character). So for JSON that PyYAML reads exactly as JSON does, a value's offset
gives the same (line, column) as the composer, found with the json module's C
scanner instead of a Python event per token: 20 MB of policies and inventory took
1.8 s as YAML events.

Only such JSON takes this way; :func:`marks` answers None for anything else,
and the caller asks PyYAML. Where PyYAML differs from JSON on valid JSON:

* characters YAML does not accept in a stream (controls, DEL, C1, BOM,
  surrogates) and line breaks JSON does not know (``\\r``, NEL, LS, PS), which
  would change the line count; tabs, so no indentation rule can apply;
* escaped surrogates (``\\ud83d``), which libyaml refuses;
* a key more than 1024 characters before its colon, or on another line than
  its colon (YAML's limits on implicit keys);
* nesting deeper than libyaml's 1000 levels (the json module stops before,
  unless the recursion limit was raised).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callgate.policy.positions import FieldPath

_NOT_PLAIN = re.compile("[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_KEY_ACROSS_LINES = re.compile(r'"[ \n]*\n[ \n]*:')
_SPACES = re.compile(r"[ \n]*")
# A key's colon must be within 1024 characters of its start (libyaml counts characters):
# keys shorter than 900 characters with fewer than 100 spaces before their colon are.
_LONG_KEY = re.compile(r'"[^"]{900,}"[ \n]*:')
_LONG_SPACE_BEFORE_COLON = re.compile(r'"[ \n]{100,}:')
_LIBYAML_MAX_DEPTH = 1000  # flow levels
_SCAN = json.JSONDecoder().raw_decode  # one value from an offset: (value, end), scanned in C


def marks(text: str, paths: Sequence[FieldPath]) -> dict[FieldPath, tuple[int, int]] | None:
    """The 1-based (line, column) where each path is written in a JSON text, or where
    its deepest existing parent is (as the composer walks); None when the text is not
    JSON that YAML reads the same way."""
    start = _space(text, 0)
    if text[start:start + 1] not in ("{", "[") or not _plain(text):
        return None
    walker = _Walker(text)
    try:
        # The root's members, each value scanned: all of the text is read as JSON once,
        # as YAML would read all of it.
        if _space(text, walker.end(start)) != len(text):
            return None
    except (ValueError, IndexError, RecursionError):
        return None
    offsets = {path: walker.offset(start, path) for path in paths}
    return _line_columns(text, offsets)


def _plain(text: str) -> bool:
    """No character, escape, key or nesting where YAML and JSON part ways."""
    if _NOT_PLAIN.search(text) or _SURROGATE_ESCAPE.search(text) or _KEY_ACROSS_LINES.search(text):
        return False
    # The json module nests no deeper than the recursion limit allows: with the usual
    # limit, never as deep as libyaml refuses.
    if sys.getrecursionlimit() > _LIBYAML_MAX_DEPTH:
        return False
    # Same length, but no quote or backslash inside a string is escaped any more, so a
    # run between quotes is a string (or what separates two).
    masked = text.replace("\\\\", "__").replace('\\"', "__")
    return not _LONG_KEY.search(masked) and not _LONG_SPACE_BEFORE_COLON.search(masked)


class _Walker:
    """Offsets of values, each container's members listed once (and checked as JSON)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._members: dict[int, tuple[dict[str, int] | list[int], int]] = {}  # start -> (members, end)

    def offset(self, start: int, path: FieldPath) -> int:
        """Where ``path`` (or its deepest existing parent) starts, from the value at ``start``."""
        at = start
        for step in path:
            if self.text[at] not in ("{", "["):
                break
            members = self._listed(at)[0]
            if isinstance(members, dict):
                nxt = members.get(step) if isinstance(step, str) else None
            else:
                nxt = members[step] if isinstance(step, int) and 0 <= step < len(members) else None
            if nxt is None:
                break
            at = nxt
        return at

    def end(self, at: int) -> int:
        """Just past the container starting at ``at``."""
        return self._listed(at)[1]

    def _listed(self, at: int) -> tuple[dict[str, int] | list[int], int]:
        found = self._members.get(at)
        if found is None:
            found = self._members[at] = self._mapping(at) if self.text[at] == "{" else self._sequence(at)
        return found

    def _mapping(self, at: int) -> tuple[dict[str, int], int]:
        text, out = self.text, dict[str, int]()
        i = _space(text, at + 1)
        if text[i] == "}":
            return out, i + 1
        while True:
            _expect(text, i, '"')
            key, i = _SCAN(text, i)
            i = _space(text, i)
            _expect(text, i, ":")
            i = _space(text, i + 1)
            out.setdefault(key, i)  # the first of duplicate keys, as the composer walks
            i = _space(text, _SCAN(text, i)[1])
            if text[i] == "}":
                return out, i + 1
            _expect(text, i, ",")
            i = _space(text, i + 1)

    def _sequence(self, at: int) -> tuple[list[int], int]:
        text, out = self.text, list[int]()
        i = _space(text, at + 1)
        if text[i] == "]":
            return out, i + 1
        while True:
            out.append(i)
            i = _space(text, _SCAN(text, i)[1])
            if text[i] == "]":
                return out, i + 1
            _expect(text, i, ",")
            i = _space(text, i + 1)


def _space(text: str, at: int) -> int:
    return _SPACES.match(text, at).end()  # type: ignore[union-attr]  # always matches


def _expect(text: str, at: int, char: str) -> None:
    if text[at] != char:
        raise ValueError(f"expected {char!r} at {at}")


def _line_columns(text: str, offsets: dict[FieldPath, int]) -> dict[FieldPath, tuple[int, int]]:
    """Offsets as 1-based (line, column), counting newlines once from the start."""
    out: dict[int, tuple[int, int]] = {}
    line, line_start, done = 1, 0, 0
    for at in sorted(set(offsets.values())):
        breaks = text.count("\n", done, at)
        if breaks:
            line += breaks
            line_start = text.rfind("\n", done, at) + 1
        out[at] = (line, at - line_start + 1)
        done = at
    return {path: out[at] for path, at in offsets.items()}

