"""The nftables table callgate owns: its objects, names and digest.

Layout (everything lives in table ``inet callgate``; no other table is read or
written)::

    set digest                           one element: what this table holds (see below)
    map from_endpoint                    iifname → jump out_<endpoint>  (egress)
    map to_endpoint                      oifname → jump in_<endpoint>   (ingress)
    chain forward  (hook forward, policy accept)
        ct state established,related accept   # replies leave at the first rule
        iifname vmap @from_endpoint           # egress: allow = return, deny = drop
        oifname vmap @to_endpoint             # ingress: allow = accept, deny = drop
    chain out_<endpoint> / in_<endpoint>  one verdict-map look-up, then the default
    map dec4_<h> / any4_<h> …            the decisions (:mod:`.decisions`)
    set peers4_<hash> / peers6_<hash>    peer addresses of rules without ports (the walk, see .decisions)
    chain allow_in_<rule id> …            counter and verdict of the rule that decided

With a fail-closed prefix (``NftablesEnforcer(kernel, fail_closed_prefix="cg")``)
the table also holds ``set known_endpoint`` (ifname: every local endpoint the
agent has programmed, isolated or not) and, after the two vmaps, two rules that
drop forwarded traffic from/to ``cg*`` interfaces missing from that set: a
container whose veth appears before its policy is known is cut off, not open.

The egress chain returns on allow instead of accepting, so the destination's
ingress chain still runs for pod-to-pod traffic on the same node.

Every rule chain carries a comment that starts with the rule's id
(:attr:`~callgate.compiler.ir.Rule.id`), followed by its origin as far as
:data:`COMMENT_MAX` allows (:func:`~callgate.enforcers.base.rule_comment`).

The digest of what the table holds (:func:`layout_digest`: the RuleSet's
digest, the layout version, and the fail-closed settings when on) is the one
element of ``set digest``: key = its first :data:`DIGEST_KEY_LEN` hex digits,
comment = ``callgate sha256:<digest>``. A re-apply of the same input is
recognised and skipped. Why a set element rather than a rule comment: an
incremental transaction swaps it with ``delete element`` (old) + ``add
element`` (new), which the kernel refuses as a whole when the old one is not
there, so "the live table is still the one I applied" is checked atomically,
inside the transaction; and listing or updating this one small set costs
libnftables 1.0.6 ~0.1 ms, while listing or replacing a rule in the forward
chain makes it read every element of every set first (~100 ms at 50k).
"""

from __future__ import annotations

import hashlib
from typing import Any

from callgate.compiler.ir import AddressSet, RuleSet
from callgate.enforcers.base import FailClosed, FlowLogging
from callgate.enforcers.nft.kernel import Command

FAMILY = "inet"
TABLE = "callgate"
FORWARD = "forward"
FROM_ENDPOINT = "from_endpoint"
TO_ENDPOINT = "to_endpoint"
KNOWN_ENDPOINT = "known_endpoint"
FAIL_CLOSED_COMMENT = "callgate fail-closed"
DIGEST_SET = "digest"
DIGEST_PREFIX = "callgate sha256:"
# The digest set's key is an ifname (the longest string type a set key can
# have: 15 characters and a NUL). 60 bits of a sha256 make an accidental match
# between the digest this agent applied and any other one negligible (2^-60);
# the full digest rides in the element's comment.
DIGEST_KEY_LEN = 15
# Bumped whenever the same RuleSet is rendered into a different table, so that
# an agent upgraded from an older layout never adopts the old table as in sync
# (the RuleSet digest alone would still match). 2: hash peer sets, digest set.
# 3: rule comments start with the rule id. 4: one decision-map look-up per
# packet instead of a walk over rules and peer sets.
LAYOUT_VERSION = 4
# A peer set (looked up by the rules without ports, see .decisions) whose
# intervals together hold at most this many addresses is rendered as a hash
# set of single addresses: an O(1) look-up. Why this bound: a hash-set element
# costs the kernel ~95 bytes (measured: slab + vmalloc growth when loading
# 65,536 IPv4 or IPv6 elements, kernel 6.18), so the largest such set is
# ~6 MiB of kernel memory; an interval holds any number of addresses in two
# rbtree elements (~160 bytes). 65,536 covers a /16 of pods while a wide
# ipBlock (/8, 0.0.0.0/0 except ...) stays a handful of intervals.
HASH_SET_MAX = 65_536
COMMENT_MAX = 127  # bytes of a rule comment: the kernel keeps 128 with the NUL


def obj(**fields: Any) -> dict[str, Any]:
    """The body of a command on an object of callgate's table."""
    return {"family": FAMILY, "table": TABLE, **fields}


def is_hash_set(s: AddressSet) -> bool:
    """Whether the backend renders ``s`` as a hash set of single addresses."""
    # Every element holds at least one address: a longer set never qualifies.
    # The count comes with the set (the compiler knows it).
    return len(s.elements) <= HASH_SET_MAX and s.address_count <= HASH_SET_MAX


def layout_digest(ruleset: RuleSet, fail_closed: FailClosed | None = None, logging: FlowLogging | None = None) -> str:
    """What the digest set holds: the RuleSet's digest with the layout version,
    extended by the fail-closed and flow-log settings when they are on (so a
    change of any of them is seen)."""
    parts = [f"nft-layout-{LAYOUT_VERSION}", ruleset.digest()]
    if fail_closed is not None:
        parts.extend([fail_closed.prefix, *fail_closed.known])
    if logging is not None:
        parts.append(logging.key())
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def digest_element(digest: str) -> dict[str, Any]:
    """The digest set's one element (see the module docstring)."""
    return {"elem": {"val": digest[:DIGEST_KEY_LEN], "comment": DIGEST_PREFIX + digest}}


def digest_swap(old: str, new: str) -> list[Command]:
    """Compare-and-swap of the digest: the kernel refuses the whole transaction
    when the live table does not hold ``old`` (``delete element`` of a missing
    element is ENOENT)."""
    return [{"delete": {"element": obj(name=DIGEST_SET, elem=[old[:DIGEST_KEY_LEN]])}},
            {"add": {"element": obj(name=DIGEST_SET, elem=[digest_element(new)])}}]


def digest_of(live: list[dict[str, Any]] | None) -> str | None:
    """The digest in the listed digest set; None when there is none, or not
    exactly one well-formed element (not a table this layout wrote)."""
    for item in live or ():
        body = item.get("set")
        if not body or body.get("name") != DIGEST_SET:
            continue
        elems = body.get("elem") or []
        if len(elems) != 1 or not isinstance(elems[0], dict) or not isinstance(elems[0].get("elem"), dict):
            return None
        key, comment = elems[0]["elem"].get("val"), str(elems[0]["elem"].get("comment", ""))
        digest = comment.removeprefix(DIGEST_PREFIX)
        if comment == digest or key != digest[:DIGEST_KEY_LEN]:
            return None
        return digest
    return None
