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

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from callgate.lab.dockerd import DockerdLab
from callgate.policy import load_inventory
from tests.docker_lab import (
    EXAMPLE,
    NODE,
    PLAIN,
    POLICIES,
    compose,
    engine,
    iptables_save,
    nft_table,
    remove,
    run,
    skip_reason,
    start_agent,
    start_stack,
    stop_stack,
    wait,
)
from tests.helpers import ROOT

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]
CALLGATE = [sys.executable, "-m", "callgate"]


@pytest.fixture(scope="module")
def docker() -> Iterator[tuple[DockerdLab, Any]]:
    why = skip_reason()
    if why:
        pytest.skip(f"needs a real Docker engine: {why}")
    with engine() as (lab, client):
        yield lab, client


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

        # doctor reads the same engine: every container is a port of its Docker bridge, and the
        # host-network one is named as not enforceable, which makes the exit code 1.
        doctor = cli("doctor", "--from", "docker", "--docker-host", lab.host, "--node", NODE, "--netns", lab.netns,
                     check=1).stdout
        web_bridge = "br-" + net_ids["notes_front"][:12]
        assert f"notes/notes-web-1     bridge port: {web.interface} of bridge {web_bridge}  ok" in doctor, doctor
        assert "default/odd-one       bridge port: " in doctor and "DEFEATED" not in doctor
        assert "  container monitor  not enforceable: uses the host's network stack" in doctor
        assert doctor.rstrip().endswith("1 workload(s) callgate cannot enforce")
    finally:
        remove(client, "monitor", "odd_one")
        stop_stack(client, stack)


# ---- an agent following the engine ---------------------------------------------------------------

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


def test_a_restarted_agent_adopts_the_table(docker: Any) -> None:
    """The agent stopped (rules stay) and started again on the same engine: the live
    tables are what it would write, so it adopts them without a transaction."""
    lab, client = docker
    stack = start_stack(client)
    first = start_agent(lab)
    try:
        wait(lambda: "notes/notes-web-1" in first.enforced(), "the stack to be enforced")
        assert first.reactor.transactions["full"] == 1
    finally:
        first.stop()
    table = nft_table(lab)
    second = start_agent(lab)
    try:
        wait(lambda: second.reactor.last_sync is not None, "the restarted agent's first sync")
        assert "notes/notes-web-1" in second.enforced()
        assert sum(second.reactor.transactions.values()) == 0  # adopted: nothing written
        assert nft_table(lab) == table
    finally:
        second.stop()
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
        # dockerd answers before it has put all of its own rules back (the nat table's
        # jumps came last in one run): wait for every one of them, in whatever order.
        wait(lambda: sorted(iptables_save(lab)) == sorted(docker_rules), "Docker's own rules to be back")
        assert nft_table(lab) == table
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
