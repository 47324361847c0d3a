"""A node lab for the CNI start gate: one node namespace, the real reference
plugins, the built ``callgate-cni``, and an agent on the Kubernetes source.

* The node is a network namespace (``cgs-<hex>``); the runtime
  (:mod:`tests.libcni`) runs every plugin in it, and pod sandboxes are
  further namespaces (``/run/netns/cgs-<hex>``), all removed at the end.
* Networks: ptp (routed veths) and bridge (veths as ports of a Linux bridge,
  which the agent enforces since issue #11).
* The plugins come from Debian's ``containernetworking-plugins``
  (``/usr/lib/cni``: ptp, bridge, host-local, …) and ``callgate-cni`` is built
  from ``cni-plugin/callgate-cni.c`` with gcc (``scripts/build-cni-plugin.sh``),
  never taken from the repository.
* The agent is in-process as the DaemonSet runs it: KubernetesSource against
  :class:`tests.fake_apiserver.FakeAPIServer`, the reactor, nftables in the
  node namespace with ``--fail-closed-prefix veth`` (ptp's and bridge's host
  veths are ``veth<hex>``), and the CNI socket in a temporary directory.
* :meth:`Node.kubelet_add` plays kubelet's order: the Pod object exists
  (bound to the node, no address), the sandbox is created, the chain's ADD
  runs — and only when it has returned is ``status.podIP`` written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callgate.agent.cni_socket import CniSocket
from callgate.agent.metrics import AgentMetrics
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.enforcers import guard
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.enforcers.routes import InterfaceResolver
from callgate.lab.probe import Target, _run_source
from callgate.watchers.k8s_reflector import WatchOptions
from callgate.watchers.kubernetes import KubernetesSource
from tests.fake_apiserver import FakeAPIServer
from tests.libcni import ConfList, Runtime, Sandbox
from tests.netns import SCRATCH_PREFIX

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PLUGINS = Path("/usr/lib/cni")
NODE = "node-1"
PREFIX = "veth"
FAST = WatchOptions(watch_timeout=30, connect_timeout=1, backoff_initial=0.05, backoff_max=0.3)


def build_plugin(out: Path) -> Path:
    """``callgate-cni`` built from source with gcc, as CI and the Dockerfile do."""
    subprocess.run(["bash", str(ROOT / "scripts" / "build-cni-plugin.sh"), str(out)], check=True,
                   capture_output=True, text=True)
    return out


def plugins_missing() -> str | None:
    missing = [p for p in ("ptp", "bridge", "host-local") if not (REFERENCE_PLUGINS / p).is_file()]
    if missing:
        return f"needs containernetworking-plugins ({', '.join(missing)} not in {REFERENCE_PLUGINS})"
    if subprocess.run(["which", "gcc"], capture_output=True).returncode != 0:
        return "needs gcc to build callgate-cni"
    return None


def wait(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ptp_conflist(name: str, subnet: str, data_dir: Path, range_start: str | None = None,
                 range_end: str | None = None, timeout: float = 20) -> ConfList:
    ipam_range: dict[str, Any] = {"subnet": subnet}
    if range_start:
        ipam_range |= {"rangeStart": range_start, "rangeEnd": range_end}
    return ConfList(name, "1.0.0", [
        {"type": "ptp", "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[ipam_range]], "dataDir": str(data_dir)}},
        {"type": "callgate-cni", "timeoutSeconds": timeout}])


def bridge_conflist(name: str, bridge: str, subnet: str, data_dir: Path, timeout: float = 20) -> ConfList:
    """The reference bridge plugin (+ host-local) → callgate-cni. The bridge's result lists
    the bridge and the veth as host interfaces: interfacePrefix picks the veth."""
    return ConfList(name, "1.0.0", [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)}},
        {"type": "callgate-cni", "timeoutSeconds": timeout, "interfacePrefix": PREFIX}])


@dataclass
class Pod:
    namespace: str
    name: str
    labels: dict[str, str]
    sandbox: Sandbox | None = None
    ip: str | None = None
    server: subprocess.Popen[str] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns(self) -> str:
        assert self.sandbox is not None
        return Path(self.sandbox.netns).name

    def api_object(self, with_status: bool) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
            "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "x"}]},
            "status": {"phase": "Pending"}}
        if with_status and self.ip:
            obj["status"] = {"phase": "Running", "podIP": self.ip, "podIPs": [{"ip": self.ip}]}
        return obj


@dataclass
class Node:
    root: Path
    plugin: Path
    api: FakeAPIServer
    netns: str = field(default_factory=lambda: f"{SCRATCH_PREFIX}-{uuid.uuid4().hex[:8]}")
    sandboxes: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        self.bin = self.root / "bin"
        self.bin.mkdir()
        for plugin in REFERENCE_PLUGINS.iterdir():
            (self.bin / plugin.name).symlink_to(plugin)
        (self.bin / "callgate-cni").symlink_to(self.plugin)
        self.socket = self.root / "run" / "agent.sock"
        self.kernel = LibNftables(self.netns)
        self.enforcer = NftablesEnforcer(self.kernel, fail_closed_prefix=PREFIX)
        self.metrics = AgentMetrics()
        # resync 60 s: a repair seen within a test came from CHECK or the ADD's own check.
        # As `callgate agent` builds it, guard included (it turns a bridge's br_netfilter flag on).
        self.reactor = Reactor(ReactorConfig(node=NODE, resync=60, coalesce=0.02, retry=0.3), self.enforcer,
                               InterfaceResolver(self.netns, prefix=PREFIX), self.metrics,
                               guard=lambda ruleset: guard.check(ruleset, self.netns, self.enforcer.name))
        self.gate = CniSocket(str(self.socket), self.reactor)
        self.source = KubernetesSource.connect(server=self.api.url, options=FAST, coalesce=0.02, max_delay=0.5)
        self.reactor.start()
        self.source.start(self.reactor.on_event)
        self.gate.start()
        wait(lambda: self.reactor.last_sync is not None, "the agent's first sync")

    def stop(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for attr in ("gate", "source"):
            if hasattr(self, attr):
                getattr(self, attr).stop()
        if hasattr(self, "reactor"):
            self.reactor.stop()
            self.kernel.close()
        stuck = [ns for ns in [*self.sandboxes, self.netns]
                 if subprocess.run(["ip", "netns", "del", ns], capture_output=True).returncode != 0]
        assert not stuck, f"could not delete network namespaces {stuck}"

    # -- the runtime ------------------------------------------------------------

    def runtime(self, conflist: ConfList, socket: Path | None = None) -> Runtime:
        return Runtime(conflist, [self.bin], self.root / "cache", self.netns,
                       env={"CALLGATE_CNI_SOCKET": str(socket or self.socket)})

    def new_sandbox(self, pod: Pod) -> Sandbox:
        """A fresh sandbox (namespace + container id) for ``pod``, as the runtime makes one."""
        ns = f"{SCRATCH_PREFIX}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        self.sandboxes.append(ns)
        return Sandbox(pod.namespace, pod.name, uuid.uuid4().hex, f"/run/netns/{ns}")

    def drop_sandbox(self, sandbox: Sandbox) -> None:
        ns = Path(sandbox.netns).name
        subprocess.run(["ip", "netns", "del", ns], check=True, capture_output=True)
        self.sandboxes.remove(ns)

    def kubelet_add(self, runtime: Runtime, pod: Pod, write_status: bool = True) -> float:
        """Kubelet's order for one pod: Pod object bound to the node without an address
        (if not there yet), sandbox, chain ADD, then status.podIP. Seconds the ADD took."""
        if self.api.get("Pod", pod.name, pod.namespace) is None:
            self.api.create(pod.api_object(with_status=False))
        pod.sandbox = self.new_sandbox(pod)
        self.serve(pod)
        started = time.monotonic()
        result = runtime.add(pod.sandbox)
        took = time.monotonic() - started
        pod.ip = result["ips"][0]["address"].split("/")[0]
        if write_status:
            self.write_status(pod)
        return took

    def write_status(self, pod: Pod) -> None:
        self.api.update(pod.api_object(with_status=True))

    def settle(self, *pods: Pod) -> None:
        """Wait until the agent has applied the API's view of ``pods``, statuses included."""
        def done() -> bool:
            last = self.reactor.last_sync
            if last is None:
                return False
            eps = {ep.key: ep for ep in last.snapshot.inventory.endpoints}
            return all(p.key in eps and [str(i) for i in eps[p.key].ips] == ([p.ip] if p.ip else []) for p in pods)
        wait(done, f"the agent to apply the API's view of {', '.join(p.key for p in pods)}")

    def serve(self, pod: Pod) -> None:
        """The lab's TCP server (greets with the pod's key) on port 80 in the pod's sandbox."""
        proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable, "-m", "callgate.lab.server",
                                 "--name", pod.key, "--tcp", "80"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.servers.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
        pod.server = proc

    def reach(self, src: Pod, dst: Pod, ip: str | None = None, timeout: float = 0.7) -> bool:
        """One real TCP connection from ``src``'s sandbox to ``dst`` (greeting checked)."""
        target = Target((src.key, dst.key, 4, 80, "TCP"), ip or dst.ip or "", "")
        (result,) = _run_source(src.netns, [target], timeout)
        return result.ok

    def nft(self, *args: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.netns, "nft", *args], check=True, capture_output=True,
                              text=True).stdout

    def programmed(self, pod: Pod) -> dict[str, Any]:
        """``GET /programmed`` on the agent's socket, as an operator on the node would ask."""
        out = subprocess.run(["python3", "-c", _ASK, str(self.socket), pod.key], check=True, capture_output=True,
                             text=True).stdout
        return json.loads(out)


# A client for the unix socket without curl (not installed everywhere): plain HTTP/1.0.
_ASK = """
import socket, sys, urllib.parse
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(("GET /programmed?" + urllib.parse.urlencode({"pod": sys.argv[2]}) + " HTTP/1.0\\r\\n\\r\\n").encode())
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.split(b"\\r\\n\\r\\n", 1)[1].decode())
"""
