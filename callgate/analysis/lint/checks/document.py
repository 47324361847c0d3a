"""Checks on the document as written: what parsing normalises away.

A port written without a protocol parses to ``protocol: TCP``; an ingress list
that policyTypes leaves out parses to a policy without it. These checks read
the raw document, whatever parsed or not.
"""

from __future__ import annotations

from typing import Any

from callgate.analysis.lint.linter import DIRECTION_KEYS, Item, Linter
from callgate.analysis.lint.rules import Severity
from callgate.policy.documents import as_list, as_mapping
from callgate.policy.positions import FieldPath


def check(linter: Linter, item: Item) -> None:
    if item.kind == "NetworkPolicy":
        network_policy(linter, item)
    elif item.app is not None:
        app(linter, item)


def _ports(linter: Linter, item: Item, ports: Any, base: FieldPath) -> None:
    for j, port in enumerate(as_list(ports)):
        port = as_mapping(port)
        if "protocol" not in port and ("port" in port or not port):
            what = f"port {port['port']}" if "port" in port else "this port entry"
            linter.report("CG109", f"{what} has no protocol, so it means TCP only", item, (*base, j),
                          hint="write `protocol: TCP` (or UDP/SCTP) explicitly")
        if "endPort" in port and port.get("endPort") == port.get("port"):
            linter.report("CG004", f"endPort {port['endPort']} equals port: a one-port range",
                          item, (*base, j, "endPort"), hint="remove endPort", severity=Severity.INFO)


def _broad(linter: Linter, item: Item, cidr: Any, path: FieldPath) -> None:
    if isinstance(cidr, str) and cidr.strip().endswith("/0"):
        linter.report("CG106", f"{cidr} matches every address, including all pods of the cluster",
                      item, path, hint="use the narrowest range meant, or disable broad-ipblock here if "
                      "'anywhere' is intended")


def network_policy(linter: Linter, item: Item) -> None:
    spec = as_mapping(as_mapping(item.doc.data).get("spec"))
    types = spec.get("policyTypes")
    for direction, (key, peers_key) in DIRECTION_KEYS.items():
        rules = as_list(spec.get(key))
        if types is not None and rules and direction.value not in as_list(types):
            linter.report("CG105", f"{key} rules are present but policyTypes {types} does not list "
                          f"{direction.value}, so they are ignored", item, ("spec", key),
                          hint=f"add {direction.value} to policyTypes, or delete the {key} rules")
        for i, rule in enumerate(rules):
            rule = as_mapping(rule)
            _ports(linter, item, rule.get("ports"), ("spec", key, i, "ports"))
            for j, peer in enumerate(as_list(rule.get(peers_key))):
                block = as_mapping(as_mapping(peer).get("ipBlock"))
                _broad(linter, item, block.get("cidr"), ("spec", key, i, peers_key, j, "ipBlock", "cidr"))


def app(linter: Linter, item: Item) -> None:
    spec = as_mapping(as_mapping(item.doc.data).get("spec"))
    served = as_list(spec.get("ports"))
    if served and not as_list(spec.get("callers")):
        ports = ", ".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in map(as_mapping, served))
        linter.report("CG111", f"{item.obj} serves {ports} but lists no callers, so nothing may call it",
                      item, ("spec", "ports"),
                      hint="list the Apps (or cidrs) that call it under callers; an App nobody calls on purpose "
                           "need not declare ports")
    for i, caller in enumerate(as_list(spec.get("callers"))):
        _broad(linter, item, as_mapping(caller).get("cidr"), ("spec", "callers", i, "cidr"))
    for i, dest in enumerate(as_list(spec.get("egress"))):
        dest = as_mapping(dest)
        _broad(linter, item, dest.get("cidr"), ("spec", "egress", i, "cidr"))
        _ports(linter, item, dest.get("ports"), ("spec", "egress", i, "ports"))
