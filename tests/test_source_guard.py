"""The node's source check of a host-side veth, on the real kernel, in both forms.

* "ingress" (nft layout 9, kernels that keep hooks by interface name): a base
  chain on the veth's own ingress hook. It must hold for a veth that does not
  exist yet when the table is applied, and again after the veth is deleted and
  made anew (a pod restarting under the same name), with no apply in between.
* "forward" (older kernels): the input interface looked up first in the
  forward chain. Forced here, since this kernel takes the first form.

A pod (x/a of the standard inventory, veth ``cgxa0``) sends UDP from its own
address and from x/c's to an address routed out of the node; an observer
table counts what leaves the node. Then the check is taken away, and the
forged packets do leave: the test can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from callgate.compiler import Compiler
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.enforcers.nft.layout import GuardHook
from callgate.policy import load_policies
from tests.helpers import ROOT, standard

pytestmark = pytest.mark.kernel

OWN, FORGED = "198.18.1.10", "198.18.1.12"  # x/a's address, and x/c's
OUTSIDE = "198.18.9.5"  # routed out of the node to a sink namespace
PORT = 4444
PREFIX = f"cgsg{os.getpid()}"
S01 = ROOT / "tests" / "scenarios" / "01-deny-all-ingress-x.yaml"  # x isolated for ingress only


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def in_ns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", netns, *argv, check=check)


@pytest.fixture
def node() -> Iterator[str]:
    """A node namespace that forwards, with a way out (a veth to a sink) and an
    observer table counting the test's datagrams by source as they leave."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = f"{PREFIX}-node"
    sh("ip", "netns", "add", name)
    try:
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            in_ns(name, "sysctl", "-q", "-w", key)
        sink = f"{PREFIX}-out"
        sh("ip", "netns", "add", sink)
        sh("ip", "link", "add", "cgsgout", "netns", name, "type", "veth", "peer", "name", "eth0", "netns", sink)
        in_ns(sink, "ip", "addr", "add", f"{OUTSIDE}/32", "dev", "eth0")
        in_ns(sink, "ip", "link", "set", "eth0", "up")
        in_ns(name, "ip", "link", "set", "cgsgout", "up")
        in_ns(name, "ip", "route", "add", f"{OUTSIDE}/32", "dev", "cgsgout")
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], text=True, check=True, input=f"""
            table inet cgobserve {{
                chain out {{
                    type filter hook postrouting priority 100; policy accept;
                    oifname "cgsgout" ip saddr {OWN} udp dport {PORT} counter
                    oifname "cgsgout" ip saddr {FORGED} udp dport {PORT} counter
                }}
            }}""")
        yield name
    finally:
        for netns in (f"{PREFIX}-pod", f"{PREFIX}-out", name):
            sh("ip", "netns", "del", netns, check=False)


def make_pod(node: str) -> str:
    """x/a's namespace and veth (``cgxa0`` on the node), holding both addresses."""
    pod = f"{PREFIX}-pod"
    sh("ip", "netns", "add", pod)
    sh("ip", "link", "add", "cgxa0", "netns", node, "type", "veth", "peer", "name", "eth0", "netns", pod)
    for address in (OWN, FORGED):
        in_ns(pod, "ip", "addr", "add", f"{address}/32", "dev", "eth0")
    in_ns(pod, "ip", "link", "set", "eth0", "up")
    in_ns(pod, "ip", "route", "add", "169.254.1.1", "dev", "eth0")
    in_ns(pod, "ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
    in_ns(node, "ip", "addr", "add", "169.254.1.1/32", "dev", "cgxa0")
    in_ns(node, "ip", "link", "set", "cgxa0", "up")
    in_ns(node, "sysctl", "-q", "-w", "net.ipv4.conf.cgxa0.rp_filter=0")
    return pod


def remove_pod(node: str) -> None:
    in_ns(node, "ip", "link", "del", "cgxa0")
    sh("ip", "netns", "del", f"{PREFIX}-pod")


def send(pod: str) -> None:
    """Three datagrams from each address."""
    script = ("import socket, sys\n"
              "for source in sys.argv[1:]:\n"
              "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "    s.bind((source, 0))\n"
              f"    for _ in range(3): s.sendto(b'x', ('{OUTSIDE}', {PORT}))\n")
    in_ns(pod, sys.executable, "-c", script, OWN, FORGED)


def left(node: str) -> tuple[int, int]:
    """Datagrams that left the node so far: (from its own address, forged)."""
    listing = json.loads(in_ns(node, "nft", "-j", "list", "table", "inet", "cgobserve").stdout)["nftables"]
    counts = [e["counter"]["packets"] for o in listing if "rule" in o for e in o["rule"]["expr"] if "counter" in e]
    return counts[0], counts[1]


def take_the_check_away(node: str) -> None:
    listing = json.loads(in_ns(node, "nft", "-j", "-a", "list", "table", "inet", "callgate").stdout)["nftables"]
    for rule in (o["rule"] for o in listing if "rule" in o):
        if rule.get("comment") == "callgate anti-spoofing":
            in_ns(node, "nft", "delete", "rule", "inet", "callgate", rule["chain"], "handle", str(rule["handle"]))


def applied(node: str, guard: GuardHook | None = None) -> NftablesEnforcer:
    ruleset = Compiler(load_policies(S01), standard()).compile("node-1")  # x/a on node-1, veth cgxa0
    enforcer = NftablesEnforcer(LibNftables(node), guard=guard)
    enforcer.apply(ruleset)
    return enforcer


def test_a_veth_that_comes_after_the_table_and_comes_back_is_checked(node: str) -> None:
    enforcer = applied(node)  # before the pod's veth exists
    try:
        if enforcer.guard != "ingress":
            pytest.skip("this kernel does not keep hooks by interface name (before 6.16)")
        pod = make_pod(node)
        send(pod)
        assert left(node) == (3, 0)
        # The pod goes and comes back under the same name: no apply in between.
        remove_pod(node)
        pod = make_pod(node)
        send(pod)
        assert left(node) == (6, 0)
        take_the_check_away(node)
        send(pod)
        assert left(node) == (9, 3)
    finally:
        enforcer.close()


@pytest.mark.parametrize("guard", ["ingress", "forward"])
def test_both_forms_drop_a_forged_source_and_pass_the_pods_own(node: str, guard: GuardHook) -> None:
    pod = make_pod(node)
    enforcer = applied(node, guard)
    try:
        assert enforcer.in_sync(Compiler(load_policies(S01), standard()).compile("node-1"))
        hooked = '"hook": "ingress"' in in_ns(node, "nft", "-j", "list", "table", "inet", "callgate").stdout
        assert hooked == (guard == "ingress")
        send(pod)
        assert left(node) == (3, 0)
        take_the_check_away(node)
        send(pod)
        assert left(node) == (6, 3)
    finally:
        enforcer.close()
