"""Network namespaces for kernel tests: can this machine make them, and nft inside one.

Tests do not create scratch namespaces themselves: they take the ``netns`` or
``make_netns`` fixture (tests/conftest.py), which removes every namespace it
made, whether the test passed or not. Labs (:class:`callgate.lab.Lab`) manage
their own namespaces.
"""

from __future__ import annotations

import hashlib
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


def host_interfaces(netns: str, names: list[str]) -> None:
    """Give ``netns`` a routed veth for each of ``names``, as a node holding
    those endpoints has (so ``callgate apply`` finds them where the inventory
    says). Each peer stays in the namespace, named after a hash of its end."""
    for name in names:
        peer = "cgq" + hashlib.sha256(name.encode()).hexdigest()[:10]
        subprocess.run(["ip", "-n", netns, "link", "add", name, "type", "veth", "peer", "name", peer],
                       check=True, capture_output=True)
