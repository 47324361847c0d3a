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
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from callgate.lab.dockerd import DockerdLab, unavailable

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
