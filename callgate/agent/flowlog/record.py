"""One flow record: a logged new connection, as a JSON Lines object.

Exactly these fields, in this order (the README's "Flow records" documents
them): ``time`` (RFC 3339, UTC, microseconds), ``node``, ``verdict`` (deny,
would-deny, allow), ``direction`` (ingress or egress: the side that decided),
``protocol`` (TCP, UDP, ICMP, … or the protocol number), ``src`` and ``dst``
(``{ip, port, endpoint}``; ``endpoint`` is "namespace/name" or null, ``port``
null for protocols without ports) and ``policies`` (the deciding rule's
policy, or for a default deny the policies isolating the endpoint on that
side).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

VERDICTS = ("deny", "would-deny", "allow")
DIRECTIONS = ("ingress", "egress")
FIELDS = ("time", "node", "verdict", "direction", "protocol", "src", "dst", "policies")

_PROTOCOL_NAMES = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 47: "GRE", 50: "ESP", 51: "AH", 58: "ICMPv6",
                   132: "SCTP", 136: "UDPLite"}


def protocol_name(number: int) -> str:
    """The record's name of an IP protocol number ("TCP"; "253" when it has none here)."""
    return _PROTOCOL_NAMES.get(number, str(number))


@dataclass(frozen=True, slots=True)
class FlowPeer:
    ip: str
    port: int | None
    endpoint: str | None  # "namespace/name" of a known endpoint

    def to_json(self) -> dict[str, Any]:
        return {"ip": self.ip, "port": self.port, "endpoint": self.endpoint}


@dataclass(frozen=True, slots=True)
class FlowRecord:
    time: float  # seconds since the epoch
    node: str
    verdict: str
    direction: str
    protocol: str
    src: FlowPeer
    dst: FlowPeer
    policies: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"time": rfc3339(self.time), "node": self.node, "verdict": self.verdict, "direction": self.direction,
                "protocol": self.protocol, "src": self.src.to_json(), "dst": self.dst.to_json(),
                "policies": list(self.policies)}

    def line(self) -> str:
        """The record as one JSON Lines line (with its newline)."""
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RecordError(ValueError):
    """A line that is not a flow record; the message says which field and why."""


def parse_record(line: str) -> FlowRecord:
    """A record from one JSON Lines line; RecordError naming the field when it is not one."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    missing = [f for f in FIELDS if f not in data]
    if missing:
        raise RecordError(f"missing field(s) {', '.join(missing)}")
    try:
        when = datetime.strptime(_text(data, "time"), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise RecordError("field time: expected RFC 3339 UTC like 2026-01-02T03:04:05.000000Z") from None
    verdict, direction = _text(data, "verdict"), _text(data, "direction")
    if verdict not in VERDICTS:
        raise RecordError(f"field verdict: expected one of {', '.join(VERDICTS)}, got {verdict!r}")
    if direction not in DIRECTIONS:
        raise RecordError(f"field direction: expected ingress or egress, got {direction!r}")
    policies = data["policies"]
    if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
        raise RecordError("field policies: expected a list of strings")
    return FlowRecord(time=when, node=_text(data, "node"), verdict=verdict, direction=direction,
                      protocol=_text(data, "protocol"), src=_peer(data, "src"), dst=_peer(data, "dst"),
                      policies=tuple(policies))


def _text(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise RecordError(f"field {key}: expected a string")
    return value


def _peer(data: dict[str, Any], key: str) -> FlowPeer:
    value = data[key]
    if not isinstance(value, dict) or set(value) != {"ip", "port", "endpoint"}:
        raise RecordError(f"field {key}: expected an object with ip, port and endpoint")
    ip, port, endpoint = value["ip"], value["port"], value["endpoint"]
    try:
        ipaddress.ip_address(ip)
    except (TypeError, ValueError):
        raise RecordError(f"field {key}.ip: expected an IP address, got {ip!r}") from None
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535):
        raise RecordError(f"field {key}.port: expected a port number or null, got {port!r}")
    if endpoint is not None and not isinstance(endpoint, str):
        raise RecordError(f"field {key}.endpoint: expected \"namespace/name\" or null")
    return FlowPeer(ip=ip, port=port, endpoint=endpoint)
