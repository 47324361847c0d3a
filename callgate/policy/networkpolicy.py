"""Kubernetes ``networking.k8s.io/v1`` NetworkPolicy: parse, validate, normalise.

Validation follows the API server's ValidateNetworkPolicy, so a file that
callgate accepts is one ``kubectl apply`` would accept, and the other way round.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from callgate.errors import InputError, Problem, ProblemCode, shown
from callgate.policy import validation as v
from callgate.policy.documents import Document, format_path
from callgate.policy.model import (
    Direction,
    IPBlock,
    LabelSelector,
    Peer,
    Policy,
    PolicyRule,
    PortSpec,
    Requirement,
    SourceLocation,
)


class EndPortError(ValueError):
    """endPort where it means nothing: told apart so the problem carries its own lint rule."""


class StrictModel(BaseModel):
    """Unknown fields are errors, as with ``kubectl apply --validate=strict``."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              frozen=True)


class LabelSelectorRequirementModel(StrictModel):
    key: v.LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirementModel:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs a non-empty 'values' list")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} must not have 'values'")
        for value in self.values or ():
            if err := v.label_value(value):
                raise ValueError(err)
        return self


class LabelSelectorModel(StrictModel):
    match_labels: v.Labels | None = None
    match_expressions: list[LabelSelectorRequirementModel] | None = None

    def to_model(self) -> LabelSelector:
        return LabelSelector(
            match_labels=tuple(sorted((self.match_labels or {}).items())),
            match_expressions=tuple(
                Requirement(r.key, r.operator, frozenset(r.values or ()))
                for r in self.match_expressions or ()
            ),
        )


class IPBlockModel(StrictModel):
    cidr: str
    except_: list[str] | None = Field(default=None, alias="except")

    @model_validator(mode="after")
    def _cidrs(self) -> IPBlockModel:
        cidr = v.parse_cidr(self.cidr)
        for text in self.except_ or ():
            exc = v.parse_cidr(text)
            if exc.version != cidr.version or not exc.subnet_of(cidr) or exc == cidr:  # type: ignore[arg-type]
                raise ValueError(f"except {shown(text)} must be a strict subset of cidr {shown(self.cidr)}")
        return self

    def to_model(self) -> IPBlock:
        return IPBlock(v.parse_cidr(self.cidr), tuple(v.parse_cidr(e) for e in self.except_ or ()))


class PeerModel(StrictModel):
    pod_selector: LabelSelectorModel | None = None
    namespace_selector: LabelSelectorModel | None = None
    ip_block: IPBlockModel | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> PeerModel:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            raise ValueError("ipBlock cannot be combined with podSelector or namespaceSelector")
        if self.ip_block is None and not selectors:
            raise ValueError("a peer needs podSelector, namespaceSelector or ipBlock")
        return self

    def to_model(self, namespace: str) -> Peer:
        if self.ip_block is not None:
            return Peer(ip_block=self.ip_block.to_model())
        return Peer(
            pod_selector=self.pod_selector.to_model() if self.pod_selector else None,
            namespace_selector=self.namespace_selector.to_model() if self.namespace_selector else None,
            namespace=namespace if self.namespace_selector is None else None,
        )


class PortModel(StrictModel):
    protocol: str | None = None
    port: int | str | None = None
    end_port: int | None = None

    @model_validator(mode="after")
    def _check(self) -> PortModel:
        if self.protocol is not None and self.protocol not in ("TCP", "UDP", "SCTP"):
            raise ValueError(f"protocol {shown(self.protocol)} must be one of TCP, UDP, SCTP")
        if isinstance(self.port, str):
            if self.port.isdigit():
                raise ValueError(f"port {shown(self.port)} is a string of digits; write the number without quotes")
            if err := v.port_name(self.port):
                raise ValueError(err)
        elif isinstance(self.port, int) and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} must be between 1 and 65535")
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise EndPortError("endPort needs a numeric port (it cannot follow a named port or stand alone)")
            if not 1 <= self.end_port <= 65535:
                raise EndPortError(f"endPort {self.end_port} must be between 1 and 65535")
            if self.end_port < self.port:
                raise EndPortError(f"endPort {self.end_port} must not be less than port {self.port}")
        return self

    def to_model(self) -> PortSpec:
        return PortSpec(protocol=self.protocol or "TCP", port=self.port, end_port=self.end_port)  # type: ignore[arg-type]


class IngressRuleModel(StrictModel):
    from_: list[PeerModel] | None = Field(default=None, alias="from")
    ports: list[PortModel] | None = None


class EgressRuleModel(StrictModel):
    to: list[PeerModel] | None = None
    ports: list[PortModel] | None = None


class SpecModel(StrictModel):
    pod_selector: LabelSelectorModel
    policy_types: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[IngressRuleModel] | None = None
    egress: list[EgressRuleModel] | None = None

    @field_validator("policy_types")
    @classmethod
    def _types(cls, types: list[str] | None) -> list[str] | None:
        if types is not None and len(set(types)) != len(types):
            raise ValueError("policyTypes must not repeat a type")
        return types


class MetadataModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: v.DnsSubdomain
    namespace: v.DnsLabel = "default"


class NetworkPolicyModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # status, etc. are ignored
    api_version: Literal["networking.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["NetworkPolicy"]
    metadata: MetadataModel
    spec: SpecModel


def object_name(data: Any, kind: str) -> str:
    """Best-effort display name of a raw object, for error messages."""
    meta = data.get("metadata") if isinstance(data, dict) else None
    if isinstance(meta, dict):
        name = meta.get("name", "?")
        ns = meta.get("namespace")
        return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
    return kind


def problems_from(exc: ValidationError, doc: Document, obj: str) -> list[Problem]:
    """Turn pydantic's errors into positioned problems, one per failing field."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        code, hint = None, None
        if (loc and loc[-1] == "endPort") or isinstance(err.get("ctx", {}).get("error"), EndPortError):
            code, hint = ProblemCode.ENDPORT_MISUSE, "endPort needs a numeric port and must be >= port"
        if err["type"] == "extra_forbidden":
            message = "unknown field"
            hint = hint or "remove the field or fix its spelling (names are camelCase, e.g. podSelector, endPort)"
        elif err["type"] == "missing":
            message = "required field is missing"
            hint = hint or "add the field"
        elif err["type"] == "literal_error":
            message = f"got {shown(err.get('input'))}; expected " + message.removeprefix("Input should be ")
        problems.append(doc.problem(message, field=format_path(loc) or None, obj=obj, field_path=loc,
                                    code=code, hint=hint))
    return problems


def parse_network_policy(doc: Document) -> Policy:
    obj = object_name(doc.data, "NetworkPolicy")
    try:
        model = NetworkPolicyModel.model_validate(doc.data)
    except ValidationError as exc:
        raise InputError(problems_from(exc, doc, obj)) from None
    return to_policy(model, SourceLocation(doc.file, doc.index, doc.path))


def to_policy(model: NetworkPolicyModel, origin: SourceLocation) -> Policy:
    spec, ns = model.spec, model.metadata.namespace
    if spec.policy_types is not None:
        types = tuple(Direction(t) for t in spec.policy_types)
    else:
        # Kubernetes default: Ingress always, Egress when egress rules are present.
        types = (Direction.INGRESS,) + ((Direction.EGRESS,) if spec.egress else ())

    def rule(peers: list[PeerModel] | None, ports: list[PortModel] | None) -> PolicyRule:
        return PolicyRule(tuple(p.to_model(ns) for p in peers or ()), tuple(p.to_model() for p in ports or ()))

    return Policy(
        namespace=ns,
        name=model.metadata.name,
        pod_selector=spec.pod_selector.to_model(),
        policy_types=types,
        ingress=tuple(rule(r.from_, r.ports) for r in spec.ingress or ()),
        egress=tuple(rule(r.to, r.ports) for r in spec.egress or ()),
        origin=origin,
    )
