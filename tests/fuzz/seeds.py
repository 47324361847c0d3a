"""Valid input files the fuzzer starts from, one per input shape callgate reads.

Each seed is a list of documents (one file) and a role: ``policy`` files go where
``--policies`` goes (with :data:`INVENTORY` as the inventory), ``inventory`` files
where ``--inventory`` goes (with :data:`POLICIES` as the policies). Unmutated, every
seed is accepted and compiles for ``node-1`` (tests/fuzz/test_fuzz_inputs.py checks;
a kind callgate does not read yet must be refused as an unknown kind), so mutations
start from deep inside the valid space. A new input kind is covered by adding its
seed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.helpers import ROOT

INVENTORY = ROOT / "examples" / "standard" / "inventory.yaml"
POLICIES = ROOT / "tests" / "scenarios" / "03-namespace-and-pod.yaml"
NODE = "node-1"


@dataclass(frozen=True)
class Seed:
    name: str
    role: str  # "policy" or "inventory"
    documents: list[Any]


NETWORK_POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "web", "namespace": "x", "labels": {"team": "a"},
                 "annotations": {"callgate.io/lint-disable": "CG109"}},
    "spec": {
        "podSelector": {"matchLabels": {"pod": "a"},
                        "matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                      {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "Exists"}]},
                       "podSelector": {"matchLabels": {"pod": "c"}}},
                      {"ipBlock": {"cidr": "198.18.0.0/16", "except": ["198.18.5.0/24"]}}],
             "ports": [{"port": 80, "protocol": "TCP"}, {"port": "serve-81-udp", "protocol": "UDP"},
                       {"port": 1000, "endPort": 2000, "protocol": "TCP"}]},
        ],
        "egress": [
            {"to": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["c"]}]}},
                    {"ipBlock": {"cidr": "fd00::/8"}}],
             "ports": [{"port": "serve-80-tcp"}, {"protocol": "UDP"}]},
            {},
        ],
    },
}

APPS = [
    {"apiVersion": "callgate/v1", "kind": "App", "metadata": {"name": "web", "namespace": "x"},
     "spec": {"selector": {"matchLabels": {"pod": "a"}},
              "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "stats", "port": 81, "protocol": "UDP"}],
              "callers": [{"app": "client", "namespace": "y", "ports": ["http", 81]},
                          {"cidr": "198.18.0.0/15", "except": ["198.18.20.0/24"], "ports": ["http"]}],
              "egress": [{"cidr": "198.18.53.0/24", "ports": [{"port": 53, "protocol": "UDP"}]}]}},
    {"apiVersion": "callgate/v1", "kind": "App", "metadata": {"name": "client", "namespace": "y"},
     "spec": {"selector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}},
]

NATIVE_INVENTORY = {
    "apiVersion": "callgate/v1",
    "kind": "Inventory",
    "namespaces": {"x": {"labels": {"ns": "x"}}, "y": {"labels": {"ns": "y"}}, "z": None},
    "endpoints": [
        {"name": "a", "namespace": "x", "labels": {"pod": "a"}, "node": "node-1", "interface": "cgxa0",
         "ips": ["198.18.0.10", "fd00::a"],
         "ports": [{"name": "serve-80-tcp", "port": 80, "protocol": "TCP"},
                   {"name": "serve-81-udp", "port": 81, "protocol": "UDP"}]},
        {"name": "b", "namespace": "y", "labels": {"pod": "b"}, "node": "node-1", "ips": ["198.18.0.11"],
         "ports": [{"port": 80}]},
        {"name": "c", "namespace": "z", "labels": {"pod": "c"}, "node": "node-2", "interface": "cgzc0",
         "ips": ["198.18.0.12"]},
    ],
}


def _pod(name: str, namespace: str, pod_label: str, ip: str, node: str, interface: str | None) -> dict[str, Any]:
    """A Pod as ``kubectl get pods -o yaml`` prints it (the fields callgate ignores included)."""
    annotations = {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}
    if interface:
        annotations["callgate.io/interface"] = interface
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": "1234",
                     "labels": {"pod": pod_label, "pod-template-hash": "5d4f8"}, "annotations": annotations,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{name}-rs",
                                          "uid": "u", "controller": True}]},
        "spec": {"nodeName": node, "containers": [
            {"name": "main", "image": "registry.example/app:1",
             "ports": [{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
                       {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"}]},
            {"name": "sidecar", "image": "registry.example/proxy:1"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": f"uid-{name}", "labels": {"ns": name, "kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def _node(name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": "a"}},
            "spec": {"podCIDR": "198.18.64.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}


KUBECTL_LIST = {
    "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
    "items": [_namespace("x"), _namespace("y"), _node("node-1", "198.18.255.1"),
              _pod("a", "x", "a", "198.18.0.10", "node-1", "cgxa0"),
              _pod("b", "y", "b", "198.18.0.11", "node-2", None),
              {**_pod("done", "y", "b", "198.18.0.99", "node-1", None), "status": {"phase": "Succeeded"}}],
}

CLUSTER_NETWORK_POLICY = {
    # policy.networking.k8s.io/v1alpha2 (network-policy-api v0.2.0).
    "apiVersion": "policy.networking.k8s.io/v1alpha2",
    "kind": "ClusterNetworkPolicy",
    "metadata": {"name": "tenant-isolation"},
    "spec": {
        "tier": "Admin", "priority": 10,
        "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
        "ingress": [{"name": "deny-from-y", "action": "Deny",
                     "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}],
                     "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}],
        "egress": [{"name": "allow-dns", "action": "Accept",
                    "to": [{"networks": ["198.18.53.0/24"]}],
                    "protocols": [{"udp": {"destinationPort": {"range": {"start": 53, "end": 54}}}}]}],
    },
}

ADMIN_NETWORK_POLICIES = [  # the v1alpha1 kinds, read as v1alpha2
    {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": "old"},
     "spec": {"priority": 3, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a"}}}},
              "ingress": [{"name": "in", "action": "Allow", "from": [{"namespaces": {}}],
                           "ports": [{"portNumber": {"port": 80}}, {"namedPort": "web"},
                                     {"portRange": {"protocol": "UDP", "start": 10, "end": 20}}]}],
              "egress": [{"action": "Pass", "to": [{"networks": ["198.18.0.0/16"]}]}]}},
    {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
     "metadata": {"name": "default"},
     "spec": {"subject": {"namespaces": {}}, "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}},
]

SEEDS = (
    Seed("networkpolicy", "policy", [NETWORK_POLICY]),
    Seed("apps", "policy", APPS),
    Seed("policies-and-inventory", "policy", [NETWORK_POLICY, NATIVE_INVENTORY]),
    Seed("clusternetworkpolicy", "policy", [CLUSTER_NETWORK_POLICY]),
    Seed("adminnetworkpolicies", "policy", ADMIN_NETWORK_POLICIES),
    Seed("inventory", "inventory", [NATIVE_INVENTORY]),
    Seed("kubectl-list", "inventory", [KUBECTL_LIST]),
    Seed("kubectl-documents", "inventory", list(KUBECTL_LIST["items"])),
)
