"""Parsing and validation of NetworkPolicy, App and inventory files."""

from __future__ import annotations

from pathlib import Path

import pytest

from callgate.errors import InputError
from callgate.policy import load_inventory, load_policies
from callgate.policy.model import NAMESPACE_NAME_LABEL, Direction
from tests.helpers import SHOP, STANDARD_INVENTORY, write


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
