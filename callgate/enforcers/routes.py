"""Find a local pod's host-side interface when the inventory leaves it out.

Routed pod networks (Calico-style, and callgate's lab) give every pod a host
route ``<pod-ip>/32 dev <host-veth>`` in the node's namespace, so the route to
the pod's IP names its interface. We ask iproute2 in JSON (``ip -j``), with an
argv list — never a shell string — and accept an answer only when it is a
direct route (no gateway) over a device that is not loopback and whose name is
a valid interface name.

First choice is the exact host route (one ``ip -j route show`` per family and
sync, read as a table of ``/32`` and ``/128`` routes). The
kernel's route lookup (``ip -j route get <ip>``) is used only when the agent
knows the container interface prefix, and only if the device carries it: a
lookup can land on an on-link subnet route of the uplink, and programming a
pod's policy on the uplink would be far worse than not knowing. Anything else means "not known yet": the pod stays
unprogrammed (dropped in fail-closed mode) and is retried on the next sync.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from callgate.policy.model import Endpoint, IPAddress
from callgate.policy.validation import interface_name
from callgate.procs import QuietRunner, json_objects, output_or_none

log = logging.getLogger("callgate.enforcers.routes")



def run_ip(argv: Sequence[str]) -> str | None:
    """Run an ``ip`` command; its stdout, or None when it failed."""
    return output_or_none(argv, log, logging.WARNING)


class InterfaceResolver:
    """Resolves endpoint interfaces in one network namespace (None: ours)."""

    def __init__(self, netns: str | None = None, runner: QuietRunner = run_ip, prefix: str | None = None) -> None:
        self.netns = netns
        self.runner = runner
        self.prefix = prefix  # container interfaces' name prefix, when known

    def _ip(self, *args: str) -> list[dict[str, Any]]:
        argv = ["ip", *(["-n", self.netns] if self.netns else []), "-j", *args]
        return json_objects(self.runner(argv))

    @staticmethod
    def _direct_dev(route: dict[str, Any]) -> str | None:
        dev = route.get("dev")
        if not isinstance(dev, str) or dev == "lo" or route.get("gateway") or route.get("via"):
            return None
        if route.get("type") not in (None, "unicast"):
            return None  # local, blackhole, unreachable… are not a pod's veth
        return None if interface_name(dev) else dev

    def host_routes(self) -> dict[IPAddress, str]:
        """Every direct host route (``/32``, ``/128``) in the main table: address -> device.
        Two ``ip`` calls per sync, however many pods the node runs."""
        out: dict[IPAddress, str] = {}
        for family in ("-4", "-6"):
            for route in self._ip(family, "route", "show"):
                dst, dev = route.get("dst"), self._direct_dev(route)
                if not isinstance(dst, str) or dev is None:
                    continue
                try:
                    net = ipaddress.ip_network(dst, strict=True)
                except ValueError:
                    continue  # "default" and other non-address destinations
                if net.prefixlen == net.max_prefixlen:
                    out[net.network_address] = dev
        return out

    def lookup(self, ip: IPAddress) -> str | None:
        """The kernel's route lookup for ``ip``; trusted only for a container interface."""
        if not self.prefix:
            return None
        for route in self._ip("-6" if ip.version == 6 else "-4", "route", "get", str(ip)):
            if (dev := self._direct_dev(route)) is not None and dev.startswith(self.prefix):
                return dev
        return None

    def resolve(self, endpoints: list[Endpoint]) -> dict[str, str]:
        """Interface per endpoint key, for those the inventory names or the
        routes reveal; endpoints missing from the result are unresolved."""
        found = {ep.key: ep.interface for ep in endpoints if ep.interface}
        missing = [ep for ep in endpoints if not ep.interface]
        if not missing:
            return found
        routes = self.host_routes()
        for ep in missing:
            ips = sorted(ep.ips, key=lambda i: (i.version, int(i)))
            dev = next((routes[ip] for ip in ips if ip in routes), None)
            if dev is None:
                dev = next((d for ip in ips if (d := self.lookup(ip)) is not None), None)
            if dev is not None:
                found[ep.key] = dev
        return found
