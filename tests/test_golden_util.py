"""The golden-file helper: it never creates or changes a golden file unless asked to."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.golden_util import UPDATE_ENV, check_golden, golden_mismatch


@pytest.fixture(autouse=True)
def no_update(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UPDATE_ENV, raising=False)  # whatever the caller's shell says


def test_missing_golden_fails_and_writes_actual(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="is missing"):
        check_golden("sub/out.txt", "new output\n", root=tmp_path)
    assert not (tmp_path / "sub" / "out.txt").exists()  # never created silently
    assert (tmp_path / "sub" / "out.txt.actual").read_bytes() == b"new output\n"


def test_mismatch_fails_keeps_golden_and_writes_actual(tmp_path: Path) -> None:
    golden = tmp_path / "out.txt"
    golden.write_bytes(b"line 1\nline 2\n")
    problem = golden_mismatch("out.txt", "line 1\nline two\n", root=tmp_path)
    assert problem is not None and "-line 2" in problem and "+line two" in problem
    assert golden.read_bytes() == b"line 1\nline 2\n"
    assert (tmp_path / "out.txt.actual").read_bytes() == b"line 1\nline two\n"


def test_comparison_is_byte_exact(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_bytes(b"a\r\nb\n")  # text-mode reading would hide the \r
    assert golden_mismatch("out.txt", "a\nb\n", root=tmp_path) is not None


def test_match_passes_and_removes_a_stale_actual(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_bytes(b"same\n")
    (tmp_path / "out.txt.actual").write_bytes(b"from an earlier failure\n")
    check_golden("out.txt", "same\n", root=tmp_path)
    assert not (tmp_path / "out.txt.actual").exists()


def test_update_on_request_writes_the_golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "old.txt").write_bytes(b"old\n")
    (tmp_path / "old.txt.actual").write_bytes(b"new\n")
    monkeypatch.setenv(UPDATE_ENV, "1")
    check_golden("old.txt", "new\n", root=tmp_path)
    check_golden("deep/fresh.txt", "fresh\n", root=tmp_path)
    assert (tmp_path / "old.txt").read_bytes() == b"new\n"
    assert (tmp_path / "deep" / "fresh.txt").read_bytes() == b"fresh\n"
    assert not (tmp_path / "old.txt.actual").exists()
