"""Parsing and validation of ClusterNetworkPolicy (v1alpha2), AdminNetworkPolicy and
BaselineAdminNetworkPolicy (v1alpha1), and of the inventory's nodes.

Validation is the CRDs' (OpenAPI bounds and CEL rules of network-policy-api
v0.2.0 / v0.1.7), with callgate's usual messages: file:line:column, object,
field, what was expected.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from callgate.errors import InputError, ProblemCode
from callgate.policy import load_inventory, load_policies
from callgate.policy.model import Action, ClusterPeer, Peer, PortSpec, Tier
from tests.helpers import write

CNP = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\n"


def errors(tmp: Path, text: str) -> list[str]:
    with pytest.raises(InputError) as exc:
        load_policies(write(tmp, "p.yaml", text))
    return [str(p) for p in exc.value.problems]


def spec(body: str) -> str:
    return CNP + "spec:\n" + "".join(f"  {line}\n" for line in body.strip("\n").splitlines())


BASE = "tier: Admin\npriority: 10\nsubject: {namespaces: {}}\n"


def test_a_cluster_network_policy_in_full(tmp_path: Path) -> None:
    ps = load_policies(write(tmp_path, "p.yaml", spec("""
tier: Baseline
priority: 7
subject:
  pods:
    podSelector: {matchLabels: {app: db}}
ingress:
  - name: from-api
    action: Accept
    from: [{pods: {namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: api}}}}]
    protocols: [{tcp: {destinationPort: {number: 5432}}}, {udp: {destinationPort: {range: {start: 5000, end: 5010}}}}]
egress:
  - action: Pass
    to: [{namespaces: {}}, {nodes: {matchLabels: {role: gw}}}]
  - action: Deny
    to: [{networks: [10.0.0.5/8, '::/0']}, {domainNames: ['*.example.com']}]
  - action: Accept
    to: [{pods: {podSelector: {}}}]
    protocols: [{destinationNamedPort: dns}]
""")))
    (policy,) = ps.cluster
    assert ps.policies == ()
    assert (policy.name, policy.tier, policy.priority, policy.kind) == ("c", Tier.BASELINE, 7, "ClusterNetworkPolicy")
    assert policy.subject.namespace_selector is not None and policy.subject.namespace_selector.is_empty
    rule = policy.ingress[0]
    assert (rule.name, rule.action) == ("from-api", Action.ACCEPT)
    assert rule.ports == (PortSpec("TCP", 5432), PortSpec("UDP", 5000, 5010))
    pass_rule, deny, named = policy.egress
    assert pass_rule.name == "" and pass_rule.action is Action.PASS
    assert pass_rule.peers[1].nodes is not None and pass_rule.peers[1].resolvable
    networks = deny.peers[0].networks
    assert [str(b.cidr) for b in networks] == ["10.0.0.0/8", "::/0"]  # host bits cleared, as isCIDR accepts them
    assert not deny.peers[1].resolvable and deny.peers[1].domain_names == ("*.example.com",)
    # A named port has no protocol: whatever the destination declares under the name.
    assert {s.protocol for s in named.ports} == {"TCP", "UDP", "SCTP"} and {s.port for s in named.ports} == {"dns"}
    assert named.peers[0].selector == Peer(pod_selector=named.peers[0].selector.pod_selector,  # type: ignore[union-attr]
                                           namespace_selector=named.peers[0].selector.namespace_selector)  # type: ignore[union-attr]


@pytest.mark.parametrize(("body", "where", "expected"), [
    (BASE.replace("Admin", "Developer"), "spec.tier", "got 'Developer'; expected 'Admin' or 'Baseline'"),
    (BASE.replace("10", "1001"), "spec.priority", "less than or equal to 1000"),
    (BASE.replace("10", "'10'"), "spec.priority", "valid integer"),
    ("tier: Admin\npriority: 1\nsubject: {}", "spec.subject", "subject needs exactly one of namespaces, pods"),
    ("tier: Admin\npriority: 1\nsubject: {namespaces: {}, pods: {podSelector: {}}}", "spec.subject",
     "found namespaces, pods"),
    ("tier: Admin\npriority: 1\nsubject: {pods: {namespaceSelector: {}}}", "spec.subject.pods.podSelector",
     "required field is missing"),
    (BASE + "ingress: [{action: Allow, from: [{namespaces: {}}]}]", "spec.ingress[0].action",
     "got 'Allow'; expected 'Accept', 'Deny' or 'Pass'"),
    (BASE + "ingress: [{action: Deny, from: []}]", "spec.ingress[0].from", "at least 1 item"),
    (BASE + "ingress: [{action: Deny}]", "spec.ingress[0].from", "required field is missing"),
    (BASE + "ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}]", "spec.ingress[0].from[0].networks",
     "unknown field"),
    (BASE + f"ingress: [{{name: {'n' * 101}, action: Deny, from: [{{namespaces: {{}}}}]}}]",
     "spec.ingress[0].name", "at most 100 characters"),
    (BASE + "ingress:\n" + "- {action: Deny, from: [{namespaces: {}}]}\n" * 26, "spec.ingress", "at most 25 items"),
    (BASE + "egress: [{action: Deny, to: [{}]}]", "spec.egress[0].to[0]", "a peer needs exactly one of"),
    (BASE + "egress: [{action: Deny, to: [{networks: [10.0.0.0]}]}]", "spec.egress[0].to[0].networks[0]",
     "Invalid CIDR format provided"),
    (BASE + "egress: [{action: Deny, to: [{networks: ['::ffff:10.0.0.1/128']}]}]",
     "spec.egress[0].to[0].networks[0]", "IPv4-mapped"),
    (BASE + "egress: [{action: Deny, to: [{networks: [10.0.0.0/8, 10.0.0.0/8]}]}]",
     "spec.egress[0].to[0].networks", "duplicate network"),
    (BASE + "egress: [{action: Accept, to: [{domainNames: [bad_name!]}]}]", "spec.egress[0].to[0].domainNames[0]",
     "must be a DNS name"),
    (BASE + "egress: [{action: Accept, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: web}]}]",
     "spec.egress[0]", "networks/nodes/domainNames peer cannot be set with namedPorts"),
    (BASE + "egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {}}]}]",
     "spec.egress[0].protocols[0].tcp.destinationPort", "required field is missing"),
    (BASE + "egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 0}}}]}]",
     "spec.egress[0].protocols[0].tcp.destinationPort.number", "greater than or equal to 1"),
    (BASE + "egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{udp: {destinationPort: "
     "{range: {start: 90, end: 90}}}}]}]", "spec.egress[0].protocols[0].udp.destinationPort.range",
     "Start port must be less than End port"),
    (BASE + "egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}, "
     "udp: {destinationPort: {number: 80}}}]}]", "spec.egress[0].protocols[0]", "a protocol needs exactly one of"),
    (BASE + "egress: [{action: Deny, to: [{namespaces: {}}], protocols: []}]", "spec.egress[0].protocols",
     "at least 1 item"),
])
def test_validation_follows_the_crd(tmp_path: Path, body: str, where: str, expected: str) -> None:
    found = errors(tmp_path, spec(body))
    assert any(f"ClusterNetworkPolicy c: {where}: " in e and expected in e for e in found), found
    assert all(e.startswith(f"{tmp_path / 'p.yaml'}:") for e in found), "file:line:column"


def test_problems_point_at_the_line_and_column(tmp_path: Path) -> None:
    found = errors(tmp_path, spec(BASE + "egress:\n  - action: Deny\n    to: [{networks: [10.0.0.0/8, nope]}]"))
    assert found == [f"{tmp_path / 'p.yaml'}:10:36: ClusterNetworkPolicy c: spec.egress[0].to[0].networks[1]: "
                     "Invalid CIDR format provided: 'nope' (expected address/prefix-length, e.g. 198.18.0.0/24 "
                     "or fd00::/64)"]


def test_names_and_kinds(tmp_path: Path) -> None:
    bad_name = CNP.replace("name: c", "name: Not_A_Name") + "spec: {tier: Admin, priority: 1, subject: {namespaces: {}}}"
    assert any("metadata.name" in e and "DNS-1123 subdomain" in e for e in errors(tmp_path, bad_name))
    twice = spec(BASE) + "---\n" + spec(BASE)
    with pytest.raises(InputError) as exc:
        load_policies(write(tmp_path, "p.yaml", twice))
    (problem,) = exc.value.problems
    assert problem.code is ProblemCode.DUPLICATE_NAME and "ClusterNetworkPolicy c is also defined in" in str(problem)
    wrong_version = CNP.replace("v1alpha2", "v1beta1") + "spec: {}"
    (message,) = errors(tmp_path, wrong_version)
    assert "expected networking.k8s.io/v1 NetworkPolicy, callgate/v1 App, policy.networking.k8s.io/v1alpha2 " \
           "ClusterNetworkPolicy or policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy/BaselineAdminNetworkPolicy, " \
           "got policy.networking.k8s.io/v1beta1/ClusterNetworkPolicy" in message


def test_a_network_policy_and_a_cluster_policy_may_share_a_name(tmp_path: Path) -> None:
    np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: c, namespace: x}\nspec: {podSelector: {}}\n"
    ps = load_policies(write(tmp_path, "p.yaml", np + "---\n" + spec(BASE)))
    assert len(ps.policies) == 1 and len(ps.cluster) == 1


# -- v1alpha1 -------------------------------------------------------------------------------------

ANP = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: old}\n"
BANP = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\n"


def test_v1alpha1_kinds_are_read_as_v1alpha2(tmp_path: Path) -> None:
    ps = load_policies(write(tmp_path, "p.yaml", ANP + """spec:
  priority: 3
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}
  ingress:
    - {name: in, action: Allow, from: [{namespaces: {}}], ports: [{portNumber: {port: 80}}, {namedPort: web},
       {portRange: {protocol: UDP, start: 10, end: 20}}]}
  egress:
    - {action: Pass, to: [{networks: [198.18.0.0/16]}]}
---
""" + BANP + """spec:
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{nodes: {}}]}]
"""))
    admin, baseline = sorted(ps.cluster, key=lambda p: p.tier.value)
    assert (admin.kind, admin.tier, admin.priority) == ("AdminNetworkPolicy", Tier.ADMIN, 3)
    assert admin.ingress[0].action is Action.ACCEPT  # Allow is Accept
    assert admin.ingress[0].ports == (PortSpec("TCP", 80), PortSpec("TCP", "web"), PortSpec("UDP", "web"),
                                      PortSpec("SCTP", "web"), PortSpec("UDP", 10, 20))
    assert admin.egress[0].action is Action.PASS
    assert (baseline.kind, baseline.tier, baseline.priority) == ("BaselineAdminNetworkPolicy", Tier.BASELINE, 1000)
    assert baseline.egress[0].peers == (ClusterPeer(nodes=baseline.egress[0].peers[0].nodes),)


@pytest.mark.parametrize(("text", "where", "expected"), [
    (BANP.replace("default", "other") + "spec: {subject: {namespaces: {}}}", "metadata",
     'Only one baseline admin network policy with metadata.name="default"'),
    (BANP + "spec: {subject: {namespaces: {}}, ingress: [{action: Pass, from: [{namespaces: {}}]}]}",
     "spec.ingress[0].action", "got 'Pass'; expected 'Allow' or 'Deny'"),
    (BANP + "spec: {subject: {namespaces: {}}, egress: [{action: Allow, to: [{domainNames: [a.io]}]}]}",
     "spec.egress[0].to[0]", "domainNames is not a field of a BaselineAdminNetworkPolicy peer"),
    (ANP + "spec: {priority: 1, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {}}]}]}",
     "spec.ingress[0].action", "got 'Accept'; expected 'Allow', 'Deny' or 'Pass'"),
    (ANP + "spec: {priority: 1, subject: {pods: {podSelector: {}}}}", "spec.subject.pods.namespaceSelector",
     "required field is missing"),
    (ANP + "spec: {priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], "
     "ports: [{portRange: {start: 9, end: 8}}]}]}", "spec.egress[0].ports[0].portRange",
     "end 8 must not be less than start 9"),
    (ANP + "spec: {priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{nodes: {}}], "
     "ports: [{namedPort: web}]}]}", "spec.egress[0]", "cannot be set with namedPorts"),
    (ANP + "spec: {subject: {namespaces: {}}}", "spec.priority", "required field is missing"),
])
def test_v1alpha1_validation(tmp_path: Path, text: str, where: str, expected: str) -> None:
    found = errors(tmp_path, text)
    assert any(f": {where}: " in e and expected in e for e in found), found


# -- nodes in the inventory ---------------------------------------------------------------------

def test_the_inventory_knows_nodes_from_either_format(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, "inv.yaml", """
        apiVersion: callgate/v1
        kind: Inventory
        nodes:
          node-1: {labels: {zone: a}, addresses: [198.19.255.1, 'fd00:ff::1']}
          node-2:
        ---
        apiVersion: v1
        kind: Node
        metadata: {name: node-3, labels: {zone: b}}
        status:
          addresses: [{type: InternalIP, address: 198.19.255.3}, {type: Hostname, address: node-3},
                      {type: ExternalIP, address: 203.0.113.3}]
    """))
    assert set(inv.node_info) == {"node-1", "node-2", "node-3"}
    assert inv.node_info["node-3"].addresses == (ipaddress.ip_address("198.19.255.3"),
                                                 ipaddress.ip_address("203.0.113.3"))
    assert inv.node_info["node-2"].addresses == () and dict(inv.node_info["node-2"].labels) == {}
    from callgate.policy.model import LabelSelector

    assert inv.node_addresses(LabelSelector((("zone", "a"),))) == (ipaddress.ip_address("198.19.255.1"),
                                                                  ipaddress.ip_address("fd00:ff::1"))


@pytest.mark.parametrize(("text", "expected"), [
    ("apiVersion: callgate/v1\nkind: Inventory\nnodes: {node-1: {addresses: [not-an-ip]}}\n",
     "'not-an-ip' is not an IPv4 or IPv6 address"),
    ("apiVersion: callgate/v1\nkind: Inventory\nnodes: {Node_1: {}}\n", "node 'Node_1'"),
    ("apiVersion: callgate/v1\nkind: Inventory\nnodes: {node-1: {role: x}}\n", "unknown field"),
    ("apiVersion: v1\nkind: Node\nmetadata: {labels: {a: b}}\n", "metadata.name: required field is missing"),
    ("apiVersion: callgate/v1\nkind: Inventory\nnodes: {n: {}}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n}\n",
     "node n is defined twice"),
])
def test_bad_nodes_are_reported(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InputError) as exc:
        load_inventory(write(tmp_path, "inv.yaml", text))
    assert any(expected in str(p) for p in exc.value.problems), [str(p) for p in exc.value.problems]
