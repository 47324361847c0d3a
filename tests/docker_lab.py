"""A real Docker engine for the tests: a dockerd in a lab namespace
(:class:`callgate.lab.dockerd.DockerdLab`), a busybox image imported through
the Engine API (docker-py: no registry is reachable, and no docker CLI is
needed), and TCP probes between containers.

The image is ``/bin/busybox`` from busybox-static with links for the tools the
tests use, imported twice: ``cgbox:latest`` with ``EXPOSE 80/tcp`` and ``httpd
-f -p 80`` as its command (every container serves TCP 80 unless told
otherwise), and ``cgbox:plain`` that exposes nothing.

A probe runs busybox ``nc`` inside the source container's network namespace
(``nsenter --net=/proc/PID/ns/net``): the packets are the container's own, from
its addresses, through its veth and the bridge, as the application's would be.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callgate.agent.metrics import AgentMetrics, StatusServer
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.enforcers import get_enforcer, guard
from callgate.enforcers.placement import NodeEnforcer
from callgate.enforcers.routes import InterfaceResolver
from callgate.lab.dockerd import DockerdLab, unavailable
from callgate.watchers.docker_client import make_client
from callgate.watchers.docker_links import VethResolver
from callgate.watchers.docker_source import DockerSource
from tests.helpers import ROOT

EXAMPLE = ROOT / "examples" / "docker"
POLICIES = EXAMPLE / "policies"
NODE = "docker-1"
WAIT = 20.0
IMAGE = "cgbox:latest"  # EXPOSE 80/tcp, serves it
PLAIN = "cgbox:plain"  # exposes nothing, sleeps: what a service image is before compose.yaml says more
TOOLS = ("sh", "httpd", "sleep", "nc", "cat", "ip", "ls", "true")


def skip_reason() -> str | None:
    """Why engine tests cannot run here (then they are skipped, saying so), or None."""
    why = unavailable()
    if why:
        return why
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the docker Python package is not installed (pip install 'callgate[docker]')"
    return None


def busybox_image() -> bytes:
    """A root file system of busybox and its links, as a tar stream."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in ("bin", "tmp", "www", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add("/bin/busybox", arcname="bin/busybox")
        for tool in TOOLS:
            info = tarfile.TarInfo(f"bin/{tool}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
    return buf.getvalue()


@contextmanager
def engine(prefix: str | None = None) -> Iterator[tuple[DockerdLab, Any]]:
    """A started engine lab and a docker-py APIClient for it, with the image imported.
    Everything is removed afterwards, pass or fail."""
    import docker

    lab = DockerdLab(prefix or f"cgd-{uuid.uuid4().hex[:6]}")
    with lab:
        client = docker.APIClient(base_url=lab.host, version="auto", timeout=60)
        try:
            rootfs = busybox_image()
            client.import_image_from_data(rootfs, repository="cgbox", tag="latest",
                                          changes=["EXPOSE 80/tcp", 'CMD ["/bin/httpd", "-f", "-p", "80"]'])
            client.import_image_from_data(rootfs, repository="cgbox", tag="plain", changes=['CMD ["/bin/sleep", "3600"]'])
            yield lab, client
        finally:
            # Containers first, through the API (quick); dockerd stopping them
            # itself waits ~10 s for containerd's shims.
            with contextlib.suppress(Exception):
                remove(client, *(c["Id"] for c in client.containers(all=True)))
            client.close()


def run(client: Any, name: str, *, labels: dict[str, str] | None = None, network: str | None = None,
        command: list[str] | None = None, exposed: list[str] | None = None, ipv4: str | None = None,
        ipv6: str | None = None, image: str = IMAGE) -> dict[str, Any]:
    """Create and start a container; its inspect dict once running."""
    networking = None
    if network and (ipv4 or ipv6):
        networking = client.create_networking_config({network: client.create_endpoint_config(
            ipv4_address=ipv4, ipv6_address=ipv6)})
    ports = {p: {} for p in exposed} if exposed else None
    created = client.create_container(
        image, command=command, name=name, labels=labels or {}, networking_config=networking, ports=ports,
        host_config=client.create_host_config(network_mode=network) if network else None)
    client.start(created["Id"])
    return dict(client.inspect_container(created["Id"]))


def remove(client: Any, *names: str) -> None:
    for name in names:
        with contextlib.suppress(Exception):  # already gone
            client.remove_container(name, force=True)


def pid(client: Any, name: str) -> int:
    return int(client.inspect_container(name)["State"]["Pid"])


def address(client: Any, name: str, network: str, family: int = 4) -> str:
    settings = client.inspect_container(name)["NetworkSettings"]["Networks"][network]
    return str(settings["IPAddress"] if family == 4 else settings["GlobalIPv6Address"])


def connects(client: Any, source: str, ip: str, port: int = 80, timeout: int = 1) -> bool:
    """Does a new TCP connection from container ``source`` to ``ip``:``port`` succeed?"""
    argv = ["nsenter", f"--net=/proc/{pid(client, source)}/ns/net", "/bin/busybox", "nc", "-w", str(timeout),
            ip, str(port)]
    done = subprocess.run(argv, input="", capture_output=True, text=True, timeout=timeout + 5, check=False)
    return done.returncode == 0


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


# ---- an agent following the engine, in this process ------------------------------------------------

@dataclass
class Agent:
    reactor: Reactor
    enforcer: NodeEnforcer
    source: DockerSource
    http: StatusServer
    metrics: AgentMetrics

    def stop(self) -> None:
        self.source.stop()
        self.reactor.stop()
        self.http.stop()
        self.enforcer.close()

    def endpoints(self) -> dict[str, Any]:
        last = self.reactor.last_sync
        return {ep.key: ep for ep in last.snapshot.inventory.endpoints} if last else {}

    def enforced(self) -> set[str]:
        """Endpoints with rules in the tables the kernel holds now."""
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
    """What `callgate agent --source docker --netns LAB` runs, with short timers."""
    enforcer = get_enforcer("nft", lab.netns)
    metrics = AgentMetrics()
    reactor = Reactor(ReactorConfig(node=NODE, resync=0.5, coalesce=0.02, retry=0.2), enforcer,
                      InterfaceResolver(lab.netns), metrics,
                      guard=lambda ruleset: guard.check(ruleset, lab.netns, enforcer.name))
    http = StatusServer("127.0.0.1:0", metrics, reactor)
    client, where = make_client(lab.host)
    source = DockerSource(client, where, NODE, VethResolver(lab.netns), [policies], coalesce=0.02, heartbeat=1.0,
                          backoff=(0.1, 0.5))
    http.start()
    reactor.start()
    source.start(reactor.on_event)
    return Agent(reactor, enforcer, source, http, metrics)


def iptables_save(lab: DockerdLab) -> list[str]:
    """Docker's rules as iptables-save prints them, without counters."""
    out = subprocess.run(["ip", "netns", "exec", lab.netns, "iptables-save"], capture_output=True, text=True,
                         check=True).stdout
    return [re.sub(r" \[\d+:\d+\]$", "", line) for line in out.splitlines() if not line.startswith("#")]


def nft_table(lab: DockerdLab) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.netns, "nft", "list", "table", "inet", "callgate"],
                          capture_output=True, text=True, check=True).stdout
