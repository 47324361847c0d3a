"""Positions found by the JSON scanner are the YAML composer's, and JSON that YAML
reads differently goes the YAML way."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.policy import jsonpositions
from callgate.policy.positions import FieldPath, Positions

# Quotes, backslashes, slashes, non-ASCII, astral characters, and characters YAML
# counts as line breaks or refuses (tab, CR, NEL, LS, DEL, BOM) that JSON keeps as is.
_CHARS = st.sampled_from(['"', "\\", "/", ":", "#", "{", "]", " ", "a", "k", "é", "\U0001f600", "\t", "\r", "\x85",
                          "\u2028", "\x7f", "\ufeff", "\x00", "-"])
_TEXT = st.lists(_CHARS, max_size=6).map("".join)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT | st.sampled_from(["spec", "items"]), inner,
                                                               max_size=4),
    max_leaves=25)
_SEPARATORS = st.sampled_from([(",", ":"), (", ", ": "), (" ,  ", "  :  "), (",\n", ":\n "), (",", " : ")])


def _paths(value: Any, prefix: FieldPath = ()) -> list[FieldPath]:
    """Every path in ``value``, and under each one a step that does not exist."""
    out = [prefix, (*prefix, "missing"), (*prefix, 7)]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


@contextlib.contextmanager
def _usual_recursion_limit() -> Iterator[None]:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def _composed(file: Path, paths: list[FieldPath]) -> dict[FieldPath, tuple[int | None, int | None]]:
    composer = Positions()  # walks the composed nodes: the oracle
    return {p: composer(str(file), 0, p) for p in paths}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_TEXT | st.just("spec"), _VALUES, max_size=4) | st.lists(_VALUES, max_size=4),
       st.sampled_from([None, 0, 1, 4]), _SEPARATORS, st.booleans(), st.sampled_from(["", " ", "\n\n  "]),
       st.sampled_from(["", "\n", "  \n "]))
def test_json_positions_are_the_composers(tmp_path: Path, value: Any, indent: int | None,
                                          separators: tuple[str, str], ascii_only: bool, before: str,
                                          after: str) -> None:
    text = before + json.dumps(value, indent=indent, separators=separators, ensure_ascii=ascii_only) + after
    file = tmp_path / "doc.json"
    file.write_text(text, encoding="utf-8")
    paths = _paths(value)
    expected = _composed(file, paths)
    with _usual_recursion_limit():  # hypothesis raises it, and then the JSON way stands aside
        found = jsonpositions.marks(text, paths)
    if found is not None:
        assert found == expected
    else:  # only text YAML reads otherwise (see jsonpositions' docstring) goes the YAML way
        assert any(c in text for c in "\t\r\x85\u2028\x7f\ufeff\x00") or "\\u" in text or ":\n" in text
    assert Positions().many(str(file), 0, paths) == expected


def test_plain_json_takes_the_json_way(tmp_path: Path) -> None:
    value = {"apiVersion": "v1", "kind": "List", "items": [
        {"metadata": {"name": "é\U0001f600", "labels": {"a": "b/c"}}, "spec": {"ingress": [{"ports": [80, 5.5]}]}},
        {"metadata": {"name": "x\\\"y"}, "spec": None}]}
    paths: list[FieldPath] = [("items", 0, "spec", "ingress", 0, "ports", 1), ("items", 1, "metadata", "name"),
                              ("items", 1, "spec", "podSelector"), ("items", 5), ("kind",)]
    for indent in (None, 2):
        text = json.dumps(value, indent=indent, ensure_ascii=False)
        file = tmp_path / "plain.json"
        file.write_text(text, encoding="utf-8")
        assert jsonpositions.marks(text, paths) == _composed(file, paths)


@pytest.mark.parametrize("text", [
    '{"' + "k" * 1100 + '": 1, "a": [1]}',  # a key too long for YAML: the composer fails
    '{"' + "k" * 850 + '"' + " " * 180 + ': 1, "a": [1]}',  # long with the spaces before its colon
    '{"a"\n: [1]}',  # a key on another line than its colon
    '{"a": "\\ud83d\\ude00", "b": [1]}',  # an escaped surrogate pair libyaml refuses
    '{"a": "tab\there", "b": [1]}',  # raw tab (YAML would read it; left to the YAML way all the same)
    '{"a": 1}\r\n',  # CR line breaks
    '\ufeff{"a": [1]}',  # a byte order mark
    '{"a": [1,]}',  # YAML reads it, JSON does not
    '{"a": [1]}\n---\n{"b": [2]}',  # two YAML documents
    "a: [1]\nb: {c: 2}\n",  # YAML
])
def test_what_yaml_reads_otherwise_goes_the_yaml_way(tmp_path: Path, text: str) -> None:
    paths: list[FieldPath] = [("a", 0), ("b",), ("b", "c"), ()]
    assert jsonpositions.marks(text, paths) is None
    file = tmp_path / "odd.json"
    file.write_text(text, encoding="utf-8")
    assert Positions().many(str(file), 0, paths) == _composed(file, paths)


def test_nesting_libyaml_refuses_goes_the_yaml_way_whatever_the_recursion_limit(tmp_path: Path) -> None:
    text = "[" * 1001 + "]" * 1001  # one level more than libyaml takes; json takes it with a higher limit
    file = tmp_path / "deep.json"
    file.write_text(text, encoding="utf-8")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        assert jsonpositions.marks(text, [(0, 0)]) is None
    finally:
        sys.setrecursionlimit(limit)
    assert Positions().many(str(file), 0, [(0, 0)]) == _composed(file, [(0, 0)]) == {(0, 0): (None, None)}


# JSON with duplicate keys, which json.dumps never writes: a decoded object holds the last
# value of a key, whose text (or length: 1 and 12) may not be an earlier one's.
_DUP_SCALARS = st.sampled_from(["1", "12", "1.5", "1e3", '"x"', '"xy"', "true", "null", "[]", "{}", "[1]", '{"k": 1}'])
_DUP_VALUES = st.recursive(_DUP_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
    st.lists(st.tuples(st.sampled_from(["a", "b", "k"]), inner), max_size=4).map(
        lambda pairs: "{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}")), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "k"]), _DUP_VALUES), min_size=1, max_size=5))
def test_duplicate_keys_are_placed_as_the_composer_places_them(tmp_path: Path, pairs: list[tuple[str, str]]) -> None:
    text = "{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}"
    file = tmp_path / "dup.json"
    file.write_text(text, encoding="utf-8")
    paths = [(k, *rest) for k in ("a", "b", "k", "z") for rest in [(), ("a",), ("k",), (0,), (1,), (0, "k"), ("a", 0)]]
    with _usual_recursion_limit():  # hypothesis raises it, and then the JSON way stands aside
        found = jsonpositions.marks(text, paths)
    assert found is not None  # ASCII JSON that YAML reads alike: the JSON way answers
    assert found == _composed(file, paths)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(st.sampled_from(["spec", "items", "a b", "é"]), _VALUES, max_size=3), min_size=1,
                max_size=4),
       st.sampled_from([None, True, False]), st.sampled_from([2, 4]), st.booleans())
def test_positions_in_many_documents_are_the_composers(tmp_path: Path, docs: list[Any], flow: bool | None,
                                                       indent: int, explicit_start: bool) -> None:
    # YAML documents: their events walked in one pass for all documents asked about.
    text = yaml.safe_dump_all(docs, default_flow_style=flow, indent=indent, explicit_start=explicit_start,
                              allow_unicode=True)
    file = tmp_path / "docs.yaml"
    file.write_text(text, encoding="utf-8")
    wanted = {i: _paths(doc) for i, doc in enumerate(docs)}
    wanted[len(docs)] = [("spec",)]  # no such document
    composer = Positions()
    expected = {i: {p: composer(str(file), i, p) for p in paths} for i, paths in wanted.items()}
    assert Positions().in_documents(str(file), wanted) == expected


def test_documents_of_a_file_are_placed_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "many.yaml"
    file.write_text("".join(f"---\nmetadata: {{name: p{i}}}\nspec: {{podSelector: {{}}}}\n" for i in range(50)))
    passes = []
    parse = yaml.parse

    def counted(*args: Any, **kwargs: Any) -> Any:
        passes.append(1)
        return parse(*args, **kwargs)

    monkeypatch.setattr(yaml, "parse", counted)
    found = Positions().in_documents(str(file), {i: [("spec", "podSelector")] for i in range(50)})
    assert len(passes) == 1
    assert found[49] == {("spec", "podSelector"): (150, 21)}  # document 50 starts on line 148


def test_refused_characters_are_the_same_as_bytes_and_by_the_regex() -> None:
    for code in [*range(0x100), 0x2028, 0x2029, 0xD7FF, 0xFEFF, 0xFFFE, 0xFFFF, 0x1F600]:
        char = chr(code)
        for text in (char, "abc" + char, "é" + char):  # ASCII text and not
            assert jsonpositions._refused_character(text) == bool(jsonpositions._NOT_PLAIN.search(text)), repr(text)


@pytest.mark.parametrize("label", ["x", "\u00e9"])  # ASCII text: members by their decoded texts; else scanned
def test_members_are_listed_only_as_far_as_a_path_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        label: str) -> None:
    # A namespace's place in an inventory must not list the pods written after the namespaces.
    text = json.dumps({"namespaces": {"a": {}, "b": {"labels": {"l": label}}},
                       "endpoints": [{"name": f"p{i}"} for i in range(50)]}, indent=1, ensure_ascii=False)
    listed: list[int] = []
    after_member = jsonpositions._Walker._after_member

    def counting(self: Any, i: int, close: str) -> int | None:
        listed.append(i)
        return after_member(self, i, close)  # type: ignore[no-any-return]

    file = tmp_path / "inventory.json"
    file.write_text(text, encoding="utf-8")
    monkeypatch.setattr(jsonpositions._Walker, "_after_member", counting)
    namespace: list[FieldPath] = [("namespaces", "b", "labels"), ("namespaces", "c")]
    assert jsonpositions.marks(text, namespace) == _composed(file, namespace)
    assert listed and all(at < text.index('"endpoints"') for at in listed)
    pod: list[FieldPath] = [("endpoints", 3, "name"), ("endpoints", 60)]
    assert jsonpositions.marks(text, pod) == _composed(file, pod)
