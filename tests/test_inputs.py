"""Parsing and validation of NetworkPolicy, App and inventory files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.errors import InputError, ProblemCode
from callgate.policy import load_inventory, load_policies
from callgate.policy.documents import read_documents
from callgate.policy.inventory import inventory_document
from callgate.policy.model import NAMESPACE_NAME_LABEL, Direction
from callgate.policy.native import compile_apps, parse_app
from callgate.policy.positions import Positions
from tests.helpers import ROOT, SHOP, STANDARD_INVENTORY, write

_NP = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\n"
_APP = ("apiVersion: callgate/v1\nkind: App\nmetadata: {name: api, namespace: x}\nspec:\n"
        "  selector: {matchLabels: {app: api}}\n  ports: [{name: http, port: 80}]\n")


def errors(exc: pytest.ExceptionInfo[InputError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_policy_types_default_to_ingress_plus_egress_when_present(tmp_path: Path) -> None:
    ps = load_policies(write(tmp_path, "p.yaml", """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: only-ingress, namespace: x}
        spec: {podSelector: {}}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: with-egress, namespace: x}
        spec:
          podSelector: {}
          egress: [{}]
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: empty-egress-list, namespace: x}
        spec: {podSelector: {}, egress: []}
    """))
    types = {p.name: p.policy_types for p in ps.policies}
    assert types["only-ingress"] == (Direction.INGRESS,)
    assert types["with-egress"] == (Direction.INGRESS, Direction.EGRESS)
    assert types["empty-egress-list"] == (Direction.INGRESS,)


def test_peer_without_namespace_selector_means_own_namespace(tmp_path: Path) -> None:
    ps = load_policies(write(tmp_path, "p.yaml", """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p, namespace: y}
        spec:
          podSelector: {}
          ingress:
            - from: [{podSelector: {matchLabels: {pod: a}}}, {namespaceSelector: {}}]
              ports: [{port: 80}, {port: serve-81-udp, protocol: UDP}, {port: 1000, endPort: 2000}]
    """))
    rule = ps.policies[0].ingress[0]
    assert rule.peers[0].namespace == "y" and rule.peers[0].namespace_selector is None
    assert rule.peers[1].namespace is None and rule.peers[1].namespace_selector is not None
    assert [p.canonical() for p in rule.ports] == ["80/TCP", "serve-81-udp/UDP", "1000-2000/TCP"]


@pytest.mark.parametrize(("snippet", "field", "message"), [
    ("ports: [{port: http, endPort: 90}]", "spec.ingress[0].ports[0]", "endPort needs a numeric port"),
    ("ports: [{port: 90, endPort: 80}]", "spec.ingress[0].ports[0]", "must not be less than port"),
    ("ports: [{port: 80, protocol: ICMP}]", "spec.ingress[0].ports[0]", "must be one of TCP, UDP, SCTP"),
    ("ports: [{port: 70000}]", "spec.ingress[0].ports[0]", "between 1 and 65535"),
    ("ports: [{port: \"80\"}]", "spec.ingress[0].ports[0]", "string of digits"),
    ("from: [{ipBlock: {cidr: 10.0.0.0/33}}]", "spec.ingress[0].from[0].ipBlock", "not a valid CIDR"),
    ("from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]", "spec.ingress[0].from[0].ipBlock", "strict subset"),
    ("from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]", "spec.ingress[0].from[0]", "cannot be combined"),
    ("from: [{}]", "spec.ingress[0].from[0]", "needs podSelector, namespaceSelector or ipBlock"),
    ("from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]",
     "spec.ingress[0].from[0].podSelector.matchExpressions[0]", "non-empty 'values'"),
    ("from: [{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}]",
     "spec.ingress[0].from[0].podSelector.matchExpressions[0]", "must not have 'values'"),
    ("from: [{podSelector: {matchLabels: {'bad key!': x}}}]", "spec.ingress[0].from[0].podSelector.matchLabels", "label key"),
    ("form: []", "spec.ingress[0].form", "unknown field"),
])
def test_validation_names_file_object_field(tmp_path: Path, snippet: str, field: str, message: str) -> None:
    path = write(tmp_path, "bad.yaml", f"""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: bad, namespace: x}}
        spec:
          podSelector: {{}}
          ingress:
            - {snippet}
    """)
    with pytest.raises(InputError) as exc:
        load_policies(path)
    problem = exc.value.problems[0]
    assert problem.file == str(path)
    assert problem.object == "NetworkPolicy x/bad"
    assert problem.field == field
    assert message in problem.message
    assert problem.line is not None and problem.line >= 7  # points into the rule, not the file start


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: a, namespace: x}
        spec: {podSelector: {}, policyTypes: [Sideways]}
    """)
    write(tmp_path, "sub/b.yml", """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: c}
    """)
    write(tmp_path, "c.json", '{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", '
                              '"metadata": {"name": "c", "namespace": "x"}, "spec": {}}')
    with pytest.raises(InputError) as exc:
        load_policies(tmp_path)
    text = "\n".join(errors(exc))
    assert "a.yaml" in text and "Sideways" in text
    assert "b.yml" in text and "v1/ConfigMap" in text
    assert "c.json" in text and "spec.podSelector: required field is missing" in text


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "apiVersion: v1\nkind: [unclosed\n")
    with pytest.raises(InputError) as exc:
        load_policies(path)
    assert exc.value.problems[0].line is not None
    assert "invalid YAML" in exc.value.problems[0].message


def test_duplicate_policy_names(tmp_path: Path) -> None:
    doc = """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: same, namespace: x}
        spec: {podSelector: {}}
    """
    write(tmp_path, "one.yaml", doc)
    write(tmp_path, "two.yaml", doc)
    with pytest.raises(InputError) as exc:
        load_policies(tmp_path)
    assert "also defined in" in errors(exc)[0]


def test_shop_apps_compile_to_policies() -> None:
    ps = load_policies(SHOP)
    by_key = {p.key: p for p in ps.policies}
    assert set(by_key) == {"edge/storefront", "shop/cart", "shop/ledger", "shop/batch"}
    cart = by_key["shop/cart"]
    assert cart.kind == "App" and set(cart.policy_types) == {Direction.INGRESS, Direction.EGRESS}
    # storefront is cart's caller: opens cart's ingress and storefront's egress
    assert len(cart.ingress) == 1 and len(by_key["edge/storefront"].egress) == 1
    assert [p.canonical() for p in cart.ingress[0].ports] == ["8080/TCP"]
    assert by_key["shop/batch"].ingress == () and by_key["shop/batch"].egress == ()


def test_app_caller_must_exist_and_ports_must_be_served(tmp_path: Path) -> None:
    path = write(tmp_path, "apps.yaml", """
        apiVersion: callgate/v1
        kind: App
        metadata: {name: api, namespace: x}
        spec:
          selector: {matchLabels: {app: api}}
          ports: [{name: http, port: 80}]
          callers:
            - {app: ghost}
            - {app: api, ports: [grpc]}
    """)
    with pytest.raises(InputError) as exc:
        load_policies(path)
    text = "\n".join(errors(exc))
    assert "spec.callers[0].app: caller x/ghost is not a known App" in text
    assert "spec.callers[1].ports[0]: port 'grpc' is not one of the ports api serves (http)" in text


@pytest.mark.parametrize(("text", "code"), [
    (_NP + "spec:\n  podSelector: {}\n  egress: [{ports: [{port: 90, endPort: 80}]}]\n", ProblemCode.ENDPORT_MISUSE),
    (_NP + "spec:\n  podSelector: {}\n  egress: [{ports: [{port: 90, endPort: many}]}]\n", ProblemCode.ENDPORT_MISUSE),
    (_NP + "spec:\n  podSelector: {}\n  egress: [{ports: [{port: http, endPort: 90}]}]\n", ProblemCode.ENDPORT_MISUSE),
    (_NP + "spec:\n  podSelector: {}\n  ingres: []\n", None),
    (_NP + "spec:\n  podSelector: {matchLabels: {app: 'endPort-'}}\n", None),  # the word is no clue
    (_NP + "spec: {podSelector: {}}\n---\n" + _NP + "spec: {podSelector: {}}\n", ProblemCode.DUPLICATE_NAME),
    ("apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a}\n", ProblemCode.UNKNOWN_KIND),
    (_APP + "  callers: [{app: ghost}]\n", ProblemCode.UNKNOWN_CALLER),
    (_APP + "  callers: [{app: api, ports: [grpc]}]\n", None),
    (_APP + "---\n" + _APP, ProblemCode.DUPLICATE_NAME),
])
def test_problems_carry_the_code_of_their_kind(tmp_path: Path, text: str, code: ProblemCode | None) -> None:
    """The parser that finds a problem says which kind it is, with a hint how to fix it."""
    with pytest.raises(InputError) as exc:
        load_policies(write(tmp_path, "p.yaml", text))
    [problem] = exc.value.problems
    assert problem.code == code
    assert problem.hint or code is None  # the generic invalid-object advice is lint's


def test_compile_apps_leaves_out_only_the_callers_that_fail(tmp_path: Path) -> None:
    """Callers are independent: the ones that compile make rules, each traced to its caller."""
    path = write(tmp_path, "apps.yaml", _APP + """  callers:
    - {app: ghost}
    - {cidr: 198.18.0.0/24}
    - {app: api, ports: [grpc]}
    - {app: api, ports: [http]}
    """)
    apps = [parse_app(doc) for doc in read_documents(path)]
    compiled = compile_apps(apps)
    assert [p.field for _, p in compiled.problems] == ["spec.callers[0].app", "spec.callers[2].ports[0]"]
    assert [app.key for app, _ in compiled.problems] == ["x/api", "x/api"]
    [api] = compiled.policies
    assert compiled.caller_index == {"x/api": (1, 3)}
    assert [r.peers[0].canonical() for r in api.ingress] == [
        "ipBlock 198.18.0.0/24", "nsSelector kubernetes.io/metadata.name=x pods app=api"]
    assert len(api.egress) == 1  # it calls itself on http


def test_inventory_native_and_kubectl_formats(tmp_path: Path) -> None:
    inv = load_inventory(STANDARD_INVENTORY)
    assert len(inv.endpoints) == 9 and inv.nodes() == ["node-1", "node-2"]
    assert inv.namespaces["x"].labels == {"ns": "x", NAMESPACE_NAME_LABEL: "x"}
    dump = write(tmp_path, "pods.yaml", """
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: Namespace
            metadata: {name: prod, labels: {env: prod}}
          - apiVersion: v1
            kind: Pod
            metadata:
              name: web-1
              namespace: prod
              labels: {app: web}
              annotations: {callgate.io/interface: cgweb1}
            spec:
              nodeName: node-a
              containers:
                - name: c
                  ports: [{name: http, containerPort: 8080}]
            status:
              podIP: 198.18.5.1
              podIPs: [{ip: 198.18.5.1}, {ip: "fd00::5:1"}]
          - apiVersion: v1
            kind: Pod
            metadata: {name: done, namespace: prod}
            spec: {nodeName: node-a, containers: []}
            status: {phase: Succeeded, podIP: 198.18.5.2}
    """)
    inv = load_inventory(dump)
    assert [e.key for e in inv.endpoints] == ["prod/web-1"]
    web = inv.endpoints[0]
    assert web.interface == "cgweb1" and web.node == "node-a" and len(web.ips) == 2
    assert web.resolve_port("http", "TCP") == [8080]
    assert inv.namespaces["prod"].labels[NAMESPACE_NAME_LABEL] == "prod"


@pytest.mark.parametrize(("endpoint", "message"), [
    ("{name: a, namespace: x, ips: [198.18.0.300]}", "is not an IPv4 or IPv6 address"),
    ("{name: a, namespace: x, interface: 'eth0; rm -rf /'}", "interface name"),
    ("{name: a, namespace: X}", "DNS-1123 label"),
    ("{name: a, namespace: x, ports: [{port: 80, protocol: ICMP}]}", "TCP"),
])
def test_inventory_rejects_bad_endpoints(tmp_path: Path, endpoint: str, message: str) -> None:
    path = write(tmp_path, "inv.yaml", f"""
        apiVersion: callgate/v1
        kind: Inventory
        endpoints:
          - {endpoint}
    """)
    with pytest.raises(InputError) as exc:
        load_inventory(path)
    assert message in str(exc.value)
    assert exc.value.problems[0].file == str(path)


@pytest.mark.parametrize("netns", [
    "/run/netns/../../etc/shadow", "/run/netns/..", "/run/netns/.", "/run/netns/", "/run/netns/a/b",
    "/run/netns/a b", "/run/netns/a\nb", "run/netns/a", "/run/netns/" + "a" * 65, "/proc/self/ns/net",
    "/proc/0/ns/net", "/proc/01/ns/net", "/proc/1/ns/net/../../mnt", "/proc/1/ns/mnt", "/proc/99999999/ns/net",
    "/var/run/netns/a", "/etc/passwd", "", "a"])
def test_inventory_netns_is_a_namespace_file_and_nothing_else(tmp_path: Path, netns: str) -> None:
    """The path is opened as root: nothing but a /run/netns name or a process's net namespace."""
    path = write(tmp_path, "inv.yaml", f"""
        apiVersion: callgate/v1
        kind: Inventory
        endpoints:
          - {{name: a, namespace: x, node: n1, ips: [198.18.0.1], netns: {json.dumps(netns)}}}
    """)
    with pytest.raises(InputError) as exc:
        load_inventory(path)
    assert "must be the path of a network namespace" in str(exc.value)
    problem = exc.value.problems[0]
    assert problem.file == str(path) and problem.line == 4 and "endpoints[0].netns" in str(problem)


@pytest.mark.parametrize("netns", ["/run/netns/cgl-p-0123456789", "/run/netns/pod_1.a-b", "/proc/1/ns/net",
                                   "/proc/4194304/ns/net"])
def test_inventory_netns_accepts_namespace_files(tmp_path: Path, netns: str) -> None:
    path = write(tmp_path, "inv.yaml", f"""
        apiVersion: callgate/v1
        kind: Inventory
        endpoints:
          - {{name: a, namespace: x, node: n1, ips: [198.18.0.1], netns: "{netns}"}}
    """)
    (ep,) = load_inventory(path).endpoints
    assert ep.netns == netns and ep.interface is None


def test_pod_annotations_name_interface_or_namespace(tmp_path: Path) -> None:
    dump = write(tmp_path, "pods.yaml", """
        apiVersion: v1
        kind: Pod
        metadata:
          name: mv
          namespace: prod
          annotations: {callgate.io/netns: /run/netns/cni-1234}
        spec: {nodeName: node-a, containers: []}
        status: {podIPs: [{ip: 198.18.5.9}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: bad
          namespace: prod
          annotations: {callgate.io/netns: /run/netns/../x}
        spec: {nodeName: node-a, containers: []}
        status: {podIPs: [{ip: 198.18.5.10}]}
    """)
    with pytest.raises(InputError) as exc:
        load_inventory(dump)
    assert "Pod prod/bad" in str(exc.value) and "netns" in str(exc.value)
    good = write(tmp_path, "good.yaml", dump.read_text().split("---")[0])
    (ep,) = load_inventory(good).endpoints
    assert ep.netns == "/run/netns/cni-1234" and ep.interface is None


@pytest.mark.parametrize("source", [SHOP / "inventory.yaml", ROOT / "examples" / "conformance" / "inventory.yaml"])
def test_inventory_document_reads_back_as_the_same_inventory(tmp_path: Path, source: Path) -> None:
    """Endpoints (some moved into namespaces of their own) and the nodes' labels and
    addresses, which ClusterNetworkPolicy nodes peers select, survive the round trip."""
    inv = load_inventory(source)
    moved = dataclasses.replace(inv, endpoints=tuple(dataclasses.replace(ep, interface=None, netns=f"/run/netns/p{i}")
                                                     if i % 2 else ep for i, ep in enumerate(inv.endpoints)))
    again = load_inventory(write(tmp_path, "inv.yaml", yaml.safe_dump(inventory_document(moved))))
    assert again.endpoints == moved.endpoints
    assert {name: (dict(n.labels), n.addresses) for name, n in again.node_info.items()} == {
        name: (dict(n.labels), n.addresses) for name, n in moved.node_info.items()}
    assert bool(moved.node_info) == ("conformance" in str(source))
    assert {k: dict(v.labels) for k, v in again.namespaces.items()} == {k: dict(v.labels)
                                                                        for k, v in moved.namespaces.items()}


def test_inventory_rejects_duplicate_ips(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.yaml", """
        apiVersion: callgate/v1
        kind: Inventory
        endpoints:
          - {name: a, namespace: x, ips: [198.18.0.1]}
          - {name: b, namespace: x, ips: [198.18.0.1]}
    """)
    with pytest.raises(InputError) as exc:
        load_inventory(path)
    assert "already used by endpoint x/a" in str(exc.value)


_scalars = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b", "0", "x y", ""]), st.booleans(), st.none())
_trees = st.recursive(_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c", "0", "1"]), kids, max_size=3)),
    max_leaves=12)
_steps = st.lists(st.one_of(st.sampled_from(["a", "b", "c", "0", "zz"]), st.integers(0, 3)), max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.lists(_trees, min_size=1, max_size=3), st.sampled_from(["json", "json-indent", "block", "flow"]),
       st.integers(0, 3), st.lists(_steps, min_size=1, max_size=5))
def test_positions_many_equals_one_by_one(tmp_path_factory: pytest.TempPathFactory, docs: list[object], style: str,
                                          index: int, paths: list[list[str | int]]) -> None:
    """The event walk (one pass for many paths, used for CG110 positions in big inventories)
    gives exactly the marks of composing the file and walking the nodes."""
    if style.startswith("json"):
        text = json.dumps(docs[0], indent=2 if style == "json-indent" else None)
    else:
        text = yaml.safe_dump_all(docs, default_flow_style=style == "flow")
    path = tmp_path_factory.mktemp("pos") / ("f.json" if style.startswith("json") else "f.yaml")
    path.write_text(text)
    want = {tuple(p): Positions()(str(path), index, p) for p in paths}
    assert Positions().many(str(path), index, paths) == want
