"""Enforcement with real packets on a real Docker engine: Debian's dockerd in a lab
network namespace (tests/docker_lab.py), an in-process agent following it.

The examples/docker stack on two user-defined bridges, two containers on the
default bridge (docker0), and replicas on a macvlan network. Before the agent
runs, every pair on one network connects: Docker's own rules accept traffic
between containers of a network (icc), so every refusal afterwards is
callgate's. With the agent: declared callers connect, everything else between
isolated containers on the same bridge is refused (IPv4 and IPv6), the macvlan
containers are enforced inside their own namespaces, Docker's isolation between
networks still holds where the policies would allow (a packet must be accepted by
both), a container replaced while the agent runs (a Compose recreate) is enforced
again, and Docker's iptables rules are the same as before.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from callgate.lab.dockerd import DockerdLab
from tests.docker_lab import (
    IMAGE,
    PLAIN,
    address,
    compose,
    connects,
    engine,
    iptables_save,
    remove,
    run,
    skip_reason,
    start_agent,
    start_stack,
    stop_stack,
    wait,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]
# The macvlan network's parent: one end of a veth pair in the lab namespace (this kernel
# has no dummy driver); children on one parent reach each other in bridge mode.
MACVLAN_PARENT = "cgdmv0"


@pytest.fixture(scope="module")
def docker() -> Iterator[tuple[DockerdLab, Any]]:
    why = skip_reason()
    if why:
        pytest.skip(f"needs a real Docker engine: {why}")
    with engine() as (lab, client):
        yield lab, client


def macvlan_network(lab: DockerdLab, client: Any) -> str:
    import docker as docker_py

    subprocess.run(["ip", "-n", lab.netns, "link", "add", MACVLAN_PARENT, "type", "veth", "peer", "name", "cgdmv1"],
                   check=True)
    for dev in (MACVLAN_PARENT, "cgdmv1"):
        subprocess.run(["ip", "-n", lab.netns, "link", "set", dev, "up"], check=True)
    client.create_network("notes_mv", driver="macvlan", options={"parent": MACVLAN_PARENT},
                          ipam=docker_py.types.IPAMConfig(pool_configs=[docker_py.types.IPAMPool(
                              subnet="198.18.227.0/24")]))
    return "notes_mv"


Probe = tuple[str, str, int, bool]  # (from container, to address, port, allowed)


def probes(client: Any, front: str, back: str, mv: str) -> list[Probe]:
    web4, api4 = address(client, "notes-web-1", front), address(client, "notes-api-1", front)
    web6, api6 = address(client, "notes-web-1", front, 6), address(client, "notes-api-1", front, 6)
    db, api_back = address(client, "notes-db-1", back), address(client, "notes-api-1", back)
    return [
        # notes_front (a user-defined bridge), IPv4 and IPv6
        ("notes-web-1", api4, 8080, True),  # web -> api: declared
        ("notes-api-1", web4, 80, False),  # api -> web: the stack's networks are excepted from web's callers
        ("notes-web-1", api6, 8080, True),
        ("notes-api-1", web6, 80, False),
        # notes_back
        ("notes-api-1", db, 5432, True),  # api -> db: declared
        ("notes-worker-1", db, 5432, True),  # worker -> db: declared
        ("notes-worker-1", api_back, 8080, False),  # worker -> api: only web may
        # docker0: neither is selected by a policy, so neither is isolated
        ("solo-a", address(client, "solo-b", "bridge"), 80, True),
        # notes_mv (macvlan): enforced inside the containers' own namespaces
        ("notes-worker-2", address(client, "notes-db-2", mv), 5432, True),
        ("intruder", address(client, "notes-db-2", mv), 5432, False),  # in project notes, but no caller of db
    ]


def observed(client: Any, checks: list[Probe]) -> list[Probe]:
    return [(src, ip, port, connects(client, src, ip, port)) for src, ip, port, _ in checks]


def test_callers_connect_and_isolated_containers_are_cut(docker: Any) -> None:
    lab, client = docker
    stack = start_stack(client)
    front, back = stack.networks["front"], stack.networks["back"]
    mv = macvlan_network(lab, client)
    extra = ["solo-a", "solo-b", "notes-db-2", "notes-worker-2", "intruder"]
    agent = None
    try:
        run(client, "solo-a", image=IMAGE)
        run(client, "solo-b", image=IMAGE)
        run(client, "notes-db-2", labels=compose("db", **{"com.docker.compose.container-number": "2"}), network=mv,
            command=["/bin/httpd", "-f", "-p", "5432"], exposed=["5432/tcp"], image=PLAIN)
        run(client, "notes-worker-2", labels=compose("worker", **{"com.docker.compose.container-number": "2"}),
            network=mv, command=["/bin/sleep", "3600"], image=PLAIN)
        run(client, "intruder", labels=compose("shell"), network=mv, command=["/bin/sleep", "3600"], image=PLAIN)
        checks = probes(client, front, back, mv)
        # Control: Docker alone lets every one of these pairs connect ...
        assert observed(client, checks) == [(s, ip, p, True) for s, ip, p, _ in checks]
        # ... and keeps its networks apart: docker0 does not reach notes_front, although web's
        # callers (198.18.0.0/15 except the stack's networks) take docker0's addresses in.
        across: list[Probe] = [("solo-a", address(client, "notes-web-1", front), 80, False)]
        assert observed(client, across) == across
        docker_rules = iptables_save(lab)

        agent = start_agent(lab)
        isolated = {f"notes/notes-{s}-1" for s in ("web", "api", "db", "worker")} | {
            "notes/notes-db-2", "notes/notes-worker-2"}
        everyone = isolated | {"notes/intruder", "default/solo-a", "default/solo-b"}
        wait(lambda: isolated <= agent.enforced() and everyone <= set(agent.endpoints()),
             "every container in the rules")
        eps = agent.endpoints()
        assert eps["notes/notes-db-2"].netns == f"/proc/{client.inspect_container('notes-db-2')['State']['Pid']}/ns/net"
        assert eps["notes/notes-db-2"].interface is None and eps["notes/notes-web-1"].interface
        assert observed(client, checks) == checks
        assert observed(client, across) == across  # both must accept: Docker's isolation still holds
        assert iptables_save(lab) == docker_rules  # not one of Docker's rules added, removed or moved

        # A Compose recreate: the api container replaced by a new one of the same name.
        remove(client, "notes-api-1")
        t0 = time.monotonic()
        run(client, "notes-api-1", labels=compose("api", **{"callgate.io/ports": "http=8080/TCP"}), network=front,
            command=["/bin/httpd", "-f", "-p", "8080"], exposed=["8080/tcp"], image=PLAIN)
        client.connect_container_to_network("notes-api-1", back)
        wait(lambda: (ep := agent.endpoints().get("notes/notes-api-1")) is not None and len(ep.ips) == 3
             and "notes/notes-api-1" in agent.enforced(), "the new api container's rules")
        assert time.monotonic() - t0 < 5.0  # two API calls and two engine events; the bench measures p99
        assert observed(client, probes(client, front, back, mv)) == probes(client, front, back, mv)
        assert iptables_save(lab) == docker_rules
    finally:
        if agent is not None:
            agent.stop()
        remove(client, *extra)
        stop_stack(client, stack)
        with contextlib.suppress(Exception):
            client.remove_network(mv)
        subprocess.run(["ip", "-n", lab.netns, "link", "del", MACVLAN_PARENT], check=False, capture_output=True)
