"""IR sets as ipsets: canonical elements, as ``ipset save`` prints them back."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from callgate.compiler.ir import RuleSet
from callgate.enforcers.iptables.layout import (
    DEFAULT_MAXELEM,
    FAMILY_VERSION,
    IPSET_FAMILY,
    SOURCE_IFACES,
    SOURCE_PAIRS,
    SOURCE_SET_TYPE,
    VERSIONS,
    set_name,
)


@dataclass(frozen=True, slots=True)
class IpSet:
    """One ipset as callgate wants it: canonical, sorted elements."""

    name: str
    type: str  # "hash:net" | "hash:ip,port" | "hash:net,iface" (the node's source check)
    family: str  # "inet" | "inet6"
    elements: tuple[str, ...]
    maxelem: int = DEFAULT_MAXELEM

    def create_line(self, name: str | None = None) -> str:
        line = f"create {name or self.name} {self.type} family {self.family}"
        if self.maxelem != DEFAULT_MAXELEM:
            line += f" maxelem {self.maxelem}"
        return line

    def add_lines(self, name: str | None = None) -> list[str]:
        return [f"add {name or self.name} {e}" for e in self.elements]

    def text(self) -> str:
        return "\n".join([self.create_line(), *self.add_lines()])

    @property
    def header(self) -> tuple[str, str]:
        return self.type, self.family


IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


def _net_text(net: IPNet) -> str:
    # ipset prints a full-length prefix as the bare address
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _networks(element: str) -> list[IPNet]:
    """An IR element (address, prefix or "a-b" range) as CIDRs hash:net accepts.

    hash:net cannot hold a /0, so it becomes its two /1 halves."""
    nets: list[IPNet]
    if "-" in element and "/" not in element:
        lo, hi = (ipaddress.ip_address(x) for x in element.split("-", 1))
        nets = list(ipaddress.summarize_address_range(lo, hi))  # type: ignore[arg-type]
    else:
        nets = [ipaddress.ip_network(element, strict=False)]
    out: list[IPNet] = []
    for net in nets:
        out.extend(net.subnets(new_prefix=1) if net.prefixlen == 0 else [net])
    return out


def net_elements(elements: Iterable[str]) -> tuple[str, ...]:
    nets = {n for e in elements for n in _networks(e)}
    return tuple(_net_text(n) for n in sorted(nets, key=lambda n: (int(n.network_address), n.prefixlen)))


def port_element(addr: str, protocol: str, port: int) -> str:
    return f"{ipaddress.ip_address(addr)},{protocol}:{port}"


def sort_port_elements(elements: Iterable[str]) -> tuple[str, ...]:
    def key(e: str) -> tuple[int, str, int]:
        addr, _, rest = e.rpartition(",")
        proto, _, port = rest.partition(":")
        return int(ipaddress.ip_address(addr)), proto, int(port)
    return tuple(sorted(set(elements), key=key))


def canonical_element(set_type: str, element: str) -> str:
    """Normalise an element as read back from ``ipset save``."""
    try:
        if set_type == "hash:net":
            return _net_text(ipaddress.ip_network(element, strict=False))
        if set_type == "hash:ip,port":
            addr, _, rest = element.rpartition(",")
            proto, _, port = rest.partition(":")
            return port_element(addr, proto, int(port))
    except ValueError:
        pass
    return element  # not ours to understand: shown as is


def ruleset_sets(ruleset: RuleSet, instead: Mapping[str, str]) -> tuple[IpSet, ...]:
    """The IR's sets as ipsets, but one per distinct address-set content
    (``instead``: :func:`~callgate.enforcers.base.equal_sets` of the RuleSet)."""
    sets: list[IpSet] = []
    for s in ruleset.address_sets:
        if s.name in instead:
            continue
        elements = net_elements(s.elements)
        sets.append(IpSet(set_name(s.name), "hash:net", IPSET_FAMILY[FAMILY_VERSION[s.family]], elements,
                          max(DEFAULT_MAXELEM, len(elements))))
    for ps in ruleset.port_sets:
        elements = sort_port_elements(port_element(a, ps.protocol, p) for a, p in ps.elements)
        sets.append(IpSet(set_name(ps.name), "hash:ip,port", IPSET_FAMILY[FAMILY_VERSION[ps.family]], elements,
                          max(DEFAULT_MAXELEM, len(elements))))
    return tuple(sorted(sets, key=lambda s: s.name))


def source_sets(ruleset: RuleSet) -> tuple[IpSet, ...]:
    """The node's source check for routed veths (see dispatch.py): per IP
    version, the (own address, interface) pairs of the local endpoints and
    (any address, interface) for their interfaces, the addresses written as
    :func:`net_elements` writes them (a /0 as its two /1 halves). Interface
    names are validated (no ',' or ':'), addresses are the IR's."""
    out = []
    attached = [le for le in ruleset.local if le.interface is not None]
    for version in VERSIONS:
        anywhere = net_elements(["0.0.0.0/0" if version == 4 else "::/0"])
        pairs: set[str] = set()
        ifaces: set[str] = set()
        for le in attached:
            ifaces.update(f"{net},{le.interface}" for net in anywhere)
            own = net_elements(a for a in le.ips if ipaddress.ip_address(a).version == version)
            pairs.update(f"{net},{le.interface}" for net in own)
        for name, elements in ((SOURCE_IFACES[version], ifaces), (SOURCE_PAIRS[version], pairs)):
            out.append(IpSet(name, SOURCE_SET_TYPE, IPSET_FAMILY[version], tuple(sorted(elements)),
                             max(DEFAULT_MAXELEM, len(elements))))
    return tuple(out)
