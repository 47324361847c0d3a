"""Revocation: tracked connections that the rules no longer allow are cut.

The forward chain accepts ``ct state established,related`` before any policy
rule, so a connection admitted under old rules would live on after an update
revoked it. After an update the agent walks the connection tracking table
and deletes every entry whose connection the new RuleSet would not admit; its
next packet finds no entry, is judged as new and dropped by the new rules.
Entries still allowed are never touched, nor are entries that involve no
isolated local endpoint (the node's own traffic, other pods'), nor sides in
audit (they never drop).

The table is read and written with pyroute2's conntrack API (maintained, in
process, netns-aware); the judgement is the IR interpreter's
(:class:`~callgate.compiler.interpret.Interpreter`), which property tests hold
equal to the evaluator and the kernel tests to both backends.

Addresses as the forward hook judged them: the original direction's source,
and the reply direction's source as the destination, so a connection to a
Service address that was DNATed to a pod is judged by the pod's address and
port, as the rules saw it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from callgate.compiler.interpret import Interpreter
from callgate.compiler.ir import AddressPortSet, AddressSet, EndpointRules, RuleSet, Verdict

_PORT_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", 132: "sctp"}


@dataclass(frozen=True, slots=True)
class TrackedFlow:
    """One conntrack entry, as the forward hook judged its first packet."""

    protocol: int  # IP protocol number
    src: str
    dst: str
    sport: int | None
    dport: int | None
    handle: Any = None  # what the table needs to delete it


class ConntrackTable(Protocol):
    def flows(self) -> Iterator[TrackedFlow]:
        """Every tracked connection (both families)."""

    def delete(self, flow: TrackedFlow) -> bool:
        """Delete one entry; False when it was already gone."""

    def close(self) -> None: ...


class KernelConntrack:
    """The kernel's table in ``netns`` (None: this namespace), through pyroute2."""

    def __init__(self, netns: str | None = None) -> None:
        from pyroute2 import Conntrack

        self._ct = Conntrack(netns=netns) if netns else Conntrack()

    def flows(self) -> Iterator[TrackedFlow]:
        for entry in self._ct.dump_entries():
            orig, reply = entry.tuple_orig, entry.tuple_reply
            if orig is None or reply is None or orig.saddr is None or reply.saddr is None:
                continue
            yield TrackedFlow(protocol=int(orig.proto or 0), src=orig.saddr, dst=reply.saddr,
                              sport=orig.sport, dport=reply.sport, handle=orig)

    def delete(self, flow: TrackedFlow) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._ct.entry("del", tuple_orig=flow.handle)
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:  # ended, or cut by someone else, since the dump
                return False
            raise
        return True

    def close(self) -> None:
        self._ct.close()


@dataclass(frozen=True)
class Revocation:
    checked: int  # entries involving an isolated local endpoint
    deleted: int
    seconds: float


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FlowJudge(Protocol):
    def concerns(self, flow: TrackedFlow) -> bool:
        """Whether the rules decide anything about this connection here."""

    def allowed(self, flow: TrackedFlow) -> bool:
        """Whether the rules admit it as a new connection now."""


class Judge:
    """Whether the RuleSet still admits a tracked connection, side by side as
    the forward chain judges it: the source's egress, then the destination's
    ingress, each only when it is an isolated local endpoint not in audit
    (an audited side never drops, so it never revokes either)."""

    def __init__(self, ruleset: RuleSet) -> None:
        self._interpreter = Interpreter([ruleset])
        self._sides: dict[IPAddress, EndpointRules] = {
            ipaddress.ip_address(ip): ep for ep in ruleset.endpoints if not ep.audit for ip in ep.ips}

    def concerns(self, flow: TrackedFlow) -> bool:
        """Does the RuleSet decide anything about this connection here?"""
        return _address(flow.src) in self._sides or _address(flow.dst) in self._sides

    def allowed(self, flow: TrackedFlow) -> bool:
        src, dst = _address(flow.src), _address(flow.dst)
        if src is None or dst is None:
            return True
        protocol = _PORT_PROTOCOLS.get(flow.protocol, "icmp")
        port = flow.dport if flow.dport is not None and protocol != "icmp" else 0
        source, destination = self._sides.get(src), self._sides.get(dst)
        if source is not None and source is destination:
            return True  # a pod reaching itself never crosses its veth
        run = self._interpreter.run_tiers
        if source is not None and source.egress and run(
                source.egress, int(dst), dst.version, port, protocol) is not Verdict.ALLOW:
            return False
        return not (destination is not None and destination.ingress and run(
            destination.ingress, int(src), src.version, port, protocol) is not Verdict.ALLOW)


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def may_remove_access(old: RuleSet | None, new: RuleSet) -> bool:
    """Could ``new`` refuse a connection ``old`` admitted? False only when
    certainly not — every isolated endpoint's rules unchanged and no set lost
    an element (pod churn elsewhere that only adds peers) — so that a node
    with a busy connection table does not walk it after every such change."""
    if old is None:
        return True
    before = {ep.endpoint: ep for ep in old.endpoints}
    for ep in new.endpoints:
        was = before.get(ep.endpoint)
        if was is None or (was is not ep and was.digest != ep.digest):
            return True  # newly isolated, other rules, or out of audit
    new_sets: list[AddressSet | AddressPortSet] = [*new.address_sets, *new.port_sets]
    old_sets: list[AddressSet | AddressPortSet] = [*old.address_sets, *old.port_sets]
    sets = {s.name: s for s in old_sets}
    for now in new_sets:
        was_set = sets.get(now.name)
        if was_set is not None and was_set is not now and was_set.digest != now.digest and (
                set(was_set.elements) - set(now.elements)):
            return True  # a peer left a set (an interval that shrank or split counts too)
    return False


def revoke(table: ConntrackTable, judge: FlowJudge) -> Revocation:
    """Delete the tracked connections ``judge`` no longer allows; leave every other one alone."""
    started = time.perf_counter()
    checked = deleted = 0
    for flow in list(table.flows()):
        if not judge.concerns(flow):
            continue
        checked += 1
        if not judge.allowed(flow) and table.delete(flow):
            deleted += 1
    return Revocation(checked=checked, deleted=deleted, seconds=time.perf_counter() - started)
