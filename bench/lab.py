"""A two-pod lab for the datapath benchmark: one node namespace, a client and a server pod.

Why not :mod:`callgate.lab`: it builds one namespace per inventory endpoint;
the benchmark needs 50,000 endpoints in the *policy* but only two that send
packets. The topology follows the same routed design (docs/design.md, "The test lab"):
each pod has a /32 on ``eth0`` and a default route via 169.254.1.1, which the
host-side veth owns (so the node answers ARP for it without proxy ARP); the
node routes each pod's /32 to its veth and forwards, so traffic between the
pods crosses the node's ``forward`` hook, where callgate's table sits.

Every namespace is named ``cgb-bench-<tag>-*`` and removed on exit, also when
a run fails. The tag is the process id (or ``$CGB_LAB_TAG``), so that several
runs at once (the full benchmark and someone's test suite running the smoke
test) never tear down each other's lab; namespaces left by a crashed run whose
process is gone are removed first. Only the pods' own addresses (from
198.18.0.0/15) are used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PREFIX = "cgb-bench-"
GATEWAY = "169.254.1.1"


def lab_tag() -> str:
    return os.environ.get("CGB_LAB_TAG") or str(os.getpid())


def _run(argv: Sequence[str], check: bool = True) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def ns_exec(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def start_ready(argv: list[str]) -> subprocess.Popen[str]:
    """Start a load process that prints "ready" when it listens, and wait for that.
    A session of its own, so that its forked workers are ended with the group."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        stop_group(proc)
        raise RuntimeError(f"{argv} did not start")
    return proc


def stop_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _ours() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines()
            if line.split() and line.split()[0].startswith(PREFIX)]


def _stale(name: str) -> bool:
    """A namespace of a numeric-tagged run whose process no longer exists."""
    tag = name[len(PREFIX):].split("-", 1)[0]
    return tag.isdigit() and not Path(f"/proc/{tag}").exists()


def cleanup(tag: str | None = None) -> None:
    """Delete this run's namespaces (``cgb-bench-<tag>-*``) and stale ones."""
    mine = f"{PREFIX}{tag or lab_tag()}-"
    for name in _ours():
        if name.startswith(mine) or _stale(name):
            _run(["ip", "netns", "delete", name], check=False)


@dataclass(frozen=True)
class Pod:
    netns: str
    host_if: str  # host-side veth, in the node namespace: the inventory's interface
    ip: str


@dataclass(frozen=True)
class TwoPodLab:
    node: str
    server: Pod
    client: Pod


def _sysctl(netns: str, **settings: str) -> None:
    for key, value in settings.items():
        _run(ns_exec(netns, "sysctl", "-q", "-w", f"{key.replace('__', '.')}={value}"))


def _pod(node: str, name: str, host_if: str, ip: str) -> Pod:
    netns = f"{PREFIX}{lab_tag()}-{name}"
    _run(["ip", "netns", "add", netns])
    _run(["ip", "link", "add", host_if, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", netns])
    _run(ns_exec(netns, "ip", "link", "set", "lo", "up"))
    _run(ns_exec(netns, "ip", "link", "set", "eth0", "up"))
    _run(ns_exec(netns, "ip", "addr", "add", f"{ip}/32", "dev", "eth0"))
    _run(ns_exec(netns, "ip", "route", "add", GATEWAY, "dev", "eth0"))
    _run(ns_exec(netns, "ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0"))
    _run(ns_exec(node, "ip", "link", "set", host_if, "up"))
    _run(ns_exec(node, "ip", "addr", "add", f"{GATEWAY}/32", "dev", host_if))
    _run(ns_exec(node, "ip", "route", "add", f"{ip}/32", "dev", host_if))
    _sysctl(node, **{f"net__ipv4__conf__{host_if}__rp_filter": "0"})
    return Pod(netns, host_if, ip)


@contextmanager
def two_pod_lab(server_ip: str, client_ip: str, server_if: str = "cgbs0", client_if: str = "cgbc0",
                ) -> Iterator[TwoPodLab]:
    """Build the lab, yield it, and always remove it."""
    for ip in (server_ip, client_ip):
        if not ip.startswith(("198.18.", "198.19.")):
            raise ValueError(f"lab addresses must be in 198.18.0.0/15, got {ip}")
    cleanup()
    node = f"{PREFIX}{lab_tag()}-node"
    try:
        _run(["ip", "netns", "add", node])
        _run(ns_exec(node, "ip", "link", "set", "lo", "up"))
        _sysctl(node, net__ipv4__ip_forward="1", net__ipv4__conf__all__rp_filter="0",
                net__ipv4__conf__default__rp_filter="0")
        server = _pod(node, "srv", server_if, server_ip)
        client = _pod(node, "cli", client_if, client_ip)
        yield TwoPodLab(node, server, client)
    finally:
        cleanup()
