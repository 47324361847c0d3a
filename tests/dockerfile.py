"""The Dockerfile read as tests need it: its stages and the final image's apt packages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_stages() -> dict[str, str]:
    """Stage name (the final one: "") -> its text."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^(?=FROM )", text, flags=re.M)[1:]
    named = {}
    for part in parts:
        m = re.match(r"FROM \S+(?: AS (\S+))?", part)
        assert m is not None
        named[m.group(1) or ""] = part
    return named


def image_packages() -> list[str]:
    """The final image's apt packages (tests/test_image.py starts the agent with only these)."""
    install = re.search(r"apt-get install((?:[^&]|\\\n)*)", dockerfile_stages()[""])
    assert install is not None
    return [w for w in install.group(1).replace("\\", " ").split() if not w.startswith("-")]
