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
from callgate.enforcers.nft.layout import ACCEPT_DECIDED
from callgate.policy.model import Endpoint, Inventory, PolicySet
from tests.strategies import inventories
from tests.test_decision import BASE, hand_built, packets
from tests.test_incremental_compile import broad_policy_sets, change


def find(m: DecisionMap | None, address: int, protocol: str | None, port: int) -> str | None:
    """The chain a map sends a packet to, as the kernel would look it up."""
    if m is None or protocol is None:
        return None  # no element has another protocol
    if m.hashed:
        return m.elements.get((address, protocol, port))
    return next((c for (lo, hi, proto, first, last), c in m.elements.items()
                 if lo <= address <= hi and proto == protocol and first <= port <= last), None)


def chain_decision(layout: Layout, endpoint: EndpointRules, direction: str, family: str,
                   address: int, protocol: str | None, port: int) -> str:
    """Run the endpoint's tier chains as rendered, rule by rule, for one packet
    of ``family`` to (ingress) one of its addresses: the verdict chain it ends
    in, or "inline <verdict>" for a chain's own last rule. A goto to a pass
    chain is followed: its next map, looked up by the endpoint's address."""
    own = next(a for a in endpoint.ips if (":" in a) == (family == "ip6"))
    chain = (endpoint.ingress if direction == "ingress" else endpoint.egress)[0].name
    for _hop in range(10):
        gone_to = _run_chain(layout, chain, family, address, protocol, port)
        if gone_to not in layout.passes:
            return gone_to
        chain = _run_pass(layout, gone_to, family, own)
    raise AssertionError("a loop of gotos")


def _run_chain(layout: Layout, chain: str, family: str, address: int, protocol: str | None, port: int) -> str:
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
            if all(_matches(e["match"], family, address, protocol, port, layout) for e in exprs if "match" in e):
                return str(exprs[-1]["goto"]["target"])
        elif "goto" in first:  # a tier that passes on, at its end
            return str(first["goto"]["target"])
        else:  # counter, then the default's verdict
            return "inline " + str(exprs[1])
    raise AssertionError("the chain has no default")


def _matches(match: dict[str, Any], family: str, address: int, protocol: str | None, port: int,
             layout: Layout) -> bool:
    left, right = match["left"], match["right"]
    if left == {"meta": {"key": "nfproto"}}:  # any address of the family
        return bool(right == {"ip": "ipv4", "ip6": "ipv6"}[family])
    if left == {"meta": {"key": "l4proto"}}:
        return bool(right == protocol)
    if left.get("payload", {}).get("field") == "dport":  # <protocol> dport <ports>
        return left["payload"]["protocol"] == protocol and any(port == p if isinstance(p, int) else p["range"][0] <= port <= p["range"][1]
                   for p in (right["set"] if isinstance(right, dict) and "set" in right else [right]))
    s = layout.sets[right[1:]]
    return bool(left["payload"]["protocol"] == family) and any(lo <= address <= hi for lo, hi in s.intervals)


def _run_pass(layout: Layout, chain: str, family: str, own: str) -> str:
    """The chain a pass chain sends a packet of the endpoint with address ``own`` to."""
    for exprs in layout.passes[chain]:
        first = exprs[0]
        if "vmap" in first:
            if first["vmap"]["key"]["payload"]["protocol"] != family:
                continue
            for key, verdict in layout.continuations[first["vmap"]["data"][1:]]:
                if key == own:
                    return str(verdict["goto"]["target"])
        else:
            return str(first["goto"]["target"])
    raise AssertionError("the pass chain has no end")


def expected(endpoint: EndpointRules, ruleset: RuleSet, direction: str, family: str, address: int,
             protocol: str | None, port: int) -> str:
    """What the whole direction's program decides (all tiers), as the chain would state it."""
    program = programs(endpoint)[(direction, family)]  # type: ignore[index]
    decision = program.decide_packet(Sources(ruleset), address, protocol, port)
    if decision == program.default:
        # No cell: the chain's last rule acts. A cell naming the default chain is as good.
        return "inline " + str(action(direction, decision.verdict))
    return target(direction, decision, ENFORCED)


def outcome(chain: str) -> str:
    """A default's verdict however it is stated: a chain's own last rule or a
    default chain (a tier's default after a pass, or a later tier's); a rule's
    chain as it is."""
    defaults = {"default_deny": "drop", "default_allow_in": "accept", "default_allow_out": "return"}
    if chain in defaults:
        return defaults[chain]
    if chain.startswith("inline "):
        return next(v for v in ("drop", "accept", "return") if v in chain)
    return chain


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
        assert set(m.elements.values()) <= layout.verdicts.keys() | layout.passes.keys()  # every goto has its chain
    walked = {e["goto"]["target"] for rules in (*layout.chains.values(), *layout.passes.values())
              for exprs in rules for e in exprs if "goto" in e}
    assert walked <= layout.verdicts.keys() | layout.passes.keys() | {ACCEPT_DECIDED}  # (an ingress allow's end)
    for family in ("ip", "ip6"):
        for address, protocol, port in packets(family):
            got = chain_decision(layout, endpoint, "ingress", family, address, protocol, port)
            want = expected(endpoint, ruleset, "ingress", family, address, protocol, port)
            assert outcome(got) == outcome(want), (got, want, address - BASE[family], protocol, port)


def layout_state(layout: Layout) -> Any:
    return ({n: (m.hashed, m.classes, m.elements) for n, m in layout.maps.items()},
            layout.chains, layout.verdicts, {n: s.digest for n, s in layout.sets.items()}, layout.passes,
            layout.continuations)


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


def test_a_tier_map_is_shared_by_endpoints_whose_other_tiers_differ() -> None:
    from callgate.compiler.ir import AddressSet, Chain, L4Match, Origin, PortRange, Rule, Verdict

    def rule(verdict: Verdict, peers: str, port: int, policy: str) -> Rule:
        return Rule(verdict, "ip", peers, None, L4Match("tcp", (PortRange(port, port),)),
                    (Origin(policy, "ingress", 0, "Admin" if policy.startswith("cnp") else ""),))

    sets = (AddressSet("peers4_a", "ip", ("198.18.0.0/30",)), AddressSet("peers4_b", "ip", ("198.18.1.0/30",)))
    admin = (rule(Verdict.DENY, "peers4_a", 22, "cnp guard"), rule(Verdict.ALLOW, "peers4_b", 80, "cnp web"))
    one = EndpointRules("x/one", "cga1", ("198.18.9.1",), ingress=(
        Chain("ina_one", admin, Verdict.PASS), Chain("in_one", (rule(Verdict.ALLOW, "peers4_a", 80, "np a"),),
                                                       Verdict.DENY)))
    two = EndpointRules("x/two", "cga2", ("198.18.9.2",), ingress=(
        Chain("ina_two", admin, Verdict.PASS), Chain("in_two", (rule(Verdict.ALLOW, "peers4_b", 443, "np b"),),
                                                       Verdict.DENY)))
    ruleset = RuleSet("n", sets, (), (one, two))
    layout = build_layout(ruleset)
    assert programs(one)[("ingress", "ip")].name != programs(two)[("ingress", "ip")].name
    [shared] = {str(layout.chains[ep.ingress[0].name][0][0]["vmap"]["data"]) for ep in (one, two)}
    assert len(layout.maps[shared[1:]].elements) == 4 + 4  # tcp/22 from a, tcp/80 from b: once for both
    assert len(layout.maps) == 3  # the Admin tier's, and one per NetworkPolicy tier
    assert layout.continuations["next_in0_4"] == [["198.18.9.1", {"goto": {"target": "in_one"}}],
                                                  ["198.18.9.2", {"goto": {"target": "in_two"}}]]
    for ep in (one, two):
        for address, protocol, port in packets("ip"):
            got = chain_decision(layout, ep, "ingress", "ip", address, protocol, port)
            assert outcome(got) == outcome(expected(ep, ruleset, "ingress", "ip", address, protocol, port))


def test_tier_chains_of_a_cluster_with_cluster_policies_decide_as_the_whole_direction() -> None:
    """A synthetic cluster with ClusterNetworkPolicies: the tier chains, pass
    chains and next maps decide every packet as the whole direction's program
    (tenants' Pass-then-Deny tiers walked, the others mapped), and pod
    changes patch them like a full render."""
    import dataclasses
    import random

    from bench.synth import Spec, generate, to_model
    from callgate.compiler import Compiler
    from callgate.compiler.decision import tier_programs
    from callgate.enforcers.nft.decisions import map_name, walked

    cluster = generate(Spec(pods=1200, namespaces=12, policies=150, hot=20, v6_every=2, seed=5, cluster_policies=40))
    inventory, policies = to_model(cluster)
    ruleset = Compiler(policies, inventory).compile(cluster.node)
    layout = build_layout(ruleset)
    tiered = [ep for ep in ruleset.endpoints if len(ep.ingress) > 1]
    assert len(tiered) >= 5 and layout.passes and layout.continuations
    admin = [tier_programs(ep)[("ingress", "ip")][0] for ep in tiered]
    # A tenant's Pass before its Deny of every pod on a port: walked, no map.
    assert {map_name("ingress", p) for p in admin if walked(p)} & layout.maps.keys() == set()
    assert any(walked(p) for p in admin)
    # Decisions: packets from the members of every set the tiers look at, on the ports they name.
    sources = Sources(ruleset)
    rng = random.Random(5)
    for ep in tiered[:8]:
        for family in ("ip", "ip6"):
            if not any((":" in a) == (family == "ip6") for a in ep.ips):
                continue
            program = programs(ep)[("ingress", family)]  # type: ignore[index]
            peers = sorted({lo for s in program.steps if s.peers for lo, _hi in sources.intervals(s.peers)})
            ports = sorted({r.first for s in program.steps if s.l4 for r in s.l4.ports} | {1, 53, 80})
            for address in [*rng.sample(peers, min(len(peers), 25)), BASE[family] + 1]:
                for protocol in ("tcp", "udp", None):
                    for port in ports:
                        got = chain_decision(layout, ep, "ingress", family, address, protocol, port)
                        want = expected(ep, ruleset, "ingress", family, address, protocol, port)
                        assert outcome(got) == outcome(want), (got, want, address, protocol, port)
    # Pod churn (one tiered endpoint relabelled away and back, remote pods removed): patched like a full render.
    inc = IncrementalCompiler(policies, inventory, cluster.node)
    endpoints = list(inventory.endpoints)
    ruleset = inc.ruleset
    layout = build_layout(ruleset)
    for k in range(12):
        old = rng.choice([e for e in endpoints if e.node != cluster.node])
        new = dataclasses.replace(old, labels={**old.labels, "tier": rng.choice(["web", "api", "db"])}) if k % 2 else None
        new_rs = inc.update(old, new)
        endpoints.remove(old)
        if new is not None:
            endpoints.append(new)
        patched = update_layout(layout, ruleset, new_rs)
        assert patched is not None, k
        assert layout_state(patched[0]) == layout_state(build_layout(new_rs)), k
        layout, ruleset = patched[0], new_rs
