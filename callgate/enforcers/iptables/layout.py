"""What callgate owns in iptables, ip6tables and ipset: names and the digest.

Layout in the kernel (filter table of iptables AND of ip6tables; nothing else)::

    FORWARD      -j CG-FORWARD                      # our single jump, inserted at 1 if missing
    CG-FORWARD   [IPv6: neighbour discovery and MLD], anti-spoofing, established
                 (digest comment) -j ACCEPT, dispatch by address (see :mod:`.dispatch`)
    CG-<tier>    one chain per IR tier: allow = RETURN (egress) / ACCEPT (ingress),
                 deny = DROP, pass = goto next tier; a final rule holds the default

    ipset  cg-peers4_<hash>   hash:net     family inet|inet6   (peer addresses)
           cg-named4_tcp_<h>  hash:ip,port family inet|inet6   (egress named ports)
           cg-src-pair4/6     hash:net,iface                   (endpoints' own address, interface)
           cg-src-iface4/6    hash:net,iface                   (any address, endpoints' interfaces)
    CG-SRC-PORTS, CG-src_<e>   bridge ports' source checks (by physdev, one rule per port)

Inside an endpoint's own namespace (placement "netns") the jumps are from
INPUT to CG-INPUT and from OUTPUT to CG-OUTPUT instead.

Every rule compiled from a policy carries a comment that starts with the
rule's id (:attr:`~callgate.compiler.ir.Rule.id`), followed by its origin as
far as :data:`COMMENT_MAX` allows (:func:`~callgate.enforcers.base.rule_comment`).

Everything is rendered exactly as ``iptables-save`` / ``ipset save`` print it
back (option order, quoting, CIDR spelling), so that the live state read back
from the kernel compares equal to the desired one and a re-apply is a no-op.
"""

from __future__ import annotations

import hashlib
import re

from callgate.compiler.ir import Family, RuleSet, short_hash
from callgate.enforcers.base import FailClosed, FlowLogging, Placement

CHAIN_PREFIX = "CG-"
FORWARD_CHAIN = "CG-FORWARD"
INPUT_CHAIN, OUTPUT_CHAIN = "CG-INPUT", "CG-OUTPUT"  # placement "netns"
ENTRY_CHAINS = (FORWARD_CHAIN, INPUT_CHAIN, OUTPUT_CHAIN)  # the order they are listed in
SET_PREFIX = "cg-"  # live sets
TMP_PREFIX = "cg+"  # staging sets, swapped into place; same length as SET_PREFIX
CHAIN_MAX = 28  # iptables: XT_EXTENSION_MAXNAMELEN (29) minus the NUL
SET_MAX = 31  # ipset: IPSET_MAXNAMELEN (32) minus the NUL
COMMENT_MAX = 255  # xt_comment keeps 256 bytes including the NUL
MULTIPORT_MAX = 15  # xt_multiport: ports per rule, a range counts twice
DEFAULT_MAXELEM = 65536
DIGEST_PREFIX = "callgate sha256:"
FC_IIF, FC_OIF = "CG-FC-IIF", "CG-FC-OIF"  # fail-closed checks, see dispatch._fail_closed
FC_PIN, FC_POUT = "CG-FC-PIN", "CG-FC-POUT"  # the same for bridge ports (physdev)
FAIL_CLOSED_COMMENT = "callgate fail-closed"
ANTI_SPOOFING_COMMENT = "callgate anti-spoofing"
# Bumped whenever the same RuleSet is rendered into different chains (see the nft
# backend's LAYOUT_VERSION). 2: dispatch by address and anti-spoofing. 3: the
# node's source check is one rule over two ipsets, before the established rule.
# 4: one ipset per distinct address-set content (base.equal_sets).
LAYOUT_VERSION = 4
# The node's source check (see dispatch.py): which (interface, source) a packet
# may come in with, and which interfaces are endpoints' at all; per IP version.
SOURCE_IFACES = {4: "cg-src-iface4", 6: "cg-src-iface6"}
SOURCE_PAIRS = {4: "cg-src-pair4", 6: "cg-src-pair6"}
SOURCE_SET_TYPE = "hash:net,iface"
SOURCE_PORTS_CHAIN = "CG-SRC-PORTS"  # bridge ports: iptables' set match cannot look up physdev

Version = int  # 4 or 6
VERSIONS: tuple[Version, ...] = (4, 6)
FAMILY_VERSION: dict[Family, Version] = {"ip": 4, "ip6": 6}
IPSET_FAMILY = {4: "inet", 6: "inet6"}
_NO_QUOTE = re.compile(r"[_\-0-9A-Za-z]+")


def chain_name(ir_name: str) -> str:
    """``CG-<ir name>``, or a hash of it when that would exceed the kernel's limit.

    IR chain names are short hashes already; the fallback keeps later, longer IR
    names (admin tiers, say) valid without anyone having to think about it."""
    name = CHAIN_PREFIX + ir_name
    if len(name) <= CHAIN_MAX and re.fullmatch(r"[A-Za-z0-9_.-]+", ir_name):
        return name
    return CHAIN_PREFIX + "h" + short_hash("chain", ir_name, length=CHAIN_MAX - len(CHAIN_PREFIX) - 1)


def set_name(ir_name: str, prefix: str = SET_PREFIX) -> str:
    """The ipset name of an IR set (<= 31 characters by construction)."""
    name = prefix + ir_name
    if len(name) <= SET_MAX and re.fullmatch(r"[A-Za-z0-9_.-]+", ir_name):
        return name
    return prefix + "h" + short_hash("set", ir_name, length=SET_MAX - len(prefix) - 1)


def tmp_name(live: str) -> str:
    """The staging name of a live set: same length, other prefix."""
    assert live.startswith(SET_PREFIX)
    return TMP_PREFIX + live[len(SET_PREFIX):]


def quote(value: str) -> str:
    """Quote like ``xtables_save_string``: bare when only [_-0-9A-Za-z], else
    double quotes. The callers never pass quote or backslash characters."""
    return value if _NO_QUOTE.fullmatch(value) else f'"{value}"'


def layout_digest(ruleset: RuleSet, fail_closed: FailClosed | None = None, placement: Placement = "node",
                  logging: FlowLogging | None = None) -> str:
    """The digest the established rule carries: the RuleSet's with the layout
    version and placement, extended by the fail-closed and flow-log settings
    when they are on (so a change of any is seen)."""
    parts = [f"iptables-layout-{LAYOUT_VERSION}-{placement}", ruleset.digest()]
    if fail_closed is not None:
        parts.extend([fail_closed.prefix, *fail_closed.known])
    if logging is not None:
        parts.append(logging.key())
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()
