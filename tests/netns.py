"""Network namespaces for kernel tests: can this machine make them, and nft inside one.

Tests do not create scratch namespaces themselves: they take the ``netns`` or
``make_netns`` fixture (tests/conftest.py), which removes every namespace it
made, whether the test passed or not. Labs (:class:`callgate.lab.Lab`) manage
their own namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess

# Scratch namespaces are <prefix>-<8 hex>. No lab uses this prefix, and a lab's
# sweep only removes <lab>-fabric, <lab>-n-* and <lab>-p-<10 hex>.
SCRATCH_PREFIX = "cgs"


def kernel_unavailable() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return f"needs root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "needs iproute2 (no `ip` on PATH)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"needs network namespaces (`ip netns list` failed: {probe.stderr.strip()})"
    return None


def nft(netns: str, *args: str, stdin: str | None = None) -> str:
    """Run nft inside ``netns`` (argv list, never a shell string); its stdout."""
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", *args], input=stdin, capture_output=True,
                         text=True, check=True)
    return out.stdout
