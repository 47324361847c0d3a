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
* nesting deeper than libyaml's 1000 levels (msgspec, like the json module,
  stops before: it counts levels against the recursion limit, unless that
  was raised).

The whole text is checked to be one JSON value in C, without building it
(msgspec's ``Raw``), as YAML would read all of it; after that only the values on
the way to the paths asked for are listed, and a container's members only up
to the one a path needs: a namespace's place in a 15 MB inventory no longer
scans the 50,000 pods written after the namespaces. In ASCII text a member's
end is its start plus the length of its text, which msgspec finds for all of
a container's members at once (again without building them); other text is
scanned member by member with the json module.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from callgate.policy.positions import FieldPath

_NOT_PLAIN = re.compile("[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")
_PLAIN_ASCII = b"\n" + bytes(range(0x20, 0x7F))  # the ASCII characters _NOT_PLAIN allows
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_KEY_ACROSS_LINES = re.compile(r'"[ \n]*\n[ \n]*:')
_SPACES = re.compile(r"[ \n]*")
# In a text that is JSON (checked first): a key with its colon and the spaces around
# it (group 1: the key as written), and the comma ending a member, if any.
_KEY = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"[ \n]*:[ \n]*')
_AFTER = re.compile(r"[ \n]*(,?)[ \n]*")
# A key's colon must be within 1024 characters of its start (libyaml counts characters):
# keys shorter than 900 characters with fewer than 100 spaces before their colon are.
# One pass over the quotes for both (a pass each was a fifth of placing a 15 MB inventory).
_LONG_KEY_OR_SPACE_BEFORE_COLON = re.compile(r'"(?:[^"]{900,}"[ \n]*|[ \n]{100,}):')
_LIBYAML_MAX_DEPTH = 1000  # flow levels
_SCAN = json.JSONDecoder().raw_decode  # one value from an offset: (value, end), scanned in C


def marks(text: str, paths: Sequence[FieldPath]) -> dict[FieldPath, tuple[int, int]] | None:
    """The 1-based (line, column) where each path is written in a JSON text, or where
    its deepest existing parent is (as the composer walks); None when the text is not
    JSON that YAML reads the same way."""
    start = _space(text, 0)
    if text[start:start + 1] not in ("{", "[") or not _one_json_value(text) or not _plain(text):
        return None
    walker = _Walker.over(text, start)
    try:
        offsets = {path: walker.offset(start, path) for path in paths}
    except (ValueError, IndexError, RecursionError):  # not expected of checked JSON: the YAML way decides
        return None
    return _line_columns(text, offsets)


def _one_json_value(text: str) -> bool:
    """Is the whole text one JSON value (surrounded by whitespace at most), nested
    less deeply than libyaml allows? Checked in C without building the value."""
    # msgspec counts nesting against the recursion limit: with the usual limit it
    # stops before libyaml's 1000 levels (at 996), with a raised one it may not.
    if sys.getrecursionlimit() > _LIBYAML_MAX_DEPTH:
        return False
    try:
        msgspec.json.decode(text, type=msgspec.Raw)
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        return False
    return True


def _plain(text: str) -> bool:
    """No character, escape, key or nesting where YAML and JSON part ways (``text``:
    one JSON value, see :func:`_one_json_value`)."""
    if _refused_character(text) or _SURROGATE_ESCAPE.search(text) or (
            "\n" in text and _KEY_ACROSS_LINES.search(text)):  # most big JSON is one line
        return False
    # Same length, but no quote or backslash inside a string is escaped any more, so a
    # run between quotes is a string (or what separates two).
    masked = text.replace("\\\\", "__").replace('\\"', "__")
    return not _LONG_KEY_OR_SPACE_BEFORE_COLON.search(masked)


def _refused_character(text: str) -> bool:
    """Does ``text`` hold a character outside :data:`_NOT_PLAIN`'s complement? ASCII
    text (most JSON) is checked as bytes, deleting the allowed ones: 2.5x the regex."""
    if text.isascii():
        return bool(text.encode("ascii").translate(None, _PLAIN_ASCII))
    return _NOT_PLAIN.search(text) is not None


# A container's members as their texts, decoded in C without building them: a member's
# length is where it ends, so listing a 10,000-document List no longer builds each
# document (the json scanner) to find where the next one starts.
_RAW_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_AFTER_VALUE = frozenset(" \n,]}")  # what may follow a value in JSON without tabs or \r


@dataclass
class _Listing:
    """A container's members found so far: keys (or indices) to where their values
    start, and where the next member starts (None once all are listed). ``raws``: the
    members' texts (see :data:`_RAW_ARRAY`), when the container's extent was known."""

    members: dict[str, int] | list[int]
    resume: int | None
    raws: list[msgspec.Raw] | dict[str, msgspec.Raw] | None = None


@dataclass
class _Walker:
    """Offsets of values, each container's members listed once and only as far as asked.

    ``data``: the text as bytes when it is ASCII (byte offsets are then character
    offsets), so containers can be decoded as member texts; None: every member is
    scanned with the json module."""

    text: str
    data: memoryview | None = None
    _listings: dict[int, _Listing] = field(default_factory=dict)  # container start -> its listing
    _ends: dict[int, int] = field(default_factory=dict)  # value start -> its end, where known

    @classmethod
    def over(cls, text: str, start: int) -> _Walker:
        """A walker of ``text`` (one JSON value, checked) whose value starts at ``start``."""
        if not text.isascii():
            return cls(text)
        # The root ends where the spaces after it begin.
        return cls(text, memoryview(text.encode("ascii")), _ends={start: len(text.rstrip(" \n"))})

    def offset(self, start: int, path: FieldPath) -> int:
        """Where ``path`` (or its deepest existing parent) starts, from the value at ``start``."""
        at = start
        for step in path:
            if self.text[at] not in ("{", "["):
                break
            nxt = self._member(at, step)
            if nxt is None:
                break
            at = nxt
        return at

    def _member(self, at: int, step: str | int) -> int | None:
        listing = self._listings.get(at)
        if listing is None:
            listing = self._listings[at] = self._opened(at)
        members = listing.members
        if isinstance(members, dict):
            if not isinstance(step, str):
                return None
            while step not in members and listing.resume is not None:
                listing.resume = self._next_pair(listing, members, listing.resume)
            return members.get(step)
        if not isinstance(step, int) or step < 0:
            return None
        while len(members) <= step and listing.resume is not None:
            start = listing.resume
            members.append(start)
            raws = listing.raws
            if isinstance(raws, list) and len(members) <= len(raws):
                end = self._ends[start] = start + len(raws[len(members) - 1])
            else:
                end = _SCAN(self.text, start)[1]
            listing.resume = self._after_member(end, "]")
        return members[step] if step < len(members) else None

    def _opened(self, at: int) -> _Listing:
        mapping = self.text[at] == "{"
        i = _space(self.text, at + 1)
        empty = self.text[i] == ("}" if mapping else "]")
        raws: list[msgspec.Raw] | dict[str, msgspec.Raw] | None = None
        end = self._ends.get(at)
        if not empty and self.data is not None and end is not None:
            raws = (_RAW_OBJECT if mapping else _RAW_ARRAY).decode(self.data[at:end])
        return _Listing({} if mapping else [], None if empty else i, raws)

    def _next_pair(self, listing: _Listing, members: dict[str, int], i: int) -> int | None:
        """Lists the key and value at ``i``; where the next pair starts."""
        text = self.text
        match = _KEY.match(text, i)  # the key, its colon and the spaces around it at once
        if match is None:
            raise ValueError(f"expected a key at {i}")
        key = match.group(1)
        if "\\" in key:
            key = json.loads(f'"{key}"')
        at = match.end()
        members.setdefault(key, at)  # the first of duplicate keys, as the composer walks
        return self._after_member(self._value_end(listing, key, at), "}")

    def _value_end(self, listing: _Listing, key: str, at: int) -> int:
        """Where the value of ``key`` starting at ``at`` ends. Of duplicate keys the decoded
        object holds the last value: its text is taken only where it is this one's."""
        raws = listing.raws
        if isinstance(raws, dict) and self.data is not None and key in raws:
            raw = raws[key]
            end = at + len(raw)
            # A number may be the start of a longer one (1 and 12): what follows must end it.
            if self.data[at:end] == raw and self.text[end:end + 1] in _AFTER_VALUE:
                self._ends[at] = end
                return end
        return _SCAN(self.text, at)[1]

    def _after_member(self, i: int, close: str) -> int | None:
        """Past a member ending at ``i``: where the next one starts, None at ``close``."""
        match = _AFTER.match(self.text, i)
        assert match is not None  # every part is optional
        if match.group(1):
            return match.end()
        _expect(self.text, match.end(), close)
        return None


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

