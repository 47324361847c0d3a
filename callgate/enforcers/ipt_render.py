"""RuleSet IR -> iptables/ip6tables restore text and ipset sets (pure, no kernel).

Layout in the kernel (filter table of iptables AND of ip6tables; nothing else)::

    FORWARD      -j CG-FORWARD                      # our single jump, inserted at 1 if missing
    CG-FORWARD   -m conntrack --ctstate RELATED,ESTABLISHED  (digest comment) -j ACCEPT
                 -i IFACE -j CG-out_<hash>           # every egress dispatch first ...
                 -o IFACE -j CG-in_<hash>            # ... then every ingress dispatch
    CG-<tier>    one chain per IR tier: allow = RETURN (egress) / ACCEPT (ingress),
                 deny = DROP, pass = goto next tier; a final rule holds the default

    ipset  cg-peers4_<hash>   hash:net     family inet|inet6   (peer addresses)
           cg-named4_tcp_<h>  hash:ip,port family inet|inet6   (egress named ports)

All egress dispatch rules come before all ingress ones: a pod-to-pod packet on
one node must run the source's egress chain (which RETURNs on allow) before the
destination's ingress chain decides.

Everything here is rendered exactly as ``iptables-save`` / ``ipset save`` print
it back (option order, quoting, CIDR spelling), so that the live state read back
from the kernel compares equal to the desired one and a re-apply is a no-op.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from callgate.compiler.ir import Chain, Family, L4Match, Rule, RuleSet, Verdict, short_hash
from callgate.errors import InputError, Problem

CHAIN_PREFIX = "CG-"
FORWARD_CHAIN = "CG-FORWARD"
SET_PREFIX = "cg-"  # live sets
TMP_PREFIX = "cg+"  # staging sets, swapped into place; same length as SET_PREFIX
CHAIN_MAX = 28  # iptables: XT_EXTENSION_MAXNAMELEN (29) minus the NUL
SET_MAX = 31  # ipset: IPSET_MAXNAMELEN (32) minus the NUL
COMMENT_MAX = 255  # xt_comment keeps 256 bytes including the NUL
MULTIPORT_MAX = 15  # xt_multiport: ports per rule, a range counts twice
DEFAULT_MAXELEM = 65536
DIGEST_PREFIX = "callgate sha256:"
FC_IIF, FC_OIF = "CG-FC-IIF", "CG-FC-OIF"  # fail-closed checks, see FailClosed
FAIL_CLOSED_COMMENT = "callgate fail-closed"
_FC_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,14}")

Version = int  # 4 or 6
VERSIONS: tuple[Version, ...] = (4, 6)
_FAMILY_VERSION: dict[Family, Version] = {"ip": 4, "ip6": 6}
_IPSET_FAMILY = {4: "inet", 6: "inet6"}
_NO_QUOTE = re.compile(r"[_\-0-9A-Za-z]+")
_UNSAFE_COMMENT = re.compile(r"[^\x20-\x7e]|[\"'\\]")


# -- names: valid by construction ---------------------------------------------

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


def safe_comment(text: str) -> str:
    """Printable ASCII without quotes/backslashes, within the kernel's limit.

    Names are validated upstream; this is belt and braces so that no input can
    break out of the quoted restore-file token."""
    return _UNSAFE_COMMENT.sub("?", text)[:COMMENT_MAX]


# -- sets ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class IpSet:
    """One ipset as callgate wants it: canonical, sorted elements."""

    name: str
    type: str  # "hash:net" | "hash:ip,port"
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


def ruleset_sets(ruleset: RuleSet) -> tuple[IpSet, ...]:
    sets: list[IpSet] = []
    for s in ruleset.address_sets:
        elements = net_elements(s.elements)
        sets.append(IpSet(set_name(s.name), "hash:net", _IPSET_FAMILY[_FAMILY_VERSION[s.family]], elements,
                          max(DEFAULT_MAXELEM, len(elements))))
    for ps in ruleset.port_sets:
        elements = sort_port_elements(port_element(a, ps.protocol, p) for a, p in ps.elements)
        sets.append(IpSet(set_name(ps.name), "hash:ip,port", _IPSET_FAMILY[_FAMILY_VERSION[ps.family]], elements,
                          max(DEFAULT_MAXELEM, len(elements))))
    return tuple(sorted(sets, key=lambda s: s.name))


# -- rules -----------------------------------------------------------------------

def _target(verdict: Verdict, direction: str, next_tier: str | None) -> str:
    if verdict is Verdict.PASS:
        return f"-g {chain_name(next_tier)}" if next_tier else _target(Verdict.ALLOW, direction, None)
    if verdict is Verdict.DENY:
        return "-j DROP"
    return "-j RETURN" if direction == "egress" else "-j ACCEPT"


def _port_chunks(l4: L4Match) -> list[str]:
    """``--dports`` values, split so that no rule exceeds multiport's 15 slots."""
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for p in l4.ports:
        cost = 1 if p.first == p.last else 2
        if used + cost > MULTIPORT_MAX:
            chunks.append(",".join(current))
            current, used = [], 0
        current.append(str(p.first) if p.first == p.last else f"{p.first}:{p.last}")
        used += cost
    if current:
        chunks.append(",".join(current))
    return chunks


def _comment(rule: Rule) -> str | None:
    if not rule.origins:
        return None
    text = str(rule.origins[0])
    if len(rule.origins) > 1:
        text += f" (+{len(rule.origins) - 1} more)"
    return safe_comment(text)


def rule_lines(chain: str, rule: Rule, direction: str, next_tier: str | None, version: Version) -> list[str]:
    """One IR rule as ``-A`` lines for one IP version (none if it is for the other)."""
    if rule.family is not None and _FAMILY_VERSION[rule.family] != version:
        return []
    where = "src" if direction == "ingress" else "dst"
    proto = f" -p {rule.l4.protocol}" if rule.l4 is not None else ""
    match = ""
    if rule.peer_set is not None:
        match += f" -m set --match-set {set_name(rule.peer_set)} {where}"
    if rule.peer_port_set is not None:
        # (peer address, destination port): egress only, so both are "dst".
        match += f" -m set --match-set {set_name(rule.peer_port_set)} dst,dst"
    comment = _comment(rule)
    tail = (f" -m comment --comment {quote(comment)}" if comment else "") + " " + _target(rule.verdict, direction, next_tier)
    if rule.l4 is not None and rule.l4.ports and rule.peer_port_set is None:
        return [f"-A {chain}{proto}{match} -m multiport --dports {ports}{tail}" for ports in _port_chunks(rule.l4)]
    return [f"-A {chain}{proto}{match}{tail}"]


def _tier_lines(tiers: tuple[Chain, ...], direction: str, version: Version) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, tier in enumerate(tiers):
        next_tier = tiers[i + 1].name if i + 1 < len(tiers) else None
        name = chain_name(tier.name)
        lines: list[str] = []
        for rule in tier.rules:
            lines.extend(rule_lines(name, rule, direction, next_tier, version))
        lines.append(f"-A {name} {_target(tier.default, direction, next_tier)}")
        out[name] = lines
    return out


@dataclass(frozen=True, slots=True)
class FailClosed:
    """Drop forwarded traffic on ``prefix*`` interfaces that are not ``known``
    (the same contract as the nft backend's fail-closed mode): a container whose
    veth appears before its policy is programmed is cut off, not open.

    In iptables: after the dispatch rules, ``-i prefix+ -j CG-FC-IIF`` and
    ``-o prefix+ -j CG-FC-OIF``; those chains RETURN for each known interface
    and DROP the rest."""

    prefix: str
    known: tuple[str, ...]  # sorted, unique

    @classmethod
    def build(cls, prefix: str, ruleset: RuleSet, known: Iterable[str] = ()) -> FailClosed:
        if not _FC_PREFIX.fullmatch(prefix):
            raise ValueError(f"fail-closed prefix {prefix!r} must be 1-14 characters of letters, digits, '_', '.' or '-'")
        return cls(prefix, tuple(sorted({*known, *(e.interface for e in ruleset.endpoints)})))

    def digest(self, ruleset: RuleSet) -> str:
        text = "\x00".join([ruleset.digest(), self.prefix, *self.known])
        return hashlib.sha256(text.encode()).hexdigest()

    def lines(self) -> dict[str, list[str]]:
        drop = f"-m comment --comment {quote(FAIL_CLOSED_COMMENT)} -j DROP"
        return {
            FC_IIF: [*(f"-A {FC_IIF} -i {i} -j RETURN" for i in self.known), f"-A {FC_IIF} {drop}"],
            FC_OIF: [*(f"-A {FC_OIF} -o {i} -j RETURN" for i in self.known), f"-A {FC_OIF} {drop}"],
        }


@dataclass(frozen=True, slots=True)
class Table:
    """callgate's part of one filter table: its chains (CG-FORWARD first) and
    rules, plus whether FORWARD jumps to CG-FORWARD."""

    version: Version
    chains: tuple[str, ...]
    rules: tuple[str, ...]  # "-A CHAIN ..." lines, grouped by chain in ``chains`` order
    jump: bool = True

    def text(self) -> str:
        lines = ["*filter", *(f":{c} - [0:0]" for c in self.chains)]
        if self.jump:
            lines.append(f"-A FORWARD -j {FORWARD_CHAIN}")
        lines.extend(self.rules)
        lines.append("COMMIT")
        return "\n".join(lines)


def ruleset_table(ruleset: RuleSet, version: Version, fail_closed: FailClosed | None = None) -> Table:
    chains: dict[str, list[str]] = {}
    digest = ruleset.digest() if fail_closed is None else fail_closed.digest(ruleset)
    established = (f"-A {FORWARD_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED "
                   f"-m comment --comment {quote(DIGEST_PREFIX + digest)} -j ACCEPT")
    forward = [established]
    ingress: list[str] = []
    for ep in sorted(ruleset.endpoints, key=lambda e: e.interface):
        if ep.egress:
            forward.append(f"-A {FORWARD_CHAIN} -i {ep.interface} -j {chain_name(ep.egress[0].name)}")
        if ep.ingress:
            ingress.append(f"-A {FORWARD_CHAIN} -o {ep.interface} -j {chain_name(ep.ingress[0].name)}")
        chains.update(_tier_lines(ep.ingress, "ingress", version))
        chains.update(_tier_lines(ep.egress, "egress", version))
    forward.extend(ingress)
    if fail_closed is not None:
        forward.append(f"-A {FORWARD_CHAIN} -i {fail_closed.prefix}+ -j {FC_IIF}")
        forward.append(f"-A {FORWARD_CHAIN} -o {fail_closed.prefix}+ -j {FC_OIF}")
        chains.update(fail_closed.lines())
    order = [FORWARD_CHAIN, *sorted(chains)]
    chains[FORWARD_CHAIN] = forward
    return Table(version, tuple(order), tuple(line for c in order for line in chains[c]))


def _iface_problem(iface: str) -> str | None:
    # iptables reads a trailing "+" as a wildcard: "eth+" would match eth0, eth1 ...
    if iface.endswith("+") or not re.fullmatch(r"[A-Za-z0-9_.:@+-]{1,15}", iface):
        return (f"interface {iface!r} cannot be matched exactly by iptables (it must be 1-15 of "
                "letters, digits and '_.:@+-', not ending in '+', which iptables reads as a wildcard); "
                "use the nft backend or rename the interface")
    return None


def validate(ruleset: RuleSet, fail_closed: FailClosed | None = None) -> None:
    """What iptables cannot express although the IR allows it: report it before
    anything is applied. (Names and sizes are valid by construction.)"""
    problems = []
    for ep in ruleset.endpoints:
        if why := _iface_problem(ep.interface):
            problems.append(Problem(why, object=f"endpoint {ep.endpoint}", field="interface"))
    for iface in fail_closed.known if fail_closed else ():
        if why := _iface_problem(iface):
            problems.append(Problem(why, object="known interfaces"))
    if problems:
        raise InputError(problems)


# -- the transaction value ---------------------------------------------------------

@dataclass(frozen=True)
class IptTransaction:
    """What callgate will own after the apply: sets, and its part of the IPv4 and
    IPv6 filter tables. A value: build it, look at it, check it, apply it."""

    digest: str
    sets: tuple[IpSet, ...]
    tables: tuple[Table, Table]

    def table(self, version: Version) -> Table:
        return self.tables[VERSIONS.index(version)]

    def text(self) -> str:
        return render_state(self.sets, self.tables)


def render_state(sets: Iterable[IpSet], tables: Iterable[Table]) -> str:
    """The normalised text both the desired and the live state are shown in."""
    parts = ["# ipset"]
    parts.extend(s.text() for s in sorted(sets, key=lambda s: s.name))
    for table in tables:
        parts.append(f"# {'iptables' if table.version == 4 else 'ip6tables'} (IPv{table.version})")
        parts.append(table.text())
    return "\n".join(parts) + "\n"


def plan(ruleset: RuleSet, fail_closed: FailClosed | None = None) -> IptTransaction:
    validate(ruleset, fail_closed)
    digest = ruleset.digest() if fail_closed is None else fail_closed.digest(ruleset)
    return IptTransaction(digest, ruleset_sets(ruleset),
                          (ruleset_table(ruleset, 4, fail_closed), ruleset_table(ruleset, 6, fail_closed)))
