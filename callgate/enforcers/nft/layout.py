"""The nftables tables callgate owns: their objects, names and digest.

On a node (placement "node") callgate owns table ``inet callgate`` and table
``bridge callgate``; inside an endpoint's own network namespace (placement
"netns": macvlan, ipvlan) it owns ``inet callgate`` there. No other table is
read or written. The **dispatch** part of each table (which packets go to
which endpoint's chains, and who may send from which address) is built by
:mod:`.dispatch`; the **decision** part (sets and per-endpoint chains) by
:mod:`.commands`::

    table inet callgate
        set digest                           one element: what the tables hold (see below)
        dispatch maps, anti-spoofing sets, base chains    see :mod:`.dispatch`
        chain ina_/in_/inb_<endpoint> …      a chain per tier: one verdict-map look-up, the walk, the default
        map dec4_<h> / dec6_<h>              one tier's decisions, shared by equal tiers (:mod:`.decisions`)
        set peers4_<hash> / peers6_<hash>    peer addresses of rules without ports (the walk, see .decisions)
        chain allow_in_<rule id> …           counter and verdict of the rule that decided
        chain pass_in0 …, map next_in0_4 …   where a tier's pass goes on: the endpoint's next tier
    table bridge callgate                    (node only) anti-spoofing on bridge ports

The egress chain returns on allow instead of accepting, so the destination's
ingress chain still runs for pod-to-pod traffic on the same node.

Every rule chain carries a comment that starts with the rule's id
(:attr:`~callgate.compiler.ir.Rule.id`), followed by its origin as far as
:data:`COMMENT_MAX` allows (:func:`~callgate.enforcers.base.rule_comment`).

The digest of what the tables hold (:func:`layout_digest`: the RuleSet's
digest, the layout version and placement, and the fail-closed settings when
on) is the one element of ``set digest`` in the inet table: key = its first
:data:`DIGEST_KEY_LEN` hex digits, comment = ``callgate sha256:<digest>``. A
re-apply of the same input is recognised and skipped. Why a set element
rather than a rule comment: an incremental transaction swaps it with
``delete element`` (old) + ``add element`` (new), which the kernel refuses as
a whole when the old one is not there, so "the live table is still the one I
applied" is checked atomically, inside the transaction; and listing or
updating this one small set costs libnftables 1.0.6 ~0.1 ms, while listing or
replacing a rule in the forward chain makes it read every element of every
set first (~100 ms at 50k).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from callgate.compiler.ir import AddressSet, RuleSet
from callgate.enforcers.base import FailClosed, FlowLogging, Placement
from callgate.enforcers.nft.kernel import Command

FAMILY = "inet"
BRIDGE_FAMILY = "bridge"  # the node's anti-spoofing on bridge ports
TABLE = "callgate"
FORWARD = "forward"
KNOWN_ENDPOINT = "known_endpoint"
FAIL_CLOSED_COMMENT = "callgate fail-closed"
ANTI_SPOOFING_COMMENT = "callgate anti-spoofing"
DIGEST_SET = "digest"
# The verdict cache (see .dispatch): a flow's first packet decided and accepted
# goes through ACCEPT_DECIDED, which writes the table's tag (held in the map
# VERDICT_MARK) into the flow's conntrack mark; the forward chain accepts a later
# packet whose mark holds the tag of set VERDICT_TAG. Elements, not rules, carry
# the tag: a transaction that adds a rule makes libnftables read the whole table
# first (~10 ms at 50k pods), one that swaps elements does not (~1 ms).
ACCEPT_DECIDED, VERDICT_TAG, VERDICT_MARK = "accept_decided", "verdict_tag", "verdict_mark"
# callgate owns ct mark bits 8-31; bits 0-7 stay as other software set them.
TAG_BITS, TAG_SHIFT = 24, 8
DIGEST_PREFIX = "callgate sha256:"
# The digest set's key is an ifname (the longest string type a set key can
# have: 15 characters and a NUL). 60 bits of a sha256 make an accidental match
# between the digest this agent applied and any other one negligible (2^-60);
# the full digest rides in the element's comment.
DIGEST_KEY_LEN = 15
# Bumped whenever the same RuleSet is rendered into a different table, so that
# an agent upgraded from an older layout never adopts the old table as in sync
# (the RuleSet digest alone would still match). 2: hash peer sets, digest set.
# 3: rule comments start with the rule id. 4: dispatch by address, anti-spoofing
# (and table bridge callgate), tables inside endpoints' own namespaces. 5: behind
# that dispatch, one decision-map look-up per endpoint direction instead of a
# walk over rules and peer sets. 6: the forward chain's source checks before its
# established rule (a spoofed packet must not ride the impersonated pod's flow).
# 7: one peer set per distinct content (base.equal_sets, decisions._completed).
# 8: the inet source check by a verdict map on the interface into a chain per
# interface (dispatch.guard_chains) instead of (interface, address) pair sets;
# a decided flow's verdict cached in its ct mark (dispatch.verdict_cache_objects).
# 9: that source check in an ingress base chain on each veth itself where the
# kernel keeps hooks by interface name (GuardHook), no look-up in the forward chain.
# 10: those chains look link-local sources up in one named set (dispatch.LINK_SOURCES_SET);
# big hash-form decision maps declared with a size (decisions.SIZED_MIN).
LAYOUT_VERSION = 10
GuardHook = Literal["ingress", "forward"]
"""Where a node's source check of a host-side interface runs. "ingress": a base
chain on that interface's own ingress hook, which packets from anywhere else
never run, and which drops a spoofed packet before conntrack sees it; it needs
a kernel that keeps a hook by interface name, for interfaces that do not exist
yet or come back (Linux 6.16 and later). "forward": a look-up of the input
interface at the head of the forward chain, jumping to the interface's chain
(older kernels). The enforcer asks the kernel which it can have."""
GUARD_PRIORITY = 0  # ingress hook priority of the source chains (they only accept or drop)
# A peer set (looked up by the rules without ports, see .decisions) whose
# intervals together hold at most this many addresses is rendered as a hash
# set of single addresses: an O(1) look-up. Why this bound: a hash-set element
# costs the kernel ~95 bytes (measured: slab + vmalloc growth when loading
# 65,536 IPv4 or IPv6 elements, kernel 6.18), so the largest such set is
# ~6 MiB of kernel memory and ~65k strings in a transaction (~0.45 s for
# libnftables 1.0.6 to load); an interval holds any number of addresses in two
# rbtree elements (~160 bytes). 65,536 covers a /16 of pods while a wide
# ipBlock (/8, /12, 0.0.0.0/0 except ...) stays a handful of intervals.
HASH_SET_MAX = 65_536
COMMENT_MAX = 127  # bytes of a rule comment: the kernel keeps 128 with the NUL


def obj(**fields: Any) -> dict[str, Any]:
    """The body of a command on an object of callgate's inet table."""
    return {"family": FAMILY, "table": TABLE, **fields}


def bridge_obj(**fields: Any) -> dict[str, Any]:
    """The body of a command on an object of callgate's bridge table."""
    return {"family": BRIDGE_FAMILY, "table": TABLE, **fields}


def families(placement: Placement) -> tuple[str, ...]:
    """The families of the tables callgate owns for ``placement``, inet first."""
    return (FAMILY, BRIDGE_FAMILY) if placement == "node" else (FAMILY,)


def is_hash_set(s: AddressSet) -> bool:
    """Whether the backend renders ``s`` as a hash set of single addresses."""
    # Every element holds at least one address: a longer set never qualifies.
    # The count comes with the set (the compiler knows it).
    return len(s.elements) <= HASH_SET_MAX and s.address_count <= HASH_SET_MAX


def layout_digest(ruleset: RuleSet, fail_closed: FailClosed | None = None, placement: Placement = "node",
                  logging: FlowLogging | None = None, guard: GuardHook = "ingress") -> str:
    """What the digest set holds: the RuleSet's digest with the layout version
    and placement (and the source check's hook on a node), extended by the
    fail-closed and flow-log settings when they are on (so a change of any of
    them is seen)."""
    where = f"{placement}-{guard}-guard" if placement == "node" and guard != "ingress" else placement
    parts = [f"nft-layout-{LAYOUT_VERSION}-{where}", ruleset.digest()]
    if fail_closed is not None:
        parts.extend([fail_closed.prefix, *fail_closed.known])
    if logging is not None:
        parts.append(logging.key())
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def digest_element(digest: str) -> dict[str, Any]:
    """The digest set's one element (see the module docstring)."""
    return {"elem": {"val": digest[:DIGEST_KEY_LEN], "comment": DIGEST_PREFIX + digest}}


def verdict_tag(digest: str) -> int:
    """The ct mark bits a flow decided under the table with ``digest`` carries:
    24 bits of the digest (never 0, the mark of a flow nothing decided), so a
    changed table decides every unreplied flow again on its next packet."""
    return (int(digest[:TAG_BITS // 4], 16) or 1) << TAG_SHIFT


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
