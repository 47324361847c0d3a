"""Named ports that mean different numbers on different pods, on the real kernel.

``http`` is 80 on web-a and 81 on web-b. An egress rule "to any pod, port
http" must therefore allow client→web-a:80 and client→web-b:81 but neither
client→web-a:81 nor client→web-b:80 — which needs the (address . port) sets,
not a port list. The same holds for an ingress rule on both web pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from callgate.compiler import Compiler
from callgate.enforcers import get_enforcer
from callgate.lab import Lab, probe_matrix
from callgate.policy import Evaluator, Inventory, load_inventory, load_policies
from tests.helpers import write

pytestmark = pytest.mark.kernel

INVENTORY = """
apiVersion: callgate/v1
kind: Inventory
namespaces:
  web: {labels: {team: web}}
endpoints:
  - name: client
    namespace: web
    labels: {role: client}
    node: n1
    interface: cgnpc0
    ips: [198.18.40.1, "fd00:40::1"]
  - name: web-a
    namespace: web
    labels: {role: server}
    node: n1
    interface: cgnpa0
    ips: [198.18.40.2, "fd00:40::2"]
    ports: [{name: http, port: 80}, {name: alt, port: 81}]
  - name: web-b
    namespace: web
    labels: {role: server}
    node: n2
    interface: cgnpb0
    ips: [198.18.40.3, "fd00:40::3"]
    ports: [{name: http, port: 81}, {name: alt, port: 80}]
"""

POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: web}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {}}]
      ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: servers-in, namespace: web}
spec:
  podSelector: {matchLabels: {role: server}}
  ingress:
    - ports: [{port: alt}]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Inventory, Path]]:
    tmp = tmp_path_factory.mktemp("named")
    inv = load_inventory(write(tmp, "inv.yaml", INVENTORY))
    policies = write(tmp, "policies.yaml", POLICIES)
    with Lab("cgnp").running(inv) as lab:
        yield lab, inv, policies


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_named_ports_resolve_per_destination(setup: tuple[Lab, Inventory, Path], backend: str) -> None:
    lab, inv, path = setup
    policies = load_policies(path)
    compiler = Compiler(policies, inv)
    for node in inv.nodes():
        for other in ("nft", "iptables"):
            get_enforcer(other, netns=lab.node_netns(node)).remove()
        get_enforcer(backend, netns=lab.node_netns(node)).apply(compiler.compile(node))
    both = [(80, "TCP"), (81, "TCP")]
    observed = probe_matrix(lab, inv, ports=both)
    ev = Evaluator(policies, inv)
    ips = {ep.key: {ip.version: str(ip) for ip in ep.ips} for ep in inv.endpoints}
    expected = {k: ev.allowed(ips[k[0]][k[2]], ips[k[1]][k[2]], k[3], k[4]) for k in observed}  # type: ignore[arg-type]
    assert observed == expected
    # The cases that make this test worth having, stated by hand:
    for family in (4, 6):
        assert observed[("web/client", "web/web-a", family, 80, "TCP")] is False  # http=80 egress ok, ingress wants alt=81
        assert observed[("web/client", "web/web-a", family, 81, "TCP")] is False  # alt ok on ingress, egress wants http=80
        assert observed[("web/web-b", "web/web-a", family, 81, "TCP")] is True  # web-b's egress is open; alt on web-a is 81
        assert observed[("web/web-a", "web/web-b", family, 80, "TCP")] is True  # alt on web-b is 80
        assert observed[("web/web-a", "web/web-b", family, 81, "TCP")] is False


def test_client_reaches_http_on_each_server_by_its_own_number(setup: tuple[Lab, Inventory, Path]) -> None:
    """Open the servers' ingress, keep the client's named-port egress."""
    lab, inv, path = setup
    policies = load_policies(path)
    only_egress = type(policies)([p for p in policies.policies if p.name == "client-out"])
    compiler = Compiler(only_egress, inv)
    for node in inv.nodes():
        for other in ("nft", "iptables"):
            get_enforcer(other, netns=lab.node_netns(node)).remove()
        get_enforcer("nft", netns=lab.node_netns(node)).apply(compiler.compile(node))
    observed = probe_matrix(lab, inv, pairs=[("web/client", "web/web-a"), ("web/client", "web/web-b")],
                            ports=[(80, "TCP"), (81, "TCP")])
    for family in (4, 6):
        assert observed[("web/client", "web/web-a", family, 80, "TCP")] is True
        assert observed[("web/client", "web/web-a", family, 81, "TCP")] is False
        assert observed[("web/client", "web/web-b", family, 81, "TCP")] is True
        assert observed[("web/client", "web/web-b", family, 80, "TCP")] is False
