"""The fast YAML path equals PyYAML's safe loader, value for value and error for error.

`callgate.policy.yamlfast` builds documents from libyaml's events instead of
composing nodes; everything it cannot vouch for starts over with the safe
loader. These tests hold the two equal on random documents in every style
PyYAML writes, on scalars whose type YAML 1.1 decides by their text, and on
the constructs the fast walk hands back (anchors, tags, merge keys, errors).
The fast IP parser is held equal to ``ipaddress`` the same way.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.policy import yamlfast
from callgate.policy.validation import parse_ip


def safe_load_all(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=yamlfast.SAFE_LOADER))


def outcome(load: Any, text: str) -> Any:
    """The documents, or the error's type and text."""
    try:
        return ("ok", _comparable(load(text)))
    except yaml.YAMLError as exc:
        return ("error", type(exc).__name__, str(exc))


def _comparable(value: Any) -> Any:
    # NaN != NaN: compare it by name; keep types apart (True == 1 in Python).
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    if isinstance(value, dict):
        return ("map", [(_comparable(k), _comparable(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("seq", [_comparable(v) for v in value])
    return (type(value).__name__, value)


# Scalars whose YAML 1.1 type depends on their text: the resolver's work.
TRICKY = ["yes", "No", "on", "OFF", "y", "n", "true", "False", "~", "null", "Null", "", "0777", "0o17", "0x1F",
          "0b101", "1_000", "1:30", "-1:30:00", "+80", "-0", "80", "1e5", "1.5e+3", "1.5", ".inf", "-.Inf", ".nan",
          "2001-12-14", "2001-12-14 21:59:43.10 -5", "2001-12-14t21:59:43.10-05:00", "<<", "=", "198.18.0.1",
          "fd00:cb::1", "2001:10::1", "1:2", "a: b", "- x", "#c", "'q'", "\"d\"", "x\ty", "é", "😀", "\\", "@x",
          "`y", "%z", "!t", "&a", "*b", "|", ">", "?", ",", "[", "]", "{", "}", "v1", "node-0", "TCP"]

scalars = st.one_of(st.sampled_from(TRICKY), st.text(max_size=8), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=True), st.booleans(), st.none(),
                    st.dates(), st.datetimes(timezones=st.just(datetime.UTC)))
keys = st.one_of(st.sampled_from(TRICKY), st.text(max_size=6), st.integers(-5, 5), st.booleans(), st.none())
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=4)), max_leaves=20)
styles = st.fixed_dictionaries({
    "default_flow_style": st.sampled_from([False, True, None]),
    "default_style": st.sampled_from([None, None, "'", '"']),
    "allow_unicode": st.booleans(),
    "explicit_start": st.booleans(),
    "width": st.sampled_from([4, 80]),
})


@settings(max_examples=300, deadline=None)
@given(st.lists(trees, min_size=1, max_size=3), styles)
def test_documents_written_by_pyyaml_load_the_same(docs: list[Any], style: dict[str, Any]) -> None:
    text = yaml.safe_dump_all(docs, **style)
    expected = safe_load_all(text)
    assert _comparable(yamlfast.load_all(text)) == _comparable(expected)
    if "!" not in text and "<<" not in text:  # no tags (PyYAML writes one on a quoted non-string), no merge key
        assert _comparable(yamlfast._events_to_values(text)) == _comparable(expected)  # the fast walk alone


# Hand-written YAML from fragments: plain scalars (the resolver decides their
# type), quoted ones, flow and block collections, comments, broken syntax.
fragments = st.sampled_from([*TRICKY, "'yes'", '"0777"', "[a, 1]", "{k: v}", "{}", "[]", "- ", ": ", "? ",
                             "\n", "\n  ", "\n- ", " #c\n", "---\n", "...\n", "&a ", "*a", "!!str ", "!x ",
                             "<<: {m: 1}\n", "|\n  b\n", ">-\n  f\n  g\n", "\t"])


@settings(max_examples=500, deadline=None)
@given(st.lists(fragments, max_size=12))
def test_any_text_loads_or_fails_the_same(parts: list[str]) -> None:
    text = "".join(parts)
    assert outcome(yamlfast.load_all, text) == outcome(safe_load_all, text)


@pytest.mark.parametrize("text", [
    "a: &x {b: 1}\nc: *x\n",  # anchor and alias
    "base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\n",  # merge key
    "a: !!str 80\nb: !!int '7'\n",  # explicit tags
    "a: !custom 1\n",  # a tag the safe loader refuses
    "? [a, b]\n: c\n",  # an unhashable key
    "? {a: 1}\n: c\n",
    "a: =\n",  # the value tag: refused by the safe loader
    "<<: 1\n",  # a merge key with a scalar: refused
    "a: 1\na: 2\n",  # duplicate keys: the last wins
    "--- 1\n--- [2]\n---\n...\n",  # several documents, one empty
    "",  # no document at all
    "# only a comment\n",
    "a: [1, 2\n",  # unclosed flow sequence
    "a: b: c\n",  # a mapping value where none may be
    "a:\n- 1\n - 2\n",  # bad indentation
    "'unclosed\n",
    "a: \"\\x41\\u00e9\\N\\_\\/\"\n",  # escapes
    "date: 2001-12-14\nts: 2001-12-14 21:59:43.10 -5\nnum: 1_000\nsex: 1:30\noct: 0777\n",
])
def test_edge_cases_load_or_fail_the_same(text: str) -> None:
    assert outcome(yamlfast.load_all, text) == outcome(safe_load_all, text)


def test_constructs_the_fast_walk_leaves_to_the_safe_loader_still_load() -> None:
    text = "a: &x [1]\nb: *x\n"
    docs = yamlfast.load_all(text)
    assert docs == [{"a": [1], "b": [1]}]
    assert docs[0]["a"] is docs[0]["b"]  # an alias is the same object, as the safe loader makes it


def test_repeated_plain_scalars_resolve_once_and_stay_correct() -> None:
    text = "".join(f"- {{port: 80, on: yes, v: '80', d: 2001-01-0{i % 9 + 1}}}\n" for i in range(50))
    assert yamlfast._events_to_values(text) == safe_load_all(text)


# -- the fast IP parser --------------------------------------------------------------

def ip_outcome(parse: Any, text: str) -> Any:
    try:
        ip = parse(text)
    except ValueError as exc:
        return ("error", str(exc))
    return (type(ip).__name__, ip, str(ip), getattr(ip, "scope_id", None))


ip_texts = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: ip.exploded),
    st.text(alphabet="0123456789abcdefABCDEF:.%x ", max_size=45),
    st.sampled_from(["01.2.3.4", "1.2.3", "1.2.3.256", "::1%eth0", "fe80::1%2", "1::2:3:4:5:6:7", "::ffff:1.2.3.4",
                     "::ffff:01.2.3.4", "1.2.3.04", "0.0.0.0", "١.2.3.4", "1.2.3.4\x00", " 1.2.3.4", "::",
                     "1:2:3:4:5:6:7:8:9", "12345::", "::1.2.3.4", "1::1.2.3.4", "", "1.2.3.4/32"]),
)


@settings(max_examples=1000, deadline=None)
@given(ip_texts)
def test_parse_ip_equals_ipaddress(text: str) -> None:
    assert ip_outcome(parse_ip, text) == ip_outcome(ipaddress.ip_address, text)


# -- positions of problems -------------------------------------------------------------

def test_problems_in_a_big_inventory_name_the_positions_composing_finds(tmp_path: Any) -> None:
    """Problems are positioned by walking events (not composing nodes): the
    same line:column the composer gives, for problems deep in a file."""
    from callgate.errors import InputError
    from callgate.policy.inventory import load_inventory
    from callgate.policy.positions import Positions

    endpoints = [{"name": f"p{i}", "namespace": "x", "labels": {"app": f"a{i % 7}"},
                  "ips": [f"198.18.{i // 250}.{i % 250 + 1}"], "ports": [{"name": "http", "port": 80}]}
                 for i in range(300)]
    endpoints[17]["ips"] = ["999.1.1.1"]
    endpoints[150]["labels"] = {"app": "-bad-"}
    endpoints[299]["ports"] = [{"name": "http", "port": 70000}]
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "callgate/v1", "kind": "Inventory", "endpoints": endpoints}))
    with pytest.raises(InputError) as err:
        load_inventory(path)
    composed = Positions()  # the composing way, the oracle
    expected = {("endpoints", 17, "ips", 0), ("endpoints", 150, "labels"), ("endpoints", 299, "ports", 0, "port")}
    assert len(err.value.problems) == len(expected)
    for problem, field_path in zip(err.value.problems, sorted(expected, key=lambda p: p[1]), strict=True):
        assert (problem.line, problem.column) == composed(str(path), 0, field_path)
        assert problem.line is not None and problem.line > 17
