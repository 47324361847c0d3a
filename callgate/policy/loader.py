"""Load policy files and directories, mixing NetworkPolicy and native Apps."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from callgate.errors import InputError, Problem
from callgate.policy.documents import files_under, read_documents
from callgate.policy.model import PolicySet
from callgate.policy.native import ParsedApp, apps_to_policies, parse_app
from callgate.policy.networkpolicy import parse_network_policy

# Documents that describe who runs where, not who may call whom.
INVENTORY_KINDS = {("callgate/v1", "Inventory"), ("v1", "Pod"), ("v1", "Namespace")}


def load_policies(paths: str | Path | Iterable[str | Path]) -> PolicySet:
    """Read every policy document under ``paths``; all problems are reported at once."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    problems: list[Problem] = []
    policies = []
    apps: list[ParsedApp] = []
    seen: dict[str, str] = {}
    for path in files_under(paths):
        for doc in read_documents(path):
            data = doc.data
            if not isinstance(data, dict):
                problems.append(doc.problem("expected a mapping with apiVersion and kind"))
                continue
            api, kind = data.get("apiVersion"), data.get("kind")
            try:
                if api == "networking.k8s.io/v1" and kind == "NetworkPolicy":
                    policy = parse_network_policy(doc)
                    where = f"{doc.file} (document {doc.index + 1})"
                    if policy.key in seen:
                        problems.append(doc.problem(
                            f"NetworkPolicy {policy.key} is also defined in {seen[policy.key]}",
                            obj=policy.display, field="metadata.name", field_path=("metadata", "name")))
                    seen[policy.key] = where
                    policies.append(policy)
                elif api == "callgate/v1" and kind == "App":
                    apps.append(parse_app(doc))
                elif (api, kind) in INVENTORY_KINDS:
                    continue  # inventories may live beside policies; load_inventory reads them
                else:
                    problems.append(doc.problem(
                        f"expected networking.k8s.io/v1 NetworkPolicy or callgate/v1 App, got {api}/{kind}",
                        obj=str(kind), field="kind", field_path=("kind",)))
            except InputError as err:
                problems.extend(err.problems)
    try:
        policies.extend(apps_to_policies(apps))
    except InputError as err:
        problems.extend(err.problems)
    if problems:
        raise InputError(problems)
    return PolicySet(policies)
