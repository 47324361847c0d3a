"""A throwaway network namespace for backend tests that need a kernel but no lab."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def have_root_and_netns() -> bool:
    return os.geteuid() == 0 and subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


@contextmanager
def scratch_netns(prefix: str = "cgn") -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(netns: str, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", *args], input=stdin, capture_output=True,
                         text=True, check=True)
    return out.stdout
