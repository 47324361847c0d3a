"""Connectivity expectations: a small line format kept beside the policies.

One expectation per line; ``#`` starts a comment::

    # who must reach whom, and who must not
    edge/storefront -> shop/cart 8080/TCP: allow
    shop/cart -> shop/ledger 9090/TCP, 9125/UDP: allow
    * -> shop/ledger: deny except shop/cart
    shop/batch -> *: deny
    app=storefront -> 198.18.53.10 53/UDP: allow

``SOURCE -> DESTINATION [PORTS]: allow|deny [except SOURCE, ...]``

Selectors (no spaces inside):

* ``*``: every endpoint of the inventory;
* ``ns/name``: the app ``name`` of namespace ``ns`` (its app label, as matrix,
  graph and diff name groups) and the endpoint ``ns/name``; ``ns/*``: every
  endpoint of a namespace; ``name``: the app ``name`` in every namespace;
* ``key=value,key2!=v,key3,!key4``: a label selector over all namespaces, and
  ``ns/key=value...`` within one;
* an IP address, also outside the inventory.

Ports: ``80``, ``80/UDP``, ``8000-8100/TCP``, comma-separated. Left out,
``allow`` means every port the destination serves (declares) and ``deny``
means every port of every protocol: "batch may call nothing" needs no list.
``except`` names sources that get the opposite verdict ("nobody but cart").
A pod and itself are never a pair. A selector that selects nothing fails the
expectation: a typo must not pass.

The format is not YAML on purpose: a file of expectations can sit in the
policy directory without the policy loader reading it, and one line reads as
the sentence it asserts.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from callgate.analysis.connectivity import ProtocolPortRange
from callgate.analysis.groups import APP_LABELS
from callgate.errors import InputError, Problem
from callgate.policy.model import PROTOCOLS, Endpoint, IPAddress, LabelSelector, PortProtocol, Requirement

_LINE = re.compile(
    r"^(?P<src>\S+)\s+->\s+(?P<dst>\S+?)(?:\s+(?P<ports>[^:]*?))?\s*:\s+(?P<verdict>\S+)"
    r"(?:\s+except\s+(?P<except>.+))?$")
_KEY = re.compile(r"^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PORT = re.compile(r"^(?P<lo>\d+)(?:-(?P<hi>\d+))?(?:/(?P<proto>[A-Za-z]+))?$")


@dataclass(frozen=True)
class Selector:
    """Which endpoints (or which address) one side of an expectation names."""

    text: str
    namespace: str | None = None  # None: every namespace
    name: str | None = None  # an app, or an endpoint's name
    labels: LabelSelector | None = None
    ip: IPAddress | None = None

    def matches(self, ep: Endpoint) -> bool:
        if self.ip is not None:
            return self.ip in ep.ips
        if self.namespace is not None and ep.namespace != self.namespace:
            return False
        if self.name is not None and self.name != app_of(ep) and (self.namespace is None or ep.name != self.name):
            return False
        return self.labels is None or self.labels.matches(ep.labels)


def app_of(ep: Endpoint) -> str | None:
    """The endpoint's app: its first app label (as groups are named)."""
    return next((ep.labels[k] for k in APP_LABELS if k in ep.labels), None)


@dataclass(frozen=True)
class Expectation:
    """One line: pairs of SOURCE and DESTINATION must (not) connect on PORTS."""

    file: str
    line: int
    text: str
    sources: Selector
    destinations: Selector
    ports: tuple[ProtocolPortRange, ...]  # empty: served ports (allow) or every port (deny)
    allow: bool
    exceptions: tuple[Selector, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def expected(self, source: Endpoint | None, source_ip: IPAddress) -> bool:
        """The verdict expected for pairs from this source."""
        excepted = any((s.matches(source) if source is not None else s.ip == source_ip) for s in self.exceptions)
        return self.allow != excepted


def _labels(text: str) -> LabelSelector:
    pairs: list[tuple[str, str]] = []
    reqs: list[Requirement] = []
    for term in text.split(","):
        value = ""
        if "!=" in term:
            key, value = term.split("!=", 1)
            reqs.append(Requirement(key, "NotIn", frozenset({value})))
        elif "=" in term:
            key, value = term.split("=", 1)
            pairs.append((key, value))
        elif term.startswith("!"):
            key = term[1:]
            reqs.append(Requirement(key, "DoesNotExist"))
        else:
            key = term
            reqs.append(Requirement(key, "Exists"))
        if not _KEY.match(key):
            raise ValueError(f"{key!r} is not a label key")
        if not _VALUE.match(value):
            raise ValueError(f"{value!r} is not a label value")
    return LabelSelector(tuple(sorted(pairs)), tuple(reqs))


def parse_selector(text: str) -> Selector:
    if text == "*":
        return Selector(text)
    try:
        return Selector(text, ip=ipaddress.ip_address(text))
    except ValueError:
        pass
    namespace, slash, rest = text.partition("/")
    if not slash:
        namespace, rest = "", text
    if not rest:
        raise ValueError(f"{text!r}: expected *, ns/name, ns/*, labels such as app=cart, or an IP address")
    is_labels = "=" in rest or rest.startswith("!")
    ns = namespace or None
    if rest == "*":
        return Selector(text, namespace=ns)
    if is_labels:
        return Selector(text, namespace=ns, labels=_labels(rest))
    return Selector(text, namespace=ns, name=rest)


def parse_ports(text: str) -> tuple[ProtocolPortRange, ...]:
    out: list[ProtocolPortRange] = []
    for item in (t.strip() for t in text.split(",")):
        m = _PORT.match(item)
        if not m:
            raise ValueError(f"port {item!r}: expected 80, 80/UDP or 8000-8100/TCP")
        proto = (m["proto"] or "TCP").upper()
        if proto not in PROTOCOLS:
            raise ValueError(f"port {item!r}: the protocol must be one of {', '.join(PROTOCOLS)}")
        lo, hi = int(m["lo"]), int(m["hi"] or m["lo"])
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"port {item!r}: ports run from 1 to 65535, low to high")
        protocol: PortProtocol = proto  # type: ignore[assignment]
        out.append(ProtocolPortRange(protocol, lo, hi))
    return tuple(out)


def parse_line(file: str, number: int, raw: str) -> Expectation | None:
    """One line as an expectation (None for a blank or comment line); ValueError says what is wrong."""
    text = raw.split("#", 1)[0].strip()
    if not text:
        return None
    m = _LINE.match(text)
    if not m:
        raise ValueError("expected SOURCE -> DESTINATION [PORTS]: allow|deny [except SOURCE, ...]")
    verdict = m["verdict"].lower()
    if verdict not in ("allow", "deny"):
        raise ValueError(f"the verdict is allow or deny, not {m['verdict']!r}")
    exceptions = tuple(parse_selector(s.strip()) for s in m["except"].split(",")) if m["except"] else ()
    ports = parse_ports(m["ports"]) if m["ports"] else ()
    return Expectation(file, number, text, parse_selector(m["src"]), parse_selector(m["dst"]), ports,
                       verdict == "allow", exceptions)


def load_expectations(paths: list[str]) -> list[Expectation]:
    """Every expectation of every file; all problems of all files at once."""
    out: list[Expectation] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(f"cannot read file: {exc}", file=path))
            continue
        for number, raw in enumerate(lines, start=1):
            try:
                found = parse_line(path, number, raw)
            except ValueError as exc:
                problems.append(Problem(str(exc), file=path, line=number))
                continue
            if found is not None:
                out.append(found)
    if problems:
        raise InputError(problems)
    return out
