"""What CNI ADD told the agent about local pods, before the API knows it.

kubelet writes a pod's ``status.podIP`` only after the whole CNI chain has
returned, so while ``callgate-cni`` holds ADD the API has the Pod (its labels,
its node) but not its address, and ptp or bridge name the host veth randomly.
The plugin therefore hands the agent what the runtime knows: the pod, the
sandbox (container id), the host-side interface and the addresses in
``prevResult``. :meth:`Attachments.overlay` lays that over the source's
inventory on every sync:

* the attached pod's endpoint gets the attachment's interface and addresses
  (the live sandbox is the truth: a recreated sandbox with a new address wins
  over the old ``podIP`` the API still shows);
* the attachment's addresses are taken from every other endpoint (host-local
  hands a freed address to the next pod while the API may still show it on a
  terminating one);
* an attachment whose Pod the source has not delivered yet is reported as
  waiting: labels come only from the API.

An attachment ends with DEL of its sandbox, when a newer sandbox of the
same pod is added, or when its Pod has been absent from the inventory for
longer than any ADD can wait (the Pod was deleted and the DEL never reached
the agent): otherwise a stale attachment would keep claiming an address
host-local may hand out again.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from callgate.cni.request import MAX_TIMEOUT
from callgate.policy.model import Inventory, IPAddress

# An attachment whose Pod the inventory lacks this long is stale (no ADD waits longer).
STALE_AFTER = MAX_TIMEOUT + 60


@dataclass(frozen=True)
class Attachment:
    pod: str  # namespace/name
    container_id: str
    interface: str | None
    ips: tuple[IPAddress, ...]
    added_at: float = field(default=0.0, compare=False)  # the clock of Attachments, set by add()


class Attachments:
    """Thread-safe: the CNI socket's threads write, the reactor's worker reads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._by_pod: dict[str, Attachment] = {}
        self._clock = clock

    def add(self, attachment: Attachment) -> None:
        with self._lock:
            self._by_pod[attachment.pod] = dataclasses.replace(attachment, added_at=self._clock())

    def remove(self, pod: str, container_id: str) -> bool:
        """Forget the pod's attachment if it is this sandbox's (a late DEL of an
        old sandbox must not drop the new one); True if something was removed."""
        with self._lock:
            if (found := self._by_pod.get(pod)) is not None and found.container_id == container_id:
                del self._by_pod[pod]
                return True
            return False

    def snapshot(self) -> dict[str, Attachment]:
        with self._lock:
            return dict(self._by_pod)

    def overlay(self, inventory: Inventory, node: str) -> tuple[Inventory, dict[str, str]]:
        """The inventory with the attachments laid over it, and the attached
        pods it does not hold yet (pod -> why)."""
        attached = self.snapshot()
        if not attached:
            return inventory, {}
        present = {ep.key for ep in inventory.endpoints if ep.node == node}
        stale = [a for a in attached.values() if a.pod not in present and self._clock() - a.added_at > STALE_AFTER]
        if stale:
            for a in stale:
                self.remove(a.pod, a.container_id)
                del attached[a.pod]
        claimed: dict[IPAddress, str] = {ip: a.pod for a in attached.values() for ip in a.ips}
        waiting = {pod: "CNI ADD seen; waiting for the Pod object from the API" for pod in attached}
        endpoints = []
        for ep in inventory.endpoints:
            att = attached.get(ep.key) if ep.node == node else None
            if att is not None:
                waiting.pop(ep.key, None)
                ips = att.ips or ep.ips
                ep = dataclasses.replace(ep, interface=att.interface or ep.interface,
                                         ips=tuple(ip for ip in ips if claimed.get(ip, ep.key) == ep.key))
            elif any(ip in claimed for ip in ep.ips):
                ep = dataclasses.replace(ep, ips=tuple(ip for ip in ep.ips if ip not in claimed))
            endpoints.append(ep)
        return dataclasses.replace(inventory, endpoints=tuple(endpoints)), waiting
