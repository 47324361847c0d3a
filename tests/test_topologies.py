"""Bridges, macvlan and routed veths on the real kernel: what a pod must not get around.

* A pod cannot escape its policy, nor slip through another's, by sending with
  another pod's source address (raw sockets, IPv4 and IPv6), on every
  topology and backend; and the same packets do arrive once callgate's
  anti-spoofing is taken away, so the test can fail.
* On a bridge a pod has no side door: not a link-local address, not a
  priority-tagged (VLAN 0) frame, which br_netfilter hands to no inet hook
  unless told to.
* The guard on real nodes: br_netfilter off for the bridge is fixed (and was
  silently nothing before), what cannot be enforced is refused and changes
  nothing, and ``doctor`` tells each endpoint's placement.
* The agent enforces inside pods' namespaces (macvlan), repairs drift there,
  adopts what is there, and leaves a missing namespace unprogrammed, saying so.

(The policy conformance of every topology and backend is tests/test_e2e_kernel.py.)
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from callgate.agent.metrics import AgentMetrics
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.compiler import Compiler
from callgate.enforcers import get_enforcer, guard
from callgate.enforcers.iptables.dispatch import source_chain
from callgate.enforcers.iptables.layout import SOURCE_IFACES
from callgate.enforcers.routes import InterfaceResolver
from callgate.lab import Lab, probe_matrix
from callgate.lab.topology import TOPOLOGIES, LabState
from callgate.policy import Inventory, PolicySet
from callgate.policy.inventory import inventory_document
from callgate.watchers.base import Snapshot
from tests.helpers import ROOT, policies_from, standard
from tests.spoof_send import SPORT

pytestmark = pytest.mark.kernel

INV = standard()
BACKENDS = ("nft", "iptables")
PREFIX = {"routed": "cgt", "bridge": "cgtb", "macvlan": "cgtm"}
SPOOF = str(Path(__file__).parent / "spoof_send.py")

# x/a takes only x/b, y/a only x/c; z/c may send nothing. z/c (node-1) is the
# attacker: it sends as x/b (another node) to x/a (its own node), and as x/c
# (its own node, not isolated) to y/a (the other node).
POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80, protocol: UDP}, {port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-x-c, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: c}}}]
      ports: [{port: 80, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-sends-nothing, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
"""
ATTACKER = "z/c"
SPOOFS = (("x/b", "x/a"), ("x/c", "y/a"))  # (whose address the attacker uses, victim)


@dataclass
class Running:
    lab: Lab
    state: LabState
    inventory: Inventory  # as the lab built it
    topology: str

    def node_ns(self, node: str) -> str:
        return self.lab.node_netns(node)

    def pod_ns(self, key: str) -> str:
        return self.lab.pod_netns(key)

    def address(self, key: str, family: int) -> str:
        ep = self.inventory.endpoint(key)
        assert ep is not None
        return next(str(ip) for ip in ep.ips if ip.version == family)


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Running]:
    topology = request.param
    with Lab(PREFIX[topology]).running(INV, topology) as running:
        state = running.load_state()
        assert state is not None
        yield Running(running, state, state.inventory(INV), topology)


def sh(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=check)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callgate", *args], capture_output=True, text=True, cwd=ROOT)


def pod_namespaces(lab: Running, node: str) -> list[str]:
    return sorted(ep.netns for ep in lab.inventory.endpoints if ep.node == node and ep.netns and not ep.interface)


def clear(lab: Running) -> None:
    for node in INV.nodes():
        for backend in BACKENDS:
            enforcer = get_enforcer(backend, netns=lab.node_ns(node))
            for netns in pod_namespaces(lab, node):
                enforcer.part(netns)
            enforcer.remove()
            enforcer.close()


def apply_all(lab: Running, policies: PolicySet, backend: str, inventory: Inventory | None = None) -> None:
    compiler = Compiler(policies, inventory or lab.inventory)
    for node in INV.nodes():
        enforcer = get_enforcer(backend, netns=lab.node_ns(node))
        enforcer.apply(compiler.compile(node))
        enforcer.close()


def write_inventory(tmp_path: Path, inventory: Inventory, name: str = "inventory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(inventory_document(inventory)))
    return path


# -- spoofing --------------------------------------------------------------------


def watch(lab: Running, victims: list[str]) -> None:
    """Count, in each victim's own namespace, what arrives from the spoofing source port."""
    for key in victims:
        sh(lab.pod_ns(key), "nft", "delete", "table", "inet", "cgspoof", check=False)
        subprocess.run(["ip", "netns", "exec", lab.pod_ns(key), "nft", "-f", "-"], text=True, check=True, input=f"""
            table inet cgspoof {{
                chain count {{
                    type filter hook prerouting priority -300; policy accept;
                    udp sport {SPORT} counter
                }}
            }}""")


def arrived(lab: Running, key: str) -> int:
    listing = json.loads(sh(lab.pod_ns(key), "nft", "-j", "list", "table", "inet", "cgspoof").stdout)
    return sum(e["counter"]["packets"] for o in listing["nftables"] if "rule" in o
               for e in o["rule"]["expr"] if "counter" in e)


def send_spoofed(lab: Running) -> dict[str, int]:
    """The attacker sends, per family, as each impersonated pod to its victim; what arrived where."""
    victims = [victim for _, victim in SPOOFS]
    watch(lab, victims)
    for family in (4, 6):
        for as_, victim in SPOOFS:
            sh(lab.pod_ns(ATTACKER), sys.executable, SPOOF, "udp", lab.address(as_, family),
               lab.address(victim, family), "80")
    time.sleep(0.5)
    return {victim: arrived(lab, victim) for victim in victims}


def take_anti_spoofing_away(lab: Running, backend: str, *keys: str) -> None:
    """Empty the source check of these endpoints (default: the attacker), wherever
    this topology and backend keep it (nft: the namespace's whole check)."""
    for key in keys or (ATTACKER,):
        ep = lab.inventory.endpoint(key)
        assert ep is not None and ep.node is not None
        netns = lab.pod_ns(key) if lab.topology == "macvlan" else lab.node_ns(ep.node)
        if backend == "nft" and lab.topology == "macvlan":
            sh(netns, "nft", "flush", "chain", "inet", "callgate", "endpoint_source")
        elif backend == "nft":  # the node: the veths' source checks (their drops), and the bridge ports'
            listing = json.loads(sh(netns, "nft", "-j", "-a", "list", "table", "inet", "callgate").stdout)
            for rule in (o["rule"] for o in listing["nftables"] if "rule" in o):
                if rule.get("comment") == "callgate anti-spoofing":
                    sh(netns, "nft", "delete", "rule", "inet", "callgate", rule["chain"], "handle", str(rule["handle"]))
            sh(netns, "nft", "flush", "chain", "bridge", "callgate", "endpoint_source")
        else:  # iptables: its source chain (bridge ports, or inside the pod's namespace) ...
            for tool in ("iptables", "ip6tables"):
                sh(netns, tool, "-F", source_chain(key))
            if lab.topology != "macvlan":  # ... and on the node, the routed veths' sets
                for name in SOURCE_IFACES.values():
                    sh(netns, "ipset", "flush", name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lab", TOPOLOGIES, indirect=True)
def test_a_pod_cannot_send_as_another_pod(lab: Running, backend: str, tmp_path: Path) -> None:
    clear(lab)
    policies = policies_from(tmp_path, POLICIES)
    apply_all(lab, policies, backend)
    # The impersonated pods themselves do get through, and the attacker does not as itself.
    seen = probe_matrix(lab.lab, lab.inventory, pairs=[*SPOOFS, (ATTACKER, "x/a"), (ATTACKER, "y/a")],
                        ports=[(80, "UDP")])
    assert {(k[0], k[1]): v for k, v in seen.items()} == {
        ("x/b", "x/a"): True, ("x/c", "y/a"): True, (ATTACKER, "x/a"): False, (ATTACKER, "y/a"): False}
    assert send_spoofed(lab) == {"x/a": 0, "y/a": 0}
    # The same packets without the source check: both arrive, IPv4 and IPv6.
    take_anti_spoofing_away(lab, backend)
    assert send_spoofed(lab) == {"x/a": 2, "y/a": 2}
    clear(lab)


def open_flow(lab: Running, as_: str, victim: str, family: int) -> None:
    """The impersonated pod's own flow to the victim, from the port the attacker
    will use: one datagram and its echo, so every conntrack on the way holds it
    as established."""
    script = ("import socket, sys\n"
              "s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"s.bind(('', {SPORT})); s.settimeout(3)\n"
              "s.sendto(b'mine', (sys.argv[1], 80)); s.recvfrom(100)\n")
    sh(lab.pod_ns(as_), sys.executable, "-c", script, lab.address(victim, family))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lab", TOPOLOGIES, indirect=True)
def test_a_spoofed_packet_cannot_ride_the_impersonated_pods_flow(lab: Running, backend: str, tmp_path: Path) -> None:
    """Conntrack finds a flow by addresses and ports, not by the interface a packet
    came in on: with the impersonated pods' flows open (allowed, and echoed), the
    attacker's packets with their addresses and ports must still be dropped."""
    clear(lab)
    apply_all(lab, policies_from(tmp_path, POLICIES), backend)
    for node in INV.nodes():
        sh(lab.node_ns(node), "conntrack", "--flush", check=False)
    for family in (4, 6):
        for as_, victim in SPOOFS:
            open_flow(lab, as_, victim, family)
    assert send_spoofed(lab) == {"x/a": 0, "y/a": 0}
    # The same packets without the source check do arrive: the flows were open.
    take_anti_spoofing_away(lab, backend)
    assert send_spoofed(lab) == {"x/a": 2, "y/a": 2}
    clear(lab)


# -- the nft verdict cache ------------------------------------------------------------

FLOW_PORT = 40405  # the unreplied flow's source port


def sink(lab: Running, key: str) -> None:
    """Count, in the pod, what reaches it from FLOW_PORT after callgate's hooks
    (input, priority 10: in a macvlan pod callgate's table is at 0 there), and
    keep the pod from answering (its lab server's echo, or a port unreachable, is
    dropped on the way out before conntrack sees it): the flow stays unreplied,
    every packet of it "new" to conntrack.
    (Not dropped on the way in: in a macvlan pod that would also drop the
    conntrack entry the verdict is cached in, which is confirmed after input.)"""
    sh(lab.pod_ns(key), "nft", "delete", "table", "inet", "cgsink", check=False)
    subprocess.run(["ip", "netns", "exec", lab.pod_ns(key), "nft", "-f", "-"], text=True, check=True, input=f"""
        table inet cgsink {{
            chain count {{
                type filter hook input priority 10; policy accept;
                udp sport {FLOW_PORT} counter
            }}
            chain quiet {{
                type filter hook output priority -300; policy accept;
                udp dport {FLOW_PORT} drop
                icmp type destination-unreachable drop
                icmpv6 type destination-unreachable drop
            }}
        }}""")


def sunk(lab: Running, key: str) -> int:
    listing = json.loads(sh(lab.pod_ns(key), "nft", "-j", "list", "table", "inet", "cgsink").stdout)
    return sum(e["counter"]["packets"] for o in listing["nftables"] if "rule" in o
               for e in o["rule"]["expr"] if "counter" in e)


def send_flow(lab: Running, src: str, dst: str, count: int) -> None:
    """``count`` datagrams per family from src's FLOW_PORT to dst's port 80: one flow each."""
    script = ("import socket, sys, time\n"
              "for dst in sys.argv[2:]:\n"
              "    s = socket.socket(socket.AF_INET6 if ':' in dst else socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"    s.bind(('', {FLOW_PORT}))\n"
              "    for _ in range(int(sys.argv[1])):\n"
              "        s.sendto(b'one way', (dst, 80)); time.sleep(0.02)\n"
              "    s.close()\n")
    sh(lab.pod_ns(src), sys.executable, "-c", script, str(count), lab.address(dst, 4), lab.address(dst, 6))
    time.sleep(0.3)


def decided(lab: Running, key: str, policy: str) -> int:
    """Packets the rules of ``policy`` decided in the table that holds ``key``'s ingress."""
    ep = lab.inventory.endpoint(key)
    assert ep is not None and ep.node is not None
    netns = lab.pod_ns(key) if lab.topology == "macvlan" else lab.node_ns(ep.node)
    listing = json.loads(sh(netns, "nft", "-j", "list", "table", "inet", "callgate").stdout)
    return sum(e["counter"]["packets"] for o in listing["nftables"] if "rule" in o and policy in o["rule"].get(
        "comment", "") for e in o["rule"]["expr"] if "counter" in e)


@pytest.mark.parametrize("lab", TOPOLOGIES, indirect=True)
def test_a_decided_flow_leaves_at_its_cached_verdict_until_the_rules_change(lab: Running, tmp_path: Path) -> None:
    """nft: the later packets of an unreplied UDP flow (each one "new" to conntrack)
    leave at the verdict cached in the flow's ct mark, so the allowing rule counts
    the flow once; a changed table (here an incremental transaction) decides the
    flow again on its next packet, so a policy that now denies it drops it, and one
    that allows it again lets it through again."""
    clear(lab)
    for netns in {lab.node_ns(n) for n in INV.nodes()} | {lab.pod_ns("x/a")}:
        sh(netns, "conntrack", "--flush", check=False)
    allow = Compiler(policies_from(tmp_path, POLICIES), lab.inventory)
    deny = Compiler(policies_from(tmp_path, POLICIES.replace("{matchLabels: {pod: b}}", "{matchLabels: {pod: nobody}}"),
                                  "deny.yaml"), lab.inventory)
    enforcers = {node: get_enforcer("nft", netns=lab.node_ns(node)) for node in INV.nodes()}
    try:
        for node, enforcer in enforcers.items():
            enforcer.apply(allow.compile(node))
        sink(lab, "x/a")
        send_flow(lab, "x/b", "x/a", 5)
        assert sunk(lab, "x/a") == 10
        assert decided(lab, "x/a", "a-from-b") == 2, "one decision per flow, the rest by the cached verdict"
        # x/a's node changes incrementally; the same flows' next packets meet the new rules.
        assert enforcers["node-1"].apply(deny.compile("node-1")).mode == "incremental"
        send_flow(lab, "x/b", "x/a", 3)
        assert sunk(lab, "x/a") == 10, "a flow decided under the old rules was not decided again"
        enforcers["node-1"].apply(allow.compile("node-1"))
        send_flow(lab, "x/b", "x/a", 2)
        assert sunk(lab, "x/a") == 14
    finally:
        for enforcer in enforcers.values():
            enforcer.close()
        sh(lab.pod_ns("x/a"), "nft", "delete", "table", "inet", "cgsink", check=False)
        clear(lab)


# -- bridges: no side doors -----------------------------------------------------------


def link_local(lab: Running, key: str) -> str:
    data = json.loads(sh(lab.pod_ns(key), "ip", "-j", "-6", "addr", "show", "dev", "eth0").stdout)
    return next(str(a["local"]) for a in data[0]["addr_info"] if a.get("scope") == "link")


def mac(lab: Running, key: str) -> str:
    return str(json.loads(sh(lab.pod_ns(key), "ip", "-j", "link", "show", "eth0").stdout)[0]["address"])


def side_doors(lab: Running) -> tuple[str, str]:
    """z/c to x/a (denied by both sides) by link-local TCP and by a VLAN-0 tagged SYN.
    Connection tracking is emptied first, as for every probe: a flow an earlier
    check let through must not answer for this one."""
    for node in INV.nodes():
        sh(lab.node_ns(node), "conntrack", "--flush")
    attacker = lab.pod_ns(ATTACKER)
    by_link_local = sh(attacker, sys.executable, SPOOF, "tcp6-link-local", link_local(lab, "x/a"), "80").stdout.strip()
    by_tag = sh(attacker, sys.executable, SPOOF, "vlan0", mac(lab, "x/a"), lab.address(ATTACKER, 4),
                lab.address("x/a", 4), "80").stdout.strip()
    return by_link_local, by_tag


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lab", ["bridge"], indirect=True)
def test_a_bridge_port_has_no_side_door(lab: Running, backend: str, tmp_path: Path) -> None:
    clear(lab)
    node = "node-1"  # z/c and x/a: bridged on one node
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    inventory = write_inventory(tmp_path, lab.inventory)
    try:
        done = cli("apply", "-i", str(inventory), "-p", str(policies), "--node", node, "--netns", lab.node_ns(node),
                   "--backend", backend)
        assert done.returncode == 0, done.stderr
        if backend == "iptables":  # br_netfilter must hand VLAN-tagged IP to iptables too: the guard sees to it
            assert "fixed: set net.bridge.bridge-nf-filter-vlan-tagged=1 in network namespace" in done.stderr
        assert side_doors(lab) == ("blocked", "blocked")
        # Controls: without the port's source check, or (iptables) with tagged IP unfiltered again.
        if backend == "nft":
            take_anti_spoofing_away(lab, backend)
            assert side_doors(lab) == ("connected", "answered")
        else:  # (x/a's check too: its link-local answer is not from its own addresses either)
            sh(lab.node_ns(node), "sysctl", "-qw", "net.bridge.bridge-nf-filter-vlan-tagged=0")
            take_anti_spoofing_away(lab, backend, ATTACKER, "x/a")
            assert side_doors(lab) == ("connected", "answered")
    finally:
        sh(lab.node_ns(node), "sysctl", "-qw", "net.bridge.bridge-nf-filter-vlan-tagged=0")
        clear(lab)


# -- the guard on real nodes ------------------------------------------------------------


def bridge_flags(lab: Running, node: str) -> dict[str, int]:
    data = json.loads(sh(lab.node_ns(node), "ip", "-j", "-d", "link", "show", "br0").stdout)[0]
    return {k: v for k, v in data["linkinfo"]["info_data"].items() if k in ("nf_call_iptables", "nf_call_ip6tables")}


def bridge_netfilter(lab: Running, node: str, value: int) -> None:
    sh(lab.node_ns(node), "sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={value}",
       f"net.bridge.bridge-nf-call-ip6tables={value}")


@pytest.mark.parametrize("lab", ["bridge"], indirect=True)
def test_bridge_netfilter_off_is_fixed_not_quietly_nothing(lab: Running, tmp_path: Path) -> None:
    clear(lab)
    node = "node-1"
    netns = lab.node_ns(node)
    policies = policies_from(tmp_path, POLICIES)
    inventory = write_inventory(tmp_path, lab.inventory)
    denied = [(ATTACKER, "x/a")]  # bridged on node-1
    bridge_netfilter(lab, node, 0)
    try:
        # What callgate did before the guard: the rules went in, and the denied connection connects.
        apply_all(lab, policies, "nft")
        assert all(probe_matrix(lab.lab, lab.inventory, pairs=denied, ports=[(80, "TCP")]).values())
        clear(lab)
        doctor = cli("doctor", "--node", node, "--netns", netns, "-i", str(inventory))
        assert doctor.returncode == 1, doctor.stdout
        assert "bridge port: cgxa0 of bridge br0  DEFEATED" in doctor.stdout
        assert "(apply fixes this: turned on nf_call_iptables on bridge br0" in doctor.stdout
        done = cli("apply", "-i", str(inventory), "-p", str(tmp_path / "policies.yaml"), "--node", node,
                   "--netns", netns)
        assert done.returncode == 0, done.stderr
        for flag, family in (("nf_call_iptables", 4), ("nf_call_ip6tables", 6)):
            assert (f"fixed: turned on {flag} on bridge br0 in network namespace {netns} (bridged IPv{family} on "
                    "br0 did not reach callgate's rules)") in done.stderr
        assert bridge_flags(lab, node) == {"nf_call_iptables": 1, "nf_call_ip6tables": 1}
        # Only that bridge: the namespace's sysctls stay as they were.
        assert sh(netns, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables").stdout.strip() == "0"
        assert not any(probe_matrix(lab.lab, lab.inventory, pairs=denied, ports=[(80, "TCP")]).values())
        assert cli("doctor", "--node", node, "--netns", netns, "-i", str(inventory)).returncode == 0
    finally:
        bridge_netfilter(lab, node, 1)
        sh(netns, "ip", "link", "set", "dev", "br0", "type", "bridge", "nf_call_iptables", "0", "nf_call_ip6tables",
           "0")
        clear(lab)


@pytest.mark.parametrize("lab", TOPOLOGIES, indirect=True)
def test_doctor_tells_how_each_endpoint_is_enforced(lab: Running, tmp_path: Path) -> None:
    clear(lab)
    inventory = write_inventory(tmp_path, lab.inventory)
    node = "node-2"
    kind = {"routed": "routed veth: cgxb0", "bridge": "bridge port: cgxb0 of bridge br0",
            "macvlan": f"in-namespace: /run/netns/{lab.pod_ns('x/b')}"}[lab.topology]
    before = cli("doctor", "--node", node, "--netns", lab.node_ns(node), "-i", str(inventory))
    assert before.returncode == 0, before.stdout
    assert f"  x/b  {kind}  ok" in before.stdout
    # Where the veths' source checks run on this kernel (none on a node whose endpoints are all in-namespace).
    checks = "host-side interfaces' source checks: on each one's own ingress hook"
    assert (checks in before.stdout) == (lab.topology != "macvlan"), before.stdout
    assert "callgate's nft rules in the node: absent: nothing is enforced there yet" in before.stdout
    assert before.stdout.endswith("every local endpoint is where callgate enforces\n")
    apply_all(lab, PolicySet(), "nft")
    after = cli("doctor", "--node", node, "--netns", lab.node_ns(node), "-i", str(inventory)).stdout
    assert "callgate's nft rules in the node: present (digest" in after
    if lab.topology == "macvlan":
        assert f"callgate's nft rules in network namespace /run/netns/{lab.pod_ns('x/b')}: present" in after
    clear(lab)


def moved(inventory: Inventory, key: str, **changes: object) -> Inventory:
    return Inventory(inventory.namespaces, tuple(replace(ep, **changes) if ep.key == key else ep  # type: ignore[arg-type]
                                                 for ep in inventory.endpoints))


@pytest.mark.parametrize("lab", ["routed"], indirect=True)
def test_apply_refuses_what_it_cannot_enforce_and_changes_nothing(lab: Running, tmp_path: Path) -> None:
    clear(lab)
    node = "node-1"
    netns = lab.node_ns(node)
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    good = cli("apply", "-i", str(write_inventory(tmp_path, lab.inventory)), "-p", str(policies), "--node", node,
               "--netns", netns)
    assert good.returncode == 0, good.stderr
    before = sh(netns, "nft", "list", "ruleset").stdout
    node_v4 = next(n.ipv4 for n in lab.state.nodes if n.name == node)
    other_pod = f"/run/netns/{lab.pod_ns('x/c')}"
    cases = {
        "missing": (moved(lab.inventory, "x/a", interface="cgnothere0"),
                    f"endpoint x/a: interface cgnothere0 does not exist in network namespace {netns}"),
        "host networking": (moved(lab.inventory, "x/a", ips=(ipaddress.ip_address(node_v4),)),
                            f"endpoint x/a: address(es) {node_v4} belong to the node itself (host networking)"),
        "no such namespace": (moved(lab.inventory, "x/a", interface=None, netns="/run/netns/cgt-not-there"),
                              "endpoint x/a: network namespace /run/netns/cgt-not-there does not exist"),
        "someone else's namespace": (moved(lab.inventory, "x/a", interface=None, netns=other_pod),
                                     f"endpoint x/a: network namespace {other_pod} does not hold the endpoint's "
                                     "address(es) 198.18.1.10, fd00:18:1::10"),
    }
    for name, (inventory, message) in cases.items():
        done = cli("apply", "-i", str(write_inventory(tmp_path, inventory, f"{name}.yaml")), "-p", str(policies),
                   "--node", node, "--netns", netns)
        assert done.returncode == 1, (name, done.stderr)
        assert message in done.stderr, (name, done.stderr)
        assert "nothing applied: 1 endpoint(s) cannot be enforced" in done.stderr and "Traceback" not in done.stderr
        assert sh(netns, "nft", "list", "ruleset").stdout == before, name
    clear(lab)


# -- the agent inside pods' namespaces ---------------------------------------------------


@pytest.mark.parametrize("lab", ["macvlan"], indirect=True)
def test_agent_enforces_repairs_and_adopts_inside_pods(lab: Running, tmp_path: Path) -> None:
    clear(lab)
    node = "node-1"
    netns = lab.node_ns(node)
    policies = policies_from(tmp_path, POLICIES)
    victim = lab.pod_ns("x/a")
    gone = replace(INV.endpoints[0], name="gone", labels={"pod": "gone"}, node=node, interface=None,
                   netns="/run/netns/cgtm-p-not-there", ips=(ipaddress.ip_address("198.18.9.9"),))
    inventory = Inventory(lab.inventory.namespaces, (*lab.inventory.endpoints, gone))

    def start() -> Reactor:
        enforcer = get_enforcer("nft", netns=netns)
        reactor = Reactor(ReactorConfig(node=node, resync=0.3, coalesce=0.01, retry=0.3), enforcer,
                          InterfaceResolver(netns), AgentMetrics(),
                          guard=lambda ruleset: guard.check(ruleset, netns, enforcer.name))
        reactor.start()
        reactor.on_event(Snapshot(inventory, policies, "v1", "test", []))
        assert reactor.wait_for(lambda: reactor.last_sync is not None, 20)
        return reactor

    reactor = start()
    try:
        local = {ep.key for ep in inventory.endpoints if ep.node == node}
        assert set(reactor.programmed.snapshot()) == local - {"x/gone"}
        assert "network namespace /run/netns/cgtm-p-not-there does not exist" in reactor.unresolved["x/gone"]
        assert "inet callgate" in sh(victim, "nft", "list", "tables").stdout
        assert not any(probe_matrix(lab.lab, lab.inventory, pairs=[(ATTACKER, "x/a")], ports=[(80, "UDP")]).values())
        # Tampering inside a pod's namespace: resync repairs it there.
        sh(victim, "nft", "delete", "table", "inet", "callgate")
        assert reactor.wait_for(lambda: reactor.repairs >= 1, 20)
        assert reactor.wait_for(
            lambda: "inet callgate" in sh(victim, "nft", "list", "tables").stdout, 20)
    finally:
        reactor.stop()
        reactor.enforcer.close()
    # A restarted agent adopts every table as it is: not one transaction.
    again = start()
    try:
        assert again.mode_counts == {"incremental": 0, "full": 0}
    finally:
        again.stop()
        again.enforcer.close()
    clear(lab)
