"""Structure-aware mutation of YAML/JSON documents, as hypothesis strategies.

A seed is a file: a list of documents, each a plain tree of mappings, lists and
scalars. :func:`mutated_files` draws a few mutations of one document at random
places in its tree — delete a key, swap a node's type, put in a hostile string
or an out-of-range number, add keys, duplicate items, share a subtree (an
anchor and aliases), tag a node, build an alias bomb — and then writes the file
as block YAML, flow YAML or JSON, sometimes damaging the text afterwards. The
mutator knows nothing about Kubernetes: a new input kind is covered by adding a
seed document (tests/fuzz/seeds.py).

Some YAML features have no place in a plain tree (a mapping that repeats a key,
a tag); the wrappers :class:`Tagged`, :class:`RepeatedKeys` and :class:`Nested` (deeper than
Python's recursion) carry them to
:func:`emit_flow`, the small flow-style emitter that writes them.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import assume
from hypothesis import strategies as st

Tree = Any  # dict | list | str | int | float | bool | None | Tagged | RepeatedKeys | Nested
Path = tuple[Any, ...]  # keys and indexes from the document's root


@dataclass(frozen=True)
class Tagged:
    """A node written with an explicit YAML tag (``!!binary``, ``!custom``, …)."""

    tag: str
    value: Tree


@dataclass(frozen=True)
class Nested:
    """``value`` inside ``depth`` one-item lists (written by the flow emitter without recursion)."""

    depth: int
    value: Tree


@dataclass(frozen=True)
class RepeatedKeys:
    """A mapping written with a key more than once (YAML keeps the last; the API server refuses)."""

    items: tuple[tuple[Tree, Tree], ...]


# -- hostile values ---------------------------------------------------------------

HOSTILE_STRINGS = (
    "", " ", "\x00", "a\x00b", "line\nbreak", "tab\there", "\r\n", "'", '"', "\\", "\\x00", "a'b\"c\\d",
    "x" * 300, "é", "👍", "🏳️‍🌈" * 5, "\u202eevil", "\ufeffbom", "\x1b[31mred\x1b[0m", "\x1b]0;title\x07",
    "[bold]markup[/bold]", "[/]", "%s%n%x", "{}", "${HOME}", "$(reboot)", "`id`", "; drop table",
    "../../etc/passwd", "/", ".", "..", "-", "--help", "*", "&", "!", "#comment", "null", "~", "true", "yes",
    "0x1F", "1e3", "0o17", "2001-12-14", "12:30:45", "198.18.0.0/15", "fd00::/8", "::", "0.0.0.0/0",
    "256.1.1.1", "198.18.0.1/33", "fd00::1/129", "TCP", "tcp", "SCTP", "In", "Exists", "Ingress",
    "kubernetes.io/metadata.name", "a/b/c", "a" * 64, "a" * 254, "A" * 63, "-a-", "a..b",
)
OUT_OF_RANGE_NUMBERS = (
    -1, 0, 1, 65535, 65536, 70000, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63),
    10**100, -0.0, 0.5, 80.0, 1e308, -1e308, math.inf, -math.inf, math.nan, True, False,
)
TAGS = (
    "!!str", "!!int", "!!float", "!!bool", "!!null", "!!binary", "!!timestamp", "!!set", "!!omap", "!!pairs",
    "!!map", "!!seq", "!custom", "!!python/object/apply:os.system", "!!python/name:os.system",
    "tag:yaml.org,2002:str", "!",
)

hostile_strings = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=20))
scalars = st.one_of(hostile_strings, st.sampled_from(OUT_OF_RANGE_NUMBERS), st.none(),
                    st.integers(-(2**70), 2**70))
# Fresh copies: a later mutation may change what it is given in place.
other_shapes = st.sampled_from([{}, [], None, "", 0, [None], {"": None}, [[]], {"a": {"b": []}}, [1, "two", None]]
                               ).map(copy.deepcopy)
keys = st.one_of(hostile_strings, st.sampled_from([0, 1, -1, None, True, 1.5, "apiVersion", "kind", "metadata",
                                                   "spec", "status", "items", "name", "namespace", "labels"]))


# -- walking a tree ----------------------------------------------------------------


def paths(tree: Tree) -> list[Path]:
    """Every node's path, the root's (``()``) first; each shared or recursive node once."""
    found: list[Path] = []
    seen: set[int] = set()
    stack: list[tuple[Path, Tree]] = [((), tree)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, (dict, list)):
            if id(node) in seen:
                continue
            seen.add(id(node))
        found.append(path)
        if isinstance(node, dict):
            stack.extend(((*path, k), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(node))))
    return found


def get(tree: Tree, path: Path) -> Tree:
    for step in path:
        tree = tree[step]
    return tree


def _parent(tree: Tree, path: Path) -> tuple[Tree, Any]:
    return get(tree, path[:-1]), path[-1]


# -- mutations ----------------------------------------------------------------------
# Each takes the document (mutated in place, or replaced: the return value is the new
# root) and a path; it draws what it needs from ``draw``.


def _replace(doc: Tree, path: Path, value: Tree) -> Tree:
    if not path:
        return value
    parent, key = _parent(doc, path)
    parent[key] = value
    return doc


def delete(draw: Any, doc: Tree, path: Path) -> Tree:
    if not path:
        return None
    parent, key = _parent(doc, path)
    del parent[key]
    return doc


def swap_type(draw: Any, doc: Tree, path: Path) -> Tree:
    node = get(doc, path)
    if isinstance(node, dict):
        # (never str(node): a node holding an alias bomb would be expanded to print it)
        options: list[Tree] = [list(node.values()), list(node.keys()), "a mapping", None]
    elif isinstance(node, list):
        options = [{str(i): v for i, v in enumerate(node)}, node[0] if node else "", None]
    else:
        options = [{"value": node}, [node], str(node)[:100], None]
    return _replace(doc, path, draw(st.one_of(st.sampled_from(options).map(copy.deepcopy), other_shapes)))


def hostile_scalar(draw: Any, doc: Tree, path: Path) -> Tree:
    return _replace(doc, path, draw(scalars))


def add_key(draw: Any, doc: Tree, path: Path) -> Tree:
    node = get(doc, path)
    if isinstance(node, dict):
        node[draw(keys)] = draw(st.one_of(scalars, other_shapes))
    elif isinstance(node, list):
        node.insert(draw(st.integers(0, len(node))), draw(st.one_of(scalars, other_shapes)))
    return doc


def rename_key(draw: Any, doc: Tree, path: Path) -> Tree:
    if not path or not isinstance(get(doc, path[:-1]), dict):
        return doc
    parent, key = _parent(doc, path)
    parent[draw(keys)] = parent.pop(key)
    return doc


def repeat_key(draw: Any, doc: Tree, path: Path) -> Tree:
    """Write a mapping with one of its keys twice: first with another value, then the real one."""
    node = get(doc, path)
    if not isinstance(node, dict) or not node:
        return doc
    items = list(node.items())
    i = draw(st.integers(0, len(items) - 1))
    decoy = (items[i][0], draw(st.one_of(scalars, other_shapes)))
    order = draw(st.sampled_from(["decoy-first", "decoy-last"]))
    items.insert(i + (order == "decoy-last"), decoy)
    return _replace(doc, path, RepeatedKeys(tuple(items)))


def grow(draw: Any, doc: Tree, path: Path) -> Tree:
    """A large document: a list repeated many times, or a long string."""
    node = get(doc, path)
    times = draw(st.sampled_from([2, 100, 1000]))
    if isinstance(node, list) and node:
        return _replace(doc, path, [copy.deepcopy(node[i % len(node)]) for i in range(times * len(node))])
    if isinstance(node, str):  # at most 300,000 characters: big, and still quick to write 1000 times
        return _replace(doc, path, (node * times + "x" * draw(st.sampled_from([0, 100_000])))[:300_000])
    if isinstance(node, dict):
        node.update({f"k{i}": i for i in range(times)})
    return doc


def share(draw: Any, doc: Tree, path: Path) -> Tree:
    """Make a node elsewhere the same object as this one: written as an anchor and an alias."""
    others = [p for p in paths(doc) if p and p[: len(path)] != path and path[: len(p)] != p]
    if not others:
        return doc
    other = draw(st.sampled_from(others))
    return _replace(doc, other, get(doc, path))


def recurse(draw: Any, doc: Tree, path: Path) -> Tree:
    """A node that contains itself (``&a [*a]``): a recursive structure."""
    node = get(doc, path)
    if isinstance(node, dict):
        node[draw(keys)] = node
    elif isinstance(node, list):
        node.append(node)
    return doc


def alias_bomb(draw: Any, doc: Tree, path: Path) -> Tree:
    """"Billion laughs": ``levels`` lists, each holding the previous one ``width`` times."""
    width, levels = draw(st.sampled_from([(9, 9), (10, 6), (2, 40)]))
    node: Tree = ["lol"] * width
    for _ in range(levels):
        node = [node] * width
    return _replace(doc, path, node)


def tag(draw: Any, doc: Tree, path: Path) -> Tree:
    return _replace(doc, path, Tagged(draw(st.sampled_from(TAGS)), get(doc, path)))


def nest(draw: Any, doc: Tree, path: Path) -> Tree:
    """Bury a node deep in lists: a few levels, or more than parsers allow (libyaml: 1000)."""
    depth = draw(st.sampled_from([3, 50, 900, 1100]))
    return _replace(doc, path, Nested(depth, get(doc, path)))


MUTATIONS = (delete, swap_type, hostile_scalar, add_key, rename_key, repeat_key, grow, share, recurse, alias_bomb,
             tag, nest)


@st.composite
def mutated_document(draw: Any, seed: Tree, max_mutations: int = 3) -> Tree:
    doc = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, max_mutations))):
        candidates = paths(doc)
        path = draw(st.sampled_from(candidates))
        mutation = draw(st.sampled_from(MUTATIONS))
        doc = mutation(draw, doc, path)
    return doc


# -- writing ---------------------------------------------------------------------------


def _yaml_printable(ch: str) -> bool:
    """What YAML allows unescaped in a stream (YAML 1.1, 5.1: the printable set)."""
    o = ord(ch)
    return (ch in "\t\n\r" or 0x20 <= o <= 0x7E or o == 0x85 or 0xA0 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD
            or 0x10000 <= o <= 0x10FFFF) and ch != "\ufeff"


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif _yaml_printable(ch) and ch not in "\r\t\x85":
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def emit_flow(tree: Tree) -> str:
    """Flow-style YAML of ``tree``: anchors for shared and recursive nodes, tags and repeated keys as wrapped."""
    counts: dict[int, int] = {}

    def count(node: Tree) -> None:
        stack = [node]
        while stack:
            node = stack.pop()
            if isinstance(node, (Tagged, Nested)):
                stack.append(node.value)
            elif isinstance(node, RepeatedKeys):
                stack.extend(v for kv in node.items for v in kv)
            elif isinstance(node, (dict, list)):
                counts[id(node)] = counts.get(id(node), 0) + 1
                if counts[id(node)] == 1:
                    stack.extend(node.values() if isinstance(node, dict) else node)
                    if isinstance(node, dict):
                        stack.extend(node.keys())

    count(tree)
    anchors: dict[int, str] = {}

    def scalar(node: Tree) -> str:
        if node is None:
            return "null"
        if isinstance(node, bool):
            return "true" if node else "false"
        if isinstance(node, int):
            return str(node)
        if isinstance(node, float):
            if math.isnan(node):
                return ".nan"
            if math.isinf(node):
                return ".inf" if node > 0 else "-.inf"
            return repr(node)
        return _quote(str(node))

    def out(node: Tree) -> str:
        if isinstance(node, Tagged):
            return f"{node.tag} {out(node.value)}"
        if isinstance(node, Nested):
            return "[" * node.depth + out(node.value) + "]" * node.depth
        if isinstance(node, RepeatedKeys):
            return "{" + ", ".join(f"{out(k)}: {out(v)}" for k, v in node.items) + "}"
        if isinstance(node, (dict, list)):
            if id(node) in anchors:
                return "*" + anchors[id(node)]
            prefix = ""
            if counts.get(id(node), 0) > 1:
                anchors[id(node)] = f"a{len(anchors)}"
                prefix = f"&{anchors[id(node)]} "
            if isinstance(node, dict):
                # A complex key (a mapping or list) needs the explicit '? ' form.
                body = ", ".join(f"{'? ' if isinstance(k, (dict, list)) else ''}{out(k)}: {out(v)}"
                                 for k, v in node.items())
                return prefix + "{" + body + "}"
            return prefix + "[" + ", ".join(out(v) for v in node) + "]"
        return scalar(node)

    return out(tree)


def shape(tree: Tree) -> tuple[bool, bool]:
    """(plain, shared): plain = no wrappers, a tree PyYAML's own writer takes (it writes
    shared and recursive nodes as anchors and aliases); shared = some mapping or list
    is reached twice, which json would expand (an alias bomb) or refuse (recursion)."""
    stack = [tree]
    seen: set[int] = set()
    plain, shared = True, False
    while stack:
        node = stack.pop()
        if isinstance(node, (Tagged, Nested)):
            plain = False
            stack.append(node.value)
        elif isinstance(node, RepeatedKeys):
            plain = False
            stack.extend(part for item in node.items for part in item)
        elif isinstance(node, (dict, list)):
            if id(node) in seen:
                shared = True
                continue
            seen.add(id(node))
            stack.extend(node.values() if isinstance(node, dict) else node)
    return plain, shared


WRITERS = ("block", "flow", "json")


def write_documents(docs: list[Tree], writer: str) -> tuple[str, str]:
    """The file text and its suffix. ``json`` writes one document; what a writer
    cannot express falls back to flow YAML."""
    shapes = [shape(d) for d in docs]
    if writer == "json" and len(docs) == 1 and shapes[0] == (True, False):
        return json.dumps(docs[0], ensure_ascii=False, default=str), ".json"
    if writer == "block" and all(plain for plain, _ in shapes):
        try:
            return yaml.safe_dump_all(docs, allow_unicode=True, sort_keys=False), ".yaml"
        except (yaml.YAMLError, RecursionError, TypeError, ValueError):
            pass  # e.g. a key PyYAML cannot represent: the flow writer can
    return "\n---\n".join(emit_flow(d) for d in docs) + "\n", ".yaml"


MAX_TEXT = 2_000_000
TEXT_DAMAGE = ("none", "truncate", "insert", "bom", "bad-utf8", "tabs", "crlf")


def damage(text: str, how: str, where: float, junk: str) -> bytes:
    """Damage the written text (``where`` in [0, 1) picks the place)."""
    at = int(len(text) * where)
    if how == "truncate":
        return text[:at].encode()
    if how == "insert":
        return (text[:at] + junk + text[at:]).encode()
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if how == "bad-utf8":
        raw = text.encode()
        return raw[:at] + b"\xff\xfe\xc3" + raw[at:]
    if how == "tabs":
        return text.replace("  ", "\t").encode()
    if how == "crlf":
        return text.replace("\n", "\r\n").encode()
    return text.encode()


@dataclass(frozen=True)
class FuzzFile:
    """A mutated input file: its bytes, suffix and how it was made (for the failure report)."""

    data: bytes
    suffix: str
    how: str

    def __repr__(self) -> str:
        shown = self.data[:600]
        return f"FuzzFile({self.how}, {len(self.data)} bytes, suffix {self.suffix}: {shown!r})"


@st.composite
def mutated_files(draw: Any, seed: list[Tree], max_mutations: int = 3) -> FuzzFile:
    """One seed file with a few mutations of one of its documents, written one of several ways."""
    docs = copy.deepcopy(seed)
    index = draw(st.integers(0, len(docs) - 1))
    docs[index] = draw(mutated_document(docs[index], max_mutations))
    writer = draw(st.sampled_from(WRITERS))
    text, suffix = write_documents(docs, writer)
    # Large, but not so large that one example costs seconds (grown twice, a list is a
    # million items); bigger inputs are the limits tests' business.
    assume(len(text) <= MAX_TEXT)
    how = draw(st.sampled_from(TEXT_DAMAGE)) if draw(st.integers(0, 4)) == 0 else "none"
    junk = draw(st.sampled_from(["{", "]", ":", "- ", "\x00", "&x", "*x", "!!", "'"]))
    data = damage(text, how, draw(st.floats(0, 1, exclude_max=True)), junk)
    return FuzzFile(data, suffix, f"document {index}, {writer}, damage {how}")
