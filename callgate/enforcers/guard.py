"""Never enforce nothing quietly: is each local endpoint really where callgate looks?

Before ``apply`` and on the agent's syncs, :func:`check` reads the node (see
:mod:`.host`) and places every local endpoint of the RuleSet:

* **routed veth**: its host-side interface is a veth (or tun/tap) that is no
  bridge's port: the forward hook sees its traffic by address, the inet
  table's anti-spoofing sees the interface;
* **bridge port**: a veth that is a Linux bridge's port: bridged traffic
  reaches the inet hooks only through br_netfilter, which must be on for
  that bridge (the namespace's ``bridge-nf-call-ip(6)tables`` sysctl or the
  bridge's own ``nf_call_ip(6)tables`` flag) for each family the endpoint
  has addresses of; the bridge table's anti-spoofing sees the port. With
  the iptables backend, VLAN-tagged IP must be passed to iptables as well
  (``bridge-nf-filter-vlan-tagged``), or a pod could send around its rules;
* **in-namespace**: no host-side interface, its own network namespace
  (macvlan, ipvlan): callgate enforces inside it, so it must exist, be
  enterable, not be the node's own, and hold the endpoint's addresses.

What defeats enforcement is a :class:`Finding`. Each is either **fixed**
(br_netfilter off for a bridge holding endpoints: the bridge's own flag is
turned on, which affects that bridge only, where the namespace-wide sysctl
would also send every other bridge's traffic (Docker's, libvirt's) through
the hosts' FORWARD rules; the VLAN sysctl for iptables, which has no
per-bridge form) or **refused** (everything else: an interface that is not
there, not a container's, or a port of a switch netfilter never sees; a
namespace that cannot be entered; an endpoint with the node's own addresses
or namespace: host networking has no stack of its own to enforce on). The
callers decide what refusing means: ``apply`` changes nothing and exits 1;
the agent leaves the endpoint unprogrammed and says why; ``doctor`` reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from callgate.compiler.ir import LocalEndpoint, RuleSet
from callgate.enforcers.host import (
    BRIDGE_FLAG,
    CALL_IP6TABLES,
    CALL_IPTABLES,
    FILTER_VLAN_TAGGED,
    HostView,
    NetnsProbe,
    inspect,
    probe_netns,
    set_bridge_flag,
    set_sysctl,
)

Kind = Literal["routed veth", "bridge port", "in-namespace", "not enforceable"]
HOST_KINDS = ("veth", "tun")  # what a container's host-side interface can be


@dataclass(frozen=True)
class Fix:
    """One change that makes enforcement effective: a bridge's own flag, or a sysctl."""

    netns: str | None
    target: str  # the bridge, or "" for a namespace sysctl
    setting: str  # ip-link flag or sysctl name
    why: str

    def describe(self) -> str:
        where = f" in network namespace {self.netns}" if self.netns else ""
        if self.target:
            return f"turned on {self.setting} on bridge {self.target}{where} ({self.why})"
        return f"set net.bridge.{self.setting}=1{where} ({self.why})"

    def apply(self) -> None:
        if self.target:
            set_bridge_flag(self.netns, self.target, self.setting)
        else:
            set_sysctl(self.netns, self.setting, 1)


@dataclass(frozen=True)
class Finding:
    endpoint: str
    problem: str
    fix: Fix | None = None  # None: nothing callgate may do about it (refused)
    # Refused, yet its rules may stay: they match the endpoint's addresses
    # wherever they show up; only its interface is not where the inventory
    # says (so its anti-spoofing and fail-closed entries match nothing).
    keep: bool = False


@dataclass(frozen=True)
class Placed:
    """How one local endpoint is enforced."""

    endpoint: str
    kind: Kind
    where: str  # interface (and bridge), or namespace


@dataclass(frozen=True)
class Report:
    placed: tuple[Placed, ...] = ()
    findings: tuple[Finding, ...] = ()
    fixes: tuple[Fix, ...] = field(default=())  # distinct, in order

    def refused(self) -> dict[str, str]:
        """Endpoint -> why, for what nothing can fix (first problem each)."""
        out: dict[str, str] = {}
        for f in self.findings:
            if f.fix is None:
                out.setdefault(f.endpoint, f.problem)
        return out

    @property
    def defeated(self) -> bool:
        """Would enforcement be ineffective somewhere as things stand?"""
        return bool(self.findings)


def _families(le: LocalEndpoint) -> set[int]:
    return {4 if ":" not in a else 6 for a in le.ips}


def _interface(le: LocalEndpoint, host: HostView, backend: str) -> tuple[Placed, list[Finding]]:
    name = le.interface or ""
    where = f"network namespace {host.netns}" if host.netns else "this network namespace"
    link = host.links.get(name)
    if link is None:
        return Placed(le.endpoint, "not enforceable", name), [Finding(
            le.endpoint, f"interface {name} does not exist in {where}: the inventory says the endpoint is there",
            keep=True)]
    if link.kind not in HOST_KINDS:
        what = f"a {link.kind} device" if link.kind else "a physical device"
        return Placed(le.endpoint, "not enforceable", name), [Finding(
            le.endpoint, f"interface {name} is {what}, not a container's host-side veth: its rules would "
            "filter the node's own traffic")]
    if link.master is None:
        return Placed(le.endpoint, "routed veth", name), []
    if link.port_kind != "bridge":
        return Placed(le.endpoint, "not enforceable", f"{name} ({link.port_kind} port of {link.master})"), [Finding(
            le.endpoint, f"interface {name} is a port of {link.port_kind or 'an unknown kind of'} device "
            f"{link.master}: traffic it switches never reaches netfilter")]
    placed = Placed(le.endpoint, "bridge port", f"{name} of bridge {link.master}")
    findings: list[Finding] = []
    if not host.sysctls:
        return placed, [Finding(le.endpoint, f"bridge {link.master} holds {name}, but br_netfilter is not loaded: "
                                "bridged traffic never reaches callgate's rules (modprobe br_netfilter)")]
    for family, sysctl in ((4, CALL_IPTABLES), (6, CALL_IP6TABLES)):
        if family in _families(le) and not host.bridge_nf(link.master, sysctl):
            why = f"bridged IPv{family} on {link.master} did not reach callgate's rules"
            findings.append(Finding(
                le.endpoint, f"{sysctl} is off{' in ' + where if host.netns else ''} and bridge {link.master}'s "
                f"own {BRIDGE_FLAG[sysctl]} too: {why}", Fix(host.netns, link.master, BRIDGE_FLAG[sysctl], why)))
    if backend == "iptables" and host.sysctls.get(FILTER_VLAN_TAGGED) != 1:
        why = "VLAN-tagged IP from a bridge port would pass iptables unfiltered"
        findings.append(Finding(le.endpoint, f"{FILTER_VLAN_TAGGED} is off: {why}",
                                Fix(host.netns, "", FILTER_VLAN_TAGGED, why)))
    return placed, findings


def _in_namespace(le: LocalEndpoint, probe: NetnsProbe) -> tuple[Placed, list[Finding]]:
    path = le.netns or ""
    if probe.problem is not None:
        return Placed(le.endpoint, "not enforceable", path), [Finding(le.endpoint, probe.problem)]
    if probe.host:
        return Placed(le.endpoint, "not enforceable", path), [Finding(
            le.endpoint, f"{path} is the node's own network namespace (host networking): the endpoint has no "
            "network stack of its own to enforce on")]
    missing = sorted(a for a in le.ips if not any(str(have) == a for have in probe.addresses))
    if missing:
        return Placed(le.endpoint, "not enforceable", path), [Finding(
            le.endpoint, f"network namespace {path} does not hold the endpoint's address(es) {', '.join(missing)}: "
            "it is not the endpoint's")]
    return Placed(le.endpoint, "in-namespace", path), []


def _host_network(le: LocalEndpoint, host: HostView) -> Finding | None:
    mine = sorted(a for a in le.ips if any(str(have) == a for have in host.addresses))
    if not mine:
        return None
    return Finding(le.endpoint, f"address(es) {', '.join(mine)} belong to the node itself (host networking): the "
                   "endpoint has no network stack of its own to enforce on")


def check(ruleset: RuleSet, netns: str | None, backend: str,
          read: Callable[[str | None], HostView] = inspect,
          probe: Callable[[str, str | None], NetnsProbe] = probe_netns) -> Report:
    """Place every local endpoint of ``ruleset`` on the node in ``netns`` and
    say what defeats enforcement (``backend``: "nft" or "iptables")."""
    host = read(netns)
    placed: list[Placed] = []
    findings: list[Finding] = []
    for le in ruleset.local:
        if (hostnet := _host_network(le, host)) is not None:
            placed.append(Placed(le.endpoint, "not enforceable", le.interface or le.netns or ""))
            findings.append(hostnet)
            continue
        if le.interface is not None:
            where, found = _interface(le, host, backend)
        else:
            where, found = _in_namespace(le, probe(le.netns or "", netns))
        placed.append(where)
        findings.extend(found)
    fixes: list[Fix] = []
    for f in findings:
        if f.fix is not None and f.fix not in fixes:
            fixes.append(f.fix)
    return Report(tuple(placed), tuple(findings), tuple(fixes))
