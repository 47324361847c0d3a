"""Dispatch in iptables: which packets reach which endpoint's chains, and who may send what.

The same semantics as the nft backend (:mod:`callgate.enforcers.nft.dispatch`),
with iptables' own means; the per-endpoint tier chains come from
:mod:`.rules`. Per IP version, in the filter table:

**Node** (``-A FORWARD -j CG-FORWARD``)::

    CG-FORWARD  [IPv6] -p ipv6-icmp --icmpv6-type <ND> -m hl --hl-eq 255 -j ACCEPT  (and MLD, hl 1)
                -m set --match-set cg-src-iface4 src,src -m set ! --match-set cg-src-pair4 src,src
                    -m comment --comment "callgate anti-spoofing" -j DROP   # routed veths
                -m physdev --physdev-is-in -j CG-SRC-PORTS                  # bridge ports
                -m conntrack --ctstate RELATED,ESTABLISHED (digest comment) -j ACCEPT
                -s ADDRESS -j CG-out_<endpoint>                      # every egress dispatch first ...
                -d ADDRESS -j CG-in_<endpoint>                       # ... then every ingress dispatch
                [fail-closed: -i/-o PREFIX+ and physdev in/out PREFIX+ to CG-FC-* chains]
    CG-SRC-PORTS -m physdev --physdev-in IFACE -j CG-src_<endpoint>   # per local endpoint
    CG-src_<e>  -s OWN -j RETURN ...; -m comment --comment "callgate anti-spoofing" -j DROP

    ipset cg-src-iface4 hash:net,iface   0.0.0.0/1,IFACE 128.0.0.0/1,IFACE per local endpoint interface
    ipset cg-src-pair4  hash:net,iface   OWN,IFACE
    (…6 for IPv6: ::/1 and 8000::/1)

The source checks come before the established rule: conntrack finds a flow by
addresses and ports, not by the interface, so a pod sending with another pod's
address and ports would otherwise ride that pod's open flow past every check.
A routed veth is checked in two O(1) set look-ups. A bridge port is not: a
bridged packet's in-interface is the bridge, and iptables' set match cannot
look up the port (ipset's ``physdev:`` elements are not reachable from
``-m set``), so packets that came in on a bridge port walk one physdev rule
per local endpoint (the same linear cost as iptables' dispatch; the nft
backend checks bridge ports in its bridge table, in O(1)).

**Netns** (inside an endpoint's own namespace: ``-A INPUT -j CG-INPUT``,
``-A OUTPUT -j CG-OUTPUT``)::

    CG-INPUT    -i lo -j ACCEPT; established (digest comment) -j ACCEPT; [IPv6: ND, MLD];
                -d ADDRESS -j CG-in_<endpoint>
    CG-OUTPUT   -o lo -j ACCEPT; established -j ACCEPT; [IPv6: ND, MLD]; -j CG-src_<endpoint>;
                -s ADDRESS -j CG-out_<endpoint>

In the node's chain the source check comes first (after neighbour discovery
and MLD), then established flows leave; in an endpoint's own namespace,
established flows leave first (its conntrack only holds its own flows).
Neighbour discovery and MLD are accepted before the source check: on a
bridge they come from link-local addresses, and they are link-local control
traffic that NetworkPolicy does not govern (the hop limits keep them on one
link). What iptables cannot see, and the nft backend checks in its bridge
table: ARP, and frames that are not plain IPv4/IPv6 (VLAN-tagged IP skips
br_netfilter unless ``bridge-nf-filter-vlan-tagged`` is on, which the guard
sees to; see docs/topologies.md).

Dispatch by address is linear in iptables (one rule per address; no verdict
map), as interface dispatch was; peers stay O(1) set look-ups.
"""

from __future__ import annotations

import ipaddress

from callgate.compiler.ir import LocalEndpoint, RuleSet, short_hash
from callgate.enforcers.base import FailClosed, Placement
from callgate.enforcers.iptables.layout import (
    ANTI_SPOOFING_COMMENT,
    DIGEST_PREFIX,
    FAIL_CLOSED_COMMENT,
    FC_IIF,
    FC_OIF,
    FC_PIN,
    FC_POUT,
    FORWARD_CHAIN,
    INPUT_CHAIN,
    OUTPUT_CHAIN,
    SOURCE_IFACES,
    SOURCE_PAIRS,
    SOURCE_PORTS_CHAIN,
    Version,
    chain_name,
    quote,
)

ND_TYPES = (133, 134, 135, 136, 137)  # router/neighbour solicitation and advertisement, redirect
MLD_TYPES = (130, 131, 132, 143)  # listener query, report, done; MLDv2 report

# Where each placement hooks in: (built-in chain, callgate's chain), in this order.
ENTRIES: dict[Placement, tuple[tuple[str, str], ...]] = {
    "node": (("FORWARD", FORWARD_CHAIN),),
    "netns": (("INPUT", INPUT_CHAIN), ("OUTPUT", OUTPUT_CHAIN)),
}


def source_chain(endpoint: str) -> str:
    """The anti-spoofing chain of a local endpoint."""
    return chain_name(f"src_{short_hash(endpoint)}")


def _own(le: LocalEndpoint, version: Version) -> list[str]:
    ips = sorted((ipaddress.ip_address(a) for a in le.ips if ipaddress.ip_address(a).version == version), key=int)
    return [f"{ip}/{ip.max_prefixlen}" for ip in ips]


def _source_chains(local: list[LocalEndpoint], version: Version) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for le in local:
        name = source_chain(le.endpoint)
        out[name] = [*(f"-A {name} -s {own} -j RETURN" for own in _own(le, version)),
                     f"-A {name} -m comment --comment {quote(ANTI_SPOOFING_COMMENT)} -j DROP"]
    return out


def _link_control(chain: str, version: Version) -> list[str]:
    if version != 6:
        return []
    return [f"-A {chain} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -m hl --hl-eq {limit} -j ACCEPT"
            for types, limit in ((ND_TYPES, 255), (MLD_TYPES, 1)) for t in types]


def _established(chain: str, digest: str) -> str:
    return (f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED "
            f"-m comment --comment {quote(DIGEST_PREFIX + digest)} -j ACCEPT")


def _addresses(ips: tuple[str, ...], version: Version) -> list[str]:
    return _own(LocalEndpoint("", ips), version)


def _dispatch(chain: str, ruleset: RuleSet, version: Version, directions: tuple[str, ...]) -> list[str]:
    """``-s ADDRESS -j <egress>`` for every endpoint, then ``-d ADDRESS -j
    <ingress>``: a pod-to-pod packet on one node runs the source's egress
    chain (which RETURNs on allow) before the destination's ingress decides."""
    lines: list[str] = []
    endpoints = sorted(ruleset.endpoints, key=lambda e: e.endpoint)
    for direction in directions:
        for ep in endpoints:
            tiers = ep.egress if direction == "egress" else ep.ingress
            if not tiers:
                continue
            flag = "-s" if direction == "egress" else "-d"
            lines.extend(f"-A {chain} {flag} {a} -j {chain_name(tiers[0].name)}" for a in _addresses(ep.ips, version))
    return lines


def _fail_closed(fc: FailClosed) -> tuple[list[str], dict[str, list[str]]]:
    """Fail-closed mode: the rules in CG-FORWARD, and the chains they jump
    to, which RETURN for each known interface and DROP the rest. A bridge
    port is seen by physdev: on the way in always, on the way out only when
    bridged (a packet routed into a bridge has no output port yet in FORWARD)."""
    drop = f"-m comment --comment {quote(FAIL_CLOSED_COMMENT)} -j DROP"
    rules = [f"-A {FORWARD_CHAIN} -i {fc.prefix}+ -j {FC_IIF}",
             f"-A {FORWARD_CHAIN} -o {fc.prefix}+ -j {FC_OIF}",
             f"-A {FORWARD_CHAIN} -m physdev --physdev-in {fc.prefix}+ -j {FC_PIN}",
             f"-A {FORWARD_CHAIN} -m physdev --physdev-out {fc.prefix}+ --physdev-is-bridged -j {FC_POUT}"]
    chains = {
        FC_IIF: [*(f"-A {FC_IIF} -i {i} -j RETURN" for i in fc.known), f"-A {FC_IIF} {drop}"],
        FC_OIF: [*(f"-A {FC_OIF} -o {i} -j RETURN" for i in fc.known), f"-A {FC_OIF} {drop}"],
        FC_PIN: [*(f"-A {FC_PIN} -m physdev --physdev-in {i} -j RETURN" for i in fc.known), f"-A {FC_PIN} {drop}"],
        FC_POUT: [*(f"-A {FC_POUT} -m physdev --physdev-out {i} -j RETURN" for i in fc.known),
                  f"-A {FC_POUT} {drop}"],
    }
    return rules, chains


def dispatch_chains(ruleset: RuleSet, version: Version, digest: str, placement: Placement,
                    fail_closed: FailClosed | None = None) -> dict[str, list[str]]:
    """Chain -> its ``-A`` lines for the entry chains, the anti-spoofing
    chains and the fail-closed chains of one IP version."""
    if placement == "netns":
        chains = _source_chains(list(ruleset.local), version)
        source = [f"-A {OUTPUT_CHAIN} -j {source_chain(le.endpoint)}" for le in ruleset.local]
        chains[INPUT_CHAIN] = [f"-A {INPUT_CHAIN} -i lo -j ACCEPT", _established(INPUT_CHAIN, digest),
                               *_link_control(INPUT_CHAIN, version),
                               *_dispatch(INPUT_CHAIN, ruleset, version, ("ingress",))]
        chains[OUTPUT_CHAIN] = [f"-A {OUTPUT_CHAIN} -o lo -j ACCEPT",
                                f"-A {OUTPUT_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                                *_link_control(OUTPUT_CHAIN, version), *source,
                                *_dispatch(OUTPUT_CHAIN, ruleset, version, ("egress",))]
        return chains
    # Link-local control first (a bridge port's neighbour discovery comes from
    # fe80::/10), then the source check, then established flows: see the module doc.
    spoofed = (f"-A {FORWARD_CHAIN} -m set --match-set {SOURCE_IFACES[version]} src,src "
               f"-m set ! --match-set {SOURCE_PAIRS[version]} src,src "
               f"-m comment --comment {quote(ANTI_SPOOFING_COMMENT)} -j DROP")
    attached = sorted((le for le in ruleset.local if le.interface is not None), key=lambda e: e.interface or "")
    chains = _source_chains(attached, version)
    chains[SOURCE_PORTS_CHAIN] = [f"-A {SOURCE_PORTS_CHAIN} -m physdev --physdev-in {le.interface} "
                                  f"-j {source_chain(le.endpoint)}" for le in attached]
    forward = [*_link_control(FORWARD_CHAIN, version), spoofed,
               f"-A {FORWARD_CHAIN} -m physdev --physdev-is-in -j {SOURCE_PORTS_CHAIN}",
               _established(FORWARD_CHAIN, digest)]
    forward.extend(_dispatch(FORWARD_CHAIN, ruleset, version, ("egress", "ingress")))
    if fail_closed is not None:
        rules, fc_chains = _fail_closed(fail_closed)
        forward.extend(rules)
        chains.update(fc_chains)
    chains[FORWARD_CHAIN] = forward
    return chains
