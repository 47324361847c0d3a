"""The engine as callgate sees it: running containers and networks, mapped.

:class:`EngineState` holds one :class:`~callgate.watchers.docker_convert.Container`
per running container and the engine's networks (their drivers decide how a
container is enforced). It is filled by a full list (:meth:`EngineState.relist`)
and kept current one container at a time (:meth:`EngineState.refresh`) as
events arrive; :meth:`EngineState.view` assembles an :class:`EngineView` —
the inventory, the containers that cannot be enforced, a version — the same
way every time (containers in name order), so equal engines give equal views.

``read_engine`` is the one-shot form (``callgate inventory --from docker``,
``callgate doctor --from docker``); the watcher (:mod:`.docker_source`) keeps
an EngineState across events.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from callgate.errors import Problem
from callgate.policy.documents import Document
from callgate.policy.inventory import InventoryBuilder
from callgate.policy.model import Inventory
from callgate.watchers.docker_convert import Container, HostInterface, Network, convert_container

log = logging.getLogger("callgate.watchers.docker")

ORIGIN = "docker"
# Document.problem() reads its file for line numbers: a path below /dev/null can
# never be opened, so nothing from the engine makes callgate read a file.
_UNREADABLE = "/dev/null/docker-engine"


@dataclass(frozen=True)
class EngineView:
    """Everything callgate takes from the engine at one moment."""

    inventory: Inventory
    # Running containers callgate sees but cannot enforce (host network, only on
    # networks it does not enforce on, two claiming one address): never silent.
    not_enforceable: tuple[Problem, ...]
    warnings: tuple[Problem, ...]  # per container: labels skipped, names changed
    version: str  # equal versions mean equal content
    unresolved: tuple[str, ...] = field(default=())  # container ids whose veth was not found (yet)


def _problem(container: Container, message: str) -> Problem:
    return Problem(message, file=ORIGIN, object=container.display)


class EngineState:
    """Containers and networks of one engine, for one node."""

    def __init__(self, client: Any, node: str, host_interface: HostInterface, log_warnings: bool = True) -> None:
        self.client = client
        self.node = node
        self.lookup = host_interface
        self.log_warnings = log_warnings  # the watcher logs them; a one-shot reader returns them
        self.containers: dict[str, Container] = {}
        self.networks: dict[str, Network] = {}
        # A running container's veth stays what it is: one look-up (a process
        # entering its namespace) per container and network, not per event.
        self._interfaces: dict[tuple[int, str], str] = {}

    def host_interface(self, pid: int, mac: str) -> str | None:
        name = self._interfaces.get((pid, mac))
        if name is None:
            name = self.lookup(pid, mac)
            if name is not None:
                self._interfaces[(pid, mac)] = name
        return name

    def refresh_networks(self) -> None:
        networks: dict[str, Network] = {}
        for raw in self.client.networks():
            if isinstance(raw, dict) and isinstance(raw.get("Id"), str):
                networks[raw["Id"]] = Network(raw["Id"], str(raw.get("Name", "")), str(raw.get("Driver", "")))
        self.networks = networks

    def relist(self) -> bool:
        """Read every running container anew; whether anything changed."""
        self.refresh_networks()
        ids = [c["Id"] for c in self.client.containers() if isinstance(c, dict) and isinstance(c.get("Id"), str)]
        before = {cid: c.digest for cid, c in self.containers.items()}
        fresh: dict[str, Container] = {}
        for cid in ids:
            container = self._inspect(cid)
            if container is not None:
                fresh[cid] = container
        self._log_warnings(fresh)
        self.containers = fresh
        pids = {c.pid for c in fresh.values()}
        self._interfaces = {k: v for k, v in self._interfaces.items() if k[0] in pids}
        return before != {cid: c.digest for cid, c in fresh.items()}

    def refresh(self, cid: str) -> bool:
        """Read one container anew (after an event about it); whether it changed."""
        old = self.containers.get(cid)
        container = self._inspect(cid)
        if container is None:
            self.containers.pop(cid, None)
            if old is not None:
                self._interfaces = {k: v for k, v in self._interfaces.items() if k[0] != old.pid}
            return old is not None
        self._log_warnings({cid: container})
        self.containers[cid] = container
        return old is None or old.digest != container.digest

    def _inspect(self, cid: str) -> Container | None:
        from docker.errors import NotFound

        try:
            info = self.client.inspect_container(cid)
        except NotFound:
            return None  # gone between the event and the look
        settings = info.get("NetworkSettings") if isinstance(info, dict) else None
        attached = settings.get("Networks") if isinstance(settings, dict) else None
        if isinstance(attached, dict) and any(
                isinstance(e, dict) and e.get("NetworkID") not in self.networks for e in attached.values()):
            self.refresh_networks()  # a network created since we last looked
        return convert_container(info, self.networks, self.node, self.host_interface)

    def _log_warnings(self, fresh: dict[str, Container]) -> None:
        """One warning line per container, when its warnings first appear or change."""
        if not self.log_warnings:
            return
        for cid, container in fresh.items():
            old = self.containers.get(cid)
            if container.warnings and (old is None or old.warnings != container.warnings):
                log.warning("%s: %s", container.display, "; ".join(container.warnings),
                            extra={"fields": {"container": container.name, "warnings": list(container.warnings)}})

    def view(self) -> EngineView:
        return assemble(self.containers.values())


def assemble(containers: Any) -> EngineView:
    """Build the inventory from mapped containers (in name order, so a conflict —
    two containers claiming one address — is decided the same way every time)."""
    builder = InventoryBuilder()
    not_enforceable: list[Problem] = []
    warnings: list[Problem] = []
    hasher = hashlib.sha256()
    ordered = sorted(containers, key=lambda c: (c.name, c.id))
    for container in ordered:
        hasher.update(f"{container.id}\0{container.digest}\n".encode())
        warnings += [_problem(container, w) for w in container.warnings]
        if container.not_enforceable:
            not_enforceable.append(_problem(container, container.not_enforceable))
        if container.endpoint is None:
            continue
        before = len(builder.problems)
        builder.endpoint(container.endpoint, Document(_UNREADABLE, 0, {}), container.display, ("Name",),
                         ("NetworkSettings", "Networks"))
        if len(builder.problems) > before:
            not_enforceable += [_problem(container, p.message) for p in builder.problems[before:]]
    builder.problems.clear()  # reported per container above; finish() only adds implied namespaces
    return EngineView(builder.finish(), tuple(not_enforceable), tuple(warnings), hasher.hexdigest()[:16],
                      tuple(c.id for c in ordered if c.unresolved))


def read_engine(client: Any, node: str, host_interface: HostInterface) -> EngineView:
    """The engine's containers as callgate sees them, now (one list, one inspect each)."""
    state = EngineState(client, node, host_interface, log_warnings=False)
    state.relist()
    return state.view()
