"""Name and value rules as the Kubernetes API server enforces them."""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, PlainValidator
from pydantic_core import PydanticCustomError

from callgate.errors import shown
from callgate.policy.model import IPAddress, IPNetwork

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# Linux interface names: at most 15 bytes; no "/", ":" (the kernel refuses it) or whitespace; not "." or "..".
_IFNAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,15}$")


# The checks below are pure functions of one string, and a big inventory asks
# them about the same few label keys, values, names and port names tens of
# thousands of times: memoised, a 50,000-pod inventory validates ~1 s sooner.
_memo = functools.lru_cache(maxsize=1 << 16)


@_memo
def dns_label(value: str) -> str | None:
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        return "must be a DNS-1123 label (lower-case alphanumerics and '-', at most 63 characters)"
    return None


@_memo
def dns_subdomain(value: str) -> str | None:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        return "must be a DNS-1123 subdomain (lower-case alphanumerics, '-' and '.', at most 253 characters)"
    return None


@_memo
def label_key(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and dns_subdomain(prefix):
        return f"label key prefix {shown(prefix)} must be a DNS-1123 subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (f"label key {shown(key)} must be at most 63 characters: alphanumerics, '-', '_' or '.', "
                "starting and ending with an alphanumeric")
    return None


@_memo
def label_value(value: str) -> str | None:
    if value == "":
        return None
    if len(value) > 63 or not _LABEL_NAME.match(value):
        return (f"label value {shown(value)} must be empty or at most 63 characters: alphanumerics, '-', '_' or '.', "
                "starting and ending with an alphanumeric")
    return None


@_memo
def port_name(value: str) -> str | None:
    if (
        len(value) > 15
        or not _IANA_SVC_NAME.match(value)
        or "--" in value
        or not any(c.isalpha() for c in value)
    ):
        return (f"port name {shown(value)} must be an IANA service name: at most 15 lower-case alphanumerics or '-', "
                "with at least one letter and no '--'")
    return None


@_memo
def interface_name(value: str) -> str | None:
    if value in (".", "..") or not _IFNAME.match(value):
        return f"interface name {shown(value)} must be 1-15 characters of letters, digits and '_.@+-'"
    return None


def _parsed_ip(value: object) -> IPAddress:
    """An address field's text, parsed once: the models hold the address itself,
    so the loaders do not parse 100,000 addresses a second time."""
    if not isinstance(value, str):  # what the text type said before it was parsed here
        raise PydanticCustomError("string_type", "Input should be a valid string")
    try:
        return parse_ip(value)
    except ValueError:
        raise ValueError(f"{shown(value)} is not an IPv4 or IPv6 address") from None


def parse_ip(text: str) -> IPAddress:
    """``ipaddress.ip_address(text)``, five to ten times faster for the usual
    forms: ``inet_pton`` accepts exactly the dotted quads and IPv6 texts that
    ``ipaddress`` does without a scope id (no leading zeros, four octets,
    valid hextets); anything else, invalid or scoped, goes to ``ipaddress``,
    which raises its own ValueError or builds what it always built."""
    try:
        if ":" in text:
            return ipaddress.IPv6Address(int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big"))
        return ipaddress.IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except (OSError, ValueError, TypeError):  # UnicodeError is a ValueError
        return ipaddress.ip_address(text)


# A network namespace file: a name under /run/netns (as `ip netns` makes them) or
# a process's namespace. Nothing else: the path is opened as root, so it must not
# be able to name any other file, climb out with "..", or carry odd characters.
_NETNS_NAMED = re.compile(r"^/run/netns/([A-Za-z0-9_.-]{1,64})$")
_NETNS_PROC = re.compile(r"^/proc/([1-9][0-9]{0,9})/ns/net$")


def netns_path(value: str) -> str | None:
    named = _NETNS_NAMED.match(value)
    if named and named.group(1) not in (".", ".."):
        return None
    proc = _NETNS_PROC.match(value)
    if proc and int(proc.group(1)) <= 4_194_304:  # PID_MAX_LIMIT
        return None
    return (f"netns {shown(value)} must be the path of a network namespace: /run/netns/NAME (NAME: 1-64 letters, "
            "digits, '_', '.' or '-') or /proc/PID/ns/net")


@_memo  # policies repeat their ipBlocks (a network is an immutable value)
def parse_cidr(value: str) -> IPNetwork:
    """Parse a CIDR as the API server does: host bits are tolerated and cleared."""
    if "/" not in value:
        raise ValueError(f"{shown(value)} is not a CIDR (expected address/prefix-length, e.g. 198.18.0.0/24)")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{shown(value)} is not a valid CIDR") from None


def _checked(check: Callable[[str], str | None]) -> AfterValidator:
    def validate(value: str) -> str:
        if err := check(value):
            raise ValueError(err)
        return value

    return AfterValidator(validate)


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if err := label_key(key) or label_value(value):
            raise ValueError(err)
    return labels


# Field types for the pydantic boundary models: the rule travels with the type,
# so every model that holds a namespace or a label map checks it the same way.
DnsLabel = Annotated[str, _checked(dns_label)]
DnsSubdomain = Annotated[str, _checked(dns_subdomain)]
PortName = Annotated[str, _checked(port_name)]
InterfaceName = Annotated[str, _checked(interface_name)]
IPAddressValue = Annotated[IPAddress, PlainValidator(_parsed_ip)]
NetnsPath = Annotated[str, _checked(netns_path)]
LabelKey = Annotated[str, _checked(label_key)]
Labels = Annotated[dict[str, str], AfterValidator(check_labels)]
