"""``policy.networking.k8s.io/v1alpha1`` AdminNetworkPolicy and BaselineAdminNetworkPolicy,
read as their v1alpha2 ClusterNetworkPolicy equivalents.

v0.2.0 merged the two kinds into ClusterNetworkPolicy; clusters (and files)
that still carry them keep working. The mapping:

* AdminNetworkPolicy: the Admin tier at its ``priority``; ``Allow`` is
  ``Accept``.
* BaselineAdminNetworkPolicy (a singleton named ``default``): the Baseline
  tier at priority 1000, so that v1alpha2 Baseline policies, written later for
  the same cluster, take precedence over the old default.
* ``ports``: ``portNumber {protocol, port}``, ``portRange {protocol, start,
  end}`` and ``namedPort`` become the v1alpha2 protocol matches.

Validation follows the v1alpha1 CRDs of network-policy-api v0.1.7
(experimental channel): at most 100 rules per direction and 100 peers and
ports per rule, the BANP name, the named-port CEL rule. Two checks are
stricter than those CRDs, which left them to the implementation: a port
protocol must be TCP, UDP or SCTP, and a range may not end before it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from callgate.errors import InputError
from callgate.policy.clusternetworkpolicy import (
    NAMED_PORT_MESSAGE,
    PEER_FIELDS,
    ClusterMetadataModel,
    apply_unknown_peers,
    exactly_one,
    mark_unknown_peers,
    named_port_specs,
    namespaces_peer,
)
from callgate.policy.clusternetworkpolicy import EgressPeerModel as V2EgressPeerModel
from callgate.policy.clusternetworkpolicy import IngressPeerModel as V2IngressPeerModel
from callgate.policy.documents import Document
from callgate.policy.model import (
    Action,
    ClusterPolicy,
    ClusterRule,
    Peer,
    PortSpec,
    SourceLocation,
    Tier,
)
from callgate.policy.networkpolicy import LabelSelectorModel, StrictModel, object_name, problems_from

API_VERSION = "policy.networking.k8s.io/v1alpha1"
ADMIN_KIND = "AdminNetworkPolicy"
BASELINE_KIND = "BaselineAdminNetworkPolicy"
BASELINE_NAME = "default"
BASELINE_PRIORITY = 1000  # see the module docstring

Port = Annotated[StrictInt, Field(ge=1, le=65535)]
ProtocolName = Literal["TCP", "UDP", "SCTP"]


class NamespacedPodModel(StrictModel):
    """v1alpha1 ``pods``: both selectors are required (v1alpha2 defaults the namespace one)."""

    namespace_selector: LabelSelectorModel
    pod_selector: LabelSelectorModel

    def to_model(self) -> Peer:
        return Peer(pod_selector=self.pod_selector.to_model(),
                    namespace_selector=self.namespace_selector.to_model())


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


class IngressPeerModel(V2IngressPeerModel):
    pods: NamespacedPodModel | None = None  # type: ignore[assignment]


class EgressPeerModel(V2EgressPeerModel):
    pods: NamespacedPodModel | None = None  # type: ignore[assignment]


class BaselineEgressPeerModel(EgressPeerModel):
    """A BANP egress peer: no domainNames (the field does not exist there)."""

    @model_validator(mode="before")
    @classmethod
    def _no_domain_names(cls, data: object) -> object:
        if isinstance(data, dict) and "domainNames" in data:
            raise ValueError("domainNames is not a field of a BaselineAdminNetworkPolicy peer")
        return data


class PortNumberModel(StrictModel):
    protocol: ProtocolName = "TCP"
    port: Port


class PortRangeModel(StrictModel):
    protocol: ProtocolName = "TCP"
    start: Port
    end: Port

    @model_validator(mode="after")
    def _order(self) -> PortRangeModel:
        if self.end < self.start:
            raise ValueError(f"end {self.end} must not be less than start {self.start}")
        return self


class PortModel(StrictModel):
    port_number: PortNumberModel | None = None
    named_port: str | None = None
    port_range: PortRangeModel | None = None

    @model_validator(mode="after")
    def _one(self) -> PortModel:
        exactly_one(self, ("port_number", "named_port", "port_range"), "a port")
        return self

    def to_model(self) -> tuple[PortSpec, ...]:
        if self.port_number is not None:
            return (PortSpec(self.port_number.protocol, self.port_number.port),)
        if self.port_range is not None:
            r = self.port_range
            return (PortSpec(r.protocol, r.start, r.end if r.end != r.start else None),)
        assert self.named_port is not None
        return named_port_specs(self.named_port)


Ports = Annotated[list[PortModel], Field(min_length=1, max_length=100)]
RuleName = Annotated[str, Field(max_length=100)]
ACTIONS = {"Allow": Action.ACCEPT, "Deny": Action.DENY, "Pass": Action.PASS}


def _ports(ports: list[PortModel] | None) -> tuple[PortSpec, ...]:
    return tuple(dict.fromkeys(spec for p in ports or () for spec in p.to_model()))


def _named_port_check(peers: list[V2EgressPeerModel], ports: list[PortModel] | None) -> None:
    if any(p.has_addresses for p in peers) and any(p.named_port is not None for p in ports or ()):
        raise ValueError(NAMED_PORT_MESSAGE)


class AdminIngressRuleModel(StrictModel):
    name: RuleName = ""
    action: Literal["Allow", "Deny", "Pass"]
    from_: Annotated[list[IngressPeerModel], Field(min_length=1, max_length=100)] = Field(alias="from")
    ports: Ports | None = None

    def to_model(self) -> ClusterRule:
        return ClusterRule(ACTIONS[self.action], tuple(p.to_model() for p in self.from_), _ports(self.ports),
                           self.name)


class AdminEgressRuleModel(StrictModel):
    name: RuleName = ""
    action: Literal["Allow", "Deny", "Pass"]
    to: Annotated[list[EgressPeerModel], Field(min_length=1, max_length=100)]
    ports: Ports | None = None

    @model_validator(mode="after")
    def _named_ports(self) -> AdminEgressRuleModel:
        _named_port_check(list(self.to), self.ports)
        return self

    def to_model(self) -> ClusterRule:
        return ClusterRule(ACTIONS[self.action], tuple(p.to_model() for p in self.to), _ports(self.ports),
                           self.name)


class BaselineIngressRuleModel(AdminIngressRuleModel):
    action: Literal["Allow", "Deny"]  # type: ignore[assignment]


class BaselineEgressRuleModel(AdminEgressRuleModel):
    action: Literal["Allow", "Deny"]  # type: ignore[assignment]
    to: Annotated[list[BaselineEgressPeerModel], Field(min_length=1, max_length=100)]  # type: ignore[assignment]


class AdminSpecModel(StrictModel):
    priority: Annotated[StrictInt, Field(ge=0, le=1000)]
    subject: SubjectModel
    ingress: Annotated[list[AdminIngressRuleModel], Field(max_length=100)] | None = None
    egress: Annotated[list[AdminEgressRuleModel], Field(max_length=100)] | None = None


class BaselineSpecModel(StrictModel):
    subject: SubjectModel
    ingress: Annotated[list[BaselineIngressRuleModel], Field(max_length=100)] | None = None
    egress: Annotated[list[BaselineEgressRuleModel], Field(max_length=100)] | None = None


class AdminNetworkPolicyModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    api_version: Literal["policy.networking.k8s.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["AdminNetworkPolicy"]
    metadata: ClusterMetadataModel
    spec: AdminSpecModel


class BaselineMetadataModel(ClusterMetadataModel):
    @model_validator(mode="after")
    def _singleton(self) -> BaselineMetadataModel:
        if self.name != BASELINE_NAME:
            raise ValueError('Only one baseline admin network policy with metadata.name="default" can be '
                             f"created in the cluster (got {self.name!r})")
        return self


class BaselineAdminNetworkPolicyModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    api_version: Literal["policy.networking.k8s.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["BaselineAdminNetworkPolicy"]
    metadata: BaselineMetadataModel
    spec: BaselineSpecModel


def _rules(models: Sequence[AdminIngressRuleModel] | Sequence[AdminEgressRuleModel] | None, direction: str,
           marked: set[tuple[str, int, int]]) -> tuple[ClusterRule, ...]:
    return apply_unknown_peers(tuple(r.to_model() for r in models or ()), direction, marked)


def parse_admin_network_policy(doc: Document, fail_closed_peers: bool = False) -> ClusterPolicy:
    """An AdminNetworkPolicy, as an Admin-tier ClusterNetworkPolicy (see
    :func:`~.clusternetworkpolicy.parse_cluster_network_policy` for ``fail_closed_peers``)."""
    obj = object_name(doc.data, ADMIN_KIND)
    data, marked = mark_unknown_peers(doc.data, PEER_FIELDS) if fail_closed_peers else (doc.data, set())
    try:
        model = AdminNetworkPolicyModel.model_validate(data)
    except ValidationError as exc:
        raise InputError(problems_from(exc, doc, obj)) from None
    spec = model.spec
    return ClusterPolicy(
        name=model.metadata.name, tier=Tier.ADMIN, priority=spec.priority, subject=spec.subject.to_model(),
        ingress=_rules(spec.ingress, "ingress", marked), egress=_rules(spec.egress, "egress", marked),
        kind=ADMIN_KIND, origin=SourceLocation(doc.file, doc.index, doc.path))


BASELINE_PEER_FIELDS = {"ingress": PEER_FIELDS["ingress"],
                        "egress": frozenset({"namespaces", "pods", "nodes", "networks"})}


def parse_baseline_admin_network_policy(doc: Document, fail_closed_peers: bool = False) -> ClusterPolicy:
    """The BaselineAdminNetworkPolicy, as a Baseline-tier ClusterNetworkPolicy."""
    obj = object_name(doc.data, BASELINE_KIND)
    data, marked = (mark_unknown_peers(doc.data, BASELINE_PEER_FIELDS) if fail_closed_peers
                    else (doc.data, set()))
    try:
        model = BaselineAdminNetworkPolicyModel.model_validate(data)
    except ValidationError as exc:
        raise InputError(problems_from(exc, doc, obj)) from None
    spec = model.spec
    return ClusterPolicy(
        name=model.metadata.name, tier=Tier.BASELINE, priority=BASELINE_PRIORITY,
        subject=spec.subject.to_model(),
        ingress=_rules(spec.ingress, "ingress", marked), egress=_rules(spec.egress, "egress", marked),
        kind=BASELINE_KIND, origin=SourceLocation(doc.file, doc.index, doc.path))

