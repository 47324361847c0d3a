"""Load policy files and directories, mixing NetworkPolicy, native Apps and the
cluster-wide tiers (ClusterNetworkPolicy, and the v1alpha1 AdminNetworkPolicy and
BaselineAdminNetworkPolicy)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from callgate.errors import InputError, ProblemCode
from callgate.policy import adminnetworkpolicy as anp
from callgate.policy import clusternetworkpolicy as cnp
from callgate.policy.ahead import YamlAhead
from callgate.policy.documents import INVENTORY_KINDS, Document, gc_paused, is_kind, read_all, shown_kind
from callgate.policy.model import ClusterPolicy, Policy, PolicySet
from callgate.policy.native import ParsedApp, compile_apps, parse_app
from callgate.policy.networkpolicy import parse_network_policy

EXPECTED_KINDS = ("networking.k8s.io/v1 NetworkPolicy, callgate/v1 App, "
                  f"{cnp.API_VERSION} {cnp.KIND} or {anp.API_VERSION} {anp.ADMIN_KIND}/{anp.BASELINE_KIND}")


def parse_policy_document(doc: Document) -> Policy | ParsedApp | ClusterPolicy | None:
    """One document of a policy path: a NetworkPolicy, an App (compiled later, with
    the others), a cluster-wide policy, or None for an inventory object, which may
    live beside policies (load_inventory reads those). Anything else raises
    :class:`InputError`."""
    data = doc.data
    if not isinstance(data, dict):
        raise InputError([doc.problem("expected a mapping with apiVersion and kind")])
    api, kind = data.get("apiVersion"), data.get("kind")
    if api == "networking.k8s.io/v1" and kind == "NetworkPolicy":
        return parse_network_policy(doc)
    if api == "callgate/v1" and kind == "App":
        return parse_app(doc)
    if api == cnp.API_VERSION and kind == cnp.KIND:
        return cnp.parse_cluster_network_policy(doc)
    if api == anp.API_VERSION and kind == anp.ADMIN_KIND:
        return anp.parse_admin_network_policy(doc)
    if api == anp.API_VERSION and kind == anp.BASELINE_KIND:
        return anp.parse_baseline_admin_network_policy(doc)
    if is_kind(api, kind, INVENTORY_KINDS):
        return None
    raise InputError([doc.problem(
        f"expected {EXPECTED_KINDS}, got {shown_kind(api, kind)}",
        obj=kind if isinstance(kind, str) else "object", field="kind", field_path=("kind",),
        code=ProblemCode.UNKNOWN_KIND,
        hint="use apiVersion networking.k8s.io/v1 kind NetworkPolicy, callgate/v1 App, or "
             f"{cnp.API_VERSION} {cnp.KIND}")])


class Reused:
    """NetworkPolicies by the exact content of their documents, for loading mostly the
    same documents twice (``callgate diff``'s NEW beside its OLD: 10,000 policies and a
    few edited). A document written exactly as one already parsed gets that Policy,
    whose ``origin`` then names where it was first read: no verdict looks at it, and
    PolicySet equality leaves it out (the diff swaps equal policies for OLD's objects
    anyway). Only documents that parsed are kept: an invalid one is parsed, and
    reported with its own file, every time."""

    def __init__(self) -> None:
        self._policies: dict[bytes, Policy] = {}

    def parse(self, doc: Document) -> Policy | ParsedApp | ClusterPolicy | None:
        key = _content(doc.data)
        found = self._policies.get(key) if key is not None else None
        if found is not None:
            return found
        parsed = parse_policy_document(doc)
        if key is not None and isinstance(parsed, Policy):
            self._policies[key] = parsed
        return parsed


def _content(data: object) -> bytes | None:
    """A NetworkPolicy document's content as bytes (key order, types and all: equal
    bytes, equal documents); None for anything else or what msgspec cannot write."""
    if not (isinstance(data, dict) and data.get("kind") == "NetworkPolicy"):
        return None
    try:
        return msgspec.json.encode(data)
    except (TypeError, ValueError, OverflowError):
        return None


def load_policies(paths: str | Path | Iterable[str | Path], ahead: YamlAhead | None = None,
                  reused: Reused | None = None) -> PolicySet:
    """Read every policy document under ``paths``; all problems are reported at once.
    (``ahead``: the YAML files among them already parsed on another core; ``reused``:
    NetworkPolicies parsed before, by document content.)"""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    with gc_paused():
        return _load_policies(paths, ahead, reused)


def _load_policies(paths: Iterable[str | Path], ahead: YamlAhead | None, reused: Reused | None) -> PolicySet:
    parse = reused.parse if reused is not None else parse_policy_document
    docs, problems = read_all(paths, ahead)
    policies: list[Policy] = []
    cluster: list[ClusterPolicy] = []
    apps: list[ParsedApp] = []
    seen: dict[str, str] = {}
    for doc in docs:
        try:
            parsed = parse(doc)
        except InputError as err:
            problems.extend(err.problems)
            continue
        if isinstance(parsed, ParsedApp):
            apps.append(parsed)
        elif parsed is not None:
            # NetworkPolicy keys are "ns/name", cluster policy keys "Kind/name": never equal.
            if parsed.key in seen:
                problems.append(doc.problem(
                    f"{parsed.display} is also defined in {seen[parsed.key]}",
                    obj=parsed.display, field="metadata.name", field_path=("metadata", "name"),
                    code=ProblemCode.DUPLICATE_NAME, hint="rename one of them or merge their rules"))
            seen[parsed.key] = f"{doc.file} (document {doc.index + 1})"
            if isinstance(parsed, ClusterPolicy):
                cluster.append(parsed)
            else:
                policies.append(parsed)
    compiled = compile_apps(apps)
    problems.extend(problem for _, problem in compiled.problems)
    if problems:
        raise InputError(problems)
    return PolicySet((*policies, *compiled.policies), tuple(cluster))
