"""The per-node rule IR: what one host must enforce, independent of any backend.

A :class:`RuleSet` says, for every endpoint local to one node, which packets
its ingress and egress may pass. Backends (``callgate.enforcers.*``) walk this
structure and nothing else; adding a backend never changes anything upstream.

Shape, and why:

* Peers are **named address sets**, deduplicated across the node and named by
  the content of the peer definitions they came from (not by position), so pod
  churn changes set elements while chains stay put.
* Each endpoint direction is an ordered tuple of **tiers** (one chain each).
  A tier's rules are tried in order; the first match decides ALLOW or DENY,
  PASS hands the packet to the next tier, and so does falling off the end when
  the chain's default is PASS; after the last tier, the packet is allowed.
  The tiers are [ClusterNetworkPolicy Admin (default PASS), NetworkPolicy and
  Apps (only when they isolate the endpoint; default DENY), ClusterNetworkPolicy
  Baseline (default PASS; only when nothing isolates the endpoint, since the
  NetworkPolicy tier decides every packet when it is there)].
* Rules of a chain that share a port match and a verdict, with no rule of
  another verdict between them, are **merged** into one rule whose peer set
  is the union (among rules of one verdict, order does not matter). A
  NetworkPolicy chain (all ALLOW) is as long as the endpoint's distinct port
  specifications, whatever the number of policies or pods.
* Named ports on egress resolve per destination pod into (address, port) pairs.
* Every rule carries **provenance** (policy, direction, rule index) so counters
  and explanations point back to the YAML a person wrote. What the kernel
  carries is the rule's compact :attr:`Rule.id` (a hash of its origins, never
  cut short by a comment or log-prefix limit); :meth:`RuleSet.rule_origins`
  maps it back.

Everything is frozen and sorted: the same input always yields the same IR and
the same :meth:`RuleSet.digest`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import InitVar, dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

from callgate.compiler import addresses

Family = Literal["ip", "ip6"]  # nftables' names for IPv4 and IPv6 payloads
L4Protocol = Literal["tcp", "udp", "sctp"]


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    PASS = "pass"  # continue with the next tier


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True, order=True)
class L4Match:
    """A transport protocol and, optionally, destination ports (empty: any port)."""

    protocol: L4Protocol
    ports: tuple[PortRange, ...] = ()

    def __str__(self) -> str:
        if not self.ports:
            return self.protocol
        return f"{self.protocol} dport {','.join(str(p) for p in self.ports)}"


# Sets and endpoints are not slotted: each caches its own digest in its
# __dict__ (see RuleSet.digest), so a RuleSet that reuses them hashes only what
# is new.


@dataclass(frozen=True)
class AddressSet:
    """Peer addresses of one family. Elements are canonical text, sorted by
    address and non-overlapping: a single address, a prefix, or a range "a-b"."""

    name: str
    family: Family
    elements: tuple[str, ...]
    comment: str = ""  # the peer definitions this set stands for
    # How many addresses the elements hold, when the builder knows it (the
    # compiler has the intervals it printed; the incremental compiler keeps
    # the count as it patches a set). Left out, it is counted from the
    # elements on first use (~15 ms for a 50k-element set with prefixes).
    # Derived from ``elements``, so neither compared nor part of the digest.
    size: InitVar[int | None] = None
    # The elements as sorted integer intervals, when the builder has them (the
    # compiler and the incremental compiler do): parsing 25,000 elements back
    # costs ~15 ms, and the nft backend's decision maps need the integers.
    # Derived from ``elements`` too, so neither compared nor digested.
    bounds: InitVar[list[addresses.Interval] | None] = None

    def __post_init__(self, size: int | None, bounds: list[addresses.Interval] | None) -> None:
        # What the cached properties below would compute.
        if size is not None:
            self.__dict__["address_count"] = size
        if bounds is not None:
            self.__dict__["intervals"] = bounds

    @cached_property
    def address_count(self) -> int:
        """How many addresses the set holds (a backend may choose a set's form by it)."""
        return addresses.elements_size(self.elements)

    @cached_property
    def intervals(self) -> list[addresses.Interval]:
        """The elements as sorted, disjoint (first, last) integer intervals."""
        return [addresses.parse_element(e) for e in self.elements]

    @property
    def digest(self) -> str:
        return self._digests[0]

    @property
    def content_digest(self) -> str:
        """What the set holds, whatever it is named: a backend may hold equal sets once."""
        return self._digests[1]

    @cached_property
    def _digests(self) -> tuple[str, str]:
        # Both from one text of the elements: a changed 25,000-element set is
        # hashed for the RuleSet's digest and, when another set has its size
        # and ends, compared by content (~1 ms a text).
        named, content = _hash_lines_each(([self.name, self.family, self.comment], [self.family]), self.elements)
        return named, content


@dataclass(frozen=True)
class AddressPortSet:
    """(address, port) pairs of one family and protocol: egress named ports,
    resolved on each destination pod."""

    name: str
    family: Family
    protocol: L4Protocol
    elements: tuple[tuple[str, int], ...]
    comment: str = ""

    @cached_property
    def digest(self) -> str:
        return _hash_lines([self.name, self.family, self.protocol, self.comment],
                           (f"{address} {port}" for address, port in self.elements))


@dataclass(frozen=True, slots=True, order=True)
class Origin:
    """Which policy rule a compiled rule came from.

    A cluster policy's rule also names its tier, its policy's priority and
    its own name (when it has one); NetworkPolicy and App rules leave those
    empty, and print (and hash into rule ids) as before."""

    policy: str  # e.g. "NetworkPolicy x/allow-web", "ClusterNetworkPolicy deny-all"
    direction: str  # "ingress" | "egress"
    index: int
    tier: str = ""  # "Admin" | "Baseline" for cluster policies
    priority: int = 0
    rule: str = ""  # the rule's name

    def __str__(self) -> str:
        if not self.tier:
            return f"{self.policy} {self.direction}[{self.index}]"
        name = f" {self.rule}" if self.rule else ""
        return f"{self.policy} ({self.tier} {self.priority}) {self.direction}[{self.index}]{name}"


@dataclass(frozen=True)  # not slotted: it caches its id and JSON text (pods of one application share rules)
class Rule:
    """Match the peer (source on ingress, destination on egress) and the L4.

    ``family`` limits the rule to IPv4 or IPv6; it is set whenever a peer set is
    used. ``peer_set`` names an :class:`AddressSet`; ``peer_port_set`` names an
    :class:`AddressPortSet` (it implies its protocol and port). ``l4`` None
    means any protocol and port.
    """

    verdict: Verdict
    family: Family | None = None
    peer_set: str | None = None
    peer_port_set: str | None = None
    l4: L4Match | None = None
    origins: tuple[Origin, ...] = ()

    @cached_property
    def id(self) -> str:
        """The rule's provenance in :data:`RULE_ID_LEN` characters: what the
        backends write first in a rule's comment (and flow logs in a log
        prefix), mapped back by :meth:`RuleSet.rule_origins`. Cached: a rule
        of a pod that 3,000 policies select hashes 3,000 origins."""
        return rule_id(self.origins)

    @cached_property
    def json_text(self) -> str:
        """The rule's part of :meth:`EndpointRules.to_json` as canonical JSON text."""
        return _json_text(_rule_json(self))


# Long enough that two different provenances of one node collide with
# negligible chance (48 bits, as the chain and set names), short enough for
# any kernel label: rule comments (nft 127 bytes, xt_comment 255), nft log
# prefixes (127) and NFLOG prefixes (63) keep the whole id and room to spare.
RULE_ID_LEN = 12


def rule_id(origins: tuple[Origin, ...]) -> str:
    """A stable id of a provenance: same origins, same id, in every compile."""
    return short_hash("rule", *(str(o) for o in origins), length=RULE_ID_LEN)


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]
    default: Verdict


@dataclass(frozen=True)
class EndpointRules:
    """What one local endpoint enforces. An empty tier tuple: not isolated.

    Where: on the node, dispatched by the endpoint's addresses, when it has a
    host-side ``interface``; inside its own network namespace ``netns`` when
    it has none (macvlan, ipvlan).

    ``audit``: the endpoint's namespace (or the whole node) is in audit, so
    what its tiers deny is logged as would-deny and let through; the tiers
    are the same as when enforced, only the deny action differs."""

    endpoint: str  # namespace/name
    interface: str | None
    ips: tuple[str, ...]
    ingress: tuple[Chain, ...] = ()
    egress: tuple[Chain, ...] = ()
    netns: str | None = None
    audit: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"endpoint": self.endpoint, "interface": self.interface, "ips": list(self.ips)}
        if self.netns is not None:
            out["netns"] = self.netns
        out["ingress"] = [_chain_json(c) for c in self.ingress]
        out["egress"] = [_chain_json(c) for c in self.egress]
        if self.audit:  # only then: an enforced endpoint's form (and digest) is what it always was
            out["audit"] = True
        return out

    @cached_property
    def digest(self) -> str:
        """sha256 of :meth:`to_json` as canonical JSON text, put together from
        each rule's cached text: the pods of one application share their rule
        objects (the incremental compiler reuses them), so a new replica's
        digest costs its chain headers, not its rules again."""
        def chains(tiers: tuple[Chain, ...]) -> str:
            return "[" + ",".join(
                '{"default":' + _json_text(c.default.value) + ',"name":' + _json_text(c.name)
                + ',"rules":[' + ",".join(r.json_text for r in c.rules) + "]}" for c in tiers) + "]"

        fields = {"endpoint": _json_text(self.endpoint), "interface": _json_text(self.interface),
                  "ips": _json_text(list(self.ips)), "ingress": chains(self.ingress), "egress": chains(self.egress)}
        if self.netns is not None:
            fields["netns"] = _json_text(self.netns)
        if self.audit:
            fields["audit"] = "true"
        text = "{" + ",".join(f"{_json_text(key)}:{fields[key]}" for key in sorted(fields)) + "}"
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class LocalEndpoint:
    """A local endpoint, isolated or not, with where its traffic is seen and
    the addresses it may send from: every endpoint of the node is held to its
    own addresses (anti-spoofing), not only those that policies isolate.
    ``interface``: the host-side interface (a routed veth or a bridge port);
    ``netns``: its own network namespace, where callgate enforces when there
    is no host-side interface. At least one of the two is set."""

    endpoint: str  # namespace/name
    ips: tuple[str, ...]
    interface: str | None = None
    netns: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"endpoint": self.endpoint, "ips": list(self.ips)}
        if self.interface is not None:
            out["interface"] = self.interface
        if self.netns is not None:
            out["netns"] = self.netns
        return out

    @property
    def in_namespace(self) -> bool:
        """Enforced inside its own namespace (no host-side interface)."""
        return self.interface is None


def _rule_json(r: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"verdict": r.verdict.value}
    if r.family:
        out["family"] = r.family
    if r.peer_set:
        out["peer_set"] = r.peer_set
    if r.peer_port_set:
        out["peer_port_set"] = r.peer_port_set
    if r.l4:
        out["l4"] = {"protocol": r.l4.protocol, "ports": [str(p) for p in r.l4.ports]}
    out["origins"] = [str(o) for o in r.origins]
    return out


def _chain_json(c: Chain) -> dict[str, Any]:
    return {"name": c.name, "default": c.default.value, "rules": [_rule_json(r) for r in c.rules]}


def _json_text(value: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces (what every digest hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _hash_json(value: Any) -> str:
    return hashlib.sha256(_json_text(value).encode()).hexdigest()


def _hash_lines(header: list[str], lines: Iterable[str]) -> str:
    """sha256 of a JSON header line, then one line per element: cheaper than
    JSON for 25,000 elements. Unambiguous: JSON escapes newlines, and an
    element holding a newline (never produced by the compiler) switches the
    body to JSON, which is told apart by its leading "[" (no address has one)."""
    return _hash_lines_each((header,), lines)[0]


def _hash_lines_each(headers: tuple[list[str], ...], lines: Iterable[str]) -> tuple[str, ...]:
    """:func:`_hash_lines` under each of ``headers``, the body made once."""
    items = list(lines)
    body = "\n".join(items)
    if body.count("\n") != max(len(items) - 1, 0) or body.startswith("["):
        body = json.dumps(items)
    encoded = ("\n" + body).encode()
    out = []
    for header in headers:
        digest = hashlib.sha256(json.dumps([*header, len(items)], separators=(",", ":")).encode())
        digest.update(encoded)
        out.append(digest.hexdigest())
    return tuple(out)


@dataclass(frozen=True)
class RuleSet:
    node: str
    address_sets: tuple[AddressSet, ...] = ()
    port_sets: tuple[AddressPortSet, ...] = ()
    endpoints: tuple[EndpointRules, ...] = ()
    # Local endpoints that could not be enforced (no interface known), with why.
    unbound: tuple[tuple[str, str], ...] = ()
    # Every local endpoint with a place to enforce (interface or netns), by key.
    local: tuple[LocalEndpoint, ...] = ()

    def address_set(self, name: str) -> AddressSet:
        return self._sets_by_name[name]  # type: ignore[return-value]

    def port_set(self, name: str) -> AddressPortSet:
        return self._sets_by_name[name]  # type: ignore[return-value]

    @cached_property  # works on frozen dataclasses: it writes __dict__ directly
    def _sets_by_name(self) -> dict[str, AddressSet | AddressPortSet]:
        by_name: dict[str, AddressSet | AddressPortSet] = {s.name: s for s in self.address_sets}
        by_name.update((s.name, s) for s in self.port_sets)
        return by_name

    def in_audit(self) -> RuleSet:
        """This RuleSet with every endpoint in audit (``callgate agent --enforcement audit``)."""
        return dataclasses.replace(self, endpoints=tuple(
            ep if ep.audit else dataclasses.replace(ep, audit=True) for ep in self.endpoints))

    def rule_origins(self) -> Mapping[str, tuple[Origin, ...]]:
        """Rule id -> the origins of the rules carrying it: how the agent reads
        kernel counters (and logs) back as policies."""
        return self._rule_origins

    @cached_property
    def _rule_origins(self) -> dict[str, tuple[Origin, ...]]:
        return {rule.id: rule.origins for ep in self.endpoints for chain in (*ep.ingress, *ep.egress)
                for rule in chain.rules}

    def to_json(self) -> dict[str, Any]:
        """A plain, stable JSON form (``callgate compile --format ir``)."""
        return {
            "node": self.node,
            "address_sets": [
                {"name": s.name, "family": s.family, "comment": s.comment, "elements": list(s.elements)}
                for s in self.address_sets
            ],
            "port_sets": [
                {"name": s.name, "family": s.family, "protocol": s.protocol, "comment": s.comment,
                 "elements": [[a, p] for a, p in s.elements]}
                for s in self.port_sets
            ],
            "endpoints": [e.to_json() for e in self.endpoints],
            "unbound": [{"endpoint": k, "reason": why} for k, why in self.unbound],
            "local": [e.to_json() for e in self.local],
        }

    def digest(self) -> str:
        """Equal digests, equal rulesets (sha256 throughout).

        Compositional: each set and each endpoint caches its own digest, and
        this one hashes those in order with the node and the unbound list. A
        RuleSet that reuses 20 of its predecessor's 21 sets (the incremental
        compiler's common case) hashes only the new one: hashing the whole IR
        as one JSON text cost ~19 ms at 117,000 set elements.
        """
        return self._digest

    @cached_property
    def _digest(self) -> str:
        return _hash_json({
            "node": self.node,
            "address_sets": [s.digest for s in self.address_sets],
            "port_sets": [s.digest for s in self.port_sets],
            "endpoints": [e.digest for e in self.endpoints],
            "unbound": [list(u) for u in self.unbound],
            "local": [e.to_json() for e in self.local],
        })


def short_hash(*parts: str, length: int = 12) -> str:
    """A short stable name fragment; input text never appears in kernel names."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]
