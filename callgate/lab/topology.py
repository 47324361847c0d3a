"""Build and tear down a lab of nodes and pods in network namespaces.

Three topologies, the ways platforms attach containers (see docs/design.md,
"The test lab", and docs/topologies.md). Common to all::

    <prefix>-fabric          bridge br0, one port per node: one L2 segment
      │  veth "uplink"       node addresses 198.19.255.<n>/24, fd00:ff::<n>/64
    <prefix>-n-<node>        forwarding on
    <prefix>-p-<hash>        a pod: eth0 with the pod's IPs as /32 and /128

* **routed** (the default; Calico-style): each pod on a veth whose host side
  carries the inventory's interface name; the node routes: own pods /32,/128
  on their veths, other nodes' pods via their uplink addresses; the pods'
  gateway is 169.254.1.1 (proxy ARP) and fe80::1.
* **bridge** (Docker's bridge, the CNI bridge plugin): the host sides are
  ports of the node's ``br0``, and so is the uplink: one L2 segment over
  every node; the node's address is on ``br0``. Pods of the first node reach
  every pod on-link (bridged, across nodes too); pods of the other nodes reach
  their own node's pods on-link and everything else through their node, which
  routes it back into the bridge: same-node bridged, cross-node bridged,
  routed out of and into a bridge all happen in one probe matrix.
* **macvlan** (Docker's macvlan driver, Multus): each pod's eth0 is a macvlan
  child (bridge mode) of its node's uplink; no host-side interface at all, so
  the lab's inventory gives each pod its ``netns`` instead. Pods reach every
  pod on-link.

Every interface is created inside the namespaces (a pod's end directly in its
pod namespace), so the root namespace never sees a lab name.

What was built is recorded in ``/run/callgate/lab-<prefix>.json``; ``down()``
reads it and also sweeps every namespace shaped like this lab's, so it works
from another process, after a crash, and twice in a row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from callgate.lab.netns import (
    NETNS_DIR,
    LabError,
    cmdline,
    create_netns,
    delete_netns,
    exec_argv,
    in_netns,
    ip,
    list_netns,
    netns_exists,
    pids_in_netns,
    sysctl,
)
from callgate.policy.model import Endpoint, Inventory

STATE_DIR = Path("/run/callgate")
BRIDGE = "br0"
UPLINK = "uplink"
POD_IFACE = "eth0"
UPLINK_V4 = ipaddress.IPv4Network("198.19.255.0/24")
UPLINK_V6 = ipaddress.IPv6Network("fd00:ff::/64")
POD_GATEWAY_V4 = "169.254.1.1"
POD_GATEWAY_V6 = "fe80::1"
MAX_NODES = 250  # uplink host numbers 1..250 of UPLINK_V4
TOPOLOGIES = ("routed", "bridge", "macvlan")

# Pod addresses must come from the ranges docs/design.md reserves for tests, and must
# not collide with the lab's own plumbing.
POD_RANGES = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd00::/8"))
RESERVED = (UPLINK_V4, UPLINK_V6)

PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,11}")
# Kernel interface names are at most 15 bytes without '/', ':' or spaces; we also
# refuse anything ip(8) or sysctl(8) could read as something else (leading '-', '=').
IFACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,14}")
SERVER_MODULE = "callgate.lab.server"
OWN_MODULES = ("callgate.lab.server", "callgate.lab.probe")
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 3.0


def short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def safe(name: str, max_len: int = 20) -> str:
    """``name`` reduced to ``[a-z0-9-]``, short, never starting with '-'.

    A name that is already safe is kept as is (readable namespace names); any
    other gets a hash suffix so that two names cleaned to the same text differ.
    """
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if cleaned == name and 0 < len(cleaned) <= max_len:
        return cleaned
    return f"{cleaned[: max_len - 7].strip('-') or 'x'}-{short_hash(name, 6)}"


def in_lab(ep: Endpoint) -> bool:
    """The lab builds endpoints that run on a node and have an address to reach."""
    return bool(ep.node) and bool(ep.ips)


def check_prefix(prefix: str) -> str:
    """Prefixes have no '-', so ``<prefix>-…`` names of two labs never overlap."""
    if not PREFIX_RE.fullmatch(prefix):
        raise LabError(f"lab name {prefix!r} must be 1-12 characters a-z0-9, starting with a letter")
    return prefix


@dataclass
class PodPlan:
    key: str
    node: str
    netns: str
    interface: str | None  # the host side; None when there is none (macvlan)
    ips: list[str]
    tcp: list[int]
    udp: list[int]
    pid: int | None = None

    def ips_of(self, family: int) -> list[str]:
        return [i for i in self.ips if ipaddress.ip_address(i).version == family]


@dataclass
class NodePlan:
    name: str
    netns: str
    fabric_port: str  # the uplink's peer in the fabric namespace
    ipv4: str
    ipv6: str
    pods: list[PodPlan] = field(default_factory=list)


@dataclass
class LabState:
    """What one lab is made of; saved as JSON so any process can take it down."""

    prefix: str
    fabric: str
    nodes: list[NodePlan] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # endpoints not in the lab, and why
    topology: str = "routed"

    @property
    def pods(self) -> list[PodPlan]:
        return [p for n in self.nodes for p in n.pods]

    def inventory(self, inventory: Inventory) -> Inventory:
        """``inventory`` as this lab built it: each lab pod with its host-side
        interface, or (macvlan) with its own namespace and no interface."""
        pods = {p.key: p for p in self.pods}
        endpoints = []
        for ep in inventory.endpoints:
            pod = pods.get(ep.key)
            if pod is not None:
                netns = f"{NETNS_DIR}/{pod.netns}" if pod.interface is None else None
                ep = dataclasses.replace(ep, interface=pod.interface, netns=netns)
            endpoints.append(ep)
        return dataclasses.replace(inventory, endpoints=tuple(endpoints))

    def netns(self) -> list[str]:
        return [self.fabric, *(n.netns for n in self.nodes), *(p.netns for p in self.pods)]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        nodes = [NodePlan(**{**n, "pods": [PodPlan(**p) for p in n["pods"]]}) for n in data.get("nodes", [])]
        return cls(prefix=data["prefix"], fabric=data["fabric"], nodes=nodes, skipped=data.get("skipped", []),
                   topology=data.get("topology", "routed"))


class Lab:
    """A lab named ``prefix``: every namespace it makes starts with ``<prefix>-``."""

    def __init__(self, prefix: str = "cg", state_dir: Path = STATE_DIR) -> None:
        self.prefix = check_prefix(prefix)
        self.state_path = state_dir / f"lab-{prefix}.json"
        self._children: dict[int, subprocess.Popen[str]] = {}  # servers this process started

    # ------------------------------------------------------------------ names

    @property
    def fabric_netns(self) -> str:
        return f"{self.prefix}-fabric"

    def node_netns(self, node: str) -> str:
        return f"{self.prefix}-n-{safe(node)}"

    def pod_netns(self, endpoint: Endpoint | str) -> str:
        key = endpoint if isinstance(endpoint, str) else endpoint.key
        return f"{self.prefix}-p-{short_hash(key)}"

    def owns(self, netns: str) -> bool:
        """Whether ``netns`` is shaped like one of this lab's namespaces."""
        return netns == self.fabric_netns or netns.startswith((f"{self.prefix}-n-", f"{self.prefix}-p-"))

    def existing_netns(self) -> list[str]:
        return [n for n in list_netns(f"{self.prefix}-") if self.owns(n)]

    # ------------------------------------------------------------------ plan

    def plan(self, inventory: Inventory, topology: str = "routed") -> LabState:
        """Names and addresses for ``inventory``, validated before anything is built."""
        if topology not in TOPOLOGIES:
            raise LabError(f"topology {topology!r} must be one of {', '.join(TOPOLOGIES)}")
        state = LabState(self.prefix, self.fabric_netns, topology=topology)
        nodes: dict[str, NodePlan] = {}
        for index, node in enumerate(inventory.nodes(), start=1):
            if index > MAX_NODES:
                raise LabError(f"the lab has room for {MAX_NODES} nodes, the inventory has {len(inventory.nodes())}")
            nodes[node] = NodePlan(node, self.node_netns(node), f"n{short_hash(node, 10)}",
                                   str(UPLINK_V4[index]), str(UPLINK_V6[index]))
        for ep in inventory.endpoints:
            if not in_lab(ep):
                state.skipped.append(f"{ep.key}: {'no IP address' if ep.node else 'no node'}")
                continue
            node_plan = nodes[str(ep.node)]  # in_lab(): the node is set
            node_plan.pods.append(self._pod_plan(ep, node_plan, topology))
        state.nodes = list(nodes.values())
        self._check_unique(state)
        return state

    def _pod_plan(self, ep: Endpoint, node: NodePlan, topology: str) -> PodPlan:
        for addr in ep.ips:
            if not any(addr in net for net in POD_RANGES) or any(addr in net for net in RESERVED):
                raise LabError(f"endpoint {ep.key}: address {addr} is outside the lab's ranges "
                               f"(198.18.0.0/15 or fd00::/8, minus {UPLINK_V4} and {UPLINK_V6})")
        iface: str | None = None
        if topology != "macvlan":  # a macvlan child has no host side
            iface = ep.interface if ep.interface is not None else f"cg{short_hash(ep.key, 11)}"
            if not IFACE_RE.fullmatch(iface) or iface in (UPLINK, BRIDGE, "lo"):
                raise LabError(f"endpoint {ep.key}: interface {iface!r} cannot be used in the lab")
        return PodPlan(
            key=ep.key, node=node.name, netns=self.pod_netns(ep), interface=iface,
            ips=[str(a) for a in ep.ips],
            tcp=sorted({p.port for p in ep.ports if p.protocol == "TCP"}),
            udp=sorted({p.port for p in ep.ports if p.protocol == "UDP"}),  # no SCTP in this kernel
        )

    @staticmethod
    def _check_unique(state: LabState) -> None:
        seen_ns: set[str] = set()
        for name in state.netns():
            if name in seen_ns:
                raise LabError(f"two lab objects map to network namespace {name}; rename one")
            seen_ns.add(name)
        for node in state.nodes:
            ifaces = [p.interface for p in node.pods if p.interface is not None]
            if dupes := sorted({i for i in ifaces if ifaces.count(i) > 1}):
                raise LabError(f"node {node.name}: interface(s) {', '.join(dupes)} used by more than one endpoint")

    # ------------------------------------------------------------------ up

    def up(self, inventory: Inventory, topology: str = "routed") -> LabState:
        """Build the lab for ``inventory`` in ``topology`` (routed, bridge or
        macvlan) and start a server in every pod.

        Returns once every server listens. On any failure the partial lab is
        taken down again before the error propagates.
        """
        state = self.plan(inventory, topology)
        if existing := self.existing_netns():
            raise LabError(f"lab {self.prefix!r} already exists ({', '.join(existing[:3])}…); "
                           f"take it down first: callgate lab down --name {self.prefix}")
        try:
            self._save(state)  # first, so a crash mid-way still leaves a record for down()
            self._build(state)
            self._start_servers(state)  # records the server pids
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        return state

    def _build(self, state: LabState) -> None:
        for name in state.netns():
            create_netns(name)
        # Settings that new interfaces inherit ("default") must be in place
        # before the veths exist: DAD off makes IPv6 addresses usable at once.
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda ns: sysctl(ns, self._base_sysctls(ns, state)), state.netns()))
        self._build_fabric(state)
        with ThreadPoolExecutor(max_workers=max(1, len(state.nodes))) as pool:
            list(pool.map(lambda node: self._build_node(node, state), state.nodes))

    def _base_sysctls(self, netns: str, state: LabState) -> dict[str, str | int]:
        settings: dict[str, str | int] = {
            "net/ipv6/conf/all/accept_dad": 0,
            "net/ipv6/conf/default/accept_dad": 0,
        }
        if netns in {n.netns for n in state.nodes}:
            settings |= {"net/ipv4/ip_forward": 1, "net/ipv6/conf/all/forwarding": 1}
            if state.topology == "bridge":
                # A node routing a pod's packet back into the bridge it came from
                # would tell the pod to go direct; the lab wants that path routed.
                settings |= {"net/ipv4/conf/all/send_redirects": 0, "net/ipv4/conf/default/send_redirects": 0}
        elif netns in {p.netns for p in state.pods}:
            settings |= {"net/ipv4/conf/all/accept_redirects": 0, "net/ipv4/conf/default/accept_redirects": 0,
                         "net/ipv6/conf/all/accept_redirects": 0, "net/ipv6/conf/default/accept_redirects": 0}
        return settings

    def _build_fabric(self, state: LabState) -> None:
        fabric = state.fabric
        # No multicast snooping: IPv6 neighbour discovery must flood without MLD state.
        ip("link", "add", "name", BRIDGE, "type", "bridge", "mcast_snooping", "0", netns=fabric)
        ip("link", "set", "dev", BRIDGE, "up", netns=fabric)
        for node in state.nodes:
            ip("link", "add", "name", UPLINK, "type", "veth", "peer", "name", node.fabric_port,
               "netns", fabric, netns=node.netns)
            ip("link", "set", "dev", node.fabric_port, "master", BRIDGE, "up", netns=fabric)

    def _build_node(self, node: NodePlan, state: LabState) -> None:
        {"routed": self._build_routed_node, "bridge": self._build_bridge_node,
         "macvlan": self._build_macvlan_node}[state.topology](node, state)

    def _node_address(self, node: NodePlan, dev: str) -> None:
        ns = node.netns
        ip("addr", "add", f"{node.ipv4}/{UPLINK_V4.prefixlen}", "dev", dev, netns=ns)
        ip("-6", "addr", "add", f"{node.ipv6}/{UPLINK_V6.prefixlen}", "dev", dev, "nodad", netns=ns)

    def _build_routed_node(self, node: NodePlan, state: LabState) -> None:
        ns = node.netns
        self._node_address(node, UPLINK)
        ip("link", "set", "dev", UPLINK, "up", netns=ns)
        # Proxy ARP answers for the pods' gateway only if the node itself has a
        # route to it through another interface: a default route over the uplink.
        ip("route", "add", "default", "dev", UPLINK, netns=ns)
        for pod in node.pods:
            self._build_pod(node, pod)
        # proxy_delay 0: by default the kernel waits up to 0.8 s before a proxy ARP reply.
        sysctl(ns, {k: 1 if k.endswith("proxy_arp") else 0 for pod in node.pods
                    for k in (f"net/ipv4/conf/{pod.interface}/proxy_arp", f"net/ipv4/neigh/{pod.interface}/proxy_delay")})
        for other in state.nodes:
            if other is node:
                continue
            for pod in other.pods:
                for addr in pod.ips_of(4):
                    ip("route", "add", f"{addr}/32", "via", other.ipv4, "dev", UPLINK, netns=ns)
                for addr in pod.ips_of(6):
                    ip("-6", "route", "add", f"{addr}/128", "via", other.ipv6, "dev", UPLINK, netns=ns)

    def _build_pod(self, node: NodePlan, pod: PodPlan) -> None:
        host, ns = node.netns, pod.netns
        assert pod.interface is not None
        ip("link", "add", "name", pod.interface, "type", "veth", "peer", "name", POD_IFACE, "netns", ns, netns=host)
        # Host side: the pod's gateway for IPv6, and one host route per pod address.
        ip("-6", "addr", "add", f"{POD_GATEWAY_V6}/64", "dev", pod.interface, "nodad", netns=host)
        ip("link", "set", "dev", pod.interface, "up", netns=host)
        for addr in pod.ips_of(4):
            ip("route", "add", f"{addr}/32", "dev", pod.interface, netns=host)
        for addr in pod.ips_of(6):
            ip("-6", "route", "add", f"{addr}/128", "dev", pod.interface, netns=host)
        self._pod_addresses(pod)
        if pod.ips_of(4):
            ip("route", "add", "default", "via", POD_GATEWAY_V4, "dev", POD_IFACE, "onlink", netns=ns)
        if pod.ips_of(6):
            ip("-6", "route", "add", "default", "via", POD_GATEWAY_V6, "dev", POD_IFACE, netns=ns)

    @staticmethod
    def _pod_addresses(pod: PodPlan) -> None:
        """Pod side: host addresses only (routes are the topology's)."""
        ns = pod.netns
        for addr in pod.ips_of(4):
            ip("addr", "add", f"{addr}/32", "dev", POD_IFACE, netns=ns)
        for addr in pod.ips_of(6):
            ip("-6", "addr", "add", f"{addr}/128", "dev", POD_IFACE, "nodad", netns=ns)
        ip("link", "set", "dev", POD_IFACE, "up", netns=ns)

    @staticmethod
    def _on_link(pod: PodPlan, v4: str, v6: str) -> None:
        """Reach ``v4``/``v6`` (a range or one address) directly on eth0: one L2 segment."""
        if pod.ips_of(4):
            ip("route", "add", v4, "dev", POD_IFACE, netns=pod.netns)
        if pod.ips_of(6):
            ip("-6", "route", "add", v6, "dev", POD_IFACE, netns=pod.netns)

    def _build_bridge_node(self, node: NodePlan, state: LabState) -> None:
        ns = node.netns
        ip("link", "add", "name", BRIDGE, "type", "bridge", "mcast_snooping", "0", netns=ns)
        ip("link", "set", "dev", UPLINK, "master", BRIDGE, "up", netns=ns)
        self._node_address(node, BRIDGE)
        ip("link", "set", "dev", BRIDGE, "up", netns=ns)
        # The node reaches every pod on the segment directly (it routes for its
        # pods that send to other nodes' pods).
        ip("route", "add", str(POD_RANGES[0]), "dev", BRIDGE, netns=ns)
        ip("-6", "route", "add", str(POD_RANGES[1]), "dev", BRIDGE, netns=ns)
        first = node is state.nodes[0]
        for pod in node.pods:
            assert pod.interface is not None
            ip("link", "add", "name", pod.interface, "type", "veth", "peer", "name", POD_IFACE, "netns", pod.netns,
               netns=ns)
            ip("link", "set", "dev", pod.interface, "master", BRIDGE, "up", netns=ns)
            self._pod_addresses(pod)
            if first:
                self._on_link(pod, str(POD_RANGES[0]), str(POD_RANGES[1]))
                continue
            for peer in node.pods:
                for addr in peer.ips_of(4):
                    if pod.ips_of(4) and peer is not pod:
                        ip("route", "add", f"{addr}/32", "dev", POD_IFACE, netns=pod.netns)
                for addr in peer.ips_of(6):
                    if pod.ips_of(6) and peer is not pod:
                        ip("-6", "route", "add", f"{addr}/128", "dev", POD_IFACE, netns=pod.netns)
            if pod.ips_of(4):
                ip("route", "add", "default", "via", node.ipv4, "dev", POD_IFACE, "onlink", netns=pod.netns)
            if pod.ips_of(6):
                ip("-6", "route", "add", "default", "via", node.ipv6, "dev", POD_IFACE, "onlink", netns=pod.netns)

    def _build_macvlan_node(self, node: NodePlan, state: LabState) -> None:
        ns = node.netns
        self._node_address(node, UPLINK)
        ip("link", "set", "dev", UPLINK, "up", netns=ns)
        for pod in node.pods:
            # The child is made in the node's namespace on the uplink and moved
            # into the pod's at once; it is named eth0 there.
            ip("link", "add", "link", UPLINK, "name", POD_IFACE, "netns", pod.netns, "type", "macvlan",
               "mode", "bridge", netns=ns)
            self._pod_addresses(pod)
            self._on_link(pod, str(POD_RANGES[0]), str(POD_RANGES[1]))

    # ------------------------------------------------------------------ servers

    def _start_servers(self, state: LabState) -> None:
        started: dict[str, subprocess.Popen[str]] = {}
        for pod in state.pods:
            if not pod.tcp and not pod.udp:
                continue
            args = ["--name", pod.key]
            args += [a for port in pod.tcp for a in ("--tcp", str(port))]
            args += [a for port in pod.udp for a in ("--udp", str(port))]
            # `ip netns exec` execs the command, so the Popen pid is the server's.
            # A new session keeps a Ctrl-C meant for the caller from reaching it.
            proc = subprocess.Popen(exec_argv(pod.netns, [sys.executable, "-m", SERVER_MODULE, *args]),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            pod.pid = proc.pid
            self._children[proc.pid] = proc
            started[pod.key] = proc
        self._save(state)  # pids on record before we wait
        self._await_ready(started)

    @staticmethod
    def _await_ready(started: dict[str, subprocess.Popen[str]]) -> None:
        """Wait until every server printed ``ready``; raise with its stderr if one died."""
        waiting = dict(started)
        deadline = time.monotonic() + READY_TIMEOUT
        with selectors.DefaultSelector() as sel:
            for key, proc in waiting.items():
                assert proc.stdout is not None
                sel.register(proc.stdout, selectors.EVENT_READ, key)
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LabError(f"servers not ready after {READY_TIMEOUT:g}s: {', '.join(sorted(waiting))}")
                for sel_key, _ in sel.select(left):
                    key = sel_key.data
                    proc = waiting.pop(key)
                    sel.unregister(sel_key.fileobj)
                    line = proc.stdout.readline() if proc.stdout else ""
                    if line.strip() != "ready":
                        proc.wait(timeout=5)
                        err = proc.stderr.read() if proc.stderr else ""
                        raise LabError(f"server of pod {key} failed to start", cast(list[str], proc.args), err)
        for proc in started.values():
            # The servers detached from these pipes after "ready"; drop our ends.
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    # ------------------------------------------------------------------ down

    def down(self) -> list[str]:
        """Stop this lab's servers and delete its namespaces; safe to repeat.

        Returns the namespaces that were deleted.
        """
        state = self.load_state()
        names = set(self.existing_netns())
        if state is not None:
            names |= {n for n in state.netns() if self.owns(n) and netns_exists(n)}
        self._stop_processes(state, names)
        # Pods first: deleting a pod namespace removes its veth from the node too.
        order = sorted(names, key=lambda n: (not n.startswith(f"{self.prefix}-p-"), n == self.fabric_netns, n))
        deleted = [n for n in order if delete_netns(n)]
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self._reap_children()
        return deleted

    def _stop_processes(self, state: LabState | None, names: set[str]) -> None:
        """End the lab's own processes (servers, stray probes) by pid.

        Candidates are the recorded server pids plus any process living in one
        of our namespaces whose command line runs one of our modules; each is
        checked to still be in our namespace, so a recycled pid is left alone.
        """
        candidates = pids_in_netns(names)
        if state is not None:
            for pod in state.pods:
                if pod.pid is not None and pod.netns in names and in_netns(pod.pid, pod.netns):
                    candidates.setdefault(pod.pid, pod.netns)
        ours = {pid: ns for pid, ns in candidates.items()
                if any(m in cmdline(pid) for m in OWN_MODULES) or pid in self._children}
        if not ours:
            return
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        left = self._wait_gone(ours, STOP_TIMEOUT)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._wait_gone(left, STOP_TIMEOUT):
            raise LabError(f"lab processes would not stop: {sorted(left)}")

    def _wait_gone(self, pids: dict[int, str], timeout: float) -> dict[int, str]:
        """Wait for ``pids`` to leave their namespaces; return those still there."""
        deadline = time.monotonic() + timeout
        while True:
            self._reap_children()
            left = {pid: ns for pid, ns in pids.items() if in_netns(pid, ns)}
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)

    def _reap_children(self) -> None:
        """Collect servers this process started that have ended (by us or by a
        ``down()`` in another process), so they do not linger as zombies."""
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    # ------------------------------------------------------------------ state

    def _save(self, state: LabState) -> None:
        """Write the record whole or not at all (a full or read-only state directory is a
        LabError naming it, and leaves no partial file behind)."""
        tmp = self.state_path.with_suffix(".tmp")
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(state.to_json(), indent=2))
            tmp.replace(self.state_path)  # atomic: readers see the old or the new record
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise LabError(f"cannot record the lab in {self.state_path}: {exc.strerror}") from None

    def load_state(self) -> LabState | None:
        try:
            return LabState.from_json(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # a damaged record; down() still sweeps by name

    # ------------------------------------------------------------------ context

    @contextlib.contextmanager
    def running(self, inventory: Inventory, topology: str = "routed") -> Iterator[Lab]:
        """``with Lab("cgl").running(inv) as lab:`` — always torn down on exit."""
        try:
            self.up(inventory, topology)
            yield self
        finally:
            self.down()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

