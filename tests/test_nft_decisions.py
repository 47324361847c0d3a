"""The nft decision maps: what they hold decides as the program does, and the
incremental patch of them always equals a full render.

* Rendered maps (hash form, and interval form when forced) looked up as the
  endpoint chain does — ported map, then the map for rules without ports, then
  the chain's default — name the chain of the decision the rule walk makes,
  on hand-built IR with ALLOW / DENY / PASS tiers; every chain they name exists.
* Random pod changes through the incremental compiler, then
  :func:`~callgate.enforcers.nft.decisions.update_layout`: the patched layout
  equals :func:`~callgate.enforcers.nft.decisions.build_layout` of the new
  RuleSet, map by map and element by element, and the element changes it
  reports take the old maps to the new ones.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from callgate.compiler import IncrementalCompiler
from callgate.compiler.decision import PROTOCOL_NUMBERS, Sources, programs
from callgate.compiler.ir import EndpointRules, RuleSet
from callgate.enforcers.nft import decisions
from callgate.enforcers.nft.actions import ENFORCED, action, target
from callgate.enforcers.nft.decisions import DecisionMap, Layout, build_layout, update_layout
from callgate.policy.model import Endpoint, Inventory, PolicySet
from tests.strategies import inventories
from tests.test_decision import BASE, hand_built, packets
from tests.test_incremental_compile import broad_policy_sets, change


def find(m: DecisionMap | None, address: int, protocol: str | None, port: int) -> str | None:
    """The chain a map sends a packet to, as the kernel would look it up."""
    if m is None:
        return None
    if m.ported:
        if protocol is None:
            return None  # no element has another protocol
        if m.hashed:
            return m.elements.get((address, protocol, port))
        return next((c for (lo, hi, proto, first, last), c in m.elements.items()
                     if lo <= address <= hi and proto == protocol and first <= port <= last), None)
    if m.hashed:
        return m.elements.get(address)
    return next((c for (lo, hi), c in m.elements.items() if lo <= address <= hi), None)


def chain_decision(layout: Layout, endpoint: EndpointRules, direction: str, family: str,
                   address: int, protocol: str | None, port: int) -> str:
    """Run the endpoint chain as rendered, rule by rule, for one packet of ``family``."""
    chain = (endpoint.ingress if direction == "ingress" else endpoint.egress)[0].name
    for exprs in layout.chains[chain]:
        first = exprs[0]
        if "vmap" in first:
            key = first["vmap"]["key"]
            if (key.get("concat", [key])[0]["payload"]["protocol"]) != family:
                continue  # an IPv4 look-up does not see IPv6 packets
            found = find(layout.maps[first["vmap"]["data"][1:]], address, protocol, port)
            if found is not None:
                return found
        elif "match" in first:
            left, right = first["match"]["left"], first["match"]["right"]
            if "meta" in left:  # meta nfproto ipv4|ipv6: any address of the family
                matched = right == {"ip": "ipv4", "ip6": "ipv6"}[family]
            else:
                s = layout.sets[right[1:]]
                matched = left["payload"]["protocol"] == family and any(
                    lo <= address <= hi for lo, hi in s.intervals)
            if matched:
                return str(exprs[1]["goto"]["target"])
        else:  # counter, then the default's verdict
            return "inline " + str(exprs[1])
    raise AssertionError("the chain has no default")


def expected(endpoint: EndpointRules, ruleset: RuleSet, direction: str, family: str, address: int,
             protocol: str | None, port: int) -> str:
    program = programs(endpoint)[(direction, family)]  # type: ignore[index]
    decision = program.decide_packet(Sources(ruleset), address, protocol, port)
    if decision == program.default:
        # No cell: the chain's last rule acts. A cell naming the default chain is as good.
        return "inline " + str(action(direction, decision.verdict))
    return target(direction, decision, ENFORCED)


@pytest.mark.parametrize("form", ["hash", "interval"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hand_built())
def test_rendered_maps_decide_as_the_rule_walk(form: str, case: tuple[RuleSet, EndpointRules]) -> None:
    ruleset, endpoint = case
    with pytest.MonkeyPatch.context() as mp:
        if form == "interval":
            mp.setattr(decisions, "EXPAND_MAX", 0)
        layout = build_layout(ruleset)
    for m in layout.maps.values():
        if form == "interval" and m.elements:
            assert not m.hashed
        assert set(m.elements.values()) <= layout.verdicts.keys()  # every goto has its chain
    walked = {e["goto"]["target"] for rules in layout.chains.values() for exprs in rules for e in exprs if "goto" in e}
    assert walked <= layout.verdicts.keys()
    for family in ("ip", "ip6"):
        for address, protocol, port in packets(family):
            got = chain_decision(layout, endpoint, "ingress", family, address, protocol, port)
            want = expected(endpoint, ruleset, "ingress", family, address, protocol, port)
            if got != want:  # a cell may state the default explicitly (after a PASS)
                assert got.startswith("default_") and want.startswith("inline"), (got, want)
                verdict = "drop" if got == "default_deny" else ("accept" if got.endswith("in") else "return")
                assert verdict in want, (got, want, address - BASE[family], protocol, port)


def layout_state(layout: Layout) -> Any:
    return ({n: (m.hashed, m.ported, m.classes, m.elements) for n, m in layout.maps.items()},
            layout.chains, layout.verdicts, {n: s.digest for n, s in layout.sets.items()})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), broad_policy_sets(), st.sampled_from(["n1", "n2"]), st.data())
def test_incremental_layout_equals_a_full_render(inventory: Inventory, policies: PolicySet, node: str,
                                                 data: st.DataObject) -> None:
    inc = IncrementalCompiler(policies, inventory, node)
    endpoints: list[Endpoint] = list(inventory.endpoints)
    ruleset = inc.ruleset
    layout = build_layout(ruleset)
    for serial in range(data.draw(st.integers(1, 10), label="changes")):
        old, new = change(data.draw, endpoints, serial)
        new_rs = inc.update(old, new)
        if old is not None:
            endpoints.remove(old)
        if new is not None:
            endpoints.append(new)
        full = build_layout(new_rs)
        patched = update_layout(layout, ruleset, new_rs)
        event("patched" if patched is not None else "refused")
        if patched is not None:
            got, changes = patched
            assert layout_state(got) == layout_state(full)
            for name, diff in changes.items():  # the reported changes take old to new
                elements = dict(layout.maps[name].elements)
                for key in diff.gone:
                    del elements[key]
                elements.update(diff.came)
                assert elements == full.maps[name].elements
            for name in got.maps.keys() & layout.maps.keys():
                if name not in changes:
                    assert layout.maps[name].elements == got.maps[name].elements
        layout, ruleset = full, new_rs


def test_protocols_in_keys_are_the_names_the_kernel_lists() -> None:
    assert set(PROTOCOL_NUMBERS) == {"tcp", "udp", "sctp"}  # keys carry names: `nft -j list` prints them so


def test_random_changes_on_a_synthetic_cluster_patch_like_a_full_render() -> None:
    """Realistic sets (hundreds of members, so that pod changes touch sets
    that stay non-empty and maps are patched, not rebuilt): 80 seeded random
    changes through the incremental compiler, each patched layout equal to a
    full render, and most of them patched element by element."""
    import dataclasses
    import ipaddress
    import random

    from bench.synth import Spec, generate, to_model

    cluster = generate(Spec(pods=800, namespaces=20, policies=200, hot=30, v6_every=2, seed=11))
    inventory, policies = to_model(cluster)
    rng = random.Random(11)
    inc = IncrementalCompiler(policies, inventory, cluster.node)
    endpoints = list(inventory.endpoints)
    ruleset = inc.ruleset
    layout = build_layout(ruleset)
    patched_elements = 0
    for k in range(80):
        old: Endpoint | None = rng.choice([e for e in endpoints if e.node != cluster.node])
        what = rng.choice(["add", "remove", "relabel", "caller"])
        new: Endpoint | None
        assert old is not None
        if what == "add":
            old, new = None, dataclasses.replace(old, name=f"added-{k}", interface=None, labels=dict(old.labels),
                                                 ips=(ipaddress.ip_address(int(old.ips[0]) + 1),))
        elif what == "remove":
            new = None
        elif what == "relabel":
            new = dataclasses.replace(old, labels={**old.labels, "tier": rng.choice(["web", "api", "db", "cache"])})
        else:
            labels = dict(old.labels)
            if labels.pop("bench-caller", None) is None:
                labels["bench-caller"] = "yes"
            new = dataclasses.replace(old, labels=labels)
        new_rs = inc.update(old, new)
        if old is not None:
            endpoints.remove(old)
        if new is not None:
            endpoints.append(new)
        full = build_layout(new_rs)
        patched = update_layout(layout, ruleset, new_rs)
        assert patched is not None, k
        got, changes = patched
        assert layout_state(got) == layout_state(full), k
        patched_elements += sum(len(c.gone) + len(c.came) for c in changes.values())
        layout, ruleset = got, new_rs
    assert patched_elements >= 40
