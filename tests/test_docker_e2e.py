"""The Docker source against a real engine: Debian's dockerd in a lab network
namespace (tests/docker_lab.py), started and removed by this module.

* ``callgate inventory --from docker`` on a Compose-like stack (two user-defined
  bridges, IPv4 and IPv6, a host-network container, hostile labels) prints an
  inventory that lint, test, explain, matrix, diff and apply accept;
* an in-process agent follows the engine: containers started, renamed,
  connected, disconnected and stopped reach the kernel's table (the start of a
  container within the latency target), the engine lost keeps the rules and
  turns /readyz 503, the engine back is relisted;
* Docker's own iptables rules are left exactly as they are, callgate's table
  survives a dockerd restart, and hostile label values never reach nft.

Enforcement with real packets on the bridges and a macvlan network is in
tests/test_docker_enforce.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from callgate.agent.interfaces import InterfaceResolver
from callgate.agent.metrics import AgentMetrics, StatusServer
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.lab.dockerd import DockerdLab
from callgate.policy import load_inventory
from callgate.watchers.docker_client import make_client
from callgate.watchers.docker_links import VethResolver
from callgate.watchers.docker_source import DockerSource
from tests.docker_lab import PLAIN, engine, remove, run, skip_reason
from tests.helpers import ROOT

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]
EXAMPLE = ROOT / "examples" / "docker"
POLICIES = EXAMPLE / "policies"
NODE = "docker-1"
WAIT = 20.0
CALLGATE = [sys.executable, "-m", "callgate"]


@pytest.fixture(scope="module")
def docker() -> Iterator[tuple[DockerdLab, Any]]:
    why = skip_reason()
    if why:
        pytest.skip(f"needs a real Docker engine: {why}")
    with engine() as (lab, client):
        yield lab, client


def wait(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling a condition, not synchronising by sleeping


def compose(service: str, project: str = "notes", **extra: str) -> dict[str, str]:
    """The labels Compose gives a service's container (some are no Kubernetes labels)."""
    return {"com.docker.compose.project": project, "com.docker.compose.service": service,
            "com.docker.compose.container-number": "1", "com.docker.compose.oneoff": "False",
            "com.docker.compose.config-hash": "0" * 64,
            "com.docker.compose.project.working_dir": f"/srv/{project}", **extra}


@dataclass
class Stack:
    networks: dict[str, str]  # compose name -> engine network name
    containers: list[str]


def create_network(client: Any, name: str, v4: str, v6: str | None = None) -> str:
    import docker as docker_py

    pools = [docker_py.types.IPAMPool(subnet=v4)] + ([docker_py.types.IPAMPool(subnet=v6)] if v6 else [])
    client.create_network(name, driver="bridge", enable_ipv6=bool(v6), ipam=docker_py.types.IPAMConfig(
        pool_configs=pools), labels={"com.docker.compose.project": "notes"})
    return name


def start_stack(client: Any) -> Stack:
    """examples/docker/compose.yaml, as Compose would run it (no compose here)."""
    front = create_network(client, "notes_front", "198.18.225.0/24", "fd00:d0c:225::/64")
    back = create_network(client, "notes_back", "198.18.226.0/24")
    specs = [("web", front, "80/tcp", "http=80/TCP"), ("api", front, "8080/tcp", "http=8080/TCP"),
             ("db", back, "5432/tcp", "postgres=5432/TCP"), ("worker", back, None, None)]
    names = []
    for service, network, port, named in specs:
        name = f"notes-{service}-1"
        command = ["/bin/httpd", "-f", "-p", port.split("/")[0]] if port else ["/bin/sleep", "3600"]
        labels = compose(service, **({"callgate.io/ports": named} if named else {}))
        run(client, name, labels=labels, network=network, command=command, exposed=[port] if port else None,
            image=PLAIN)
        names.append(name)
    client.connect_container_to_network("notes-api-1", back)
    return Stack({"front": front, "back": back}, names)


def stop_stack(client: Any, stack: Stack) -> None:
    remove(client, *stack.containers)
    for network in stack.networks.values():
        with contextlib.suppress(Exception):
            client.remove_network(network)


def cli(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CALLGATE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    if check is not None:
        assert done.returncode == check, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def bridge_of(lab: DockerdLab, interface: str) -> str | None:
    out = subprocess.run(["ip", "-n", lab.netns, "-j", "link", "show", "dev", interface], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)[0].get("master")


def test_inventory_from_a_real_engine_feeds_the_analysis_commands(docker: Any, tmp_path: Path) -> None:
    lab, client = docker
    stack = start_stack(client)
    hostile = '"; flush ruleset; "'
    try:
        run(client, "monitor", network="host", command=["/bin/sleep", "3600"])
        run(client, "odd_one", labels={"app": hostile, hostile: "x", "callgate.io/ports": f"{hostile}=80/TCP"},
            command=["/bin/sleep", "3600"])
        out = tmp_path / "inventory.yaml"
        done = cli("inventory", "--from", "docker", "--docker-host", lab.host, "--netns", lab.netns,
                   "--node", NODE, "-o", str(out))
        err = " ".join(done.stderr.split())
        assert "not enforceable: docker: container monitor: uses the host's network stack" in err
        assert "container odd_one: 2 label(s) skipped" in err and "endpoint named 'odd-one'" in err
        text = out.read_text()
        assert "# not enforceable (left out): container monitor" in text and "flush" not in text.split("\n", 3)[3]
        inv = load_inventory(out)
        eps = {ep.name: ep for ep in inv.endpoints}
        assert sorted(eps) == ["notes-api-1", "notes-db-1", "notes-web-1", "notes-worker-1", "odd-one"]
        web, api = eps["notes-web-1"], eps["notes-api-1"]
        assert (web.namespace, web.node, dict(web.labels)["com.docker.compose.service"]) == ("notes", NODE, "web")
        assert "com.docker.compose.config-hash" not in web.labels  # 64 characters: no label value
        assert [ip.version for ip in web.ips] == [4, 6]
        assert str(web.ips[0]).startswith("198.18.225.") and str(web.ips[1]).startswith("fd00:d0c:225::")
        assert sorted(str(ip).rsplit(".", 1)[0] for ip in api.ips if ip.version == 4) == ["198.18.225", "198.18.226"]
        assert [(p.name, p.port) for p in api.ports] == [("http", 8080)]
        assert eps["odd-one"].namespace == "default" and dict(eps["odd-one"].labels) == {}
        net_ids = {n["Name"]: n["Id"] for n in client.networks()}
        for ep in eps.values():  # each interface is the container's veth, a port of its network's bridge
            assert ep.interface and ep.interface.startswith("veth")
        assert bridge_of(lab, web.interface) == "br-" + net_ids["notes_front"][:12]
        assert bridge_of(lab, api.interface) == "br-" + net_ids["notes_back"][:12]  # back sorts before front
        assert bridge_of(lab, eps["odd-one"].interface) == "docker0"

        # What the analysis commands make of it: the example's expectations hold.
        inv_args = ["-i", str(out)]
        cli("lint", *inv_args, str(POLICIES))
        cli("test", *inv_args, "-p", str(POLICIES), str(EXAMPLE / "connectivity.cgtest"))
        cli("explain", *inv_args, "-p", str(POLICIES), "notes/notes-web-1", "notes/notes-api-1", "8080/TCP",
            "--expect", "allow")
        cli("explain", *inv_args, "-p", str(POLICIES), "notes/notes-web-1", "notes/notes-db-1", "5432/TCP",
            "--expect", "deny")
        matrix = cli("matrix", *inv_args, "-p", str(POLICIES), "--port", "5432/TCP", "-g", "app").stdout
        assert "notes/worker" in matrix
        cli("diff", *inv_args, str(POLICIES), str(POLICIES))
        cli("apply", *inv_args, "-p", str(POLICIES), "--node", NODE, "--netns", lab.netns, "--dry-run")
    finally:
        remove(client, "monitor", "odd_one")
        stop_stack(client, stack)


# ---- an agent following the engine ---------------------------------------------------------------

@dataclass
class Agent:
    reactor: Reactor
    enforcer: NftablesEnforcer
    source: DockerSource
    kernel: LibNftables
    http: StatusServer
    metrics: AgentMetrics

    def stop(self) -> None:
        self.source.stop()
        self.reactor.stop()
        self.http.stop()
        self.kernel.close()

    def endpoints(self) -> dict[str, Any]:
        last = self.reactor.last_sync
        return {ep.key: ep for ep in last.snapshot.inventory.endpoints} if last else {}

    def enforced(self) -> set[str]:
        """Endpoints with rules in the table the kernel holds now."""
        applied = self.enforcer.applied
        if applied is None or self.enforcer.live_digest() != applied.digest:
            return set()
        return {ep.endpoint for ep in applied.ruleset.endpoints}

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.http.address}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def start_agent(lab: DockerdLab, policies: Path = POLICIES) -> Agent:
    kernel = LibNftables(lab.netns)
    enforcer = NftablesEnforcer(kernel)
    metrics = AgentMetrics()
    reactor = Reactor(ReactorConfig(node=NODE, resync=0.5, coalesce=0.02, retry=0.2), enforcer,
                      InterfaceResolver(lab.netns), metrics)
    http = StatusServer("127.0.0.1:0", metrics, reactor)
    client, where = make_client(lab.host)
    source = DockerSource(client, where, NODE, VethResolver(lab.netns), [policies], debounce=0.02, heartbeat=1.0,
                          backoff=(0.1, 0.5))
    http.start()
    reactor.start()
    source.start(reactor.on_event)
    return Agent(reactor, enforcer, source, kernel, http, metrics)


def iptables_save(lab: DockerdLab) -> list[str]:
    """Docker's rules as iptables-save prints them, without counters."""
    out = subprocess.run(["ip", "netns", "exec", lab.netns, "iptables-save"], capture_output=True, text=True,
                         check=True).stdout
    return [re.sub(r" \[\d+:\d+\]$", "", line) for line in out.splitlines() if not line.startswith("#")]


def nft_table(lab: DockerdLab) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.netns, "nft", "list", "table", "inet", "callgate"],
                          capture_output=True, text=True, check=True).stdout


def test_the_agent_follows_the_engine(docker: Any) -> None:
    lab, client = docker
    stack = start_stack(client)
    before = iptables_save(lab)
    agent = start_agent(lab)
    try:
        wait(lambda: {"notes/notes-web-1", "notes/notes-api-1", "notes/notes-db-1", "notes/notes-worker-1"}
             <= agent.enforced(), "the stack to be enforced")
        assert agent.get("/readyz")[0] == 200
        assert iptables_save(lab) == before  # Docker's rules: not one added, removed or moved

        # A replica started while the agent runs: enforced within the target.
        t0 = time.monotonic()
        run(client, "notes-api-2", labels=compose("api", **{"com.docker.compose.container-number": "2"}),
            network=stack.networks["front"], command=["/bin/httpd", "-f", "-p", "8080"], exposed=["8080/tcp"],
            image=PLAIN)
        wait(lambda: "notes/notes-api-2" in agent.enforced(), "the new container's rules")
        assert time.monotonic() - t0 < 2.0  # start (API call included) to enforced; the bench measures p99

        # Renamed: the endpoint follows the name.
        client.rename("notes-api-2", "notes-api-9")
        wait(lambda: "notes/notes-api-9" in agent.enforced() and "notes/notes-api-2" not in agent.enforced(),
             "the rename")
        # Connected to a second network: its address there joins; disconnected: leaves.
        client.connect_container_to_network("notes-api-9", stack.networks["back"])
        wait(lambda: len([ip for ip in agent.endpoints()["notes/notes-api-9"].ips if ip.version == 4]) == 2,
             "the address on the second network")
        client.disconnect_container_from_network("notes-api-9", stack.networks["back"])
        wait(lambda: len([ip for ip in agent.endpoints()["notes/notes-api-9"].ips if ip.version == 4]) == 1,
             "the address to leave")
        # Stopped: gone from the rules.
        client.stop("notes-api-9", timeout=0)
        wait(lambda: "notes/notes-api-9" not in agent.endpoints(), "the stopped container to leave")
        assert agent.enforcer.in_sync(agent.reactor.last_sync.ruleset, agent.reactor.last_sync.known)
        assert iptables_save(lab) == before
    finally:
        agent.stop()
        remove(client, "notes-api-2", "notes-api-9")
        stop_stack(client, stack)


def test_engine_lost_keeps_the_rules_and_a_restarted_dockerd_leaves_them(docker: Any) -> None:
    lab, client = docker
    stack = start_stack(client)
    agent = start_agent(lab)
    try:
        wait(lambda: "notes/notes-db-1" in agent.enforced(), "the stack to be enforced")
        docker_rules = iptables_save(lab)
        remove(client, *stack.containers)  # quick: dockerd would take ~10 s to stop them itself
        wait(lambda: not agent.endpoints() and agent.enforced() == set() and agent.enforcer.applied is not None
             and agent.enforcer.live_digest() == agent.enforcer.applied.digest, "the removed stack to leave the rules")
        table, digest = nft_table(lab), agent.enforcer.live_digest()
        lab.stop_daemon()
        wait(lambda: agent.get("/readyz")[0] == 503, "/readyz to say the engine is lost")
        text = agent.get("/readyz")[1]
        assert "source problem (last applied rules still enforced): docker engine at" in text
        assert agent.get("/healthz")[0] == 200
        assert agent.metrics.value("callgate_source_up") == 0
        time.sleep(1.0)  # a resync or two while the engine is away (resync 0.5 s): nothing may change
        assert agent.enforcer.live_digest() == digest and nft_table(lab) == table

        lab.start_daemon()  # dockerd writes its iptables rules again; callgate's table stays
        wait(lambda: agent.get("/readyz")[0] == 200, "the agent to follow the engine again")
        assert agent.enforcer.live_digest() == digest and nft_table(lab) == table
        # dockerd writes its rules anew (its own order may change: docker0's first); all are back.
        assert sorted(iptables_save(lab)) == sorted(docker_rules)
        # And it follows events again.
        run(client, "notes-web-2", labels=compose("web"), network=stack.networks["front"], image=PLAIN,
            command=["/bin/httpd", "-f", "-p", "80"], exposed=["80/tcp"])
        wait(lambda: "notes/notes-web-2" in agent.enforced(), "a container started after the restart")
    finally:
        agent.stop()
        lab.start_daemon()  # whatever happened above, the next test gets an engine
        remove(client, "notes-web-2")
        stop_stack(client, stack)


def test_rules_stay_when_dockerd_restarts_without_an_agent(docker: Any) -> None:
    """Stop the agent (rules stay), restart dockerd: callgate's table is untouched and
    Docker's rules come back, every one of them."""
    lab, client = docker
    stack = start_stack(client)
    agent = start_agent(lab)
    try:
        wait(lambda: "notes/notes-web-1" in agent.enforced(), "the stack to be enforced")
    finally:
        agent.stop()
    table, docker_rules = nft_table(lab), iptables_save(lab)
    try:
        remove(client, *stack.containers)
        lab.restart_daemon()
        assert nft_table(lab) == table
        assert sorted(iptables_save(lab)) == sorted(docker_rules)  # dockerd may order its own rules anew
    finally:
        stop_stack(client, stack)


def test_hostile_label_values_never_reach_nft(docker: Any) -> None:
    lab, client = docker
    hostile = {"app": 'x" ; flush ruleset ; "', 'k"; delete table inet callgate; "': "v",
               "callgate.io/namespace": "a}; flush ruleset; {", "callgate.io/ports": 'p"; flush ruleset;=80/TCP',
               "com.docker.compose.project": "notes", "com.docker.compose.service": "web"}
    run(client, "notes-web-7", labels=hostile)
    agent = start_agent(lab)
    try:
        wait(lambda: "notes/notes-web-7" in agent.enforced(), "the container with hostile labels to be enforced")
        ruleset = subprocess.run(["ip", "netns", "exec", lab.netns, "nft", "list", "ruleset"], capture_output=True,
                                 text=True, check=True).stdout
        assert "flush" not in ruleset and "delete table" not in ruleset
        assert "table ip filter" in ruleset and "DOCKER-USER" in ruleset  # Docker's rules are all there
        ep = agent.endpoints()["notes/notes-web-7"]
        assert dict(ep.labels) == {"com.docker.compose.project": "notes", "com.docker.compose.service": "web"}
        assert [p.name for p in ep.ports] == ["80-tcp"]
    finally:
        agent.stop()
        remove(client, "notes-web-7")


def test_the_cli_agent_on_a_docker_host(docker: Any, tmp_path: Path) -> None:
    """`callgate agent --source docker` as a process: applies the engine's view, logs the
    host-network container as not enforceable and counts it, stops leaving the rules."""
    import os
    import signal

    lab, client = docker
    stack = start_stack(client)
    run(client, "monitor", network="host", command=["/bin/sleep", "3600"])
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [*CALLGATE, "agent", "--source", "docker", "--docker-host", lab.host, "--node", NODE, "--netns",
             lab.netns, "--policies", str(POLICIES), "--metrics-address", "127.0.0.1:0", "--coalesce-ms", "20"],
            stdout=subprocess.DEVNULL, stderr=log_file, cwd=ROOT, start_new_session=True)
    try:
        def logged(msg: str) -> list[dict[str, Any]]:
            return [r for r in map(_json, log_path.read_text().splitlines()) if r.get("msg") == msg]

        wait(lambda: bool(logged("applied")) or proc.poll() is not None, "the agent's first apply")
        assert proc.poll() is None, log_path.read_text()
        assert logged("agent starting")[0]["source"].startswith(f"docker {lab.host} + files ")
        unenforced = logged("not enforceable: callgate cannot filter this workload's traffic")
        assert len(unenforced) == 1 and "container monitor" in unenforced[0]["workload"]
        assert logged("applied")[0]["endpoints"] >= 4
        digest = logged("applied")[-1]["digest"]
        assert digest in nft_table(lab)  # the digest element the agent wrote
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        remove(client, "monitor")
        stop_stack(client, stack)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    assert logged("agent stopped; rules stay in the kernel")
    assert digest in nft_table(lab)  # still there


def _json(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def test_inventory_output_is_yaml_of_the_engine(docker: Any) -> None:
    lab, client = docker
    run(client, "solo", labels={"callgate.io/namespace": "tools", "team": "ops"})
    try:
        done = cli("inventory", "--from", "docker", "--docker-host", lab.host, "--netns", lab.netns)
        doc = yaml.safe_load(done.stdout)
        assert doc["kind"] == "Inventory" and doc["apiVersion"] == "callgate/v1"
        (ep,) = doc["endpoints"]
        assert (ep["name"], ep["namespace"], ep["labels"]) == ("solo", "tools", {"callgate.io/namespace": "tools",
                                                                                 "team": "ops"})
        assert ep["node"] == client.info()["Name"]  # the engine's name, without --node
    finally:
        remove(client, "solo")
