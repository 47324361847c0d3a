"""``policy.networking.k8s.io/v1alpha2`` ClusterNetworkPolicy: parse, validate, normalise.

Validation follows the CRD of network-policy-api v0.2.0 (experimental channel):
its OpenAPI bounds (enums, 0-1000 priorities, at most 25 rules, 1-25 peers,
"exactly one field" objects, 100-character rule names, port numbers) and its
CEL rules (``start < end`` in port ranges, ``isCIDR`` networks, no named port
beside networks/nodes/domainNames peers), so a file callgate accepts is one
the API server would accept. Problems carry file:line:column, the object and
the field, as for NetworkPolicy.

The pieces both API versions share (subjects, peers, CIDRs, domain names,
cluster-scoped metadata) live here; :mod:`.adminnetworkpolicy` reads the
v1alpha1 kinds with them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from callgate.errors import InputError
from callgate.policy import validation as v
from callgate.policy.documents import Document
from callgate.policy.model import (
    PROTOCOLS,
    Action,
    ClusterPeer,
    ClusterPolicy,
    ClusterRule,
    IPBlock,
    IPNetwork,
    Peer,
    PortProtocol,
    PortSpec,
    SourceLocation,
    Tier,
)
from callgate.policy.networkpolicy import LabelSelectorModel, StrictModel, object_name, problems_from

API_VERSION = "policy.networking.k8s.io/v1alpha2"
KIND = "ClusterNetworkPolicy"

# The CEL rule on egress rules, and its message, as the CRD words them.
NAMED_PORT_MESSAGE = ("networks/nodes/domainNames peer cannot be set with namedPorts since there are no "
                      "namedPorts for networks/nodes/domainNames")
# The CRD's pattern for a domain name, as written there ("A-z" included).
_DOMAIN_NAME = re.compile(
    r"^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$")
_CIDR_MAX_LENGTH = 43


def parse_network(text: str) -> IPNetwork:
    """A ``networks`` entry as the CRD checks it: at most 43 characters, and CEL's
    ``isCIDR`` (address/length, no IPv4-mapped IPv6). Host bits are accepted and
    cleared, as ``isCIDR`` accepts them."""
    if len(text) > _CIDR_MAX_LENGTH:
        raise ValueError(f"{text[:50]!r} is longer than {_CIDR_MAX_LENGTH} characters")
    try:
        network = v.parse_cidr(text)
    except ValueError:
        raise ValueError(f"Invalid CIDR format provided: {text!r} (expected address/prefix-length, "
                         "e.g. 198.18.0.0/24 or fd00::/64)") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        raise ValueError(f"Invalid CIDR format provided: {text!r} is an IPv4-mapped IPv6 address; "
                         "write the IPv4 CIDR")
    return network


def _unique(values: list[str], what: str) -> list[str]:
    """``x-kubernetes-list-type: set``: the API server refuses duplicates."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r} (the list is a set)")
        seen.add(value)
    return values


def _network(text: str) -> str:
    parse_network(text)
    return text


def _domain_name(name: str) -> str:
    if not _DOMAIN_NAME.match(name):
        raise ValueError(f"domain name {name!r} must be a DNS name, optionally starting with '*.' "
                         "(e.g. kubernetes.io or *.kubernetes.io)")
    return name


def exactly_one(model: BaseModel, fields: Iterable[str], what: str) -> None:
    """The CRD's ``minProperties: 1`` / ``maxProperties: 1`` on a union object."""
    names = list(fields)
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) != 1:
        wanted = ", ".join(_camel(n) for n in names)
        found = f" (found {', '.join(_camel(n) for n in given)})" if given else ""
        raise ValueError(f"{what} needs exactly one of {wanted}{found}")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# -- shared building blocks -----------------------------------------------------------


class ClusterMetadataModel(BaseModel):
    """Cluster-scoped metadata: a DNS-1123 subdomain name; everything else is ignored."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: v.DnsSubdomain


class NamespacedPodModel(StrictModel):
    """``pods``: a namespace selector (empty or left out: every namespace) and a pod selector."""

    namespace_selector: LabelSelectorModel = Field(default_factory=LabelSelectorModel)
    pod_selector: LabelSelectorModel

    def to_model(self) -> Peer:
        return Peer(pod_selector=self.pod_selector.to_model(),
                    namespace_selector=self.namespace_selector.to_model())


def namespaces_peer(selector: LabelSelectorModel) -> Peer:
    """``namespaces``: every pod of the matching namespaces."""
    return Peer(namespace_selector=selector.to_model())


class SubjectModel(StrictModel):
    namespaces: LabelSelectorModel | None = None
    pods: NamespacedPodModel | None = None

    @model_validator(mode="after")
    def _one(self) -> SubjectModel:
        exactly_one(self, ("namespaces", "pods"), "subject")
        return self

    def to_model(self) -> Peer:
        if self.namespaces is not None:
            return namespaces_peer(self.namespaces)
        assert self.pods is not None
        return self.pods.to_model()


EGRESS_PEER_KINDS = ("namespaces", "pods", "nodes", "networks", "domain_names")
# Each entry checked on its own, so a problem points at the entry.
Networks = Annotated[list[Annotated[str, AfterValidator(_network)]], Field(min_length=1, max_length=25)]
DomainNames = Annotated[list[Annotated[str, AfterValidator(_domain_name)]], Field(min_length=1, max_length=25)]


class IngressPeerModel(StrictModel):
    namespaces: LabelSelectorModel | None = None
    pods: NamespacedPodModel | None = None

    @model_validator(mode="after")
    def _one(self) -> IngressPeerModel:
        exactly_one(self, ("namespaces", "pods"), "a peer")
        return self

    def to_model(self) -> ClusterPeer:
        if self.namespaces is not None:
            return ClusterPeer(selector=namespaces_peer(self.namespaces))
        assert self.pods is not None
        return ClusterPeer(selector=self.pods.to_model())


class EgressPeerModel(StrictModel):
    namespaces: LabelSelectorModel | None = None
    pods: NamespacedPodModel | None = None
    nodes: LabelSelectorModel | None = None
    networks: Networks | None = None
    domain_names: DomainNames | None = None

    @field_validator("networks")
    @classmethod
    def _networks(cls, values: list[str] | None) -> list[str] | None:
        return _unique(values, "network") if values is not None else None

    @field_validator("domain_names")
    @classmethod
    def _domain_names(cls, values: list[str] | None) -> list[str] | None:
        return _unique(values, "domain name") if values is not None else None

    @model_validator(mode="after")
    def _one(self) -> EgressPeerModel:
        exactly_one(self, EGRESS_PEER_KINDS, "a peer")
        return self

    @property
    def has_addresses(self) -> bool:
        """networks, nodes or domainNames: peers without named ports."""
        return self.networks is not None or self.nodes is not None or self.domain_names is not None

    def to_model(self) -> ClusterPeer:
        if self.namespaces is not None:
            return ClusterPeer(selector=namespaces_peer(self.namespaces))
        if self.pods is not None:
            return ClusterPeer(selector=self.pods.to_model())
        if self.nodes is not None:
            return ClusterPeer(nodes=self.nodes.to_model())
        if self.networks is not None:
            return ClusterPeer(networks=tuple(IPBlock(parse_network(n)) for n in self.networks))
        assert self.domain_names is not None
        return ClusterPeer(domain_names=tuple(self.domain_names))


def named_port_specs(name: str) -> tuple[PortSpec, ...]:
    """A named port without a protocol: it matches the port and protocol a
    destination pod declares under that name, whichever protocol that is."""
    return tuple(PortSpec(protocol, name) for protocol in PROTOCOLS)


# -- fail-closed peers ------------------------------------------------------------------

FAIL_CLOSED_PLACEHOLDER: dict[str, Any] = {"namespaces": {}}


def mark_unknown_peers(data: Any, known: dict[str, frozenset[str]]) -> tuple[Any, set[tuple[str, int, int]]]:
    """For objects from the API server: a peer whose fields callgate does not know
    (a newer CRD's peer kind) must fail closed, not fail the policy.

    Returns a copy of ``data`` in which every such peer is replaced by a valid
    placeholder, and the (direction key, rule index, peer index) of each, to be
    turned into :class:`ClusterPeer` () after parsing. ``known`` maps "ingress" /
    "egress" to the peer fields of that direction. Unknown fields beside known
    ones are left for validation to report."""
    spec = data.get("spec") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        return data, set()
    marked: set[tuple[str, int, int]] = set()
    new_spec = dict(spec)
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        rules = spec.get(direction)
        if not isinstance(rules, list):
            continue
        new_rules: list[Any] = []
        for i, rule in enumerate(rules):
            peers = rule.get(peers_key) if isinstance(rule, dict) else None
            if not isinstance(peers, list):
                new_rules.append(rule)
                continue
            new_peers: list[Any] = []
            for j, peer in enumerate(peers):
                if isinstance(peer, dict) and peer and not set(peer) & known[direction]:
                    marked.add((direction, i, j))
                    new_peers.append(dict(FAIL_CLOSED_PLACEHOLDER))
                else:
                    new_peers.append(peer)
            new_rules.append({**rule, peers_key: new_peers})
        new_spec[direction] = new_rules
    return {**data, "spec": new_spec}, marked


def apply_unknown_peers(rules: tuple[ClusterRule, ...], direction: str,
                        marked: set[tuple[str, int, int]]) -> tuple[ClusterRule, ...]:
    """The rules with each marked peer replaced by the unresolvable peer."""
    if not any(d == direction for d, _, _ in marked):
        return rules
    out = []
    for i, rule in enumerate(rules):
        peers = tuple(ClusterPeer() if (direction, i, j) in marked else p for j, p in enumerate(rule.peers))
        out.append(ClusterRule(rule.action, peers, rule.ports, rule.name))
    return tuple(out)


# -- v1alpha2 ---------------------------------------------------------------------------


class PortRangeModel(StrictModel):
    start: Annotated[StrictInt, Field(ge=1, le=65535)]
    end: Annotated[StrictInt, Field(ge=1, le=65535)]

    @model_validator(mode="after")
    def _order(self) -> PortRangeModel:
        if self.start >= self.end:
            raise ValueError(f"Start port must be less than End port (start {self.start}, end {self.end})")
        return self


class PortModel(StrictModel):
    """``number`` or ``range`` (exactly one)."""

    number: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    range: PortRangeModel | None = None

    @model_validator(mode="after")
    def _one(self) -> PortModel:
        exactly_one(self, ("number", "range"), "destinationPort")
        return self

    def to_model(self, protocol: PortProtocol) -> PortSpec:
        if self.range is not None:
            return PortSpec(protocol, self.range.start, self.range.end)
        return PortSpec(protocol, self.number)


class ProtocolPortModel(StrictModel):
    """``tcp`` / ``udp`` / ``sctp``: ``destinationPort`` (the CRD's minProperties makes it required)."""

    destination_port: PortModel


class ProtocolModel(StrictModel):
    tcp: ProtocolPortModel | None = None
    udp: ProtocolPortModel | None = None
    sctp: ProtocolPortModel | None = None
    destination_named_port: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ProtocolModel:
        exactly_one(self, ("tcp", "udp", "sctp", "destination_named_port"), "a protocol")
        return self

    def to_model(self) -> tuple[PortSpec, ...]:
        if self.destination_named_port is not None:
            return named_port_specs(self.destination_named_port)
        for protocol in PROTOCOLS:
            given: ProtocolPortModel | None = getattr(self, protocol.lower())
            if given is not None:
                return (given.destination_port.to_model(protocol),)
        raise AssertionError("validated: exactly one protocol")


Protocols = Annotated[list[ProtocolModel], Field(min_length=1, max_length=25)]
RuleName = Annotated[str, Field(max_length=100)]


class IngressRuleModel(StrictModel):
    name: RuleName = ""
    action: Literal["Accept", "Deny", "Pass"]
    from_: Annotated[list[IngressPeerModel], Field(min_length=1, max_length=25)] = Field(alias="from")
    protocols: Protocols | None = None

    def to_model(self) -> ClusterRule:
        return ClusterRule(Action(self.action), tuple(p.to_model() for p in self.from_),
                           _ports(self.protocols), self.name)


class EgressRuleModel(StrictModel):
    name: RuleName = ""
    action: Literal["Accept", "Deny", "Pass"]
    to: Annotated[list[EgressPeerModel], Field(min_length=1, max_length=25)]
    protocols: Protocols | None = None

    @model_validator(mode="after")
    def _named_ports(self) -> EgressRuleModel:
        if any(p.has_addresses for p in self.to) and any(
                p.destination_named_port is not None for p in self.protocols or ()):
            raise ValueError(NAMED_PORT_MESSAGE)
        return self

    def to_model(self) -> ClusterRule:
        return ClusterRule(Action(self.action), tuple(p.to_model() for p in self.to), _ports(self.protocols),
                           self.name)


def _ports(protocols: list[ProtocolModel] | None) -> tuple[PortSpec, ...]:
    return tuple(dict.fromkeys(spec for p in protocols or () for spec in p.to_model()))


class SpecModel(StrictModel):
    tier: Literal["Admin", "Baseline"]
    priority: Annotated[StrictInt, Field(ge=0, le=1000)]
    subject: SubjectModel
    ingress: Annotated[list[IngressRuleModel], Field(max_length=25)] | None = None
    egress: Annotated[list[EgressRuleModel], Field(max_length=25)] | None = None


class ClusterNetworkPolicyModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # status, etc. are ignored
    api_version: Literal["policy.networking.k8s.io/v1alpha2"] = Field(alias="apiVersion")
    kind: Literal["ClusterNetworkPolicy"]
    metadata: ClusterMetadataModel
    spec: SpecModel


PEER_FIELDS = {"ingress": frozenset({"namespaces", "pods"}),
               "egress": frozenset({"namespaces", "pods", "nodes", "networks", "domainNames"})}


def parse_cluster_network_policy(doc: Document, fail_closed_peers: bool = False) -> ClusterPolicy:
    """One ClusterNetworkPolicy document. ``fail_closed_peers`` (objects from the
    API server, which has validated them against its own CRD): a peer with only
    fields callgate does not know becomes the unresolvable peer instead of an
    error."""
    obj = object_name(doc.data, KIND)
    data, marked = mark_unknown_peers(doc.data, PEER_FIELDS) if fail_closed_peers else (doc.data, set())
    try:
        model = ClusterNetworkPolicyModel.model_validate(data)
    except ValidationError as exc:
        raise InputError(problems_from(exc, doc, obj)) from None
    spec = model.spec
    return ClusterPolicy(
        name=model.metadata.name,
        tier=Tier(spec.tier),
        priority=spec.priority,
        subject=spec.subject.to_model(),
        ingress=apply_unknown_peers(tuple(r.to_model() for r in spec.ingress or ()), "ingress", marked),
        egress=apply_unknown_peers(tuple(r.to_model() for r in spec.egress or ()), "egress", marked),
        origin=SourceLocation(doc.file, doc.index, doc.path),
    )
