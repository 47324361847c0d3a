"""The backend contract: what every enforcer offers, takes and returns.

A backend walks the RuleSet IR and nothing else. Its transactions are values
(build one, print it, check it, run it); :meth:`Enforcer.apply` answers with
one :class:`ApplyResult` whatever the backend; fail-closed mode is the same
:class:`FailClosed` everywhere; and every backend labels a kernel rule the
same way (:func:`rule_comment`), so counters and logs map back to policies
through :meth:`~callgate.compiler.ir.RuleSet.rule_origins` whoever wrote them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from callgate.compiler.ir import AddressSet, Rule, RuleSet
from callgate.errors import InputError, Problem

# noop: the kernel already held it; incremental: only what changed went in;
# full: everything callgate owns was rewritten (or, for a dry run, would be).
ApplyMode = Literal["noop", "incremental", "full"]

# Where a backend enforces. "node": in the node's network namespace, on the
# forward hook, for every local endpoint with a host-side interface (routed
# veths and bridge ports alike, dispatched by address). "netns": inside one
# endpoint's own network namespace, on the input and output hooks (macvlan,
# ipvlan: no host-side interface, no host hook on the path).
Placement = Literal["node", "netns"]


class Transaction(Protocol):
    @property
    def digest(self) -> str:
        """Digest of what the transaction leaves in the kernel."""

    def text(self) -> str:
        """Human-readable form: the backend's own syntax (``compile --format text``)."""

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form (``compile --format json``)."""


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    digest: str
    transaction: Transaction
    mode: ApplyMode
    dry_run: bool = False
    # The live state was not what this enforcer last applied: someone else
    # changed or deleted it (the agent counts these as drift repairs). A
    # backend that cannot tell reports False; the agent's resync finds it.
    drift: bool = False
    # Applied, but something around it did not go as planned (logged as well).
    warnings: tuple[str, ...] = ()


# A prefix becomes an interface wildcard ("cg*" in nft, "cg+" in iptables):
# letters, digits, '_', '.', '-' only, so nothing in it can be read as another
# wildcard or an escape; 14 characters leave room for one more in an ifname.
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,14}")


def check_fail_closed_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe interface-name prefix; ValueError otherwise."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"fail-closed prefix {prefix!r} must be 1-14 characters of letters, digits, '_', '.' or '-'")
    return prefix


@dataclass(frozen=True)
class FailClosed:
    """Drop forwarded traffic on ``prefix*`` interfaces not in ``known``: a
    container whose veth appears before its policy is programmed is cut off,
    not open."""

    prefix: str
    known: tuple[str, ...]  # sorted, unique interface names

    @classmethod
    def build(cls, prefix: str, ruleset: RuleSet, known: Iterable[str] = ()) -> FailClosed:
        # The RuleSet's local endpoints are always known; the caller may add
        # more interfaces (the agent: every interface it resolved).
        local = (le.interface for le in ruleset.local if le.interface is not None)
        return cls(check_fail_closed_prefix(prefix), tuple(sorted({*known, *local})))


def refuse_interfaces(ruleset: RuleSet, fail_closed: FailClosed | None, problem: Callable[[str], str | None]) -> None:
    """Raise InputError naming every interface of ``ruleset`` (and of fail-closed's known
    ones) that a backend cannot write, ``problem`` saying why, before anything reaches
    the kernel. Interface names are validated upstream for all backends; each backend
    has a name or two its own syntax reads as something else."""
    interfaces = {le.endpoint: le.interface for le in ruleset.local if le.interface is not None}
    interfaces.update((ep.endpoint, ep.interface) for ep in ruleset.endpoints if ep.interface is not None)
    problems = [Problem(why, object=f"endpoint {endpoint}", field="interface")
                for endpoint, iface in sorted(interfaces.items()) if (why := problem(iface))]
    problems += [Problem(why, object="known interfaces")
                 for iface in (fail_closed.known if fail_closed else ()) if (why := problem(iface))]
    if problems:
        raise InputError(problems)


@dataclass(frozen=True)
class FlowLogging:
    """Log new connections to NFLOG ``group``, labelled by
    :mod:`callgate.enforcers.logprefix`: denied ones (and audited would-deny
    ones) always, allowed ones when ``allowed``. At most ``rate`` logged
    packets per second per local endpoint address and direction, in bursts of
    up to twice that: the kernel counts what the limit holds back (the rules
    commented :data:`FLOW_LOG_LIMITED`) and does not log it, so a storm at one
    pod costs the agent ``rate`` records a second, not one per packet."""

    group: int
    allowed: bool = False
    rate: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.group <= 0xFFFF:
            raise ValueError(f"NFLOG group {self.group} is not between 0 and 65535")
        if not 1 <= self.rate <= 100_000:
            raise ValueError(f"flow-log rate {self.rate} is not between 1 and 100000 per second")

    def key(self) -> str:
        """What the layout digest covers of these settings."""
        return f"flowlog:{self.group}:{int(self.allowed)}:{self.rate}"


# The comment of the rules that count the packets a flow-log limit kept out of the log.
FLOW_LOG_LIMITED = "callgate flow-log limited"


@dataclass(frozen=True)
class Applied:
    """What an enforcer last put into the kernel."""

    ruleset: RuleSet
    digest: str
    fail_closed: FailClosed | None = None


@dataclass(frozen=True)
class RuleCounters:
    """The live rules' counters, as callgate labelled them."""

    by_rule: Mapping[str, tuple[int, int]]  # rule id -> (packets, bytes), summed over the rules carrying it
    fail_closed_dropped: int = 0  # packets the fail-closed rules dropped
    flow_log_limited: int = 0  # packets a flow-log rate limit kept out of the log
    spoofed_dropped: int = 0  # packets anti-spoofing dropped (sent from an address not the endpoint's own)


_UNSAFE_COMMENT = re.compile(r"[^\x20-\x7e]|[\"'\\]")


def equal_sets(sets: Iterable[AddressSet]) -> dict[str, str]:
    """Which address sets a backend need not hold: name -> the name of the set it
    holds instead, the first (by name) of those with the same content.

    The IR names a peer set by the peer definitions it is the union of, so
    definitions that select the same pods are different sets (at Antrea's scale
    point 54 sets of one node held 10 distinct contents, 1.38 million elements
    instead of 255,000). The first by name keeps its name, and its kernel object,
    for as long as it has that content. Compared by a digest cached on each set:
    the sets a change leaves alone are the same objects, so this costs nothing then,
    and only for sets whose size and ends are another's too."""
    alike: dict[tuple[str, int, tuple[str, ...], tuple[str, ...]], list[AddressSet]] = {}
    for s in sets:
        alike.setdefault((s.family, len(s.elements), s.elements[:1], s.elements[-1:]), []).append(s)
    instead: dict[str, str] = {}
    for group in alike.values():
        if len(group) < 2:
            continue
        first: dict[str, str] = {}
        for s in sorted(group, key=lambda s: s.name):
            kept = first.setdefault(s.content_digest, s.name)
            if kept != s.name:
                instead[s.name] = kept
    return instead


def rule_comment(rule: Rule, limit: int) -> str | None:
    """A rule's comment in the kernel, at most ``limit`` bytes: its id, which
    is never cut (counters and logs are mapped back to policies by it), then
    whom it came from for people reading the rules, cut where the limit falls.

    Printable ASCII without quotes or backslashes: names are validated
    upstream, and this is belt and braces so that no input can break out of
    a quoted token in a restore file or nft text."""
    if not rule.origins:
        return None
    text = f"{rule.id} {rule.origins[0]}"
    if len(rule.origins) > 1:
        text += f" (+{len(rule.origins) - 1} more)"
    return _UNSAFE_COMMENT.sub("?", text)[:limit]


def comment_rule_id(comment: str) -> str | None:
    """The rule id a comment written by :func:`rule_comment` starts with."""
    rule_id, _, _ = comment.partition(" ")
    return rule_id or None


def text_diff(live: str | None, desired: str) -> list[str]:
    """Unified diff from the live state's normal text (None: nothing) to the desired one; empty when equal."""
    return list(difflib.unified_diff((live or "").splitlines(), desired.splitlines(), "live", "desired", lineterm=""))


class ComparesNormalText:
    """Drift check and diff of a backend whose live and desired states have one
    normal text form (both backends): the two methods every enforcer would
    otherwise write the same way."""

    def live_text(self) -> str | None:
        raise NotImplementedError

    def desired_text(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> str:
        raise NotImplementedError

    def diff(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> list[str]:
        """Unified diff from the live state to the desired one; empty when equal."""
        return text_diff(self.live_text(), self.desired_text(ruleset, known_interfaces))

    def in_sync(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> bool:
        return self.live_text() == self.desired_text(ruleset, known_interfaces)


class Enforcer(Protocol):
    """One backend in one network namespace. ``known_interfaces`` only matters
    with a fail-closed prefix: the local endpoints' interfaces beyond those
    that have chains, i.e. the non-isolated ones that must not be dropped."""

    name: str

    @property
    def applied(self) -> Applied | None:
        """What this enforcer last put into the kernel (None: nothing yet)."""

    def plan(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> Transaction:
        """Build the transaction that makes the kernel hold ``ruleset`` (no kernel access)."""

    def check(self, tx: Any) -> None:
        """Have the kernel (or tool) validate ``tx``, one of this backend's
        transactions, without committing it."""

    def apply(self, ruleset: RuleSet, dry_run: bool = False, known_interfaces: Iterable[str] = (),
              incremental: bool = True) -> ApplyResult:
        """Apply atomically; a no-op when the kernel already holds ``ruleset``;
        incrementally when the backend can and ``incremental`` allows it."""

    def diff(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> list[str]:
        """Unified diff live → desired; empty when in sync."""

    def in_sync(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> bool:
        """Whether the live state equals the desired one for ``ruleset`` (drift check)."""

    def live_text(self) -> str | None:
        """What callgate owns in the kernel now, normalised, or None."""

    def live_digest(self) -> str | None:
        """The digest the live state says it holds, or None."""

    def desired_text(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> str:
        """What it would own after applying ``ruleset``, normalised the same way."""

    def rule_counters(self) -> RuleCounters | None:
        """Counters of the live rules by rule id; None when this backend cannot read them."""

    def prefetch(self) -> None:
        """An apply is coming: start reading, in the background, what it will
        compare (a hint; a backend that gains nothing from it does nothing)."""

    def remove(self) -> bool:
        """Delete everything callgate owns; True if there was something."""

    def close(self) -> None:
        """Release what talks to the kernel (threads, handles)."""
