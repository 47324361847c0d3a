"""Golden files: output compared byte for byte with a reference under tests/golden/.

A golden file changes only when a person decides so, never as a side effect of
a test run:

* golden file missing: the test fails and writes the output to ``<name>.actual``
  beside where the golden file belongs (review it, then rename it);
* output differs: the test fails and writes ``<name>.actual`` (diff the two);
* ``CALLGATE_UPDATE_GOLDEN=1``: the golden files are (re)written from the
  output and the test passes. Review ``git diff tests/golden`` afterwards.

A matching run removes a stale ``<name>.actual``. ``*.actual`` is git-ignored.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
UPDATE_ENV = "CALLGATE_UPDATE_GOLDEN"
DIFF_LINES = 40  # of the unified diff shown in a failure; the .actual has it all


def actual_path(path: Path) -> Path:
    return path.with_name(path.name + ".actual")


def golden_mismatch(name: str, text: str, root: Path = GOLDEN) -> str | None:
    """None when ``text`` is ``root/name`` byte for byte (or was just written to
    it on request); otherwise what is wrong, with the output left in ``.actual``."""
    path = root / name
    actual = actual_path(path)
    data = text.encode("utf-8")
    if os.environ.get(UPDATE_ENV, "") not in ("", "0"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        actual.unlink(missing_ok=True)
        return None
    if path.is_file() and path.read_bytes() == data:
        actual.unlink(missing_ok=True)
        return None
    actual.parent.mkdir(parents=True, exist_ok=True)
    actual.write_bytes(data)
    if not path.is_file():
        return (f"golden file {path} is missing; the output is in {actual.name} beside it: review it and "
                f"rename it, or run with {UPDATE_ENV}=1")
    diff = list(difflib.unified_diff(path.read_text(encoding="utf-8").splitlines(), text.splitlines(),
                                     "golden", "actual", lineterm=""))
    shown = "\n".join(diff[:DIFF_LINES]) + (f"\n... {len(diff) - DIFF_LINES} more lines" if len(diff) > DIFF_LINES else "")
    return f"output differs from golden file {path} (all of it is in {actual.name}; {UPDATE_ENV}=1 accepts it):\n{shown}"


def check_golden(name: str, text: str, root: Path = GOLDEN) -> None:
    problem = golden_mismatch(name, text, root)
    assert problem is None, problem
