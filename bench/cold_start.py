"""Cold start from the Kubernetes API to enforcing, and a restart that adopts the live table.

``python -m bench.cold_start '<Spec JSON>'`` (as root) serves the synthetic
cluster from a FakeAPIServer (tests/fake_apiserver.py: real HTTP list and
watch, paginated lists of 500) and starts the real agent as a process
(``callgate agent --source kubernetes``) enforcing in a scratch network
namespace:

1. **cold start**: from the process start to ``/readyz`` answering ready, the
   node's table live; the live digest is checked against an independent
   compile of the same objects, and the agent's peak RSS is read from /proc;
2. **restart**: the agent is stopped (SIGTERM: the rules stay) and started
   again with the table live; it must adopt the table without a transaction
   (its metrics count applies by mode) and be ready again.

Prints one JSON object. The fake API server runs in this process, on the same
two cores as the agent: its list responses (JSON encoding of 50,000 pods) are
part of the figure, as a real API server's would be on the wire.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.synth import Spec, api_objects, generate
from callgate.compiler import Compiler
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.enforcers.nft.layout import layout_digest
from callgate.watchers.cache import ClusterCache

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _metric(text: str, name: str, label: str | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (label is None or label in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _start_agent(server: str, node: str, netns: str, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "callgate", "agent", "--source", "kubernetes", "--server", server, "--node", node,
            "--netns", netns, "--metrics-address", f"127.0.0.1:{port}", "--resync", "3600", "--log-level", "warning"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)


def _until_ready(agent: subprocess.Popen[bytes], port: int, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited: {agent.stderr.read().decode()[-2000:] if agent.stderr else ''}")
        status, _ = _get(f"http://127.0.0.1:{port}/readyz")
        if status == 200:
            return time.perf_counter() - start
        time.sleep(0.02)
    raise RuntimeError(f"agent not ready within {timeout:.0f} s")


def _stop(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def expected_digest(objects: list[dict[str, Any]], node: str) -> str:
    """The digest the node's table must carry, computed apart from the agent."""
    cache = ClusterCache()
    for kind, api_kind in (("pods", "Pod"), ("namespaces", "Namespace"), ("networkpolicies", "NetworkPolicy")):
        cache.replace(kind, [o for o in objects if o["kind"] == api_kind], "1")
    state = cache.state()
    return layout_digest(Compiler(state.policies, state.inventory).compile(node))


def measure(spec: Spec, timeout: float = 300.0) -> dict[str, Any]:
    from tests.fake_apiserver import FakeAPIServer  # the tests' server (python -m bench runs from the repository)

    cluster = generate(spec)
    objects = api_objects(cluster)
    node = cluster.node
    out: dict[str, Any] = {"spec": spec.__dict__, "objects": len(objects)}
    netns = f"cgb-cold-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    api = FakeAPIServer().start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        for obj in objects:
            api.create(obj)
        del cluster
        want = expected_digest(objects, node)
        port = _free_port()
        # 1. cold start
        started = time.perf_counter()
        agent = _start_agent(api.url, node, netns, port)
        out["cold_start_s"] = _until_ready(agent, port, timeout)
        out["cold_start_from_process_start_s"] = time.perf_counter() - started
        out["peak_rss_mib"] = _peak_rss_mib(agent.pid)
        kernel = LibNftables(netns)
        try:
            live = NftablesEnforcer(kernel).live_digest()
        finally:
            kernel.close()
        out["digest_ok"] = live == want
        if not out["digest_ok"]:
            raise RuntimeError(f"live digest {live} is not the expected {want}")
        _, metrics = _get(f"http://127.0.0.1:{port}/metrics", timeout=60)  # reads the table's counters
        out["cold_applies"] = {m: _metric(metrics, "callgate_applies_total", f'mode="{m}"') for m in ("full", "incremental")}
        _stop(agent)
        # 2. restart with the table live: adopt it, no transaction
        started = time.perf_counter()
        agent = _start_agent(api.url, node, netns, port)
        out["restart_ready_s"] = _until_ready(agent, port, timeout)
        out["restart_peak_rss_mib"] = _peak_rss_mib(agent.pid)
        _, metrics = _get(f"http://127.0.0.1:{port}/metrics", timeout=60)
        out["restart_applies"] = {m: _metric(metrics, "callgate_applies_total", f'mode="{m}"')
                                  for m in ("full", "incremental")}
        out["restart_noop_syncs"] = _metric(metrics, "callgate_sync_duration_seconds_count", 'mode="noop"')
        out["adopted_without_transaction"] = (sum(out["restart_applies"].values()) == 0
                                              and out["restart_noop_syncs"] >= 1)
    finally:
        if agent is not None:
            _stop(agent)
        api.stop()
        subprocess.run(["ip", "netns", "del", netns], check=False)
    return out


def main() -> None:
    spec = Spec(**json.loads(sys.argv[1]))
    print(json.dumps(measure(spec)))


if __name__ == "__main__":
    main()
