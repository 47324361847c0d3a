"""An in-memory Docker engine with the calls of docker-py's ``APIClient`` the
watcher makes: ``networks``, ``containers``, ``inspect_container``, ``events``
(a blocking stream that ``close()`` ends, as docker-py's CancellableStream),
``ping``, ``info`` and ``close``. Containers are inspect dicts, shaped as the
engine returns them (only the fields callgate reads, plus a few it ignores).

Tests change it as a user would change an engine (``run``, ``stop``,
``connect``) and it emits the same events; ``down()`` makes every call fail and
ends the open streams, as a dead dockerd does; ``up()`` brings it back.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any

from docker.errors import APIError, NotFound

_END = object()


class FakeStream:
    def __init__(self) -> None:
        self.items: queue.Queue[Any] = queue.Queue()
        self.closed = False

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> Any:
        item = self.items.get()
        if item is _END:
            raise StopIteration
        return item

    def close(self) -> None:
        self.closed = True
        self.items.put(_END)


def container_info(name: str, ip: str, *, network: str = "bridge", network_id: str = "net-bridge",
                   labels: dict[str, str] | None = None, exposed: tuple[str, ...] = ("80/tcp",), pid: int = 4242,
                   ipv6: str = "", mac: str | None = None, mode: str | None = None) -> dict[str, Any]:
    """An inspect dict of a running container on one network."""
    cid = hashlib.sha256(name.encode()).hexdigest()
    if mac is None:  # Docker's own scheme: 02:42 and the IPv4 address
        mac = "02:42:" + ":".join(f"{int(x):02x}" for x in ip.split(".")) if "." in ip else "02:42:00:00:00:01"
    return {
        "Id": cid, "Name": "/" + name,
        "State": {"Status": "running", "Running": True, "Paused": False, "Pid": pid},
        "HostConfig": {"NetworkMode": mode or network},
        "Config": {"Labels": dict(labels or {}), "ExposedPorts": {p: {} for p in exposed}, "Image": "cgbox"},
        "NetworkSettings": {"Networks": {network: {
            "NetworkID": network_id, "IPAddress": ip, "GlobalIPv6Address": ipv6, "MacAddress": mac}}},
    }


class FakeEngine:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nets: dict[str, dict[str, str]] = {
            "net-bridge": {"Id": "net-bridge", "Name": "bridge", "Driver": "bridge"},
            "net-host": {"Id": "net-host", "Name": "host", "Driver": "host"},
            "net-none": {"Id": "net-none", "Name": "none", "Driver": "null"},
        }
        self.running: dict[str, dict[str, Any]] = {}
        self.streams: list[FakeStream] = []
        self.alive = True
        self.frozen = False  # answers nothing, keeps streams open (a hung dockerd)
        self.calls: dict[str, int] = {}
        self.list_hook: Any = None  # called during containers(): to change the engine mid-list

    # -- what tests do ------------------------------------------------------

    def run(self, info: dict[str, Any]) -> str:
        with self.lock:
            self.running[info["Id"]] = info
        self.emit("container", "start", info["Id"], name=info["Name"].lstrip("/"))
        return str(info["Id"])

    def stop(self, cid: str) -> None:
        with self.lock:
            self.running.pop(cid, None)
        self.emit("container", "die", cid)

    def add_network(self, nid: str, name: str, driver: str) -> None:
        with self.lock:
            self.nets[nid] = {"Id": nid, "Name": name, "Driver": driver}
        self.emit("network", "create", nid, name=name, type=driver)

    def emit(self, kind: str, action: str, actor: str, **attributes: str) -> None:
        event = {"Type": kind, "Action": action, "Actor": {"ID": actor, "Attributes": attributes}}
        for stream in list(self.streams):
            if not stream.closed:
                stream.items.put(event)

    def down(self) -> None:
        self.alive = False
        for stream in self.streams:
            stream.close()

    def up(self) -> None:
        self.alive = True
        self.frozen = False

    # -- the APIClient calls --------------------------------------------------

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if not self.alive or self.frozen:
            raise APIError("('Connection aborted.', ConnectionRefusedError(111, 'Connection refused'))")

    def networks(self) -> list[dict[str, str]]:
        self._call("networks")
        with self.lock:
            return [dict(n) for n in self.nets.values()]

    def containers(self) -> list[dict[str, str]]:
        self._call("containers")
        with self.lock:
            listed = [{"Id": cid} for cid in self.running]
        if self.list_hook is not None:
            hook, self.list_hook = self.list_hook, None
            hook()
        return listed

    def inspect_container(self, cid: str) -> dict[str, Any]:
        self._call("inspect_container")
        with self.lock:
            info = self.running.get(cid)
        if info is None:
            raise NotFound(f"No such container: {cid}")
        return info

    def events(self, decode: bool = False, filters: Any = None) -> FakeStream:
        self._call("events")
        stream = FakeStream()
        self.streams.append(stream)
        return stream

    def ping(self) -> bool:
        self._call("ping")
        return True

    def info(self) -> dict[str, Any]:
        self._call("info")
        return {"Name": "docker-host-1"}

    def close(self) -> None:
        pass
