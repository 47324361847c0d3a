"""Find a container's host-side veth from its interface's link index.

Docker does not say which host interface belongs to a container. The kernel
does: inside the container's network namespace, its interface (found by the
MAC address the engine reports for that network) has a *link index*, the
interface index of its veth peer in the namespace the engine created it in (the
node's). That peer's own link index points back at the container's interface;
both must agree before a name is trusted.

The container's side is read with ``nsenter --net=/proc/PID/ns/net ip -j link
show`` (iproute2 in our own mount namespace, so the container cannot fake
what it reports; argv lists, never a shell); the node's side with ``ip [-n
NETNS] -j link show``, cached and read again when an index is not in it.
Reading only: nothing here changes a namespace.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from callgate.policy.validation import interface_name
from callgate.procs import QuietRunner, json_objects, output_or_none

log = logging.getLogger("callgate.watchers.docker")



def run_command(argv: Sequence[str]) -> str | None:
    """stdout of ``argv``, or None when it failed (the container may be gone)."""
    return output_or_none(argv, log)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class VethResolver:
    """Host-side veth names, in the node's network namespace ``netns`` (a name
    under /run/netns; None: ours), for containers' interfaces."""

    def __init__(self, netns: str | None = None, runner: QuietRunner = run_command) -> None:
        self.netns = netns
        self.runner = runner
        self._host: dict[int, tuple[str, int | None]] = {}  # ifindex -> (name, peer's ifindex)

    def _read_host(self) -> None:
        argv = ["ip", *(["-n", self.netns] if self.netns else []), "-j", "link", "show"]
        host: dict[int, tuple[str, int | None]] = {}
        for link in json_objects(self.runner(argv)):
            index, name = _int(link.get("ifindex")), link.get("ifname")
            if index is not None and isinstance(name, str) and not interface_name(name):
                host[index] = (name, _int(link.get("link_index")))
        self._host = host

    def __call__(self, pid: int, mac: str) -> str | None:
        """The host side of container ``pid``'s interface with address ``mac``."""
        if not isinstance(pid, int) or pid <= 0 or not mac:
            return None
        inside = json_objects(self.runner(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-j", "link", "show"]))
        own = next((link for link in inside if str(link.get("address", "")).lower() == mac.lower()), None)
        if own is None:
            return None
        index, peer = _int(own.get("ifindex")), _int(own.get("link_index"))
        if index is None or peer is None:
            return None  # not a veth (or its peer is not known to the kernel)
        for attempt in range(2):
            if attempt or peer not in self._host:
                self._read_host()
            found = self._host.get(peer)
            if found is not None and found[1] == index:
                return found[0]
        return None
