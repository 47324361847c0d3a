"""One YAML text parsed in two parts (callgate.policy.yamlfast: cut_point, load_head,
load_tail, joined) equals the whole text parsed at once, or is refused.

The two parts are parsed by two processes (callgate.policy.ahead), so what
is checked here is the rule the join rests on: for every cut before a line
that starts with ``- ``, either the head or the tail is refused, or the joined
documents are the safe loader's documents of the whole text, which must then
parse. A refusal only costs time (the reader parses the whole text itself).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.policy import yamlfast
from tests.test_yaml_fast import TRICKY, _comparable, fragments, safe_load_all, trees


def split_outcome(text: str, cut: int) -> Any:
    """The joined documents of ``text`` cut at ``cut``, or None when refused."""
    head = yamlfast.load_head(text[:cut])
    tail = yamlfast.load_tail(text[cut:])
    if head is None or tail is None:
        return None
    return ("ok", _comparable(yamlfast.joined(head, tail)))


def whole_outcome(text: str) -> Any:
    try:
        return ("ok", _comparable(safe_load_all(text)))
    except yaml.YAMLError as exc:
        return ("error", str(exc))


def cuts(text: str) -> list[int]:
    return [m.start() + 1 for m in re.finditer(r"\n- ", text)]


def assert_every_cut_joins_or_is_refused(text: str) -> int:
    """How many cuts joined (each equal to the whole text's documents)."""
    whole = whole_outcome(text)
    joined = 0
    for cut in cuts(text):
        got = split_outcome(text, cut)
        if got is not None:
            assert got == whole, (text, cut)
            joined += 1
    return joined


# Documents as an inventory or a kubectl dump is written: a root mapping whose
# values include lists, in PyYAML's block style (lists at column 0).
roots = st.dictionaries(st.one_of(st.sampled_from(["items", "endpoints", "kind", *TRICKY]), st.text(max_size=4)),
                        st.one_of(trees, st.lists(trees, min_size=1, max_size=5)), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.lists(roots, min_size=1, max_size=3), st.booleans(), st.sampled_from([None, "'", '"']))
def test_block_documents_split_anywhere_join_to_the_whole(docs: list[Any], explicit: bool, style: Any) -> None:
    text = yaml.safe_dump_all(docs, default_flow_style=False, explicit_start=explicit, default_style=style)
    assert_every_cut_joins_or_is_refused(text)


line_fragments = st.sampled_from(["\n- ", "\n- a", "\n- {k: v}", "\n-", "\nitems:", "\nkind: x", "\n  - b",
                                  "\n  c: 1", "\n# c", "\n", "\n---", "\n...", "\n%YAML 1.1", '\n- "q', '\n  r"',
                                  "\n- [1,", "\n  2]", "\n- |", "\n  t", "\n  - u", "\n- &a x", "\n- *a",
                                  "\n<<: {m: 1}", "\n? k", "\n: v", "\r\n- w", "\n\t"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(line_fragments, fragments), max_size=16))
def test_hand_written_text_split_anywhere_joins_to_the_whole_or_is_refused(parts: list[str]) -> None:
    assert_every_cut_joins_or_is_refused("items:" + "".join(parts) + "\n")


@pytest.mark.parametrize("text", [
    "kind: x\nitems:\n- a\nlast: 1\n- b\n",  # a key after the list: the whole text is an error
    'a: "x\n- y"\n',  # the line is inside a quoted scalar
    "a: |\n  t\n- b\n",  # after a block scalar, no list is open
    "items:\n  - a\n- b\n",  # an indented list: the whole text is an error
    "items: [a]\n- b\n",  # a flow list
    "- a\n- b\n",  # a root list, not a mapping's
    "items:\n- a\n...\n- b\n",  # a new document after '...'
    "  items:\n  - a\n- b\n",  # a root mapping that is not at column 0
    "a:\n  b:\n  - x\n- y\n",  # a nested list
    "items:\n- &x a\n- *x\n",  # an alias of the head's anchor
    "%YAML 1.1\n---\nitems:\n- a\n- b\n",  # a directive
    "items:\n- a\n- b\n<<: {m: 1}\n",  # a merge key in the tail
    "items:\n- a\n- {b: !!str 1}\n",  # a tag in the tail
])
def test_cuts_that_would_join_wrongly_are_refused(text: str) -> None:
    at = cuts(text)[-1]
    assert yamlfast.cut_point(text, at - 1) is None or split_outcome(text, at) is None


@pytest.mark.parametrize("text", [
    "items:\n- a\n# c\n\n- b\n",  # comments and blank lines before the cut
    "items:\n- |\n  t\n- b\n",  # a block scalar item
    "items:\n- a\nitems:\n- b\n- c\nz: 1\n",  # a duplicate key: the later list is continued
    "a:\n- x\n- y\nb: 1\na: 2\n",  # the tail sets the list's key again: the later value, the first place
    "---\nitems:\n- a\n- b\n---\nx: 1\n",  # documents after the cut
    "items:\r\n- a\r\n- b\r\n",  # CRLF line ends
    "? a\n:\n- b\n- c\n",  # an explicit key
    "apiVersion: v1\nitems:\n- kind: Pod\n  metadata: {name: p}\n- kind: Pod\n  metadata:\n    name: q\nkind: List\n",
])
def test_cuts_inside_a_documents_last_list_join(text: str) -> None:
    assert split_outcome(text, cuts(text)[-1]) == whole_outcome(text)


def test_an_inventory_splits_where_asked_and_joins_to_the_whole() -> None:
    endpoints = [{"name": f"p{i}", "namespace": f"ns-{i % 7}", "labels": {"app": f"a{i % 5}", "on": "yes"},
                  "ips": [f"198.18.0.{i}", f"fd00::{i:x}"], "ports": [{"name": "http", "port": 80}]}
                 for i in range(200)]
    text = yaml.safe_dump({"apiVersion": "callgate/v1", "kind": "Inventory", "endpoints": endpoints,
                           "namespaces": {"ns-0": {"labels": {"team": "a"}}}})
    cut = yamlfast.cut_point(text, len(text) // 2)
    assert cut is not None and text[cut:].startswith("- ") and len(text) // 2 <= cut < len(text) // 2 + 200
    assert split_outcome(text, cut) == whole_outcome(text)
    assert yamlfast.cut_point(text, len(text)) is None  # no item after the end
