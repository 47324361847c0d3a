"""JSON input through msgspec: the same values as ``json.loads``, the same errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.errors import InputError
from callgate.policy.documents import _fast_json, read_documents

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**200), max_value=2**200)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=40)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0; -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(values, st.booleans())
def test_msgspec_reads_what_json_reads(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    fast = _fast_json(text.encode("utf-8", "surrogatepass"))
    expected = json.loads(text)
    if fast is not None:  # refused: the standard library reads it instead
        assert same(fast[0], expected), (fast[0], expected)


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": 1e400}', '"\\ud800"', '{"a": 1, "a": 2}',
                                  '18446744073709551616'])
def test_what_msgspec_refuses_or_bends_is_read_as_json_reads_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(text)
    got = [d.data for d in read_documents(path)]
    expected = json.loads(text)
    assert len(got) == 1 and same(got[0], expected)


def test_a_json_syntax_error_is_the_standard_librarys(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "kind": "Inventory",\n  "endpoints": [1, 2,]\n}\n')
    with pytest.raises(InputError) as err:
        list(read_documents(path))
    (problem,) = err.value.problems
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        assert problem.message == f"invalid JSON: {exc.msg}"
        assert (problem.line, problem.column) == (exc.lineno, exc.colno)


def test_invalid_utf8_in_json_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"kind": "\xff"}')
    with pytest.raises(InputError) as err:
        list(read_documents(path))
    assert "cannot read file" in err.value.problems[0].message
