"""Agent soak: long churn with faults, against a real kernel (docs/reliability.md).

One ``callgate agent`` process (the CLI, so that it can be SIGKILLed) enforces
node-1 of a lab ("cgk") with ``--source kubernetes`` against a FakeAPIServer
(tests/fake_apiserver.py) in this process. The cluster: the lab's three real
pods (x/a on node-1; x/b and y/c on node-2, behind real veths) and ``--pods``
synthetic pods on other nodes. Throughout:

* churn: ``--pod-rate`` pod changes per second (relabels that move pods between
  the peer sets of a's policies, deletions and re-creations) and ``--policy-rate``
  policy changes per second (policies allowing a from some of them, created and
  deleted);
* probes between the lab pods: b -> a must pass (policy a-from-b), c -> a must be
  dropped, a -> c must pass (a's egress is open); churn never changes these;
* markers: every ``--marker-every`` s one marker pod joins or leaves the peer set
  of a "marker" policy, and the time from the API write until the kernel's set
  says so is the event -> kernel latency;
* faults, one at a time: the API server stopped for ``--drop-for`` s every
  ``--drop-every`` s; the agent SIGKILLed and restarted every ``--kill-every`` s;
  the table tampered with (deleted, or a's allowed-peer set flushed) every
  ``--tamper-every`` s;
* samples every ``--sample-every`` s: the agent's RSS, this process's RSS, the
  host's load, the agent's counters (/metrics).

At the end churn stops and the live table must equal a fresh compile of what
the API server holds. The run fails (exit 1) when a probe was wrong outside a
tamper window (the agent restarting or the API away must change nothing), the
final table differs, a marker never arrived, the agent died on its own, or (with
``--rss-check``) an agent's RSS grew more than 10% after warm-up.

    sudo prlimit --as=6442450944 -- .venv/bin/python -m bench.soak --duration 1800 --out /tmp/soak
    sudo .venv/bin/python -m bench.soak --duration 120 --pods 2000 --drop-every 30 --kill-every 50 \\
         --tamper-every 40          # the CI version (tests/test_soak.py)

Writes ``samples.json`` (everything measured), ``report.md`` and two SVG plots
into ``--out``. The agent runs with its address space bounded (``--agent-mem``).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.soak_report import write_report
from callgate.agent.interfaces import InterfaceResolver
from callgate.compiler import Compiler
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.policy.inventory import inventory_from_dict
from callgate.watchers.k8s_convert import KIND_NAMES, KINDS, assemble, convert
from tests.fake_apiserver import FakeAPIServer

ROOT = Path(__file__).resolve().parent.parent

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


# ---- the agent process --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProcess:
    """The CLI agent, restarted as often as the soak kills it; its log is kept per incarnation."""

    def __init__(self, cfg: Config, netns: str, api_url: str) -> None:
        self.cfg, self.netns, self.api_url = cfg, netns, api_url
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.count = 0

    def start(self) -> None:
        self.count += 1
        log = open(self.cfg.out / f"agent-{self.count}.log", "wb")  # noqa: SIM115 - handed to the child
        limit = self.cfg.agent_mem

        def bounded() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callgate", "agent", "--node", NODE, "--netns", self.netns,
             "--source", "kubernetes", "--server", self.api_url, "--resync", str(self.cfg.resync),
             "--fail-closed-prefix", PREFIX, "--metrics-address", f"127.0.0.1:{self.port}", "--coalesce-ms", "50"],
            stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, preexec_fn=bounded, env=env)
        log.close()
        self.started = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError as err:
            return 0, str(err)

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def metrics(self) -> dict[str, float]:
        """The agent's counters that matter here, from /metrics ({} when it cannot answer)."""
        from prometheus_client.parser import text_string_to_metric_families

        code, text = self.get("/metrics")
        if code != 200:
            return {}
        wanted = {"callgate_drift_repairs_total", "callgate_apply_errors_total", "callgate_applies_total",
                  "callgate_source_errors_total", "callgate_event_to_live_seconds_count",
                  "callgate_event_to_live_seconds_sum", "callgate_set_elements"}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in wanted:
                    key = s.name + ("{" + s.labels["mode"] + "}" if "mode" in s.labels else "")
                    out[key] = s.value
        return out


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---- the soak ---------------------------------------------------------------------------

class Soak:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rec = Record()
        self.rng = random.Random(cfg.seed)
        self.stop = threading.Event()
        self.api = FakeAPIServer()
        from callgate.lab import Lab

        self.lab = Lab(LAB)
        self.netns = self.lab.node_netns(NODE)
        self.agent: AgentProcess | None = None
        self.kernel: LibNftables | None = None
        self.marker_set = ""
        self.peer_set = ""  # a-from-b's allowed peers (b's address)
        self.present = set(range(cfg.pods))
        self.absent = set(range(cfg.pods, cfg.pods + EXTRA_PODS))
        self.policies_on = set(range(0, CHURN_POLICIES, 2))
        self.markers_on = [False] * MARKERS
        self.errors: list[str] = []

    # -- threads

    def _loop(self, name: str, body: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # recorded: the run fails rather than hangs
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                self.stop.set()

        thread = threading.Thread(target=run, name=f"soak-{name}", daemon=True)
        thread.start()
        return thread

    def churn(self) -> None:
        """Pod changes at pod_rate/s, policy changes at policy_rate/s, history compacted every minute."""
        cfg, api, rng = self.cfg, self.api, self.rng
        start = time.monotonic()
        pods = policies = 0
        next_compaction = start + 60
        while not self.stop.is_set():
            now = time.monotonic()
            due_pods = int((now - start) * cfg.pod_rate)
            due_policies = int((now - start) * cfg.policy_rate)
            while pods < due_pods:
                roll = rng.random()
                if roll < 0.1 and len(self.present) > 1:
                    i = rng.choice(tuple(self.present))
                    api.delete("Pod", f"s{i}", f"ns{i % 10}")
                    self.present.discard(i)
                    self.absent.add(i)
                elif roll < 0.2 and self.absent:
                    i = rng.choice(tuple(self.absent))
                    api.create(synthetic_pod(i, f"churn-{rng.randrange(CHURN_APPS)}"))
                    self.absent.discard(i)
                    self.present.add(i)
                else:
                    i = rng.choice(tuple(self.present))
                    api.update(synthetic_pod(i, f"churn-{rng.randrange(CHURN_APPS)}"))
                pods += 1
            while policies < due_policies:
                k = rng.randrange(CHURN_POLICIES)
                if k in self.policies_on:
                    api.delete("NetworkPolicy", f"churn-{k}", "x")
                    self.policies_on.discard(k)
                else:
                    api.create(churn_policy(k))
                    self.policies_on.add(k)
                policies += 1
            self.rec.changes["pod"], self.rec.changes["policy"] = pods, policies
            if now >= next_compaction:  # the server's watch history would grow without end
                api.compact()
                self.rec.changes["compactions"] += 1
                next_compaction = now + 60
            time.sleep(0.01)

    def probes(self) -> None:
        from callgate.lab import probe_matrix

        while not self.stop.is_set():
            t0 = time.monotonic()
            found = probe_matrix(self.lab, LAB_INVENTORY, list(EXPECTED), families=(4,), ports=[(80, "TCP")],
                                 timeout=0.3, retries=2)
            result = {f"{k[0]}>{k[1]}": ok for k, ok in found.items()}
            self.rec.probes.append((self.rec.t(t0), self.rec.t(), result))
            self.stop.wait(0.2)

    def markers(self) -> None:
        assert self.kernel is not None
        k = 0
        while not self.stop.is_set():
            t0 = time.monotonic()
            self.markers_on[k] = on = not self.markers_on[k]
            self.api.update(marker_pod(k, on))
            seconds: float | None = None
            deadline = t0 + 180  # a restart at 10,000 pods, a dropped API: still bounded
            while time.monotonic() < deadline and not self.stop.is_set():
                if self._marker_live(marker_ip(k)) == on:
                    seconds = time.monotonic() - t0
                    break
                time.sleep(0.01)
            if seconds is None and self.stop.is_set():
                return  # the run ended while this one was on its way: not a measurement
            if seconds is None:
                self.rec.problems.append(f"marker {k} ({'on' if on else 'off'}) at t={self.rec.t(t0)} never "
                                         "reached the kernel")
            self.rec.markers.append((self.rec.t(t0), None if seconds is None else round(seconds, 4)))
            k = (k + 1) % MARKERS
            self.stop.wait(max(0.0, self.cfg.marker_every - (time.monotonic() - t0)))

    def _marker_live(self, ip: str) -> bool | None:
        assert self.kernel is not None
        try:
            listed = self.kernel.list_set("inet", "callgate", self.marker_set)
        except Exception:
            return None  # the table deleted by a tamper, or being replaced
        if not listed:
            return None
        return ip in set_addresses(listed)

    def sampler(self) -> None:
        last: dict[str, float] = {}
        while not self.stop.is_set():
            agent = self.agent
            pid = agent.pid if agent else None
            counters = agent.metrics() if agent else {}
            if counters:
                last = counters
                if self.rec.incarnations:
                    self.rec.incarnations[-1]["metrics"] = counters
            self.rec.samples.append({"t": self.rec.t(), "incarnation": agent.count if agent else 0,
                                     "agent_rss_kib": rss_kib(pid), "harness_rss_kib": rss_kib(os.getpid()),
                                     "load1": round(os.getloadavg()[0], 2),
                                     "set_elements": last.get("callgate_set_elements")})
            if agent is not None and agent.proc is not None and agent.proc.poll() is not None and not self._killing:
                self.rec.unexpected_exits.append(f"agent {agent.count} exited {agent.proc.returncode} "
                                                 f"at t={self.rec.t()}")
                self.stop.set()
            self.stop.wait(self.cfg.sample_every)

    # -- faults

    _killing = False

    def wait_ready(self, timeout: float = 240.0) -> float | None:
        assert self.agent is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.agent.ready():
                return time.monotonic() - t0
            if self.stop.wait(0.05):
                return None
        return None

    def drop(self) -> Window:
        w = Window("drop", self.rec.t())
        self.api.stop()
        self.stop.wait(self.cfg.drop_for)
        self.api.start()
        w.end = self.rec.t()
        # Ready again once the source has caught up (the agent's /readyz says so).
        t0 = time.monotonic()
        ready = self.wait_ready()
        w.recovered = None if ready is None else round(time.monotonic() - t0, 3)
        return w

    def kill(self) -> Window:
        assert self.agent is not None
        w = Window("kill", self.rec.t())
        t0 = time.monotonic()
        self._killing = True
        self.agent.kill()
        self.agent.start()
        self.rec.incarnations.append({"n": self.agent.count, "started": self.rec.t()})
        self._killing = False
        ready = self.wait_ready()
        w.end = self.rec.t()
        w.recovered = None if ready is None else round(time.monotonic() - t0, 3)
        if ready is None and not self.stop.is_set():
            self.rec.problems.append(f"the agent restarted at t={w.start} was not ready within 240 s")
        return w

    def tamper(self, n: int) -> Window:
        assert self.agent is not None
        before = sum(v for k, v in self.agent.metrics().items() if k == "callgate_drift_repairs_total")
        kind = ("delete the table", "flush a-from-b's peer set")[n % 2]
        w = Window("tamper", self.rec.t(), detail=kind)
        argv = (["delete", "table", "inet", "callgate"] if n % 2 == 0
                else ["flush", "set", "inet", "callgate", self.peer_set])
        subprocess.run(["ip", "netns", "exec", self.netns, "nft", *argv], check=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and not self.stop.is_set():
            now = self.agent.metrics().get("callgate_drift_repairs_total", before)
            if now > before:
                w.recovered = round(time.monotonic() - t0, 3)
                break
            time.sleep(0.05)
        if w.recovered is None and not self.stop.is_set():
            self.rec.problems.append(f"tamper at t={w.start} ({kind}) not repaired within 120 s")
        # The window closes once probes could see the repaired table (one probe round later).
        self.stop.wait(2.0)
        w.end = self.rec.t()
        return w

    def faults(self) -> None:
        cfg = self.cfg
        due = {"drop": cfg.drop_every, "kill": cfg.kill_every, "tamper": cfg.tamper_every}
        tampers = 0
        while not self.stop.is_set():
            kind = min(due, key=lambda k: due[k])
            if due[kind] >= cfg.duration:
                self.stop.wait(max(0.0, cfg.duration - (time.monotonic() - self.rec.started)))
                return
            if self.stop.wait(max(0.0, due[kind] - (time.monotonic() - self.rec.started))):
                return
            if kind == "drop":
                w = self.drop()
            elif kind == "kill":
                w = self.kill()
            else:
                w = self.tamper(tampers)
                tampers += 1
            self.rec.windows.append(w)
            print(f"[{self.rec.t():8.1f}] {w.kind} {w.detail} recovered in {w.recovered} s", flush=True)
            due[kind] += {"drop": cfg.drop_every, "kill": cfg.kill_every, "tamper": cfg.tamper_every}[kind]

    # -- the whole run

    def run(self) -> Record:
        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        self.lab.down()  # leftovers of an interrupted run
        seed_cluster(self.api, cfg)
        self.api.start()
        try:
            with self.lab.running(LAB_INVENTORY):
                self.kernel = LibNftables(self.netns)
                self.agent = AgentProcess(cfg, self.netns, self.api.url)
                try:
                    self._soak()
                finally:
                    self.stop.set()
                    self.agent.stop()
                    self.kernel.close()
        finally:
            self.api.stop()
        return self.rec

    def _soak(self) -> None:
        cfg, rec = self.cfg, self.rec
        assert self.agent is not None
        self.agent.start()
        rec.incarnations.append({"n": 1, "started": rec.t()})
        first = self.wait_ready(600)
        if first is None:
            raise SystemExit(f"the agent never became ready; see {cfg.out}/agent-1.log")
        print(f"agent ready after {first:.1f} s at {cfg.pods} pods", flush=True)
        self.marker_set = self._set_holding(MARKER_ANCHOR_IP)
        self.peer_set = self._set_holding(LAB_PODS["x/b"]["ip"])
        rec.started = time.monotonic()  # the clock of the soak proper
        threads = [self._loop(name, body) for name, body in (
            ("churn", self.churn), ("probes", self.probes), ("markers", self.markers), ("sampler", self.sampler))]
        self.faults()
        self.stop.set()
        for thread in threads:
            thread.join(300)
        rec.problems.extend(self.errors)
        self.final_check()

    def _set_holding(self, ip: str) -> str:
        assert self.kernel is not None
        table = self.kernel.list_table("inet", "callgate") or []
        names = [body["name"] for obj in table for kind, body in obj.items()
                 if kind == "set" and ip in set_addresses([obj])]
        if len(names) != 1:
            raise SystemExit(f"expected one set holding {ip}, found {names}")
        return names[0]

    def final_check(self) -> None:
        """Churn has stopped: the live table must become what a fresh compile of the
        API server's objects gives (the agent's resync has ``resync`` s to get there)."""
        assert self.agent is not None and self.kernel is not None
        entries: dict[str, dict[tuple[str, str], Any]] = {}
        for kind in KINDS:
            converted = (convert(kind, obj) for obj in self.api.objects(KIND_NAMES[kind]))
            entries[kind] = {(c.ref.namespace or "", c.ref.name): c for c in converted if c is not None}
        state = assemble(entries)
        ruleset = Compiler(state.policies, state.inventory).compile(NODE)
        local = [ep for ep in state.inventory.endpoints if ep.node == NODE]
        known = tuple(sorted(set(InterfaceResolver(self.netns, prefix=PREFIX).resolve(local).values())))
        enforcer = NftablesEnforcer(self.kernel, fail_closed_prefix=PREFIX)
        desired = enforcer.desired_text(ruleset, known)
        t0 = time.monotonic()
        live = None
        while time.monotonic() - t0 < 120:
            live = enforcer.live_text()
            if live == desired:
                break
            time.sleep(0.5)
        equal = live == desired
        self.rec.final = {"equal": equal, "seconds": round(time.monotonic() - t0, 2),
                          "desired_lines": desired.count("\n"), "set_elements": sum(
                              len(s.elements) for s in ruleset.address_sets),
                          "agent_running": self.agent.pid is not None}
        if not equal:
            self.rec.problems.append("the final table differs from a fresh compile of the API server's objects")
            (self.cfg.out / "final-live.nft").write_text(live or "")
            (self.cfg.out / "final-desired.nft").write_text(desired)


def set_addresses(listed: list[dict[str, Any]]) -> set[str]:
    """Every single address in listed sets (elements may be addresses, prefixes or ranges)."""
    out: set[str] = set()
    for obj in listed:
        for _, body in obj.items():
            for elem in body.get("elem", []) if isinstance(body, dict) else []:
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


# ---- verdicts -------------------------------------------------------------------------

def judge(rec: Record, cfg: Config) -> dict[str, Any]:
    """Figures and pass/fail, from the record."""
    def in_window(t0: float, t1: float, kinds: tuple[str, ...]) -> bool:
        return any(w.kind in kinds and t0 <= (w.end if w.end is not None else 1e18) and t1 >= w.start
                   for w in rec.windows)

    wrong_outside: list[str] = []
    rounds_in = {"drop": 0, "kill": 0, "tamper": 0}
    wrong_tamper = {"count": 0}
    for t0, t1, result in rec.probes:
        for kind in ("drop", "kill", "tamper"):
            if in_window(t0, t1, (kind,)):
                rounds_in[kind] += 1
        bad = [pair for pair, ok in result.items() if ok != EXPECTED[tuple(pair.split(">"))]]  # type: ignore[index]
        if not bad:
            continue
        if in_window(t0, t1, ("tamper",)):
            wrong_tamper["count"] += 1
        else:
            wrong_outside.append(f"t={t0}: {', '.join(bad)}")
    latencies = sorted(s for _, s in rec.markers if s is not None)
    in_restart = sorted(s for t, s in rec.markers if s is not None and in_window(t, t + s, ("kill", "drop")))
    quiet = sorted(s for t, s in rec.markers if s is not None and not in_window(t, t + s, ("kill", "drop", "tamper")))
    rss = rss_by_incarnation(rec, cfg)
    problems = list(rec.problems) + rec.unexpected_exits
    problems += [f"probe wrong outside a tamper window: {w}" for w in wrong_outside]
    if cfg.rss_check:
        problems += [f"agent {n}: RSS grew {r['growth_pct']}% after warm-up" for n, r in rss.items()
                     if r["growth_pct"] is not None and r["growth_pct"] > 10]
    if not rec.final.get("equal"):
        problems.append("final table not equal to a fresh compile")
    totals: dict[str, float] = {}
    for inc in rec.incarnations:
        for k, v in inc.get("metrics", {}).items():
            totals[k] = totals.get(k, 0) + v
    loads = sorted(s["load1"] for s in rec.samples)
    return {
        "load_median": round(statistics.median(loads), 2) if loads else None, "load_max": loads[-1] if loads else None,
        "probe_rounds": len(rec.probes), "probe_rounds_in": rounds_in, "wrong_in_tamper_windows": wrong_tamper["count"],
        "wrong_outside_tamper_windows": len(wrong_outside),
        "latency_ms": percentiles(latencies), "latency_quiet_ms": percentiles(quiet),
        "latency_across_restart_or_drop_ms": percentiles(in_restart),
        "markers": len(rec.markers), "markers_lost": sum(1 for _, s in rec.markers if s is None),
        "rss": rss, "agent_totals": totals, "changes": rec.changes,
        "faults": {k: [dataclasses.asdict(w) for w in rec.windows if w.kind == k] for k in ("drop", "kill", "tamper")},
        "final": rec.final, "problems": problems, "ok": not problems,
    }


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}

    def q(p: float) -> float:
        return round(values[min(len(values) - 1, round(p * (len(values) - 1)))] * 1000, 1)

    return {"n": len(values), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(values[-1] * 1000, 1),
            "mean": round(statistics.fmean(values) * 1000, 1)}


def rss_by_incarnation(rec: Record, cfg: Config) -> dict[int, dict[str, Any]]:
    """Per agent process: RSS at the end of warm-up, its maximum and last value after,
    and the growth from the first to the last (None when it lived too briefly)."""
    out: dict[int, dict[str, Any]] = {}
    starts = {inc["n"]: inc["started"] for inc in rec.incarnations}
    for n, started in starts.items():
        mine = [(s["t"], s["agent_rss_kib"]) for s in rec.samples
                if s["incarnation"] == n and s["agent_rss_kib"] is not None]
        after = [kib for t, kib in mine if t >= started + cfg.warmup]
        if len(after) < 3:
            out[n] = {"samples": len(mine), "growth_pct": None,
                      "max_mib": round(max((k for _, k in mine), default=0) / 1024, 1)}
            continue
        warm = statistics.median(after[:3])
        late = statistics.median(after[-3:])
        out[n] = {"samples": len(mine), "warm_mib": round(warm / 1024, 1), "last_mib": round(late / 1024, 1),
                  "max_mib": round(max(after) / 1024, 1), "growth_pct": round(100 * (late - warm) / warm, 1)}
    return out


def load_samples(out: Path) -> tuple[Config, Record]:
    """The configuration and record of a finished run, from its samples.json."""
    data = json.loads((out / "samples.json").read_text())
    defaults = Config()
    cfg = Config(**{f.name: (type(getattr(defaults, f.name))(data["config"][f.name])
                             if f.name != "rss_check" else data["config"][f.name] == "True")
                    for f in dataclasses.fields(Config)})
    raw = data["record"]
    rec = Record(**{**raw, "windows": [Window(**w) for w in raw["windows"]],
                    "probes": [tuple(p) for p in raw["probes"]], "markers": [tuple(m) for m in raw["markers"]]})
    return cfg, rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    for f in dataclasses.fields(Config):
        if f.name in ("rss_check",):
            continue
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                        default=getattr(defaults, f.name))
    ap.add_argument("--no-rss-check", dest="rss_check", action="store_false")
    ap.add_argument("--report-from", type=Path, metavar="DIR",
                    help="only write report.md and the plots again from DIR/samples.json")
    args = ap.parse_args(argv)
    if args.report_from:
        cfg, rec = load_samples(args.report_from)
        write_report(args.report_from, cfg, rec, judge(rec, cfg))
        print((args.report_from / "report.md").read_text())
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    cfg.out = Path(cfg.out)
    rec = Soak(cfg).run()
    verdict = judge(rec, cfg)
    (cfg.out / "samples.json").write_text(json.dumps({"config": {k: str(v) for k, v in dataclasses.asdict(cfg).items()},
                                                      "record": dataclasses.asdict(rec), "verdict": verdict},
                                                     indent=1))
    write_report(cfg.out, cfg, rec, verdict)
    print((cfg.out / "report.md").read_text())
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
