"""The incremental nftables planner: only what changed, still one transaction,
and the kernel ends up holding exactly what a full replacement would give.

Fake-kernel tests walk many changes quickly; kernel tests prove the same in a
scratch namespace, where the kernel itself checks references and intervals.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from callgate.compiler import Compiler, RuleSet
from callgate.enforcers.kernel import FakeNftKernel, LibNftables, NftKernel
from callgate.enforcers.nft import NftablesEnforcer, check_fail_closed_prefix
from callgate.enforcers.nft_update import NftUpdate
from callgate.policy import load_policies
from callgate.policy.inventory import inventory_from_dict
from callgate.policy.model import PolicySet
from tests.helpers import STANDARD_INVENTORY
from tests.netns_fixture import have_root_and_netns, nft, scratch_netns

SCENARIOS = Path(__file__).parent / "scenarios"
BASE: dict[str, Any] = yaml.safe_load(STANDARD_INVENTORY.read_text())
NODE = "node-1"


def inv_doc(*changes: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for change in changes:
        change(doc)
    return doc


def endpoint(doc: dict[str, Any], key: str) -> dict[str, Any]:
    ns, name = key.split("/")
    return next(e for e in doc["endpoints"] if e["namespace"] == ns and e["name"] == name)


def add_pod(name: str, ns: str, node: str, ip: str, labels: dict[str, str], iface: str | None = None
            ) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        ep: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels, "node": node, "ips": [ip]}
        if iface:
            ep["interface"] = iface
        doc["endpoints"].append(ep)
    return change


def relabel(key: str, labels: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        endpoint(doc, key)["labels"] = labels
    return change


def compile_(doc: dict[str, Any], policies: PolicySet) -> RuleSet:
    return Compiler(policies, inventory_from_dict(doc)).compile(NODE)


ALL = load_policies(sorted(SCENARIOS.glob("0[1-6]*.yaml")))
S03 = load_policies(SCENARIOS / "03-namespace-and-pod.yaml")
S06 = load_policies(SCENARIOS / "06-egress.yaml")
NONE = PolicySet()

# A walk through states a node goes through: churn elsewhere, local relabels,
# policies appearing and disappearing, a pod moving, back to nothing.
STATES: list[tuple[str, dict[str, Any], PolicySet]] = [
    ("start", inv_doc(), S03),
    ("y pod added on node-2", inv_doc(add_pod("d", "y", "node-2", "198.18.2.40", {"pod": "d"})), S03),
    ("adjacent y pod (interval grows)", inv_doc(add_pod("d", "y", "node-2", "198.18.2.40", {"pod": "d"}),
                                                add_pod("e", "y", "node-2", "198.18.2.41", {"pod": "e"})), S03),
    ("all scenarios", inv_doc(), ALL),
    ("x/c relabelled to pod=a", inv_doc(relabel("x/c", {"pod": "a"})), ALL),
    ("only egress", inv_doc(), S06),
    ("local pod added", inv_doc(add_pod("f", "y", NODE, "198.18.2.50", {"pod": "a"}, "cgyf0")), S06),
    ("nothing", inv_doc(), NONE),
    ("back", inv_doc(), ALL),
]


def walk(kernel: NftKernel, prefix: str | None = None) -> list[tuple[str, NftUpdate | None]]:
    enforcer = NftablesEnforcer(kernel, fail_closed_prefix=prefix)
    steps: list[tuple[str, NftUpdate | None]] = []
    for label, doc, policies in STATES:
        ruleset = compile_(doc, policies)
        known = [e["interface"] for e in doc["endpoints"] if e.get("node") == NODE and e.get("interface")]
        result = enforcer.apply(ruleset, known_interfaces=known)
        # The kernel holds exactly what a full replacement would have built.
        assert enforcer.in_sync(ruleset, known), (label, enforcer.diff(ruleset, known))
        assert enforcer.live_digest() == result.digest
        tx = result.transaction
        steps.append((label, tx if isinstance(tx, NftUpdate) else None))
    return steps


@pytest.mark.parametrize("prefix", [None, "cg"])
def test_fake_kernel_walk_is_incremental_after_the_first_apply(prefix: str | None) -> None:
    steps = walk(FakeNftKernel(), prefix)
    assert steps[0][1] is None  # nothing known yet: full replacement
    assert all(tx is not None for _, tx in steps[1:]), [label for label, tx in steps if tx is None]


def test_pod_added_elsewhere_is_element_commands_only() -> None:
    kernel = FakeNftKernel()
    enforcer = NftablesEnforcer(kernel)
    enforcer.apply(compile_(STATES[0][1], S03))
    tx = enforcer.apply(compile_(STATES[1][1], S03)).transaction
    assert isinstance(tx, NftUpdate)
    assert tx.counts() == {"add element": 1, "replace rule": 1}, tx.text()
    # The set that grew is the y peer set, on IPv4 only (d has no IPv6 address).
    (cmd,) = [c for c in tx.commands if "add" in c]
    assert cmd["add"]["element"]["elem"] == ["198.18.2.40"]


def test_growing_interval_replaces_the_element_in_one_transaction() -> None:
    enforcer = NftablesEnforcer(FakeNftKernel())
    enforcer.apply(compile_(STATES[1][1], S03))
    tx = enforcer.apply(compile_(STATES[2][1], S03)).transaction
    assert isinstance(tx, NftUpdate)
    assert set(tx.counts()) == {"add element", "delete element", "replace rule"}, tx.text()


def test_fail_closed_known_interface_is_an_element_update() -> None:
    enforcer = NftablesEnforcer(FakeNftKernel(), fail_closed_prefix="cg")
    ruleset = compile_(inv_doc(), S03)
    enforcer.apply(ruleset, known_interfaces=["cgxa0"])
    tx = enforcer.apply(ruleset, known_interfaces=["cgxa0", "cgzz9"]).transaction
    assert isinstance(tx, NftUpdate)
    assert tx.counts() == {"add element": 1, "replace rule": 1}
    assert "cgzz9" in enforcer.live_text()  # type: ignore[operator]


def test_drift_falls_back_to_full_replacement() -> None:
    kernel = FakeNftKernel()
    enforcer = NftablesEnforcer(kernel)
    enforcer.apply(compile_(STATES[0][1], S03))
    kernel.run([{"delete": {"table": {"family": "inet", "name": "callgate"}}}])  # someone deleted it
    new = compile_(STATES[1][1], S03)
    result = enforcer.apply(new)
    assert result.transaction.replaces_table
    assert enforcer.in_sync(new)


def test_digest_mismatch_falls_back_to_full_replacement() -> None:
    kernel = FakeNftKernel()
    other = NftablesEnforcer(kernel)
    enforcer = NftablesEnforcer(kernel)
    enforcer.apply(compile_(STATES[0][1], S03))
    other.apply(compile_(STATES[0][1], ALL))  # another writer changed the table
    result = enforcer.apply(compile_(STATES[1][1], S03))
    assert result.transaction.replaces_table


def test_same_digest_but_tampered_content_is_replaced() -> None:
    kernel = FakeNftKernel()
    enforcer = NftablesEnforcer(kernel)
    ruleset = compile_(STATES[0][1], S03)
    enforcer.apply(ruleset)
    name = ruleset.address_sets[0].name
    kernel.run([{"flush": {"set": {"family": "inet", "table": "callgate", "name": name}}}])
    assert not enforcer.in_sync(ruleset)
    result = enforcer.apply(ruleset)
    assert result.changed and result.transaction.replaces_table
    assert enforcer.in_sync(ruleset)


@pytest.mark.parametrize("bad", ["", "cg*", 'c"g', "cg\\", "a b", "x" * 15, "cg;drop", "é"])
def test_fail_closed_prefix_is_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="fail-closed prefix"):
        check_fail_closed_prefix(bad)
    with pytest.raises(ValueError):
        NftablesEnforcer(FakeNftKernel(), fail_closed_prefix=bad)


# -- the real kernel -----------------------------------------------------------

@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("cgg") as name:
        yield name


@pytest.mark.parametrize("prefix", [None, "cg"])
@pytest.mark.kernel
@pytest.mark.skipif(not have_root_and_netns(), reason="needs root and network namespaces")
def test_kernel_walk_stays_in_sync(netns: str, prefix: str | None) -> None:
    kernel = LibNftables(netns)
    try:
        steps = walk(kernel, prefix)
    finally:
        kernel.close()
    assert all(tx is not None for _, tx in steps[1:]), [label for label, tx in steps if tx is None]
    # And the kernel's own listing agrees with the digest after the last step.
    assert "callgate sha256:" in nft(netns, "list", "table", "inet", "callgate")


@pytest.mark.kernel
@pytest.mark.skipif(not have_root_and_netns(), reason="needs root and network namespaces")
def test_kernel_pod_added_elsewhere_is_element_commands_only(netns: str) -> None:
    kernel = LibNftables(netns)
    try:
        enforcer = NftablesEnforcer(kernel)
        enforcer.apply(compile_(STATES[0][1], S03))
        new = compile_(STATES[1][1], S03)
        tx = enforcer.apply(new).transaction
        assert isinstance(tx, NftUpdate)
        assert tx.counts() == {"add element": 1, "replace rule": 1}
        assert enforcer.in_sync(new)
        assert enforcer.live_digest() == new.digest()
        assert "198.18.2.40" in nft(netns, "list", "table", "inet", "callgate")
    finally:
        kernel.close()
