"""Dispatch: which packets reach which endpoint's chains, and who may send what.

The decision part of the table (peer sets, one chain per endpoint tier) is
built by :mod:`.commands`; this module builds everything around it: the
dispatch maps, the anti-spoofing sets and the base chains, for both
placements.

**Node** (``inet callgate`` on the forward hook, plus ``bridge callgate``)::

    map from_endpoint4 { type ipv4_addr : verdict }   ip saddr → jump out_<endpoint> (first egress tier)
    map to_endpoint4   { type ipv4_addr : verdict }   ip daddr → jump in_<endpoint>  (first ingress tier)
    (from_endpoint6, to_endpoint6: the same for IPv6)
    chain source_<h> { type filter hook ingress device "<veth>" priority 0;   # one per local host-side interface,
        ip saddr 198.18.0.10 accept                   #   on its own ingress hook: only its packets run it
        ip6 saddr fd00::10 accept                     #   ({ a, b } for several; none for a family it lacks)
        ip6 saddr @link_sources6 icmpv6 type . ip6 hoplimit { <ND> . 255, <MLD> . 1 } accept   # link-local control
        counter drop }                                # anything else it sends (before conntrack sees it)
    set link_sources6 { type ipv6_addr; flags interval; elements = { ::, fe80::/10 } }   # one for all of them
    [kernels before 6.16, GuardHook "forward": map endpoint_guard { type ifname : verdict } → jump
     source_<h> (regular chains: "ip saddr != own counter drop" per family), looked up first in forward]
    chain forward { type filter hook forward priority 0; policy accept;
        [forward guard: iifname vmap @endpoint_guard]
        ct state established,related accept
        ct mark != 0x0/24 ct mark & 0xffffff00 @verdict_tag accept   # a flow this table decided already
        icmpv6 type . ip6 hoplimit { nd-… . 255, mld-… . 1 } accept   # neighbour discovery and MLD
                                                                       #   (link-local control, not policy traffic)
        ip saddr vmap @from_endpoint4; ip6 saddr vmap @from_endpoint6   # egress: allow = return, deny = drop
        ip daddr vmap @to_endpoint4; ip6 daddr vmap @to_endpoint6       # ingress: allow = accept, deny = drop
        [fail-closed: iifname/oifname "<prefix>*" not in @known_endpoint: drop]
        jump accept_decided                           # allowed by every check: accept, remembered
    }
    set verdict_tag { type mark; elements = { <tag> } }
    map verdict_mark { type mark : mark; elements = { 0x0 : <tag> } }
    chain accept_decided {                            # also every ingress allow (goto accept_decided)
        ct mark set ct mark & 0xff map @verdict_mark accept
        accept }

    table bridge callgate:
    set endpoint_iface   { type ifname }              every local endpoint's host-side interface
    set endpoint_source4 { type ifname . ipv4_addr }  (interface, own address) pairs (…6: IPv6)
    chain prerouting { type filter hook prerouting priority -200;   # sees bridge ports
        [fail-closed: iifname "<prefix>*" not in @known_endpoint: drop]
        iifname @endpoint_iface jump endpoint_source }
    chain endpoint_source {     # a bridge port may send, from its own addresses only:
        ether type != { ip, arp, ip6 } counter drop   # no VLAN tags: br_netfilter passes tagged IP by the inet hooks
        IPv4, IPv6, ARP (sender address); from :: or fe80::/10 only neighbour
        discovery and MLD; nothing else }
    [chain postrouting: fail-closed for frames to "<prefix>*" ports]

Why by address: on a Linux bridge, br_netfilter hands bridged IPv4/IPv6 to
the inet forward hook with iif = oif = the bridge, so an interface name
cannot tell the endpoints apart there; addresses can, on routed veths,
bridge ports and traffic routed into a bridge alike. An address is only as
good as the check that nobody else sends from it, hence anti-spoofing on
every local endpoint's interface: in the inet table on the veth's ingress hook
(routed veths and bridge ports alike: it runs before the bridge does) or, on
older kernels, behind the forward hook (routed veths: the name it sees), and
in the bridge table for bridge ports (which only the bridge family sees; it
has no conntrack here, which anti-spoofing does not need). Both are always
present, so the table does not depend on what the host looks like. Anti-
spoofing comes before the established rule: a packet from a spoofed address
must not ride on another endpoint's connection either.

Why a base chain on each veth's own ingress hook: every packet the node
forwards would otherwise pay for the check, and most come from elsewhere. In
the forward chain the input interface had to be looked up for each of them
(``iifname vmap``: 16-byte name, hash look-up, miss), which took ~1.5% of a
new TCP connection's CPU (``bench/nf_profile.py``); on its own hook a pod's
packet pays a compare and everyone else's nothing, and a spoofed packet is
dropped before conntrack keeps an entry for it. That needs a kernel that keeps
a hook by interface name (6.16 and later: the hook attaches when the veth
appears, and again after it is re-created); the enforcer asks the kernel
(:func:`~callgate.enforcers.nft.kernel.keeps_hooks_by_name`) and on an older
one keeps the look-up in the forward chain, where the map costs a packet from
outside one missed look-up (the pair sets the bridge table uses would cost two
per family).

**Netns** (``inet callgate`` inside an endpoint's own namespace, no host-side
interface: macvlan, ipvlan)::

    the four dispatch maps, as above
    set endpoint_address4 { type ipv4_addr }      its own addresses (…6: IPv6)
    chain output { type filter hook output priority 0; policy accept;
        oifname "lo" accept                        # a pod always reaches itself
        ct state established,related accept        # (this namespace tracks only the pod's own flows)
        jump endpoint_source                       # only from its own addresses (raw sockets too)
        ct mark … @verdict_tag accept              # the verdict cache, as on the node
        neighbour discovery and MLD accept
        ip saddr vmap @from_endpoint4; ip6 saddr vmap @from_endpoint6
        jump accept_decided }
    chain input { type filter hook input priority 0; policy accept;
        iifname "lo" accept; ct state established,related accept; the verdict cache; ND and MLD accept
        ip daddr vmap @to_endpoint4; ip6 daddr vmap @to_endpoint6; jump accept_decided }
    chain endpoint_source { own addresses return; ND/MLD from :: or fe80::/10 return; counter drop }

**The verdict cache.** Conntrack calls every packet of a UDP flow "new" until
a reply comes, so a one-way stream (logs, metrics, media) would go through the
dispatch and the decision on every packet. A decided flow instead carries the
table's *tag* in its conntrack mark (bits 8-31; a flow whose bits 0-7 other
software set is accepted but not remembered): 24 bits of the table's digest
(:func:`~callgate.enforcers.nft.layout.verdict_tag`). Its later packets leave
at the rule after the established one, past the source check, which every
packet still meets. Another ruleset is another digest, hence another tag: each
transaction that changes the table swaps the tag's two elements (not rules:
see :data:`~callgate.enforcers.nft.layout.ACCEPT_DECIDED`), so a changed
policy decides every unreplied flow again on its next packet; a flow once
replied is established and, as before, left to conntrack revocation. (Two rulesets with
the same 24 bits would let a flow decided under the first go on unchecked
under the second: one chance in 16.7 million per change.) Only accepts are
remembered: a dropped packet's flow is never confirmed, so it has no mark.

Every element comes from the IR (addresses, interface names): data in JSON,
never text. :func:`dispatch_elements` lists the elements of every dispatch
set and map, so the incremental planner updates them like any other set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from callgate.compiler.addresses import address_value
from callgate.compiler.ir import RuleSet, short_hash
from callgate.enforcers.base import FailClosed, Placement
from callgate.enforcers.nft.kernel import Command
from callgate.enforcers.nft.layout import (
    ACCEPT_DECIDED,
    ANTI_SPOOFING_COMMENT,
    BRIDGE_FAMILY,
    DIGEST_KEY_LEN,
    FAIL_CLOSED_COMMENT,
    FAMILY,
    FORWARD,
    GUARD_PRIORITY,
    KNOWN_ENDPOINT,
    TABLE,
    TAG_BITS,
    TAG_SHIFT,
    VERDICT_MARK,
    VERDICT_TAG,
    GuardHook,
    verdict_tag,
)

FROM_ENDPOINT = {4: "from_endpoint4", 6: "from_endpoint6"}
TO_ENDPOINT = {4: "to_endpoint4", 6: "to_endpoint6"}
ENDPOINT_IFACE = "endpoint_iface"
ENDPOINT_GUARD = "endpoint_guard"  # node, inet: host-side interface -> jump its source chain
GUARD_PREFIX = "source_"  # + a hash of the interface name (a name is input: never part of a chain name)
ENDPOINT_SOURCE = {4: "endpoint_source4", 6: "endpoint_source6"}  # node: (interface, address)
ENDPOINT_ADDRESS = {4: "endpoint_address4", 6: "endpoint_address6"}  # netns: own addresses
SOURCE_CHAIN = "endpoint_source"
INPUT, OUTPUT = "input", "output"
BRIDGE_PREROUTING, BRIDGE_POSTROUTING = "prerouting", "postrouting"
BRIDGE_PRIORITY = -200  # the bridge family's "filter" priority: before br_netfilter (0) hands IP on

_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_PROTOCOL = {4: "ip", 6: "ip6"}
# Link-local control traffic a bridge carries between endpoints. NetworkPolicy
# does not govern it (on a routed veth it never leaves the link), neighbour
# resolution between allowed endpoints needs it, and the hop limits pin it to
# one link: routers do not forward it. Listed in the kernel's order (by type).
ND_TYPES = ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert", "nd-redirect"]
MLD_TYPES = ["mld-listener-query", "mld-listener-report", "mld-listener-done", "mld2-listener-report"]
LINK_SOURCES = ["::", {"prefix": {"addr": "fe80::", "len": 10}}]
# The node's source chains look those up in one named set. An anonymous set in
# each chain (one per local interface) made every later transaction in the
# namespace slower: libnftables 1.0.6 fetches the elements of every anonymous
# interval set before it runs a command, a netlink dump each (~2 ms a
# transaction at 100 local pods; a named set's are not fetched).
LINK_SOURCES_SET = "link_sources6"
ETHER_TYPES = ("ip", "arp", "ip6")  # what a bridge port may send (in the kernel's order)


def _in(family: str, **fields: Any) -> dict[str, Any]:
    return {"family": family, "table": TABLE, **fields}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _version(address: str) -> int:
    return 6 if ":" in address else 4  # IR addresses are canonical texts: IPv6 always has a colon


def guard_chain(interface: str) -> str:
    """The name of the source chain of a host-side interface."""
    return GUARD_PREFIX + short_hash(interface, length=DIGEST_KEY_LEN)


def _in_order(ips: tuple[str, ...]) -> Sequence[str]:
    """An endpoint's addresses in address order. Most have one address per family, and
    one of each is in order already (IPv4 first): sorting every endpoint's on every
    change was most of the dispatch elements' time at 50,000 pods."""
    if len(ips) < 2 or (len(ips) == 2 and ":" not in ips[0] and ":" in ips[1]):
        return ips
    return sorted(ips, key=address_value)


# -- elements -------------------------------------------------------------------


DispatchElements = dict[tuple[str, str], list[Any]]


def dispatch_elements(ruleset: RuleSet, fail_closed: FailClosed | None, placement: Placement,
                      guard: GuardHook = "ingress") -> DispatchElements:
    """(family, name) -> elements of every dispatch set and map, as libnftables JSON."""
    out: DispatchElements = {}
    for version in (4, 6):
        out[(FAMILY, FROM_ENDPOINT[version])] = []
        out[(FAMILY, TO_ENDPOINT[version])] = []
    for ep in ruleset.endpoints:
        for address in _in_order(ep.ips):
            version = _version(address)
            if ep.egress:
                out[(FAMILY, FROM_ENDPOINT[version])].append([address, {"jump": {"target": ep.egress[0].name}}])
            if ep.ingress:
                out[(FAMILY, TO_ENDPOINT[version])].append([address, {"jump": {"target": ep.ingress[0].name}}])
    if placement == "netns":
        for version in (4, 6):
            out[(FAMILY, ENDPOINT_ADDRESS[version])] = sorted(
                (a for le in ruleset.local for a in le.ips if _version(a) == version), key=address_value)
        return out
    attached = sorted((le for le in ruleset.local if le.interface is not None), key=lambda le: le.interface or "")
    if guard == "forward":
        out[(FAMILY, ENDPOINT_GUARD)] = [[iface, {"jump": {"target": guard_chain(iface)}}]
                                         for iface in sorted({le.interface for le in attached if le.interface})]
    out[(BRIDGE_FAMILY, ENDPOINT_IFACE)] = [le.interface for le in attached]
    for version in (4, 6):
        out[(BRIDGE_FAMILY, ENDPOINT_SOURCE[version])] = [
            {"concat": [le.interface, a]} for le in attached for a in _in_order(le.ips) if _version(a) == version]
    if fail_closed is not None:
        for family in (FAMILY, BRIDGE_FAMILY):
            out[(family, KNOWN_ENDPOINT)] = list(fail_closed.known)
    return out


@dataclass(frozen=True)
class GuardChain:
    """One host-side interface's source check: its chain's rules (expression lists)."""

    interface: str
    rules: tuple[tuple[dict[str, Any], ...], ...]


GuardChains = dict[str, GuardChain]


def guard_chains(ruleset: RuleSet, placement: Placement, guard: GuardHook = "ingress") -> GuardChains:
    """Chain name -> the source check of every local endpoint's host-side
    interface (:func:`guard_chain_of`). Empty in a namespace."""
    return {guard_chain(iface): guard_chain_of(iface, sources, guard)
            for iface, sources in sorted(guard_sources(ruleset, placement).items())}


def guard_sources(ruleset: RuleSet, placement: Placement) -> dict[str, frozenset[str]]:
    """Host-side interface -> the addresses the endpoints on it may send from:
    all a source chain depends on (so an update builds only the chains whose
    sources changed). Empty in a namespace."""
    if placement == "netns":
        return {}
    own: dict[str, set[str]] = {}
    for le in ruleset.local:
        if le.interface is not None:
            own.setdefault(le.interface, set()).update(le.ips)
    return {iface: frozenset(ips) for iface, ips in own.items()}


def guard_chain_of(iface: str, sources: frozenset[str], guard: GuardHook = "ingress") -> GuardChain:
    """One interface's source check: a packet from it must come from one of
    ``sources``, per family (an interface with no address of a family sends
    none of it).

    On the ``ingress`` hook the chain sees everything the interface sends, the
    pod's own link-local control traffic to the node too: its addresses are
    accepted, then neighbour discovery and MLD from ``::`` or ``fe80::/10`` (no
    router forwards those), and the rest dropped. Behind the ``forward`` hook's
    look-up only forwarded packets arrive: a rule per family drops what is not
    from the interface's addresses."""
    rules: list[tuple[dict[str, Any], ...]] = []
    for version in (4, 6):
        mine = sorted((a for a in sources if _version(a) == version), key=address_value)
        source = _payload(_PROTOCOL[version], "saddr")
        addresses: Any = mine[0] if len(mine) == 1 else {"set": mine}
        if guard == "ingress":
            if mine:
                rules.append((_match(source, addresses), {"accept": None}))
        elif mine:
            rules.append((_match(source, addresses, op="!="), {"counter": None}, {"drop": None}))
        else:
            rules.append((_match(_meta("nfproto"), "ipv4" if version == 4 else "ipv6"), {"counter": None},
                          {"drop": None}))
    if guard == "ingress":
        link_local = _match(_payload("ip6", "saddr"), "@" + LINK_SOURCES_SET)
        rules.append((link_local, *_link_control_one({"accept": None})))
        rules.append(({"counter": None}, {"drop": None}))
    return GuardChain(iface, tuple(rules))


def guard_chain_commands(name: str, chain: GuardChain) -> list[Command]:
    """The rules of one source chain (added to an existing, empty chain); its
    drops carry the anti-spoofing comment (counted by the agent's metrics)."""
    return [_rule(FAMILY, name, *expr, comment=ANTI_SPOOFING_COMMENT if "drop" in expr[-1] else None)
            for expr in chain.rules]


def guard_chain_declaration(name: str, chain: GuardChain, guard: GuardHook = "ingress") -> Command:
    """``add chain`` for a source chain: a base chain on its interface's ingress
    hook, or a regular chain the forward chain's look-up jumps to."""
    if guard == "ingress":
        return {"add": {"chain": _in(FAMILY, name=name, type="filter", hook="ingress", dev=chain.interface,
                                     prio=GUARD_PRIORITY, policy="accept")}}
    return {"add": {"chain": _in(FAMILY, name=name)}}


def _link_sources_set() -> Command:
    return {"add": {"set": _in(FAMILY, name=LINK_SOURCES_SET, type=_ADDR_TYPE[6], flags=["interval"],
                               elem=list(LINK_SOURCES))}}


def _set_type(name: str) -> tuple[str, Any]:
    """(kind, type) of a dispatch set or map by its name."""
    for version in (4, 6):
        if name in (FROM_ENDPOINT[version], TO_ENDPOINT[version]):
            return "map", _ADDR_TYPE[version]
        if name == ENDPOINT_SOURCE[version]:
            return "set", ["ifname", _ADDR_TYPE[version]]
        if name == ENDPOINT_ADDRESS[version]:
            return "set", _ADDR_TYPE[version]
    if name == ENDPOINT_GUARD:
        return "map", "ifname"
    return "set", "ifname"  # endpoint_iface, known_endpoint


def _set_commands(elements: dict[tuple[str, str], list[Any]]) -> list[Command]:
    cmds: list[Command] = []
    for (family, name), elems in elements.items():
        kind, typ = _set_type(name)
        body = _in(family, name=name, type=typ)
        if kind == "map":
            body["map"] = "verdict"
        if elems:
            body["elem"] = list(elems)
        cmds.append({"add": {kind: body}})
    return cmds


# -- rules ----------------------------------------------------------------------


def _rule(family: str, chain: str, *expr: dict[str, Any], comment: str | None = None) -> Command:
    body = _in(family, chain=chain, expr=list(expr))
    if comment is not None:
        body["comment"] = comment
    return {"add": {"rule": body}}


def _base_chain(family: str, name: str, hook: str, prio: int) -> Command:
    return {"add": {"chain": _in(family, name=name, type="filter", hook=hook, prio=prio, policy="accept")}}


def _link_control(verdict: dict[str, Any], from_link_local: bool = False) -> list[list[dict[str, Any]]]:
    """Neighbour discovery (hop limit 255) and MLD (hop limit 1): the rules'
    expressions, each ending in ``verdict``; ``from_link_local`` limits them
    to packets from the unspecified or a link-local address."""
    source = [_match(_payload("ip6", "saddr"), {"set": list(LINK_SOURCES)})] if from_link_local else []
    return [[*source, _match(_payload("icmpv6", "type"), {"set": list(types)}),
             _match(_payload("ip6", "hoplimit"), limit), verdict]
            for types, limit in ((ND_TYPES, 255), (MLD_TYPES, 1))]


def _link_control_one(verdict: dict[str, Any]) -> list[dict[str, Any]]:
    """Neighbour discovery and MLD with their hop limits in one look-up (a
    packet of another kind leaves at the first compare)."""
    # In the order nft lists them back (by value: the hop limit, then the type).
    pairs = [{"concat": [t, 1]} for t in MLD_TYPES] + [{"concat": [t, 255]} for t in ND_TYPES]
    return [_match({"concat": [_payload("icmpv6", "type"), _payload("ip6", "hoplimit")]}, {"set": pairs}), verdict]


_MARK = {"ct": {"key": "mark"}}
_OTHERS = (1 << TAG_SHIFT) - 1  # the ct mark bits left to other software
_TAG_MASK = ((1 << TAG_BITS) - 1) << TAG_SHIFT


def verdict_cache_objects(digest: str) -> list[Command]:
    """The verdict cache of the table whose digest is ``digest``: the tag in ``set
    verdict_tag`` and in ``map verdict_mark`` (others' bits 0 → the tag), and
    ``chain accept_decided`` (first in the table: decision chains goto it)::

        chain accept_decided {
            ct mark set ct mark & 0xff map @verdict_mark accept   # others' bits 0: tagged
            accept }                                               # else accepted, not remembered
    """
    tag = verdict_tag(digest)
    remember = {"mangle": {"key": _MARK, "value": {"map": {"key": {"&": [_MARK, _OTHERS]}, "data": "@" + VERDICT_MARK}}}}
    return [{"add": {"set": _in(FAMILY, name=VERDICT_TAG, type="mark", elem=[tag])}},
            {"add": {"map": _in(FAMILY, name=VERDICT_MARK, type="mark", map="mark", elem=[[0, tag]])}},
            {"add": {"chain": _in(FAMILY, name=ACCEPT_DECIDED)}},
            _rule(FAMILY, ACCEPT_DECIDED, remember, {"accept": None}),
            _rule(FAMILY, ACCEPT_DECIDED, {"accept": None})]


def verdict_tag_swap(old_digest: str, new_digest: str) -> list[Command]:
    """Element commands that give the verdict cache the new table's tag (none when
    the tags are equal): every flow decided under the old table is decided again."""
    old, new = verdict_tag(old_digest), verdict_tag(new_digest)
    if old == new:
        return []

    def element(verb: str, name: str, elem: Any) -> Command:
        return {verb: {"element": _in(FAMILY, name=name, elem=[elem])}}

    return [element("delete", VERDICT_TAG, old), element("delete", VERDICT_MARK, [0, old]),
            element("add", VERDICT_TAG, new), element("add", VERDICT_MARK, [0, new])]


def _cached() -> list[dict[str, Any]]:
    """A flow whose ct mark holds the table's tag: accept. (The compare first: a
    packet of a flow nothing decided yet leaves without the set look-up.) As nft
    lists it back: ``ct mark != 0x0/24 ct mark & 0xffffff00 @verdict_tag accept``."""
    return [_match(_MARK, {"prefix": {"addr": 0, "len": TAG_BITS}}, op="!="),
            _match({"&": [_MARK, _TAG_MASK]}, "@" + VERDICT_TAG), {"accept": None}]


def _decided() -> dict[str, Any]:
    return {"jump": {"target": ACCEPT_DECIDED}}


def _established() -> dict[str, Any]:
    return _match({"ct": {"key": "state"}}, ["established", "related"], op="in")


def _dispatch(family_key: str) -> list[list[dict[str, Any]]]:
    """``ip saddr vmap @from_endpoint4`` and the IPv6 twin (``daddr``/``to_endpoint`` likewise)."""
    names = FROM_ENDPOINT if family_key == "saddr" else TO_ENDPOINT
    return [[{"vmap": {"key": _payload(_PROTOCOL[v], family_key), "data": "@" + names[v]}}] for v in (4, 6)]





def _fail_closed(family: str, chain: str, key: str, fc: FailClosed) -> Command:
    # The prefix goes in as JSON data, never as nft text.
    return _rule(family, chain, _match(_meta(key), fc.prefix + "*"), _match(_meta(key), "@" + KNOWN_ENDPOINT, op="!="),
                 {"counter": None}, {"drop": None}, comment=FAIL_CLOSED_COMMENT)


def _drop_spoofed(family: str) -> Command:
    return _rule(family, SOURCE_CHAIN, {"counter": None}, {"drop": None}, comment=ANTI_SPOOFING_COMMENT)


def _node_inet(fc: FailClosed | None, guard: GuardHook) -> list[Command]:
    cmds = [_base_chain(FAMILY, FORWARD, "forward", 0)]
    # From an endpoint's interface: its source chain drops what is not from its
    # own addresses. Before the established rule: conntrack matches a packet by
    # its addresses and ports, not by where it came from, so a pod sending with
    # another pod's address and ports would otherwise ride that pod's open flow
    # past every check (test_a_spoofed_packet_cannot_ride_the_impersonated_pods_flow).
    # On the ingress hook that holds by itself (it runs before conntrack).
    if guard == "forward":
        cmds.append(_rule(FAMILY, FORWARD, {"vmap": {"key": _meta("iifname"), "data": "@" + ENDPOINT_GUARD}},
                          comment=ANTI_SPOOFING_COMMENT))
    # Then established flows leave: one compare for a packet of a flow conntrack holds;
    # and flows this table decided already (unreplied UDP: every packet is "new").
    cmds.append(_rule(FAMILY, FORWARD, _established(), {"accept": None}))
    cmds.append(_rule(FAMILY, FORWARD, *_cached()))
    cmds.append(_rule(FAMILY, FORWARD, *_link_control_one({"accept": None})))
    cmds.extend(_rule(FAMILY, FORWARD, *expr) for expr in (*_dispatch("saddr"), *_dispatch("daddr")))
    if fc is not None:
        cmds.extend(_fail_closed(FAMILY, FORWARD, key, fc) for key in ("iifname", "oifname"))
    cmds.append(_rule(FAMILY, FORWARD, _decided()))  # through every check: the policy's accept, remembered
    return cmds


def _node_bridge(fc: FailClosed | None) -> list[Command]:
    cmds = [{"add": {"chain": _in(BRIDGE_FAMILY, name=SOURCE_CHAIN)}}]
    # First the frame's own type, read from the link-layer header (a VLAN tag,
    # even one the kernel took off into metadata, shows as 8021q there): in the
    # bridge family "ip saddr" only asks the skb's protocol, which a tagged frame
    # carries as its inner one, and br_netfilter hands tagged IP to no inet hook.
    cmds.append(_rule(BRIDGE_FAMILY, SOURCE_CHAIN, _match(_payload("ether", "type"), {"set": list(ETHER_TYPES)},
                                                          op="!="), {"counter": None}, {"drop": None},
                      comment=ANTI_SPOOFING_COMMENT))
    for v in (4, 6):
        own = _match({"concat": [_meta("iifname"), _payload(_PROTOCOL[v], "saddr")]}, "@" + ENDPOINT_SOURCE[v])
        cmds.append(_rule(BRIDGE_FAMILY, SOURCE_CHAIN, own, {"return": None}))
    arp_sender = _payload("arp", "saddr ip")
    cmds.append(_rule(BRIDGE_FAMILY, SOURCE_CHAIN, _match({"concat": [_meta("iifname"), arp_sender]},
                                                          "@" + ENDPOINT_SOURCE[4]), {"return": None}))
    cmds.append(_rule(BRIDGE_FAMILY, SOURCE_CHAIN, _match(arp_sender, "0.0.0.0"), {"return": None}))  # ARP probes
    cmds.extend(_rule(BRIDGE_FAMILY, SOURCE_CHAIN, *expr)
                for expr in _link_control({"return": None}, from_link_local=True))
    cmds.append(_drop_spoofed(BRIDGE_FAMILY))
    cmds.append(_base_chain(BRIDGE_FAMILY, BRIDGE_PREROUTING, "prerouting", BRIDGE_PRIORITY))
    if fc is not None:
        cmds.append(_fail_closed(BRIDGE_FAMILY, BRIDGE_PREROUTING, "iifname", fc))
    cmds.append(_rule(BRIDGE_FAMILY, BRIDGE_PREROUTING, _match(_meta("iifname"), "@" + ENDPOINT_IFACE),
                      {"jump": {"target": SOURCE_CHAIN}}))
    if fc is not None:
        cmds.append(_base_chain(BRIDGE_FAMILY, BRIDGE_POSTROUTING, "postrouting", BRIDGE_PRIORITY))
        cmds.append(_fail_closed(BRIDGE_FAMILY, BRIDGE_POSTROUTING, "oifname", fc))
    return cmds


def _netns() -> list[Command]:
    cmds = [{"add": {"chain": _in(FAMILY, name=SOURCE_CHAIN)}}]
    for v in (4, 6):
        cmds.append(_rule(FAMILY, SOURCE_CHAIN, _match(_payload(_PROTOCOL[v], "saddr"), "@" + ENDPOINT_ADDRESS[v]),
                          {"return": None}))
    cmds.extend(_rule(FAMILY, SOURCE_CHAIN, *expr) for expr in _link_control({"return": None}, from_link_local=True))
    cmds.append(_drop_spoofed(FAMILY))
    for chain, hook, lo, key in ((OUTPUT, "output", "oifname", "saddr"), (INPUT, "input", "iifname", "daddr")):
        cmds.append(_base_chain(FAMILY, chain, hook, 0))
        cmds.append(_rule(FAMILY, chain, _match(_meta(lo), "lo"), {"accept": None}))
        # Established first: in an endpoint's own namespace conntrack holds only its
        # own flows, which a packet from another source address cannot match.
        cmds.append(_rule(FAMILY, chain, _established(), {"accept": None}))
        if chain == OUTPUT:
            cmds.append(_rule(FAMILY, chain, {"jump": {"target": SOURCE_CHAIN}}))
        cmds.append(_rule(FAMILY, chain, *_cached()))
        cmds.extend(_rule(FAMILY, chain, *expr) for expr in _link_control({"accept": None}))
        cmds.extend(_rule(FAMILY, chain, *expr) for expr in _dispatch(key))
        cmds.append(_rule(FAMILY, chain, _decided()))
    return cmds


def dispatch_objects(ruleset: RuleSet, fail_closed: FailClosed | None, placement: Placement,
                     guard: GuardHook = "ingress") -> list[Command]:
    """``add`` commands for the dispatch sets and maps (with their elements)
    and the base chains; the endpoint chains the maps jump to must exist
    already, and the bridge table (node) is added here."""
    elements = dispatch_elements(ruleset, fail_closed, placement, guard)
    if placement == "netns":
        return [*_set_commands(elements), *_netns()]
    inet = {k: v for k, v in elements.items() if k[0] == FAMILY}
    bridge = {k: v for k, v in elements.items() if k[0] == BRIDGE_FAMILY}
    # The chains first: endpoint_guard's elements jump to them (and the set they look up before them).
    guards: list[Command] = [_link_sources_set()]
    for name, chain in guard_chains(ruleset, placement, guard).items():
        guards.append(guard_chain_declaration(name, chain, guard))
        guards.extend(guard_chain_commands(name, chain))
    return [*guards, *_set_commands(inet), *_node_inet(fail_closed, guard),
            {"add": {"table": {"family": BRIDGE_FAMILY, "name": TABLE}}},
            *_set_commands(bridge), *_node_bridge(fail_closed)]


def structure(fail_closed: FailClosed | None, placement: Placement) -> tuple[str, str | None]:
    """What the base chains depend on besides set elements: the incremental
    planner only updates elements while this stays the same. (The source checks'
    hook is the enforcer's for its whole life: both sides have the same.)"""
    return placement, fail_closed.prefix if fail_closed is not None else None
