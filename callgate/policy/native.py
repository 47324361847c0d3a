"""callgate's native model: ``callgate/v1 App``.

An App names its endpoints (a label selector) and the ports it serves, and
lists its callers. Every App is isolated in both directions; each caller
relationship opens exactly one path, caller → callee on the listed ports, on
both sides (the callee's ingress and the caller's egress). Apps compile to the
same :class:`Policy` objects as NetworkPolicy, so enforcement, explanations and
conversion to NetworkPolicy YAML come for free.

See ``examples/shop/apps.yaml`` and README "Native App model".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from callgate.errors import InputError, Problem, ProblemCode, shown
from callgate.policy import validation as v
from callgate.policy.documents import Document, format_path
from callgate.policy.model import (
    NAMESPACE_NAME_LABEL,
    Direction,
    IPBlock,
    LabelSelector,
    Peer,
    Policy,
    PolicyRule,
    PortSpec,
    RuleSource,
    SourceLocation,
)
from callgate.policy.networkpolicy import (
    IPBlockModel,
    LabelSelectorModel,
    MetadataModel,
    PortModel,
    StrictModel,
    object_name,
    problems_from,
)


class ServedPort(StrictModel):
    name: v.PortName | None = None
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class Caller(StrictModel):
    """Another App (``app``, optionally in ``namespace``) or an address range (``cidr``)."""

    app: str | None = None
    namespace: str | None = None
    cidr: str | None = None
    except_: list[str] | None = Field(default=None, alias="except")
    ports: list[int | str] | None = None  # names or numbers of the callee's served ports

    @model_validator(mode="after")
    def _one_kind(self) -> Caller:
        if (self.app is None) == (self.cidr is None):
            raise ValueError("a caller names exactly one of 'app' or 'cidr'")
        if self.cidr is None and self.except_:
            raise ValueError("'except' goes with 'cidr'")
        if self.cidr is not None:
            if self.namespace is not None:
                raise ValueError("'namespace' goes with 'app', not 'cidr'")
            IPBlockModel(cidr=self.cidr, except_=self.except_)
        if self.namespace is not None and (err := v.dns_label(self.namespace)):
            raise ValueError(err)
        return self


class ExternalDestination(StrictModel):
    """An address range outside the platform that the App may call."""

    cidr: str
    except_: list[str] | None = Field(default=None, alias="except")
    ports: list[PortModel] | None = None

    @model_validator(mode="after")
    def _cidr(self) -> ExternalDestination:
        IPBlockModel(cidr=self.cidr, except_=self.except_)
        return self


class AppSpec(StrictModel):
    selector: LabelSelectorModel
    ports: list[ServedPort] = Field(default_factory=list)
    callers: list[Caller] = Field(default_factory=list)
    egress: list[ExternalDestination] = Field(default_factory=list)

    @field_validator("ports")
    @classmethod
    def _unique_names(cls, ports: list[ServedPort]) -> list[ServedPort]:
        names = [p.name for p in ports if p.name]
        if len(names) != len(set(names)):
            raise ValueError("port names must be unique within an App")
        return ports


class AppModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    apiVersion: str
    kind: str
    metadata: MetadataModel
    spec: AppSpec


@dataclass(frozen=True)
class ParsedApp:
    model: AppModel
    doc: Document

    @property
    def namespace(self) -> str:
        return self.model.metadata.namespace

    @property
    def name(self) -> str:
        return self.model.metadata.name

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_app(doc: Document) -> ParsedApp:
    try:
        model = AppModel.model_validate(doc.data)
    except ValidationError as exc:
        raise InputError(problems_from(exc, doc, object_name(doc.data, "App"))) from None
    return ParsedApp(model, doc)


def _callee_ports(app: ParsedApp, caller: Caller, index: int) -> tuple[PortSpec, ...] | Problem:
    served = app.model.spec.ports
    if caller.ports is None:
        return tuple(PortSpec(p.protocol, p.port) for p in served)  # type: ignore[arg-type]
    specs: list[PortSpec] = []
    for j, ref in enumerate(caller.ports):
        match = [p for p in served if (p.name == ref if isinstance(ref, str) else p.port == ref)]
        if not match:
            declared = ", ".join(p.name or str(p.port) for p in served) or "none"
            return app.doc.problem(
                f"port {shown(ref)} is not one of the ports {app.name} serves ({declared})",
                obj=f"App {app.key}", field=f"spec.callers[{index}].ports[{j}]",
                field_path=("spec", "callers", index, "ports", j))
        specs.extend(PortSpec(p.protocol, p.port) for p in match)  # type: ignore[arg-type]
    return tuple(dict.fromkeys(specs))


def _app_peer(app: ParsedApp) -> Peer:
    return Peer(
        pod_selector=app.model.spec.selector.to_model(),
        namespace_selector=LabelSelector(match_labels=((NAMESPACE_NAME_LABEL, app.namespace),)),
    )


def _source(app: ParsedApp, path: tuple[str | int, ...]) -> RuleSource:
    return RuleSource(f"App {app.key}", format_path(path),
                      SourceLocation(app.doc.file, app.doc.index, app.doc.path + path))


def _block(cidr: str, excepts: list[str] | None) -> IPBlock:
    return IPBlockModel(cidr=cidr, except_=excepts).to_model()


@dataclass(frozen=True)
class CompiledApps:
    """Apps compiled together, as far as they compile.

    A caller that cannot compile (a port its callee does not serve, an App that
    does not exist) is left out with a problem, and everything else compiles:
    callers do not depend on each other, so leaving one out changes no other
    rule. That is what lets ``callgate lint`` report every problem and still
    check the rest, in one pass."""

    policies: list[Policy]
    problems: list[tuple[ParsedApp, Problem]]  # each with the App it is about
    # App key -> for each of its ingress rules, the index in spec.callers it came from.
    caller_index: dict[str, tuple[int, ...]] = field(default_factory=dict)


def compile_apps(apps: list[ParsedApp]) -> CompiledApps:
    """Compile all Apps together: a caller relationship touches two Apps."""
    problems: list[tuple[ParsedApp, Problem]] = []
    by_key: dict[str, ParsedApp] = {}
    for app in apps:
        if app.key in by_key:
            problems.append((app, app.doc.problem(
                f"App {app.key} is defined twice", obj=f"App {app.key}", field="metadata.name",
                field_path=("metadata", "name"), code=ProblemCode.DUPLICATE_NAME,
                hint="rename one of them or merge their rules")))
        by_key[app.key] = app

    ingress: dict[str, list[PolicyRule]] = {key: [] for key in by_key}
    egress: dict[str, list[PolicyRule]] = {key: [] for key in by_key}
    caller_index: dict[str, list[int]] = {key: [] for key in by_key}
    for app in by_key.values():
        for i, caller in enumerate(app.model.spec.callers):
            ports = _callee_ports(app, caller, i)
            if isinstance(ports, Problem):
                problems.append((app, ports))
                continue
            source = _source(app, ("spec", "callers", i))
            if caller.cidr is not None:
                ingress[app.key].append(PolicyRule((Peer(ip_block=_block(caller.cidr, caller.except_)),), ports,
                                                   source))
                caller_index[app.key].append(i)
                continue
            caller_key = f"{caller.namespace or app.namespace}/{caller.app}"
            other = by_key.get(caller_key)
            if other is None:
                problems.append((app, app.doc.problem(
                    f"caller {caller_key} is not a known App", obj=f"App {app.key}",
                    field=f"spec.callers[{i}].app", field_path=("spec", "callers", i, "app"),
                    code=ProblemCode.UNKNOWN_CALLER,
                    hint="check the caller's name and namespace (it defaults to the callee's namespace)")))
                continue
            ingress[app.key].append(PolicyRule((_app_peer(other),), ports, source))
            caller_index[app.key].append(i)
            # The caller's egress rule is written in the callee's document: say so.
            egress[other.key].append(PolicyRule((_app_peer(app),), ports, source))
        for j, dest in enumerate(app.model.spec.egress):
            egress[app.key].append(PolicyRule((Peer(ip_block=_block(dest.cidr, dest.except_)),),
                                              tuple(p.to_model() for p in dest.ports or ()),
                                              _source(app, ("spec", "egress", j))))
    policies = [
        Policy(
            namespace=app.namespace,
            name=app.name,
            pod_selector=app.model.spec.selector.to_model(),
            policy_types=(Direction.INGRESS, Direction.EGRESS),
            ingress=tuple(ingress[app.key]),
            egress=tuple(egress[app.key]),
            kind="App",
            origin=SourceLocation(app.doc.file, app.doc.index, app.doc.path),
        )
        for app in by_key.values()
    ]
    return CompiledApps(policies, problems, {key: tuple(found) for key, found in caller_index.items()})


def apps_to_policies(apps: list[ParsedApp]) -> list[Policy]:
    """Compile all Apps together; every problem is raised at once."""
    compiled = compile_apps(apps)
    if compiled.problems:
        raise InputError([problem for _, problem in compiled.problems])
    return compiled.policies
