"""The soak's world (bench/soak.py): its configuration, the cluster as API objects,
the lab's pods and what a run records."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callgate.policy.inventory import inventory_from_dict
from tests.fake_apiserver import FakeAPIServer

LAB = "cgk"
PREFIX = "cgk"
NODE = "node-1"
CHURN_APPS = 10
CHURN_POLICIES = 20
MARKERS = 10
EXTRA_PODS = 500  # the pool deletions and re-creations draw from
LAB_PODS: dict[str, dict[str, Any]] = {
    "x/a": {"node": NODE, "iface": "cgka0", "ip": "198.18.1.10", "labels": {"pod": "a"}},
    "x/b": {"node": "node-2", "iface": "cgkb0", "ip": "198.18.1.11", "labels": {"pod": "b"}},
    "y/c": {"node": "node-2", "iface": "cgkc0", "ip": "198.18.2.10", "labels": {"pod": "c"}},
}
EXPECTED = {("x/b", "x/a"): True, ("y/c", "x/a"): False, ("x/a", "y/c"): True}
MARKER_ANCHOR_IP = "198.19.250.1"



@dataclass
class Config:
    duration: float = 1800.0
    pods: int = 10_000
    pod_rate: float = 50.0
    policy_rate: float = 1.0
    drop_every: float = 120.0
    drop_for: float = 10.0
    kill_every: float = 300.0
    tamper_every: float = 180.0
    resync: float = 5.0
    marker_every: float = 2.0
    sample_every: float = 5.0
    warmup: float = 60.0
    agent_mem: int = 3 << 30
    rss_check: bool = True
    seed: int = 17
    out: Path = Path("soak-out")


# ---- the cluster as API objects --------------------------------------------------------

def pod_object(name: str, ns: str, labels: dict[str, str], node: str, ip: str,
               iface: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
    if iface:
        meta["annotations"] = {"callgate.io/interface": iface}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x", "ports": [
                {"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def synthetic_ip(i: int) -> str:
    return str(ipaddress.IPv4Address("198.19.0.1") + i)


def synthetic_pod(i: int, app: str) -> dict[str, Any]:
    return pod_object(f"s{i}", f"ns{i % 10}", {"app": app}, f"node-{3 + i % 20}", synthetic_ip(i))


def marker_ip(k: int) -> str:
    return f"198.19.250.{10 + 2 * k}"  # never adjacent: each stays one element of its set


def marker_pod(k: int, on: bool) -> dict[str, Any]:
    return pod_object(f"mark-{k}", "ns0", {"app": "mark" if on else "idle"}, "node-3", marker_ip(k))


def allow_a(name: str, peer_app: str | None, port: int) -> dict[str, Any]:
    peer: dict[str, Any] = ({"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": peer_app}}}
                            if peer_app else {"podSelector": {"matchLabels": {"pod": "b"}}})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                     "ingress": [{"from": [peer], "ports": [{"port": port}]}]}}


def churn_policy(k: int) -> dict[str, Any]:
    return allow_a(f"churn-{k}", f"churn-{k % CHURN_APPS}", 8000 + k)


def seed_cluster(api: FakeAPIServer, cfg: Config) -> None:
    for ns in ["x", "y", *(f"ns{n}" for n in range(10))]:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"ns": ns}}})
    for key, p in LAB_PODS.items():
        ns, name = key.split("/")
        api.create(pod_object(name, ns, p["labels"], p["node"], p["ip"], p["iface"]))
    for i in range(cfg.pods):
        api.create(synthetic_pod(i, f"churn-{i % CHURN_APPS}"))
    api.create(pod_object("mark-anchor", "ns0", {"app": "mark"}, "node-3", MARKER_ANCHOR_IP))
    for k in range(MARKERS):
        api.create(marker_pod(k, False))
    api.create(allow_a("a-from-b", None, 80))
    api.create(allow_a("marker", "mark", 9000))
    for k in range(0, CHURN_POLICIES, 2):
        api.create(churn_policy(k))


LAB_INVENTORY = inventory_from_dict({
    "apiVersion": "callgate/v1", "kind": "Inventory",
    "namespaces": {"x": {"labels": {}}, "y": {"labels": {}}},
    "endpoints": [{"name": k.split("/")[1], "namespace": k.split("/")[0], "labels": p["labels"], "node": p["node"],
                   "interface": p["iface"], "ips": [p["ip"]], "ports": [{"port": 80}]} for k, p in LAB_PODS.items()],
})


# ---- what is recorded --------------------------------------------------------------------

@dataclass
class Window:
    kind: str  # drop, kill, tamper
    start: float
    end: float | None = None
    detail: str = ""
    recovered: float | None = None  # seconds until the agent was ready / the table repaired


@dataclass
class Record:
    started: float = field(default_factory=time.monotonic)
    windows: list[Window] = field(default_factory=list)
    probes: list[tuple[float, float, dict[str, bool]]] = field(default_factory=list)
    markers: list[tuple[float, float | None]] = field(default_factory=list)  # (sent, seconds or None)
    samples: list[dict[str, Any]] = field(default_factory=list)
    incarnations: list[dict[str, Any]] = field(default_factory=list)
    changes: dict[str, int] = field(default_factory=lambda: {"pod": 0, "policy": 0, "compactions": 0})
    unexpected_exits: list[str] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def t(self, when: float | None = None) -> float:
        return round((time.monotonic() if when is None else when) - self.started, 3)


def set_addresses(listed: list[dict[str, Any]]) -> set[str]:
    """Every single address in listed sets and maps (elements may be addresses, prefixes or
    ranges; a map element's key may be a concatenation starting with one: layout 5's
    decision maps are ``address . protocol . port``)."""
    out: set[str] = set()
    for obj in listed:
        for _, body in obj.items():
            for elem in body.get("elem", []) if isinstance(body, dict) else []:
                if isinstance(elem, list):  # a map element: [key, value]
                    elem = elem[0]
                if isinstance(elem, dict) and "concat" in elem:
                    elem = elem["concat"][0]
                if isinstance(elem, str):
                    out.add(elem)
                elif isinstance(elem, dict) and "prefix" in elem:
                    net = ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
                    if net.num_addresses <= 256:
                        out.update(str(a) for a in net)
                elif isinstance(elem, dict) and "range" in elem:
                    lo, hi = (ipaddress.ip_address(a) for a in elem["range"])
                    if int(hi) - int(lo) < 256:
                        out.update(str(ipaddress.ip_address(n)) for n in range(int(lo), int(hi) + 1))
    return out


