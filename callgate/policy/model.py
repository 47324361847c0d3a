"""The normalised policy model every source compiles to.

These are plain frozen dataclasses: cheap to build by the hundred thousand,
and free of any notion of where they came from except the provenance they
carry for explanations. Validation happens at the boundary (``kubernetes.py``,
``native.py``, ``inventory.py``); anything that reaches this module is
already well formed.

Nothing here changes after it is built, and the compilers depend on it: the
incremental compiler keeps sets and chains computed from endpoints and
policies, and keys its caches by ``id()``. A change is a new object
(``dataclasses.replace``) in a new :class:`Inventory` or :class:`PolicySet`.
So collections are tuples and read-only mappings, taken over from what the
caller passed (a list or a dict is copied, never shared).

Policies and their parts are hashable (selectors are cached and deduplicated).
Endpoints and namespaces are not, since their labels are a mapping: look them
up by key, or by ``id()`` where identity is what is meant.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Literal, TypeVar

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PortProtocol = Literal["TCP", "UDP", "SCTP"]
PROTOCOLS: tuple[PortProtocol, ...] = ("TCP", "UDP", "SCTP")

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# A namespace labelled (or, from Kubernetes, annotated) with this key and the
# value "audit" is enforced in audit: its endpoints' isolation is evaluated and
# what it would deny is recorded as would-deny, never dropped. "enforce" is the
# default; any other value is a lint error and is treated as enforce.
ENFORCEMENT_KEY = "callgate.io/enforcement"
ENFORCEMENT_MODES = ("enforce", "audit")

K = TypeVar("K")
V = TypeVar("V")


def read_only(mapping: Mapping[K, V]) -> Mapping[K, V]:
    """A read-only copy of ``mapping``; one that is already read-only is kept as is
    (``dataclasses.replace`` hands an object's own labels back)."""
    return mapping if type(mapping) is MappingProxyType else MappingProxyType(dict(mapping))


class Direction(StrEnum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


class Tier(StrEnum):
    """Where a ClusterNetworkPolicy sits: before (Admin) or after (Baseline) the
    NetworkPolicy tier, which holds NetworkPolicies and callgate/v1 Apps."""

    ADMIN = "Admin"
    BASELINE = "Baseline"


class Action(StrEnum):
    """What a ClusterNetworkPolicy rule does with the traffic it matches."""

    ACCEPT = "Accept"  # allowed for this direction; no later tier is asked
    DENY = "Deny"  # denied; no later tier is asked
    PASS = "Pass"  # the rest of this tier is skipped; the next tier decides


@dataclass(frozen=True, slots=True)
class Requirement:
    """One matchExpressions entry: key In/NotIn/Exists/DoesNotExist values."""

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        # NotIn: true when the key is absent, as in Kubernetes.
        return labels.get(self.key) not in self.values


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector. The empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.match_expressions)

    def canonical(self) -> str:
        """A stable text form, used for naming sets and for display."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            if r.operator in ("Exists", "DoesNotExist"):
                parts.append(("!" if r.operator == "DoesNotExist" else "") + r.key)
            else:
                op = "in" if r.operator == "In" else "notin"
                parts.append(f"{r.key} {op} ({','.join(sorted(r.values))})")
        return ",".join(sorted(parts)) if parts else "{}"


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        if ip.version != self.cidr.version or ip not in self.cidr:
            return False
        return not any(ip in e for e in self.excepts)

    def canonical(self) -> str:
        text = str(self.cidr)
        if self.excepts:
            text += " except " + ",".join(str(e) for e in self.excepts)
        return text


@dataclass(frozen=True, slots=True)
class Peer:
    """One entry of a rule's from/to list.

    Exactly one of (selectors, ip_block) is in use. ``namespace_selector`` None
    means "the policy's own namespace" (``namespace`` holds it); a selector
    means "namespaces whose labels match".
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    namespace: str | None = None  # the policy's namespace, when namespace_selector is None
    ip_block: IPBlock | None = None

    def canonical(self) -> str:
        if self.ip_block is not None:
            return "ipBlock " + self.ip_block.canonical()
        ns = (
            f"ns={self.namespace}"
            if self.namespace_selector is None
            else "nsSelector " + self.namespace_selector.canonical()
        )
        pods = self.pod_selector.canonical() if self.pod_selector is not None else "{}"
        return f"{ns} pods {pods}"


@dataclass(frozen=True, slots=True)
class PortSpec:
    """A rule's port: a number (optionally up to end_port) or a named port."""

    protocol: PortProtocol = "TCP"
    port: int | str | None = None  # None: all ports of the protocol
    end_port: int | None = None

    def canonical(self) -> str:
        if self.port is None:
            return self.protocol
        if self.end_port is not None:
            return f"{self.port}-{self.end_port}/{self.protocol}"
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where an object came from, for messages and explanations."""

    file: str | None = None
    document: int = 0  # index of the YAML document in the file
    path: tuple[str | int, ...] = ()  # path of the object inside the document (for Lists)


@dataclass(frozen=True, slots=True)
class RuleSource:
    """Where a rule was written, when that is not its policy's own rule list: an
    App's egress rule comes from a ``callers`` entry of *another* App."""

    object: str  # e.g. "App shop/cart"
    field: str  # e.g. "spec.callers[0]"
    location: SourceLocation  # file, document, and the path of that field in it


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ingress or egress rule. Empty ``peers`` means all peers; empty
    ``ports`` means all ports and protocols."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PortSpec, ...] = ()
    # Provenance for explanations only: not part of what the rule means.
    source: RuleSource | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Policy:
    """A NetworkPolicy-equivalent: the unit of isolation and allowance."""

    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[Direction, ...]
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()
    kind: str = "NetworkPolicy"  # or "App" when derived from the native model
    origin: SourceLocation = field(default_factory=SourceLocation, compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def display(self) -> str:
        return f"{self.kind} {self.key}"

    def rules(self, direction: Direction) -> tuple[PolicyRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True, slots=True)
class ClusterPeer:
    """One entry of a ClusterNetworkPolicy rule's from/to: exactly one kind is set.

    ``selector``: a ``namespaces`` or ``pods`` peer as a NetworkPolicy-model
    :class:`Peer` (its namespace selector always set, its pod selector None
    for "every pod"); ``networks``: CIDRs, which match any address, pods'
    included; ``nodes``: a node label selector, standing for the addresses of
    the matching nodes. ``domain_names`` callgate cannot match in the
    datapath, and a peer with none of these is one whose field callgate does
    not know: both are *unresolvable* and fail closed (an Accept rule matches
    nothing through them; a Deny or Pass rule denies every peer).
    """

    selector: Peer | None = None
    networks: tuple[IPBlock, ...] = ()
    nodes: LabelSelector | None = None
    domain_names: tuple[str, ...] = ()

    @property
    def resolvable(self) -> bool:
        return self.selector is not None or bool(self.networks) or self.nodes is not None

    def canonical(self) -> str:
        if self.selector is not None:
            ns = self.selector.namespace_selector
            assert ns is not None, "a cluster peer's selector always has a namespace selector"
            if self.selector.pod_selector is None:
                return f"namespaces {ns.canonical()}"
            return f"pods nsSelector {ns.canonical()} podSelector {self.selector.pod_selector.canonical()}"
        if self.networks:
            return "networks " + ",".join(str(b.cidr) for b in self.networks)
        if self.nodes is not None:
            return f"nodes {self.nodes.canonical()}"
        if self.domain_names:
            return "domainNames " + ",".join(self.domain_names)
        return "unknown peer"


@dataclass(frozen=True, slots=True)
class ClusterRule:
    """One ingress or egress rule of a ClusterNetworkPolicy, in written order.
    ``peers`` is never empty; empty ``ports`` means all ports and protocols."""

    action: Action
    peers: tuple[ClusterPeer, ...]
    ports: tuple[PortSpec, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    """A ClusterNetworkPolicy (v1alpha1 AdminNetworkPolicy and
    BaselineAdminNetworkPolicy are read as one): cluster-scoped, in a tier, at a
    priority (lower first). It isolates nothing by itself; its first matching
    rule decides, or passes to the next tier."""

    name: str
    tier: Tier
    priority: int
    subject: Peer  # the pods it applies to: namespace selector, and pod selector (None: all of them)
    ingress: tuple[ClusterRule, ...] = ()
    egress: tuple[ClusterRule, ...] = ()
    kind: str = "ClusterNetworkPolicy"  # or the v1alpha1 kind it was read from
    origin: SourceLocation = field(default_factory=SourceLocation, compare=False)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def display(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def precedence(self) -> tuple[int, str, str]:
        """Sort key within a tier: priority, then (for equal priorities, where the
        API leaves the order to the implementation) kind and name, so callgate's
        choice is at least always the same."""
        return self.priority, self.kind, self.name

    def rules(self, direction: Direction) -> tuple[ClusterRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str | None
    port: int
    protocol: PortProtocol = "TCP"


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str]
    # The namespace's callgate.io/enforcement value as written (its label, else
    # its annotation), None when it has neither.
    enforcement: str | None = None

    __hash__ = None  # type: ignore[assignment]  # labels are a mapping: see the module docstring

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", read_only(self.labels))
        if self.enforcement is None and ENFORCEMENT_KEY in self.labels:
            object.__setattr__(self, "enforcement", self.labels[ENFORCEMENT_KEY])

    @property
    def audit(self) -> bool:
        """In audit: isolation is recorded as would-deny, never dropped (any other value: enforced)."""
        return self.enforcement == "audit"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A pod (or container) with its own network stack."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    node: str | None
    ips: tuple[IPAddress, ...]
    interface: str | None = None
    ports: tuple[NamedPort, ...] = ()
    # The endpoint's own network namespace (a path: /run/netns/NAME or
    # /proc/PID/ns/net). Without ``interface`` (macvlan, ipvlan: no host-side
    # interface) callgate enforces inside it.
    netns: str | None = None
    # "namespace/name", made once: classes, matrices and reports look it up millions of times.
    key: str = field(init=False, repr=False, compare=False)

    __hash__ = None  # type: ignore[assignment]  # labels are a mapping: see the module docstring

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", read_only(self.labels))
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")

    def resolve_port(self, name: str, protocol: PortProtocol) -> list[int]:
        """Numbers a named port stands for on this endpoint (usually one or none)."""
        return sorted({p.port for p in self.ports if p.name == name and p.protocol == protocol})


@dataclass(frozen=True, slots=True)
class Node:
    """A node with its labels and addresses: what a ClusterNetworkPolicy ``nodes``
    peer selects (endpoints name their node; this says what the node is)."""

    name: str
    labels: Mapping[str, str]
    addresses: tuple[IPAddress, ...] = ()

    __hash__ = None  # type: ignore[assignment]  # labels are a mapping: see the module docstring

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", read_only(self.labels))


@dataclass(frozen=True)
class Inventory:
    """Who runs where: namespaces with labels, endpoints with labels and IPs, and
    (optionally) the nodes with their labels and addresses."""

    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    endpoints: tuple[Endpoint, ...] = ()
    # By name. Not the same as nodes(): that lists the nodes endpoints run on.
    node_info: Mapping[str, Node] = field(default_factory=dict)

    __hash__ = None  # type: ignore[assignment]  # namespaces are a mapping: see the module docstring

    def __post_init__(self) -> None:
        object.__setattr__(self, "namespaces", read_only(self.namespaces))
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        object.__setattr__(self, "node_info", read_only(self.node_info))

    def node_addresses(self, selector: LabelSelector) -> tuple[IPAddress, ...]:
        """Addresses of the nodes whose labels ``selector`` matches, in node-name order."""
        return tuple(ip for name, node in sorted(self.node_info.items()) if selector.matches(node.labels)
                     for ip in node.addresses)

    def endpoint(self, key: str) -> Endpoint | None:
        for ep in self.endpoints:
            if ep.key == key:
                return ep
        return None

    def by_ip(self) -> dict[IPAddress, Endpoint]:
        return {ip: ep for ep in self.endpoints for ip in ep.ips}

    def nodes(self) -> list[str]:
        return sorted({ep.node for ep in self.endpoints if ep.node})


@dataclass(frozen=True)
class PolicySet:
    """NetworkPolicies and Apps (the NetworkPolicy tier), and the cluster-wide
    policies of the Admin and Baseline tiers around them."""

    policies: tuple[Policy, ...] = ()
    cluster: tuple[ClusterPolicy, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple(self.policies))
        object.__setattr__(self, "cluster", tuple(self.cluster))

    def tier(self, tier: Tier) -> list[ClusterPolicy]:
        """The cluster policies of one tier, in precedence order."""
        return sorted((p for p in self.cluster if p.tier is tier), key=lambda p: p.precedence)

    def in_namespace(self, namespace: str) -> list[Policy]:
        return [p for p in self.policies if p.namespace == namespace]
