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
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.soak_agent import AgentProcess, rss_kib
from bench.soak_model import (
    CHURN_APPS,
    CHURN_POLICIES,
    EXPECTED,
    EXTRA_PODS,
    LAB,
    LAB_INVENTORY,
    LAB_PODS,
    MARKER_ANCHOR_IP,
    MARKERS,
    NODE,
    PREFIX,
    Config,
    Record,
    Window,
    churn_policy,
    marker_ip,
    marker_pod,
    seed_cluster,
    set_addresses,
    synthetic_pod,
)
from bench.soak_report import judge, load_samples, write_report
from callgate.compiler import Compiler
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.enforcers.routes import InterfaceResolver
from callgate.watchers.k8s_convert import KIND_NAMES, KINDS, assemble, convert
from tests.fake_apiserver import FakeAPIServer

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
        self.marker_set = ("set", "")
        self.peer_set = ("set", "")  # a-from-b's allowed peers (b's address): a set, or a decision map
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

    def _look_now(self) -> None:
        """One probe round at once, without retries, recorded with the others: the
        agent can repair a tamper within a fraction of a second (the next change's
        transaction finds the digest gone: 0.2 s seen), before the probe thread's
        next round, and a tamper that never shows in the probes proves nothing
        about them. (Rounds overlapping a tamper window may be wrong: excused.)"""
        from callgate.lab import probe_matrix

        t0 = time.monotonic()
        found = probe_matrix(self.lab, LAB_INVENTORY, list(EXPECTED), families=(4,), ports=[(80, "TCP")],
                             timeout=0.3, retries=0)
        self.rec.probes.append((self.rec.t(t0), self.rec.t(), {f"{k[0]}>{k[1]}": ok for k, ok in found.items()}))

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
            kind, name = self.marker_set
            if kind == "set":
                listed = self.kernel.list_set("inet", "callgate", name)
            else:  # a decision map is named by its tier's rules: churn renames it, look it up each time
                listed = [o for o in self.kernel.list_table("inet", "callgate") or []
                          if "map" in o and MARKER_ANCHOR_IP in set_addresses([o])]
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
        if n % 2 == 0:
            subprocess.run(["ip", "netns", "exec", self.netns, "nft", "delete", "table", "inet", "callgate"],
                           check=True)
        else:
            self._flush_peer_set()
        t0 = next_look = time.monotonic()
        self._look_now()
        while time.monotonic() - t0 < 120 and not self.stop.is_set():
            if self.agent.metrics().get("callgate_drift_repairs_total", before) > before:
                w.recovered = round(time.monotonic() - t0, 3)
                break
            # In layout 5 a flushed decision map can also be replaced by the next
            # change of its tier's rules (churn renames it, with every element):
            # the tamper is gone then without a drift repair to count.
            if n % 2 == 1 and time.monotonic() >= next_look:
                next_look = time.monotonic() + 0.5
                if self._flush_undone():
                    w.recovered = round(time.monotonic() - t0, 3)
                    w.detail += " (replaced by a change before a drift check)"
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

    def _flush_undone(self) -> bool:
        """The flushed set or map is gone from the table (a change replaced it)."""
        assert self.kernel is not None
        try:
            table = self.kernel.list_table("inet", "callgate")
        except Exception:
            return False  # being replaced
        kind, name = self.peer_set
        return table is not None and not any(obj.get(kind, {}).get("name") == name for obj in table)

    def _flush_peer_set(self) -> None:
        """Flush the set or decision map that holds x/b's address. Looked up just before:
        a decision map's name follows its tier's rules, which churn changes, so the one
        found may be renamed before the flush reaches it; then it is looked up again."""
        for _ in range(5):
            self.peer_set = self._set_holding(LAB_PODS["x/b"]["ip"])
            argv = ["flush", self.peer_set[0], "inet", "callgate", self.peer_set[1]]
            done = subprocess.run(["ip", "netns", "exec", self.netns, "nft", *argv], capture_output=True, text=True)
            if done.returncode == 0:
                return
            if "No such file or directory" not in done.stderr:
                raise SystemExit(f"nft {' '.join(argv)}: {done.stderr.strip()}")
        raise SystemExit(f"the set holding x/b's address was renamed under five flushes in a row: {done.stderr.strip()}")

    def _set_holding(self, ip: str) -> tuple[str, str]:
        """("set" or "map", name) of the one set or decision map holding ``ip``."""
        assert self.kernel is not None
        table = self.kernel.list_table("inet", "callgate") or []
        found = [(kind, body["name"]) for obj in table for kind, body in obj.items()
                 if kind in ("set", "map") and ip in set_addresses([obj])]
        if len(found) != 1:
            raise SystemExit(f"expected one set or map holding {ip}, found {found}")
        return found[0]

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
