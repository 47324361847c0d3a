"""A CNI request as the ``callgate-cni`` plugin forwards it, read on the agent's side.

The plugin (``cni-plugin/callgate-cni.c``) parses nothing: it sends the CNI
environment as HTTP headers (``CNI-Command``, ``CNI-Containerid``,
``CNI-Netns``, ``CNI-Ifname``, ``CNI-Args``) and its stdin, the network
configuration, as the body, and prints whatever the agent answers. So every
check of the request happens here, in Python, against hostile input.

Network configuration (one entry of a conflist's ``plugins``)::

    {"type": "callgate-cni", "timeoutSeconds": 30}   # default 30, at most 300

The pod comes from ``CNI_ARGS`` (``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``; the
runtime's ``IgnoreUnknown=1`` and other keys are accepted), the host-side
interface and the pod's addresses from ``prevResult`` (the interface without a
``sandbox``; ``interfacePrefix`` picks one when there are several, e.g. a
bridge plugin's result lists the bridge and the veth).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from callgate.policy.model import IPAddress
from callgate.policy.validation import dns_label, dns_subdomain, interface_name

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0
MAX_BODY = 1 << 20  # a conflist entry with a prevResult is a few KiB

# CNI spec error codes
INCOMPATIBLE_VERSION, INVALID_ENV, IO_FAILURE, DECODE_FAILURE, INVALID_CONFIG, TRY_AGAIN = 1, 4, 5, 6, 7, 11
NOT_PROGRAMMED = 100  # plugin-specific: CHECK found the pod not enforced by the live rules

# CNI environment variable -> the header the plugin sends it in (HTTP header names are case-insensitive).
HEADERS = {"CNI_COMMAND": "CNI-Command", "CNI_CONTAINERID": "CNI-Containerid", "CNI_NETNS": "CNI-Netns",
           "CNI_IFNAME": "CNI-Ifname", "CNI_ARGS": "CNI-Args"}


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def result(self, version: str) -> bytes:
        """The CNI error object the plugin prints."""
        return json.dumps({"cniVersion": version, "code": self.code, "msg": self.msg,
                           "details": self.details}).encode() + b"\n"


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K=V`` as the runtime passes it in CNI_ARGS."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if part:
            key, sep, value = part.partition("=")
            if not sep:
                raise CniError(INVALID_ENV, "CNI_ARGS must be KEY=VALUE pairs separated by ';'", part[:100])
            out[key] = value
    return out


@dataclass(frozen=True)
class CniRequest:
    command: str
    container_id: str
    pod: str  # namespace/name
    config: dict[str, Any]
    version: str

    @property
    def prev_result(self) -> dict[str, Any] | None:
        prev = self.config.get("prevResult")
        return prev if isinstance(prev, dict) else None

    @property
    def timeout(self) -> float:
        value = self.config.get("timeoutSeconds", DEFAULT_TIMEOUT)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIMEOUT:
            raise CniError(INVALID_CONFIG, f"timeoutSeconds must be a number from 0 to {MAX_TIMEOUT:g}")
        return float(value)

    def host_interface(self) -> str | None:
        """The pod's host-side interface from prevResult, if it can be told apart."""
        prev = self.prev_result
        ifaces = prev.get("interfaces") if prev else None
        if not isinstance(ifaces, list):
            return None
        host = [i["name"] for i in ifaces if isinstance(i, dict) and not i.get("sandbox")
                and isinstance(i.get("name"), str) and not interface_name(i["name"])]
        prefix = self.config.get("interfacePrefix")
        if isinstance(prefix, str) and prefix:
            host = [n for n in host if n.startswith(prefix)]
        return host[0] if len(host) == 1 else None

    def ips(self) -> tuple[IPAddress, ...]:
        """The pod's addresses from prevResult (``ips[].address``, CIDR form)."""
        prev = self.prev_result
        entries = prev.get("ips") if prev else None
        if not isinstance(entries, list):
            return ()
        out: list[IPAddress] = []
        for entry in entries:
            address = entry.get("address") if isinstance(entry, dict) else None
            if not isinstance(address, str):
                continue
            try:
                ip = ipaddress.ip_interface(address).ip
            except ValueError:
                raise CniError(INVALID_CONFIG, "prevResult.ips[].address must be an address in CIDR form",
                               address[:100]) from None
            if ip not in out:
                out.append(ip)
        return tuple(out)

    def result(self) -> bytes:
        """ADD's answer: the previous result passed on, in the configuration's version."""
        return json.dumps({**(self.prev_result or {}), "cniVersion": self.version}).encode() + b"\n"


def _config(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise CniError(DECODE_FAILURE, f"network configuration is larger than {MAX_BODY} bytes")
    try:
        conf = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network configuration on stdin is not JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
    version = conf.get("cniVersion", "1.0.0")
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {str(version)[:20]!r} is not supported",
                       f"supported: {', '.join(SUPPORTED)}")
    return conf


def _pod(args: Mapping[str, str]) -> str:
    ns, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if not ns or not name:
        raise CniError(INVALID_ENV, "CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME")
    if dns_label(ns) or dns_subdomain(name):
        raise CniError(INVALID_ENV, "K8S_POD_NAMESPACE/K8S_POD_NAME are not a valid namespace and pod name",
                       f"{ns[:63]}/{name[:253]}")
    return f"{ns}/{name}"


def parse_request(env: Mapping[str, str], body: bytes) -> CniRequest:
    """The request, checked; CniError otherwise. ``env`` maps CNI_* names to values."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command[:20]!r} is not one of {', '.join(COMMANDS)}")
    conf = _config(body)
    version = str(conf.get("cniVersion", "1.0.0"))
    if command in ("GC", "STATUS"):
        return CniRequest(command, "", "", conf, version)
    container_id = env.get("CNI_CONTAINERID", "")
    if not container_id or len(container_id) > 256:
        raise CniError(INVALID_ENV, "CNI_CONTAINERID is required (at most 256 characters)")
    pod = _pod(parse_cni_args(env.get("CNI_ARGS", "")))
    request = CniRequest(command, container_id, pod, conf, version)
    if command in ("ADD", "CHECK"):
        if request.prev_result is None:
            raise CniError(INVALID_CONFIG, "callgate-cni is a chained plugin: prevResult is required")
        request.timeout  # noqa: B018  # validated now, not when the wait starts
    return request
