"""The nftables backend: transactions, read-back, atomicity, no-op re-apply.

Fake-kernel tests run everywhere; kernel tests use a scratch network namespace.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from callgate.compiler import Compiler, RuleSet
from callgate.compiler.ir import AddressSet
from callgate.enforcers.nft import decisions
from callgate.enforcers.nft.commands import expand
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.fake import FakeNftKernel
from callgate.enforcers.nft.kernel import LibNftables
from callgate.enforcers.nft.layout import layout_digest
from callgate.enforcers.nft.transaction import replace_table
from callgate.errors import KernelError
from callgate.policy import load_inventory, load_policies
from tests.helpers import SHOP, STANDARD_INVENTORY, policies_from
from tests.netns import nft


@pytest.fixture(scope="module")
def shop_rulesets() -> dict[str, RuleSet]:
    inv = load_inventory(SHOP / "inventory.yaml")
    compiler = Compiler(load_policies(SHOP), inv)
    return {node: compiler.compile(node) for node in inv.nodes()}


def test_transaction_replaces_only_our_table(shop_rulesets: dict[str, RuleSet]) -> None:
    tx = replace_table(shop_rulesets["node-1"])
    tables = {(c[verb][kind]["family"], c[verb][kind].get("table", c[verb][kind].get("name")))
              for c in tx.commands for verb in c for kind in c[verb]}
    assert tables == {("inet", "callgate"), ("bridge", "callgate")}
    assert list(tx.commands[1]) == ["delete"]  # the old table goes in the same transaction
    assert "ct state established,related accept" in tx.text()


def test_fake_kernel_apply_is_idempotent(shop_rulesets: dict[str, RuleSet]) -> None:
    kernel = FakeNftKernel()
    enforcer = NftablesEnforcer(kernel)
    assert enforcer.apply(shop_rulesets["node-1"]).changed
    assert not enforcer.apply(shop_rulesets["node-1"]).changed
    assert kernel.transactions == 1
    assert enforcer.diff(shop_rulesets["node-1"]) == []
    assert enforcer.diff(shop_rulesets["node-2"]) != []


def test_fake_kernel_failed_transaction_keeps_previous(shop_rulesets: dict[str, RuleSet]) -> None:
    kernel = FakeNftKernel()
    enforcer = NftablesEnforcer(kernel)
    enforcer.apply(shop_rulesets["node-1"])
    before = enforcer.live_text()
    kernel.fail_next = "Error: simulated"
    with pytest.raises(KernelError):
        enforcer.apply(shop_rulesets["node-2"])
    assert enforcer.live_text() == before
    assert enforcer.live_digest() == layout_digest(shop_rulesets["node-1"])


def test_dry_run_commits_nothing_on_fake(shop_rulesets: dict[str, RuleSet]) -> None:
    kernel = FakeNftKernel()
    result = NftablesEnforcer(kernel).apply(shop_rulesets["node-1"], dry_run=True)
    assert result.changed and result.dry_run
    assert kernel.tables == {}


@pytest.mark.kernel
def test_kernel_round_trip_and_noop(netns: str, shop_rulesets: dict[str, RuleSet]) -> None:
    enforcer = NftablesEnforcer(LibNftables(netns))
    for node, ruleset in shop_rulesets.items():
        assert enforcer.apply(ruleset).changed, node
        assert enforcer.in_sync(ruleset)
        assert enforcer.live_digest() == layout_digest(ruleset)
        handles_before = nft(netns, "-a", "list", "table", "inet", "callgate")
        assert not enforcer.apply(ruleset).changed
        assert nft(netns, "-a", "list", "table", "inet", "callgate") == handles_before


@pytest.mark.kernel
def test_kernel_keeps_the_rule_id_of_a_long_policy_name(netns: str, tmp_path: Path) -> None:
    """A 240-character policy name: the comment is cut after the id, at the
    length the kernel keeps, so the table reads back as applied (in sync, a
    re-apply is a no-op) and every counted rule id maps back to its policy."""
    from tests.test_agent_metrics import LONG, POLICIES

    ruleset = Compiler(policies_from(tmp_path, POLICIES), load_inventory(STANDARD_INVENTORY)).compile("node-1")
    enforcer = NftablesEnforcer(LibNftables(netns))
    enforcer.apply(ruleset)
    assert enforcer.in_sync(ruleset) and not enforcer.apply(ruleset).changed
    counters = enforcer.rule_counters()
    origins = ruleset.rule_origins()
    assert counters.by_rule and set(counters.by_rule) == set(origins)
    assert {o[0].policy for o in origins.values()} == {f"NetworkPolicy x/{LONG}", "NetworkPolicy x/short"}
    comments = [line for line in nft(netns, "list", "table", "inet", "callgate").splitlines() if LONG[:20] in line]
    assert comments and all(len(line.split('comment "')[1].rstrip('"').encode()) == 127 for line in comments)


@pytest.mark.kernel
def test_kernel_other_tables_survive(netns: str, shop_rulesets: dict[str, RuleSet]) -> None:
    nft(netns, "-f", "-", stdin="""
table ip filter {
    chain FORWARD {
        type filter hook forward priority 0; policy accept;
        counter
    }
}
table inet docker {
    set keep { type ipv4_addr; elements = { 198.18.99.1 }; }
}
    """)
    before = nft(netns, "list", "table", "ip", "filter") + nft(netns, "list", "table", "inet", "docker")
    enforcer = NftablesEnforcer(LibNftables(netns))
    enforcer.apply(shop_rulesets["node-1"])
    enforcer.apply(shop_rulesets["node-2"])
    enforcer.remove()
    after = nft(netns, "list", "table", "ip", "filter") + nft(netns, "list", "table", "inet", "docker")
    assert after == before
    assert "callgate" not in nft(netns, "list", "tables")


@pytest.mark.kernel
def test_kernel_rejected_transaction_leaves_previous_ruleset(netns: str, shop_rulesets: dict[str, RuleSet]) -> None:
    enforcer = NftablesEnforcer(LibNftables(netns))
    good = shop_rulesets["node-1"]
    enforcer.apply(good)
    before = nft(netns, "list", "table", "inet", "callgate")
    # An interface name the kernel must refuse (longer than IFNAMSIZ) in the
    # anti-spoofing sets; this can only be built by hand, validation never lets
    # one through. The transaction fails as a whole.
    bad_local = dataclasses.replace(good.local[0], interface="x" * 20)
    bad = dataclasses.replace(good, local=(bad_local, *good.local[1:]))
    with pytest.raises(KernelError):
        enforcer.apply(bad)
    with pytest.raises(KernelError):
        enforcer.apply(bad, dry_run=True)
    assert nft(netns, "list", "table", "inet", "callgate") == before


@pytest.mark.kernel
def test_kernel_dry_run_checks_but_commits_nothing(netns: str, shop_rulesets: dict[str, RuleSet]) -> None:
    enforcer = NftablesEnforcer(LibNftables(netns))
    result = enforcer.apply(shop_rulesets["node-2"], dry_run=True)
    assert result.changed
    assert "callgate" not in nft(netns, "list", "tables")


@pytest.mark.kernel
def test_text_rendering_loads_into_the_same_table(shop_rulesets: dict[str, RuleSet],
                                                  make_netns: Callable[[], str]) -> None:
    """`callgate compile --format nft` output, fed to `nft -f`, gives the same
    table as the JSON transaction: the text form is not a lookalike."""
    ruleset = shop_rulesets["node-1"]
    a, b = make_netns(), make_netns()
    NftablesEnforcer(LibNftables(a)).apply(ruleset)
    nft(b, "-f", "-", stdin=replace_table(ruleset).text())
    assert nft(a, "list", "table", "inet", "callgate") == nft(b, "list", "table", "inet", "callgate")


@pytest.mark.kernel
def test_drift_is_visible_in_diff(netns: str, shop_rulesets: dict[str, RuleSet]) -> None:
    ruleset = shop_rulesets["node-1"]
    enforcer = NftablesEnforcer(LibNftables(netns))
    enforcer.apply(ruleset)
    assert enforcer.layout is not None
    name, m = next((n, m) for n, m in sorted(enforcer.layout.maps.items()) if m.family == "ip")
    chain = next(iter(m.elements.values()))
    nft(netns, "add", "element", "inet", "callgate", name, f"{{ 198.18.77.77 . tcp . 80 : goto {chain} }}")
    diff = "\n".join(enforcer.diff(ruleset))
    assert "198.18.77.77" in diff
    assert enforcer.apply(ruleset).changed  # repaired
    assert enforcer.in_sync(ruleset)


def test_address_set_type_matches_family(shop_rulesets: dict[str, RuleSet]) -> None:
    for s in shop_rulesets["node-1"].address_sets:
        assert isinstance(s, AddressSet)
        assert all((":" in e) == (s.family == "ip6") for e in s.elements)


SCTP_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{namespaceSelector: {}}]
      ports: [{protocol: SCTP, port: 80}, {protocol: SCTP, port: serve-80-tcp}, {protocol: SCTP, port: 5000, endPort: 5100}]
  egress:
    - ports: [{protocol: SCTP}]
"""


def test_sctp_compiles(tmp_path: Path) -> None:
    """This kernel has no SCTP sockets, so SCTP is proven at compile level:
    the rule is there with the right ports, and a named port that exists only
    for TCP resolves to nothing for SCTP."""
    inv = load_inventory(STANDARD_INVENTORY)
    ruleset = Compiler(policies_from(tmp_path, SCTP_POLICY), inv).compile("node-1")
    text = replace_table(ruleset).text()
    # Pods' cells are enumerable: one element per address and port (5000-5100 included).
    assert "198.18.1.10 . sctp . 80 : goto allow_in_" in text
    assert "198.18.1.12 . sctp . 5000 : goto allow_in_" in text and "198.18.1.12 . sctp . 5100 : goto" in text
    assert " . sctp . 5101 " not in text and " . sctp . 4999 " not in text
    assert " . tcp . " not in text  # the named port is TCP only: nothing for SCTP
    assert "0.0.0.0/0 . sctp . 0-65535 : goto allow_out_" in text  # egress: any peer, every SCTP port


@pytest.mark.kernel
def test_sctp_rules_pass_the_kernel_check(netns: str, tmp_path: Path) -> None:
    inv = load_inventory(STANDARD_INVENTORY)
    ruleset = Compiler(policies_from(tmp_path, SCTP_POLICY), inv).compile("node-1")
    enforcer = NftablesEnforcer(LibNftables(netns))
    enforcer.apply(ruleset)
    assert enforcer.in_sync(ruleset)
    assert " . sctp . 5000 : goto allow_in_" in nft(netns, "list", "table", "inet", "callgate")


# -- hash or interval: the backend's choice per decision map -------------------------

def test_enumerable_cells_make_hash_maps_of_single_keys(shop_rulesets: dict[str, RuleSet]) -> None:
    layout_ = decisions.build_layout(shop_rulesets["node-1"])
    hashed = [m for m in layout_.maps.values() if m.hashed]
    assert hashed and all(isinstance(k, int) or (isinstance(k, tuple) and len(k) == 3) for m in hashed
                          for k in m.elements)


def test_the_bound_between_hash_and_interval_maps(shop_rulesets: dict[str, RuleSet],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ruleset = shop_rulesets["node-1"]
    sizes = {n: len(m.elements) for n, m in decisions.build_layout(ruleset).maps.items() if m.hashed}
    bound = max(sizes.values())
    monkeypatch.setattr(decisions, "EXPAND_MAX", bound)
    assert all(m.hashed for n, m in decisions.build_layout(ruleset).maps.items() if n in sizes)
    monkeypatch.setattr(decisions, "EXPAND_MAX", bound - 1)
    layout_ = decisions.build_layout(ruleset)
    biggest = next(n for n, size in sizes.items() if size == bound)
    assert not layout_.maps[biggest].hashed
    assert "flags interval" in replace_table(ruleset).text()


def ipblock_policy(cidr: str) -> str:
    return f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: wide, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
    - from: [{{ipBlock: {{cidr: {cidr}}}}}]
      ports: [{{port: 443}}]
"""


def test_a_wide_ipblock_makes_an_interval_map_a_narrow_one_a_hash_map(tmp_path: Path) -> None:
    """A /16 enumerated into a hash map was 65,536 elements to render and load
    for each program naming it: a policy change took seconds to reach the kernel."""
    inv = load_inventory(STANDARD_INVENTORY)
    forms = {}
    for cidr in ("198.19.0.0/16", "198.19.0.0/24"):
        ruleset = Compiler(policies_from(tmp_path, ipblock_policy(cidr)), inv).compile("node-1")
        [m] = [m for m in decisions.build_layout(ruleset).maps.values() if m.family == "ip"]
        forms[cidr] = (m.hashed, len(m.elements))
    assert forms["198.19.0.0/16"] == (False, 1)
    assert forms["198.19.0.0/24"] == (True, 256)


@pytest.mark.kernel
def test_text_rendering_of_interval_sets_loads_too(shop_rulesets: dict[str, RuleSet],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   make_netns: Callable[[], str]) -> None:
    monkeypatch.setattr(decisions, "EXPAND_MAX", 0)
    ruleset = shop_rulesets["node-1"]
    a, b = make_netns(), make_netns()
    enforcer = NftablesEnforcer(LibNftables(a))
    enforcer.apply(ruleset)
    assert enforcer.in_sync(ruleset)
    nft(b, "-f", "-", stdin=replace_table(ruleset).text())
    listing = nft(a, "list", "table", "inet", "callgate")
    assert "flags interval" in listing
    assert listing == nft(b, "list", "table", "inet", "callgate")


def test_expand_agrees_with_the_ir_arithmetic() -> None:
    import random

    from callgate.compiler.addresses import address_text, canonical_elements, parse_element

    rng = random.Random(3)
    for version, family, base in ((4, "ip", 0xC6120000), (6, "ip6", 0xFD00 << 112)):
        intervals = []
        for _ in range(200):
            lo = base + rng.randrange(0, 1 << 16)
            intervals.append((lo, lo + rng.choice([0, 0, 1, 3, 7, rng.randrange(0, 40)])))
        elements = canonical_elements(intervals, version)
        want = [address_text(v, version) for e in elements for v in range(parse_element(e)[0], parse_element(e)[1] + 1)]
        assert expand(elements, family) == want  # type: ignore[arg-type]


# -- tiers: ClusterNetworkPolicy chains around the NetworkPolicy chain -------------------------

TIERED = Path(__file__).parent / "scenarios" / "08-admin-tier.yaml"


@pytest.fixture(scope="module")
def tiered_rulesets() -> dict[str, RuleSet]:
    inv = load_inventory(STANDARD_INVENTORY)
    compiler = Compiler(load_policies(TIERED), inv)
    return {node: compiler.compile(node) for node in inv.nodes()}


def test_tier_chains_exist_before_a_pass_rule_names_them(tiered_rulesets: dict[str, RuleSet]) -> None:
    """An Admin chain's Pass rules goto the NetworkPolicy chain: the kernel resolves
    that when the rule is added, so the chain must be added first (the fake kernel
    checks it the same way)."""
    ruleset = tiered_rulesets["node-1"]
    assert any(len(ep.ingress) == 2 for ep in ruleset.endpoints), "the scenario has two tiers somewhere"
    enforcer = NftablesEnforcer(FakeNftKernel())
    assert enforcer.apply(ruleset).changed
    assert enforcer.diff(ruleset) == []


def test_tiers_come_and_go_by_incremental_update(tiered_rulesets: dict[str, RuleSet]) -> None:
    inv = load_inventory(STANDARD_INVENTORY)
    plain = Compiler(load_policies(Path(__file__).parent / "scenarios" / "01-deny-all-ingress-x.yaml"),
                     inv).compile("node-1")
    kernel = FakeNftKernel()
    enforcer = NftablesEnforcer(kernel)
    enforcer.apply(plain)
    assert enforcer.apply(tiered_rulesets["node-1"]).mode == "incremental"
    assert enforcer.diff(tiered_rulesets["node-1"]) == []
    assert enforcer.apply(plain).mode == "incremental"
    assert enforcer.diff(plain) == []


@pytest.mark.kernel
def test_kernel_takes_tiers_in_json_and_text(tiered_rulesets: dict[str, RuleSet],
                                             make_netns: Callable[[], str]) -> None:
    ruleset = tiered_rulesets["node-1"]
    a, b = make_netns(), make_netns()
    enforcer = NftablesEnforcer(LibNftables(a))
    assert enforcer.apply(ruleset).changed
    assert not enforcer.apply(ruleset).changed
    nft(b, "-f", "-", stdin=replace_table(ruleset).text())
    listed = nft(a, "list", "table", "inet", "callgate")
    assert listed == nft(b, "list", "table", "inet", "callgate")
    # Layout 4: the tiers are composed into the maps; an Admin Deny is a cell that goes to its rule's chain.
    assert "vmap @dec4_" in listed and ": goto deny_" in listed and "drop comment" in listed


def test_rule_ids_of_cluster_rules_name_kind_policy_tier_priority_and_rule(
        tiered_rulesets: dict[str, RuleSet]) -> None:
    ruleset = tiered_rulesets["node-1"]
    admin = next(c for ep in ruleset.endpoints for c in ep.ingress if c.name.startswith("ina_"))
    deny = next(r for r in admin.rules if any(o.rule == "no-z" for o in r.origins))
    (origin,) = ruleset.rule_origins()[deny.id]
    assert (origin.policy, origin.tier, origin.priority, origin.direction, origin.index, origin.rule) == (
        "ClusterNetworkPolicy tenant-x", "Admin", 10, "ingress", 1, "no-z")
    text = replace_table(ruleset).text()
    assert f'drop comment "{deny.id} ClusterNetworkPolicy tenant-x (Admin 10) ingress[1] no-z"' in text


class CountingKernel(FakeNftKernel):
    """The fake kernel, counting whole-table listings."""

    def __init__(self) -> None:
        super().__init__()
        self.whole_listings = 0
        self._one_set = False

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        self.whole_listings += not self._one_set
        return super().list_table(family, name)

    def list_set(self, family: str, table: str, name: str) -> list[dict[str, Any]] | None:
        self._one_set = True  # the fake lists one set by listing the table: not counted
        try:
            return super().list_set(family, table, name)
        finally:
            self._one_set = False


def test_an_unchanged_apply_uses_the_prefetched_listing(shop_rulesets: dict[str, RuleSet]) -> None:
    kernel = CountingKernel()
    NftablesEnforcer(kernel).apply(shop_rulesets["node-1"])
    enforcer = NftablesEnforcer(kernel)  # a new process: it knows nothing applied
    enforcer.prefetch()
    assert enforcer._prefetched is not None
    enforcer._prefetched.result(timeout=10)
    listed = kernel.whole_listings
    assert not enforcer.apply(shop_rulesets["node-1"]).changed
    assert kernel.whole_listings == listed  # compared with what was read before


def test_a_commit_after_the_prefetch_makes_apply_read_the_table_again(shop_rulesets: dict[str, RuleSet]) -> None:
    """Someone changes callgate's table after the prefetch (the digest set stays):
    the generation moved, so apply lists again, sees the change and repairs it."""
    kernel = CountingKernel()
    ruleset = shop_rulesets["node-1"]
    NftablesEnforcer(kernel).apply(ruleset)
    enforcer = NftablesEnforcer(kernel)
    enforcer.prefetch()
    assert enforcer._prefetched is not None
    enforcer._prefetched.result(timeout=10)
    chain = next(iter(kernel.tables[("inet", "callgate")]["rules"]))
    kernel.run([{"flush": {"chain": {"family": "inet", "table": "callgate", "name": chain}}}])
    listed = kernel.whole_listings
    result = enforcer.apply(ruleset)
    assert kernel.whole_listings > listed
    assert result.changed and result.mode == "full"
    assert enforcer.in_sync(ruleset)


def test_a_prefetch_without_a_table_reads_nothing_whole(shop_rulesets: dict[str, RuleSet]) -> None:
    kernel = CountingKernel()
    enforcer = NftablesEnforcer(kernel)
    enforcer.prefetch()
    assert enforcer._prefetched is not None
    assert enforcer._prefetched.result(timeout=10) is None
    assert kernel.whole_listings == 0
    assert enforcer.apply(shop_rulesets["node-1"]).changed


@pytest.mark.kernel
def test_kernel_generation_moves_with_commits_only(netns: str, shop_rulesets: dict[str, RuleSet]) -> None:
    kernel = LibNftables(netns)
    try:
        first = kernel.generation()
        assert first is not None and kernel.generation() == first
        enforcer = NftablesEnforcer(kernel)
        enforcer.apply(shop_rulesets["node-1"], dry_run=True)  # checked, not committed
        assert kernel.generation() == first
        enforcer.apply(shop_rulesets["node-1"])
        after_apply = kernel.generation()
        assert after_apply is not None and after_apply > first
        enforcer.live_text()  # reading changes nothing
        nft(netns, "add", "table", "ip", "someone-else")  # any table, any program
        assert kernel.generation() == after_apply + 1
    finally:
        kernel.close()


@pytest.mark.kernel
def test_kernel_a_hand_edit_after_the_prefetch_is_repaired(netns: str, shop_rulesets: dict[str, RuleSet]) -> None:
    """The race the generation check closes: the whole table is read early, a
    rule is deleted by hand before apply compares; apply must not call the
    stale reading unchanged."""
    ruleset = shop_rulesets["node-1"]
    first = NftablesEnforcer(LibNftables(netns))
    first.apply(ruleset)
    first.close()
    enforcer = NftablesEnforcer(LibNftables(netns))
    try:
        enforcer.prefetch()
        assert enforcer._prefetched is not None
        assert enforcer._prefetched.result(timeout=30) is not None
        listing = json.loads(nft(netns, "-j", "-a", "list", "table", "inet", "callgate"))["nftables"]
        # An anti-spoofing drop: gone, an endpoint could send from any address.
        rule = next(o["rule"] for o in listing if o.get("rule", {}).get("comment") == "callgate anti-spoofing")
        nft(netns, "delete", "rule", "inet", "callgate", rule["chain"], "handle", str(rule["handle"]))
        assert not enforcer.in_sync(ruleset)
        result = enforcer.apply(ruleset)
        assert result.changed and result.mode == "full"
        assert enforcer.in_sync(ruleset)
    finally:
        enforcer.close()
