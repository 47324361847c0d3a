"""A seeded generator of realistic synthetic clusters, for benchmarks and tests.

The output is what a user would feed callgate: one ``callgate/v1 Inventory``
document and a list of ``networking.k8s.io/v1 NetworkPolicy`` documents
(followed by ``ClusterNetworkPolicy`` documents when the spec asks for them), as
plain dicts (so they can be written as YAML to time parsing, or parsed in
memory to time compilation on its own).

What "realistic" means here, and why each piece is in:

* namespaces carry ``team`` and ``env`` labels (namespaceSelectors select by them);
* pods carry ``app``/``tier``/``version`` labels, several replicas per app
  (sharing labels and ports, like a Deployment's pods), and declare named
  ports whose numbers differ between apps (``http`` is 80 on some, 8080 on
  others) so named-port resolution does real work;
* policies mix podSelector, namespaceSelector, both, ipBlock with ``except``,
  numeric ports, port ranges (endPort), named ports, matchExpressions of all
  four operators, default-deny and egress policies;
* ``hot`` policies all select ONE destination pod (the benchmark's server),
  each from a different peer group: the hard case where thousands of policies
  must be merged into set look-ups rather than walked one by one;
* ``cluster_policies`` ClusterNetworkPolicies of both tiers: a few cluster-wide
  guardrails that select every pod (the benchmark's server and client
  included), then tenant policies per team (Accept, Pass and Deny rules over
  namespaces, pods, networks and named ports, random priorities). None denies
  the load generator's ports between the client and the server, so the
  datapath benchmark measures what walking the tiers costs, not a drop.

Pod addresses come from 198.18.0.0/15 (131,072 addresses, enough for the
102,000-pod Antrea scale point) and fd00::/8; ipBlocks too. Nothing is routed
anywhere: the lab uses only the two pods it builds.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any

from callgate.policy.documents import Document
from callgate.policy.inventory import inventory_from_dict
from callgate.policy.loader import parse_policy_document
from callgate.policy.model import ClusterPolicy, Inventory, Policy, PolicySet

V4_BASE = int(ipaddress.IPv4Address("198.18.0.0"))
V4_SIZE = 1 << 17  # 198.18.0.0/15
V6_BASE = int(ipaddress.IPv6Address("fd00:cb::"))
TIERS = ("web", "api", "db", "cache")
ENVS = ("prod", "staging", "dev")
# The ports the datapath benchmark's load generator uses (TCP_CRR-like and UDP).
HOT_TCP_PORT = 80
HOT_UDP_PORT = 5001
LABEL_CALLER = "bench-caller"  # no pod has it at first; see the last hot policy


@dataclass(frozen=True)
class Spec:
    """Size and shape of a synthetic cluster. Same spec, same cluster."""

    pods: int = 1000
    namespaces: int = 100
    policies: int = 100
    nodes: int = 0  # 0: one node per 100 pods
    hot: int = 0  # policies that select the hot server pod (counted in ``policies``)
    v6_every: int = 4  # every n-th pod is dual-stack (0: none)
    seed: int = 1
    # Every pod carries its own statefulset.kubernetes.io/pod-name label, as StatefulSet
    # pods do: no two pods are alike, so every pod is an equivalence class of its own
    # (the analysis commands' worst case: 10,000 pods, 10,000 classes).
    pod_name_labels: bool = False
    cluster_policies: int = 0  # ClusterNetworkPolicies (Admin and Baseline), after the NetworkPolicies

    @property
    def node_count(self) -> int:
        return self.nodes or max(1, self.pods // 100)


@dataclass
class Cluster:
    spec: Spec
    inventory: dict[str, Any]
    policies: list[dict[str, Any]]
    node: str = "node-0"  # the node benchmarks compile for
    server: str = ""  # namespace/name of the hot destination pod (local to ``node``)
    client: str = ""  # namespace/name of a pod the hot policies admit (local to ``node``)
    meta: dict[str, Any] = field(default_factory=dict)

    def endpoint(self, key: str) -> dict[str, Any]:
        ns, name = key.split("/", 1)
        for ep in self.inventory["endpoints"]:
            if ep["name"] == name and ep["namespace"] == ns:
                return ep  # type: ignore[no-any-return]
        raise KeyError(key)


def _ns_name(i: int) -> str:
    return f"ns-{i:05d}"


def generate(spec: Spec) -> Cluster:
    """Build the cluster documents for ``spec`` (deterministic in ``spec.seed``)."""
    if spec.pods > V4_SIZE - 4096:
        raise ValueError("more pods than 198.18.0.0/15 leaves room for (ipBlocks use its top)")
    rng = random.Random(spec.seed)
    n_ns = spec.namespaces
    pods_per_ns = max(1, spec.pods // n_ns)
    apps_per_ns = max(1, pods_per_ns // 4)
    teams = max(1, n_ns // 10)

    namespaces: dict[str, Any] = {}
    for i in range(n_ns):
        namespaces[_ns_name(i)] = {"labels": {"team": f"team-{i % teams}", "env": ENVS[i % len(ENVS)]}}

    endpoints: list[dict[str, Any]] = []
    nodes = spec.node_count
    for i in range(spec.pods):
        ns = i % n_ns
        app = (i // n_ns) % apps_per_ns
        tier = TIERS[app % len(TIERS)]
        # Addresses are handed out by a stride so that a namespace's pods are
        # not one contiguous block (as in real clusters, where node CIDRs and
        # not namespaces decide addresses): merging must do real work.
        ips = [str(ipaddress.IPv4Address(V4_BASE + i))]
        if spec.v6_every and i % spec.v6_every == 0:
            ips.append(str(ipaddress.IPv6Address(V6_BASE + i)))
        # Replicas of one app share labels and ports, as pods of one Deployment do.
        http = 80 if (ns + app) % 5 < 3 else 8080
        ports = [{"name": "http", "port": http, "protocol": "TCP"},
                 {"name": "metrics", "port": 9090, "protocol": "TCP"}]
        if tier == "api":
            ports.append({"name": "grpc", "port": 9000, "protocol": "TCP"})
        if tier == "cache":
            ports.append({"name": "dns", "port": 53, "protocol": "UDP"})
        node = i % nodes
        endpoints.append({
            "name": f"app-{app}-{i // (n_ns * apps_per_ns)}-{i:06d}",
            "namespace": _ns_name(ns),
            "labels": {"app": f"app-{app}", "tier": tier, "version": f"v{1 + (ns + 2 * app) % 3}",
                       **({"statefulset.kubernetes.io/pod-name": f"app-{app}-{i:06d}"} if spec.pod_name_labels
                          else {})},
            "node": f"node-{node}",
            "interface": f"cg{i:06x}" if node == 0 else None,
            "ips": ips,
            "ports": ports,
        })
    for ep in endpoints:
        if ep["interface"] is None:
            del ep["interface"]

    # The hot server: the first pod of node-0, relabelled app=hot; the client:
    # the last pod of node-0 (highest address, so a linear chain in address
    # order makes it walk every rule: the worst case, stated in the report).
    local = [ep for ep in endpoints if ep["node"] == "node-0"]
    server = local[0]
    client = [ep for ep in local if int(ep["namespace"][3:]) % 2 == 0][-1]
    server["labels"] = {**server["labels"], "app": "hot"}
    server["ports"] = [{"name": "http", "port": HOT_TCP_PORT, "protocol": "TCP"},
                       {"name": "bench-udp", "port": HOT_UDP_PORT, "protocol": "UDP"}]
    policies = _policies(spec, rng, namespaces, apps_per_ns, teams, server, client)
    # A stream of its own: the same spec without cluster policies is the same cluster as before.
    policies += _cluster_policies(spec.cluster_policies, random.Random(spec.seed + 1), teams, apps_per_ns)
    inventory = {"apiVersion": "callgate/v1", "kind": "Inventory", "namespaces": namespaces,
                 "endpoints": endpoints}
    return Cluster(spec, inventory, policies,
                   server=f"{server['namespace']}/{server['name']}",
                   client=f"{client['namespace']}/{client['name']}")


def _selector(labels: dict[str, str] | None = None, exprs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if labels:
        out["matchLabels"] = labels
    if exprs:
        out["matchExpressions"] = exprs
    return out


def _ip_block(rng: random.Random) -> dict[str, Any]:
    # ipBlocks from the top 4096 addresses of 198.18.0.0/15 (no pod lives there).
    top = V4_BASE + V4_SIZE - 4096
    base = top + rng.randrange(0, 4096 // 64) * 64
    block: dict[str, Any] = {"cidr": f"{ipaddress.IPv4Address(base)}/26"}
    if rng.random() < 0.5:
        block["except"] = [f"{ipaddress.IPv4Address(base + 32)}/28"]
    return {"ipBlock": block}


def _policies(spec: Spec, rng: random.Random, namespaces: dict[str, Any], apps_per_ns: int, teams: int,
              server: dict[str, Any], client: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    n_ns = spec.namespaces
    ns_names = list(namespaces)

    def policy(ns: str, name: str, spec_body: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns}, "spec": spec_body}

    # Hot policies: each admits one namespace's pods (or an ipBlock) to the hot
    # server on the load generator's ports. Only even-numbered namespaces, so
    # that (pods being addressed round-robin over namespaces) no two peer
    # addresses are adjacent and nothing merges: every address stays its own
    # set element, the hardest case for sets and the longest linear chain.
    # Namespaces are taken in order from the client's, so it is admitted.
    hot_ns = server["namespace"]
    evens = ns_names[::2]
    client_at = evens.index(client["namespace"])
    hot_ports = [{"protocol": "TCP", "port": HOT_TCP_PORT}, {"protocol": "UDP", "port": HOT_UDP_PORT}]
    for h in range(min(spec.hot, spec.policies)):
        if h == spec.hot - 1:
            # Admits any pod labelled bench-caller=yes: the incremental benchmark
            # adds and removes that label on one pod ("one label changed").
            peer: dict[str, Any] = {"namespaceSelector": {}, "podSelector": _selector({LABEL_CALLER: "yes"})}
        elif h % 10 == 9:
            peer = _ip_block(rng)
        else:
            target = evens[(client_at + h - h // 10) % len(evens)]  # h - h//10: selector peers so far
            peer = {"namespaceSelector": _selector({"kubernetes.io/metadata.name": target})}
            if h % 3 == 1:
                peer["podSelector"] = _selector(exprs=[{"key": "tier", "operator": "Exists"}])
        out.append(policy(hot_ns, f"hot-{h:05d}", {
            "podSelector": _selector({"app": "hot"}),
            "ingress": [{"from": [peer], "ports": hot_ports}],
        }))

    kinds = ("same-ns", "cross-ns", "ns-env", "ipblock", "egress", "default-deny", "exprs")
    weights = (30, 20, 10, 10, 15, 5, 10)
    for k in range(len(out), spec.policies):
        ns = ns_names[k % n_ns]
        app = f"app-{rng.randrange(apps_per_ns)}"
        other = f"app-{rng.randrange(apps_per_ns)}"
        kind = rng.choices(kinds, weights)[0]
        name = f"{kind}-{k:06d}"
        if kind == "same-ns":
            body: dict[str, Any] = {
                "podSelector": _selector({"app": app}),
                "ingress": [{"from": [{"podSelector": _selector({"app": other})}],
                             "ports": [{"port": "http"}, {"port": 9090}]}]}
        elif kind == "cross-ns":
            body = {
                "podSelector": _selector({"tier": rng.choice(TIERS)}),
                "ingress": [{"from": [{"namespaceSelector": _selector({"team": f"team-{rng.randrange(teams)}"}),
                                       "podSelector": _selector({"tier": "web"})}],
                             "ports": [{"port": 8080, "protocol": "TCP"}, {"port": "grpc"}]}]}
        elif kind == "ns-env":
            body = {
                "podSelector": _selector({"app": app}),
                "ingress": [{"from": [{"namespaceSelector": _selector(exprs=[
                    {"key": "env", "operator": "In", "values": [rng.choice(ENVS)]},
                    {"key": "team", "operator": "In", "values": [f"team-{rng.randrange(teams)}"]}])}],
                    "ports": [{"port": 8443, "endPort": 8450, "protocol": "TCP"}]}]}
        elif kind == "ipblock":
            body = {
                "podSelector": _selector({"app": app}),
                "ingress": [{"from": [_ip_block(rng), _ip_block(rng)],
                             "ports": [{"port": 53, "protocol": "UDP"}, {"port": 443}]}]}
        elif kind == "egress":
            target_ns = ns_names[rng.randrange(n_ns)]
            body = {
                "podSelector": _selector({"app": app}),
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"namespaceSelector": _selector({"kubernetes.io/metadata.name": target_ns}),
                             "podSelector": _selector({"tier": rng.choice(TIERS)})}],
                     "ports": [{"port": "http"}]},
                    {"to": [{"namespaceSelector": _selector({"team": f"team-{rng.randrange(teams)}"}),
                             "podSelector": _selector({"tier": "cache"})}],
                     "ports": [{"port": "dns", "protocol": "UDP"}]},
                    {"to": [_ip_block(rng)], "ports": [{"port": 443}]}]}
        elif kind == "default-deny":
            body = {"podSelector": {}, "policyTypes": ["Ingress"]}
        else:
            body = {
                "podSelector": _selector(exprs=[{"key": "tier", "operator": "NotIn", "values": ["db"]},
                                                {"key": "version", "operator": "Exists"}]),
                "ingress": [{"from": [
                    {"podSelector": _selector(exprs=[{"key": "app", "operator": "In", "values": [app, other]}])},
                    {"namespaceSelector": _selector(exprs=[{"key": "env", "operator": "NotIn", "values": ["dev"]}]),
                     "podSelector": _selector(exprs=[{"key": "canary", "operator": "DoesNotExist"}])}]}]}
        out.append(policy(ns, name, body))
    return out


CNP_API = "policy.networking.k8s.io/v1alpha2"


def _cluster_policies(count: int, rng: random.Random, teams: int, apps_per_ns: int) -> list[dict[str, Any]]:
    def cnp(name: str, tier: str, priority: int, subject: dict[str, Any], **rules: Any) -> dict[str, Any]:
        return {"apiVersion": CNP_API, "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
                "spec": {"tier": tier, "priority": priority, "subject": subject, **rules}}

    def tcp(*ports: int) -> list[dict[str, Any]]:
        return [{"tcp": {"destinationPort": {"number": p}}} for p in ports]

    everyone: dict[str, Any] = {"namespaces": {}}
    all_pods = [{"namespaces": {}}]
    # Cluster-wide guardrails first: they select every pod, the benchmark's two included.
    guardrails = [
        cnp("guard-dev-databases", "Admin", 10, everyone, ingress=[
            {"name": "no-dev-to-databases", "action": "Deny", "from": [{"namespaces": _selector({"env": "dev"})}],
             "protocols": tcp(5432, 3306)}]),
        cnp("guard-monitoring", "Admin", 20, everyone, ingress=[
            {"name": "scrape", "action": "Accept",
             "from": [{"pods": {"namespaceSelector": _selector({"team": "team-0"}),
                                "podSelector": _selector({"app": "app-0"})}}], "protocols": tcp(9090)}]),
        cnp("guard-egress", "Admin", 30, everyone, egress=[
            {"name": "pods-decide", "action": "Pass", "to": all_pods},
            {"name": "no-smtp-out", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}],
             "protocols": tcp(25)}]),
        cnp("default", "Baseline", 1000, everyone, ingress=[
            {"name": "no-ssh-from-dev", "action": "Deny", "from": [{"namespaces": _selector({"env": "dev"})}],
             "protocols": tcp(22)}]),
    ]
    out = guardrails[:count]
    kinds = ("tenant", "db-guard", "egress-allowlist", "baseline-team", "named-port")
    weights = (40, 20, 20, 10, 10)
    for k in range(len(out), count):
        team = _selector({"team": f"team-{rng.randrange(teams)}"})
        app = f"app-{rng.randrange(apps_per_ns)}"
        kind = rng.choices(kinds, weights)[0]
        name, priority = f"{kind}-{k:05d}", rng.randrange(1001)
        if kind == "tenant":
            out.append(cnp(name, "Admin", priority, {"namespaces": team}, ingress=[
                {"name": "team-web", "action": "Accept", "from": [{"namespaces": team}], "protocols": tcp(8080)},
                {"name": "team-decides", "action": "Pass", "from": [{"namespaces": team}]},
                {"name": "no-ssh", "action": "Deny", "from": all_pods, "protocols": tcp(22, 2222)}]))
        elif kind == "db-guard":
            db = {"pods": {"namespaceSelector": team, "podSelector": _selector({"tier": "db"})}}
            api = {"pods": {"namespaceSelector": team, "podSelector": _selector({"tier": "api"})}}
            out.append(cnp(name, "Admin", priority, db, ingress=[
                {"name": "api-to-db", "action": "Accept", "from": [api], "protocols": tcp(5432)},
                {"name": "nobody-else", "action": "Deny", "from": all_pods, "protocols": tcp(5432)}]))
        elif kind == "egress-allowlist":
            subject = {"pods": {"namespaceSelector": team, "podSelector": _selector({"app": app})}}
            out.append(cnp(name, "Admin", priority, subject, egress=[
                {"name": "pods-decide", "action": "Pass", "to": all_pods},
                {"name": "partner-api", "action": "Accept", "to": [{"networks": [_ip_block(rng)["ipBlock"]["cidr"]]}],
                 "protocols": tcp(443)},
                {"name": "no-other-https", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}],
                 "protocols": tcp(443)}]))
        elif kind == "baseline-team":
            out.append(cnp(name, "Baseline", priority, {"namespaces": team}, ingress=[
                {"name": "team-in", "action": "Accept", "from": [{"namespaces": team}]},
                {"name": "no-metrics-from-others", "action": "Deny", "from": all_pods, "protocols": tcp(9090)}]))
        else:
            out.append(cnp(name, "Admin", priority, {"namespaces": team}, egress=[
                {"name": "dns", "action": "Accept",
                 "to": [{"pods": {"namespaceSelector": {}, "podSelector": _selector({"tier": "cache"})}}],
                 "protocols": [{"destinationNamedPort": "dns"}]}]))
    return out


def to_model(cluster: Cluster) -> tuple[Inventory, PolicySet]:
    """Parse the documents in memory (validation included, YAML text excluded)."""
    inventory = inventory_from_dict(cluster.inventory, "<synthetic inventory>")
    policies, cluster_policies = [], []
    for i, doc in enumerate(cluster.policies):
        parsed = parse_policy_document(Document("<synthetic policies>", i, doc))
        if isinstance(parsed, ClusterPolicy):
            cluster_policies.append(parsed)
        elif isinstance(parsed, Policy):
            policies.append(parsed)
    return inventory, PolicySet(policies, tuple(cluster_policies))


def hot_peer_addresses(cluster: Cluster) -> int:
    """Addresses (IPv4 and IPv6, with multiplicity across policies) named by the hot policies' peers."""
    by_ns: dict[str, int] = {}
    for ep in cluster.inventory["endpoints"]:
        by_ns[ep["namespace"]] = by_ns.get(ep["namespace"], 0) + len(ep["ips"])
    total = 0
    for doc in cluster.policies:
        if doc["kind"] != "NetworkPolicy" or not doc["metadata"]["name"].startswith("hot-"):
            continue
        for peer in doc["spec"]["ingress"][0]["from"]:
            if "ipBlock" in peer:
                net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                holes = sum(ipaddress.ip_network(e).num_addresses for e in peer["ipBlock"].get("except", []))
                total += net.num_addresses - holes
            else:
                total += by_ns[peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]]
    return total


def api_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """The cluster as Kubernetes API objects (Namespaces, Pods, NetworkPolicies),
    as ``kubectl get -o json`` prints them: for the Kubernetes source and for
    inventories given as a kubectl dump. The local pods' interfaces travel in
    the ``callgate.io/interface`` annotation."""
    out: list[dict[str, Any]] = []
    for name, ns in cluster.inventory["namespaces"].items():
        out.append({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": {**ns["labels"], "kubernetes.io/metadata.name": name}},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
    for ep in cluster.inventory["endpoints"]:
        meta: dict[str, Any] = {"name": ep["name"], "namespace": ep["namespace"], "labels": dict(ep["labels"])}
        if "interface" in ep:
            meta["annotations"] = {"callgate.io/interface": ep["interface"]}
        out.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                    "spec": {"nodeName": ep["node"], "containers": [{
                        "name": "main", "image": "registry.example/app:1",
                        "ports": [{"name": p["name"], "containerPort": p["port"], "protocol": p["protocol"]}
                                  for p in ep["ports"]]}]},
                    "status": {"phase": "Running", "podIP": ep["ips"][0], "podIPs": [{"ip": i} for i in ep["ips"]]}})
    out.extend(cluster.policies)
    return out
