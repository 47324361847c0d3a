"""What a node's kernel looks like where callgate enforces: read, never assumed.

:func:`inspect` reads one network namespace: its links (``ip -j -d link``:
kind, bridge membership, each bridge's own netfilter flags), its addresses
(``ip -j addr``) and the bridge-netfilter sysctls (from ``/proc/sys/net``,
read by a thread inside that namespace: the values are per namespace).
:func:`probe_netns` checks that an endpoint's namespace file can be entered.
The two fixes the guard may make are here too (:func:`set_bridge_flag`,
:func:`set_sysctl`). Commands are argv lists; names come from the kernel's
own listing or from validated input.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from callgate.enforcers.netns import ip_argv, netns_file, run_in, same_namespace
from callgate.errors import KernelError

# br_netfilter's switches, per network namespace (0/1), as /proc/sys/net/bridge names them.
CALL_IPTABLES = "bridge-nf-call-iptables"
CALL_IP6TABLES = "bridge-nf-call-ip6tables"
FILTER_VLAN_TAGGED = "bridge-nf-filter-vlan-tagged"
SYSCTLS = (CALL_IPTABLES, CALL_IP6TABLES, FILTER_VLAN_TAGGED)
SYSCTL_DIR = Path("/proc/sys/net/bridge")
# The per-bridge form of the first two (ip-link(8) "nf_call_iptables"): either
# the namespace's sysctl or the bridge's own flag sends bridged IP through the
# inet hooks.
BRIDGE_FLAG = {CALL_IPTABLES: "nf_call_iptables", CALL_IP6TABLES: "nf_call_ip6tables"}

Runner = Callable[[Sequence[str]], str]


def run(argv: Sequence[str]) -> str:
    """Run a command (argv, no shell); its stdout; KernelError when it fails."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"{argv[0]} failed: {exc}") from None
    if done.returncode != 0:
        raise KernelError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


@dataclass(frozen=True)
class Link:
    name: str
    kind: str  # "veth", "bridge", "macvlan", "tun", ... ; "" for a physical device
    master: str | None = None  # the bridge (or other master) it is a port of
    port_kind: str | None = None  # what kind of master: "bridge", "openvswitch", "bond", ...
    # A bridge's own netfilter flags (bridges only): ip-link's name -> 0/1.
    bridge_flags: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HostView:
    """One network namespace as the kernel describes it."""

    netns: str | None  # None: the namespace callgate runs in
    links: dict[str, Link]
    addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]  # configured on any of its links
    # br_netfilter sysctls; empty when br_netfilter is not loaded (no /proc/sys/net/bridge).
    sysctls: dict[str, int]

    def bridge_nf(self, bridge: str, sysctl: str) -> bool:
        """Does bridged IP of this kind (``CALL_IPTABLES``/``CALL_IP6TABLES``)
        on ``bridge`` reach the inet hooks?"""
        link = self.links.get(bridge)
        return self.sysctls.get(sysctl) == 1 or (link is not None and link.bridge_flags.get(BRIDGE_FLAG[sysctl]) == 1)


def _json(text: str) -> list[dict[str, object]]:
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError:
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _link(data: dict[str, object]) -> Link:
    info = data.get("linkinfo")
    info = info if isinstance(info, dict) else {}
    flags = info.get("info_data") if info.get("info_kind") == "bridge" else None
    bridge_flags = {k: int(v) for k, v in (flags or {}).items()
                    if k in BRIDGE_FLAG.values() and isinstance(v, int)} if isinstance(flags, dict) else {}
    master = data.get("master")
    port_kind = info.get("info_slave_kind")
    return Link(str(data.get("ifname", "")), str(info.get("info_kind") or ""),
                master if isinstance(master, str) else None,
                port_kind if isinstance(port_kind, str) else None, bridge_flags)


def _read_sysctls() -> dict[str, int]:
    out: dict[str, int] = {}
    for name in SYSCTLS:
        try:
            out[name] = int((SYSCTL_DIR / name).read_text().strip())
        except (OSError, ValueError):
            continue
    return out


def _addresses(ip_addr_json: str) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses in ``ip -j addr show`` output (malformed entries skipped)."""
    addresses = set()
    for entry in _json(ip_addr_json):
        for info in entry.get("addr_info") or []:  # type: ignore[attr-defined]
            if isinstance(info, dict) and isinstance(info.get("local"), str):
                try:
                    addresses.add(ipaddress.ip_address(info["local"]))
                except ValueError:
                    continue
    return frozenset(addresses)


def inspect(netns: str | None = None, runner: Runner = run) -> HostView:
    """Read ``netns`` (None: here). KernelError when it cannot be read."""
    links = {link.name: link for link in map(_link, _json(runner(ip_argv(netns, "-j", "-d", "link", "show"))))}
    addresses = _addresses(runner(ip_argv(netns, "-j", "addr", "show")))
    try:
        sysctls = run_in(netns, _read_sysctls)
    except OSError as exc:
        raise KernelError(f"cannot read the bridge-netfilter settings of {netns}: {exc}") from None
    return HostView(netns, links, addresses, sysctls)


@dataclass(frozen=True)
class NetnsProbe:
    """Can callgate work inside an endpoint's namespace file?"""

    path: str
    problem: str | None  # None: it can
    host: bool = False  # it is the node's own namespace (host networking)
    addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()


def probe_netns(path: str, node_netns: str | None, runner: Runner = run) -> NetnsProbe:
    """Whether ``path`` is an enterable network namespace other than the node's."""
    file = netns_file(path)
    if not os.path.exists(file):
        return NetnsProbe(path, f"network namespace {path} does not exist")
    try:
        if same_namespace(path, node_netns):
            return NetnsProbe(path, None, host=True)
        out = runner(ip_argv(path, "-j", "addr", "show"))
    except (OSError, KernelError) as exc:
        return NetnsProbe(path, f"network namespace {path} cannot be entered: {exc}")
    return NetnsProbe(path, None, addresses=_addresses(out))


def set_bridge_flag(netns: str | None, bridge: str, flag: str, runner: Runner = run) -> None:
    """Turn on a bridge's own netfilter flag (``nf_call_iptables``...)."""
    assert flag in BRIDGE_FLAG.values()
    runner(ip_argv(netns, "link", "set", "dev", bridge, "type", "bridge", flag, "1"))


def set_sysctl(netns: str | None, name: str, value: int) -> None:
    """Write one br_netfilter sysctl of ``netns``."""
    assert name in SYSCTLS

    def write() -> None:
        (SYSCTL_DIR / name).write_text(f"{value}\n")

    try:
        run_in(netns, write)
    except OSError as exc:
        raise KernelError(f"cannot set net.bridge.{name}={value}: {exc}") from None
