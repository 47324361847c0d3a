"""The iptables backend: restore text, names, atomic steps and undo, and the
real kernel (iptables-legacy and iptables-nft) with real packets in a lab.

Unit tests use :class:`FakeIptables` (in-memory ipset/iptables-restore); kernel
tests build the standard two-node lab (prefix "cgi") and compare what packets
do with what the reference Evaluator says.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence

import pytest

from callgate.compiler import Compiler, RuleSet
from callgate.compiler.ir import AddressSet, Chain, EndpointRules, L4Match, Origin, PortRange, Rule, Verdict
from callgate.enforcers import BACKENDS, get_enforcer
from callgate.enforcers.iptables.enforcer import IptablesEnforcer
from callgate.enforcers.iptables.fake import FakeIptables
from callgate.enforcers.iptables.layout import CHAIN_MAX, SET_MAX, SOURCE_IFACES, SOURCE_PAIRS, chain_name, set_name
from callgate.enforcers.iptables.transaction import plan
from callgate.errors import InputError, KernelError
from callgate.policy import Evaluator, Inventory, PolicySet, load_policies
from tests.helpers import standard, write

POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-to-a, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}}]
    ports: [{port: 80}, {port: 81, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [198.18.3.0/24]}}]
    ports: [{port: 80, endPort: 81}]
  - from: [{ipBlock: {cidr: 'fd00::/8', except: ['fd00:18:2::/48']}}]
    ports: [{port: serve-81-udp, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-out, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: serve-80-tcp}, {port: serve-81-udp, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-out, namespace: y}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.18.1.0/24}}, {podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: 80, endPort: 81}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-silent, namespace: z}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}
"""

OTHER_POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-z, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
"""


NODE = "node-2"  # the node whose endpoints have address sets, port ranges and named ports


def compile_all(policies: PolicySet, inv: Inventory) -> dict[str, RuleSet]:
    compiler = Compiler(policies, inv)
    return {node: compiler.compile(node) for node in inv.nodes()}


@pytest.fixture(scope="module")
def inv() -> Inventory:
    return standard()


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    return load_policies(write(tmp_path_factory.mktemp("pol"), "p.yaml", POLICIES))


@pytest.fixture(scope="module")
def other_policies(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    return load_policies(write(tmp_path_factory.mktemp("pol"), "p.yaml", OTHER_POLICIES))


@pytest.fixture(scope="module")
def rulesets(policies: PolicySet, inv: Inventory) -> dict[str, RuleSet]:
    return compile_all(policies, inv)


# =========================================================================== pure


def test_plan_structure(rulesets: dict[str, RuleSet]) -> None:
    tx = plan(rulesets[NODE])
    defined = {s.name: s for s in tx.sets}
    for version in (4, 6):
        table = tx.table(version)
        assert table.chains[0] == "CG-FORWARD"
        forward = [r for r in table.rules if r.startswith("-A CG-FORWARD ")]
        # link control (IPv6), then the source checks (routed veths by the sets, bridge
        # ports by physdev), and only then the conntrack shortcut, carrying the digest:
        # a spoofed packet must not ride the impersonated pod's flow
        link = [r for r in forward if "icmp6" in r and r.endswith("-j ACCEPT")]
        assert forward[:len(link)] == link and len(link) == (9 if version == 6 else 0)
        spoof, ports, established = forward[len(link):len(link) + 3]
        assert spoof == (f"-A CG-FORWARD -m set --match-set {SOURCE_IFACES[version]} src,src -m set ! --match-set "
                         f'{SOURCE_PAIRS[version]} src,src -m comment --comment "callgate anti-spoofing" -j DROP')
        assert ports == "-A CG-FORWARD -m physdev --physdev-is-in -j CG-SRC-PORTS"
        assert established.startswith("-A CG-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED")
        assert tx.digest in established
        by_port = [r for r in table.rules if r.startswith("-A CG-SRC-PORTS ")]
        assert by_port and all("--physdev-in" in r and " -j CG-src_" in r for r in by_port)
        pairs = defined[SOURCE_PAIRS[version]]
        assert pairs.type == "hash:net,iface" and all("," in e for e in pairs.elements)
        # every egress dispatch (by source address) before every ingress dispatch (by destination)
        kinds = ["s" if " -s " in r else "d" for r in forward[len(link) + 3:]]
        assert kinds == sorted(kinds, key=lambda k: k != "s") and "s" in kinds and "d" in kinds
        family = "inet" if version == 4 else "inet6"
        for rule in table.rules:
            chain = rule.split()[1]
            assert chain in table.chains, rule
            for target in re.findall(r"-[jg] (CG-\S+)", rule):
                assert target in table.chains, rule
            for name in re.findall(r"--match-set (\S+)", rule):
                assert defined[name].family == family, rule
        for chain in table.chains:
            assert len(chain) <= CHAIN_MAX
            last = [r for r in table.rules if r.split()[1] == chain][-1]
            if chain.startswith("CG-src_"):  # anti-spoofing: anything not from the endpoint's own addresses
                assert last == f'-A {chain} -m comment --comment "callgate anti-spoofing" -j DROP', last
            elif chain not in ("CG-FORWARD", "CG-SRC-PORTS"):  # every tier ends with its default verdict
                assert last == f"-A {chain} -j DROP", last
    assert all(len(s.name) <= SET_MAX for s in tx.sets)
    # 0.0.0.0/0 except one /24: hash:net cannot hold /0, so it is split
    big = next(s for s in tx.sets if "0.0.0.0/1" in s.elements)
    assert big.type == "hash:net" and "198.18.3.0/24" not in big.elements and "198.18.2.0/24" in big.elements
    assert any(s.type == "hash:ip,port" and "198.18.2.10,tcp:80" in s.elements
               for s in plan(rulesets["node-1"]).sets)  # z/c egress to named ports


def test_names_valid_by_construction() -> None:
    long = "tier_" + "x" * 80
    assert len(chain_name(long)) <= CHAIN_MAX and chain_name(long).startswith("CG-")
    assert chain_name(long) != chain_name(long + "y")
    assert len(set_name("named6_sctp_" + "f" * 40)) <= SET_MAX
    assert set_name("a b;rm -rf /").startswith("cg-h")  # odd characters never reach a name


def _ruleset(rules: tuple[Rule, ...], interface: str = "cgxa0", sets: tuple[AddressSet, ...] = ()) -> RuleSet:
    chain = Chain("in_test", rules, Verdict.DENY)
    ep = EndpointRules("x/a", interface, ("198.18.1.10",), ingress=(chain,))
    return RuleSet("node-1", address_sets=sets, endpoints=(ep,))


def test_multiport_split_and_hostile_comment() -> None:
    ports = (*(PortRange(p, p) for p in range(1000, 1020)), PortRange(2000, 2100))
    origin = Origin('NetworkPolicy x/"evil" \\ \n-j ACCEPT', "ingress", 0)
    rs = _ruleset((Rule(Verdict.ALLOW, l4=L4Match("tcp", ports), origins=(origin,)),))
    rules = [r for r in plan(rs).table(4).rules if "multiport" in r]
    assert len(rules) == 2
    for r in rules:
        dports = r.split("--dports ")[1].split()[0].split(",")
        assert sum(2 if ":" in p else 1 for p in dports) <= 15
        comment = r.split("--comment ")[1]
        assert comment.startswith('"') and comment.count('"') == 2  # one quoted token, nothing escapes
        assert "\n" not in r
    assert "2000:2100" in rules[-1]


def test_range_elements_become_cidrs() -> None:
    s = AddressSet("peers4_r", "ip", ("198.18.0.5-198.18.0.10", "0.0.0.0/0"))
    rs = _ruleset((Rule(Verdict.ALLOW, family="ip", peer_set="peers4_r"),), sets=(s,))
    (ipset,) = (s for s in plan(rs).sets if s.type == "hash:net")  # beside the node's source-check sets
    assert {"198.18.0.5", "198.18.0.6/31", "198.18.0.8/31", "198.18.0.10", "0.0.0.0/1", "128.0.0.0/1"} <= set(
        ipset.elements)
    assert not any(e.endswith("/0") for e in ipset.elements)


def test_equal_peer_sets_are_one_ipset() -> None:
    """Peer sets of equal content, named apart by their definitions, are held once and
    every rule matches the one held (packets: scenario 11 in test_e2e_kernel)."""
    a = AddressSet("peers4_a", "ip", ("198.18.2.10-198.18.2.12",))
    b = AddressSet("peers4_b", "ip", ("198.18.2.10-198.18.2.12",))
    c = AddressSet("peers4_c", "ip", ("198.18.2.10/31",))
    rules = tuple(Rule(Verdict.ALLOW, family="ip", peer_set=s.name) for s in (a, b, c))
    tx = plan(_ruleset(rules, sets=(a, b, c)))
    held = {s.name for s in tx.sets if s.type == "hash:net"}
    assert held == {set_name("peers4_a"), set_name("peers4_c")}
    matched = re.findall(r"--match-set (\S+) src ", tx.table(4).text())
    assert matched == [set_name("peers4_a"), set_name("peers4_a"), set_name("peers4_c")]


def test_wildcard_interface_is_a_clear_error_and_nothing_runs() -> None:
    fake = FakeIptables()
    rs = _ruleset((), interface="cgx+")
    with pytest.raises(InputError) as err:
        IptablesEnforcer(fake).apply(rs)
    assert "endpoint x/a: interface" in str(err.value) and "wildcard" in str(err.value)
    assert fake.calls == []


def test_fake_apply_noop_update_and_remove(rulesets: dict[str, RuleSet], other_policies: PolicySet,
                                           inv: Inventory) -> None:
    fake = FakeIptables()
    fake.tables[4]["FORWARD"].append("-s 198.18.200.1/32 -j DROP")  # not ours
    enforcer = IptablesEnforcer(fake)
    rs = rulesets[NODE]
    assert enforcer.apply(rs).changed
    assert enforcer.live_text() == enforcer.desired_text(rs) and enforcer.diff(rs) == []
    assert fake.tables[4]["FORWARD"] == ["-j CG-FORWARD", "-s 198.18.200.1/32 -j DROP"]
    writes = len(fake.writes)
    assert not enforcer.apply(rs).changed
    assert len(fake.writes) == writes  # re-apply: reads only

    other = compile_all(other_policies, inv)[NODE]
    assert enforcer.apply(other).changed and enforcer.diff(other) == []
    assert not any(n.startswith("cg+") for n in fake.sets)  # staging sets cleaned up
    assert set(fake.sets) == {s.name for s in plan(other).sets}  # stale sets gone
    assert fake.tables[4]["FORWARD"].count("-j CG-FORWARD") == 1

    assert enforcer.remove() and enforcer.live_text() is None and not enforcer.remove()
    assert fake.tables[4]["FORWARD"] == ["-s 198.18.200.1/32 -j DROP"] and fake.sets == {}


def _changed_set_ruleset(rs: RuleSet) -> RuleSet:
    """The same layout with one more address in the first set: a swap is needed."""
    first = rs.address_sets[0]
    extra = "198.18.9.9" if first.family == "ip" else "fd00:99::9"
    changed = dataclasses.replace(first, elements=(*first.elements, extra))
    return dataclasses.replace(rs, address_sets=(changed, *rs.address_sets[1:]))


STEPS = {
    "stage": lambda argv, stdin: argv[:2] == ["ipset", "restore"] and "create cg" in (stdin or ""),
    "test6": lambda argv, stdin: argv[0].startswith("ip6tables") and "--test" in argv,
    "commit4": lambda argv, stdin: argv[0].startswith("iptables") and argv[0].endswith("restore")
    and "--test" not in argv,
    "commit6": lambda argv, stdin: argv[0].startswith("ip6tables") and argv[0].endswith("restore")
    and "--test" not in argv,
}


def failing(step: str) -> object:
    done = [False]

    def fail(argv: Sequence[str], stdin: str | None) -> str | None:
        if not done[0] and STEPS[step](list(argv), stdin):
            done[0] = True
            return f"simulated failure at {step}"
        return None

    return fail


@pytest.mark.parametrize("step", sorted(STEPS))
def test_fake_failed_apply_leaves_previous_state(step: str, rulesets: dict[str, RuleSet],
                                                 other_policies: PolicySet, inv: Inventory) -> None:
    fake = FakeIptables()
    enforcer = IptablesEnforcer(fake)
    enforcer.apply(rulesets[NODE])
    before = enforcer.live_text()
    for new in (compile_all(other_policies, inv)[NODE], _changed_set_ruleset(rulesets[NODE])):
        fake.fail = failing(step)  # type: ignore[assignment]
        with pytest.raises(KernelError, match="simulated"):
            enforcer.apply(new)
        fake.fail = None
        assert enforcer.live_text() == before, step


def test_registry_and_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"nft", "iptables", "auto"} <= set(BACKENDS)
    monkeypatch.setenv("CALLGATE_IPTABLES", "legacy")
    assert IptablesEnforcer(FakeIptables()).tools.restore(6) == "ip6tables-legacy-restore"
    assert IptablesEnforcer(FakeIptables(), variant="nft").tools.save(4) == "iptables-nft-save"
    monkeypatch.setenv("CALLGATE_IPTABLES", "bogus")
    with pytest.raises(ValueError, match="CALLGATE_IPTABLES"):
        IptablesEnforcer(FakeIptables())


# =========================================================================== kernel

VARIANTS = [v for v in ("legacy", "nft") if shutil.which(f"iptables-{v}-restore") and shutil.which(f"ip6tables-{v}-restore")]


@pytest.fixture(scope="module")
def lab(inv: Inventory) -> Iterator[object]:
    from callgate.lab.topology import Lab

    lab = Lab("cgi")
    lab.down()  # a previous crashed run
    with lab.running(inv):
        yield lab


def _enforcers(lab: object, inv: Inventory, variant: str) -> dict[str, IptablesEnforcer]:
    return {node: IptablesEnforcer(variant=variant, netns=lab.node_netns(node)) for node in inv.nodes()}  # type: ignore[attr-defined]


@pytest.fixture
def clean(lab: object, inv: Inventory) -> Iterator[None]:
    """Every kernel test leaves nothing of ours behind, whatever variant it used."""
    yield
    for node in inv.nodes():
        # ipsets are shared by both variants: the variant that holds chains
        # (references to the sets) removes first.
        enforcers = [_enforcers(lab, inv, v)[node] for v in VARIANTS]
        enforcers.sort(key=lambda e: all(t.empty for t in e.live().tables.values()))
        for e in enforcers:
            e.remove()
            assert e.live_text() is None


def sh(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True).stdout


def expected(policies: PolicySet, inv: Inventory, keys: object) -> dict[tuple[str, str, int, int, str], bool]:
    ev = Evaluator(policies, inv)
    out = {}
    for key in keys:  # type: ignore[attr-defined]
        src, dst, family, port, proto = key
        ip_of = {e.key: next(i for i in e.ips if i.version == family) for e in inv.endpoints}
        out[key] = ev.allowed(ip_of[src], ip_of[dst], port, proto)
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_packets_match_evaluator(variant: str, lab: object, clean: None, inv: Inventory,
                                        policies: PolicySet, rulesets: dict[str, RuleSet]) -> None:
    from callgate.lab.probe import probe_matrix

    enforcers = _enforcers(lab, inv, variant)
    for node, e in enforcers.items():
        assert e.apply(rulesets[node]).changed
        # read back exactly what was written (option order, quoting, elements)
        assert e.diff(rulesets[node]) == [], node
        assert not e.apply(rulesets[node]).changed
    seen = probe_matrix(lab, inv, timeout=0.7)  # type: ignore[arg-type]
    want = expected(policies, inv, seen)
    wrong = sorted(k for k in seen if seen[k] != want[k])
    assert not wrong, wrong[:10]
    assert 0 < sum(seen.values()) < len(seen)  # the policies really cut something, not everything


@pytest.mark.kernel
@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_update_tamper_and_foreign_rules(variant: str, lab: object, clean: None, inv: Inventory,
                                                rulesets: dict[str, RuleSet], other_policies: PolicySet,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ns = lab.node_netns(NODE)  # type: ignore[attr-defined]
    ipt, save = f"iptables-{variant}", f"iptables-{variant}-save"
    # Someone else's rules and chain, before and after our jump.
    sh(ns, ipt, "-N", "KUBE-TEST")
    sh(ns, ipt, "-A", "KUBE-TEST", "-s", "198.18.200.1", "-j", "DROP")
    sh(ns, ipt, "-A", "FORWARD", "-j", "KUBE-TEST")
    monkeypatch.setenv("CALLGATE_IPTABLES", variant)
    enforcer = get_enforcer("iptables", netns=ns)  # the way the CLI and the e2e suite get it
    rs = rulesets[NODE]

    # dry run: the kernel validates, nothing is left behind
    assert enforcer.apply(rs, dry_run=True).changed
    assert enforcer.live_text() is None and "cg" not in sh(ns, "ipset", "list", "-n")

    enforcer.apply(rs)
    forward = [line for line in sh(ns, save, "-t", "filter").splitlines() if line.startswith("-A FORWARD")]
    assert forward == ["-A FORWARD -j CG-FORWARD", "-A FORWARD -j KUBE-TEST"]

    # tampering shows in the diff, and apply repairs it
    peer_set = next(s for s in plan(rs).sets if s.type == "hash:net" and s.family == "inet")
    sh(ns, "ipset", "del", peer_set.name, peer_set.elements[0])
    chain = next(c for c in plan(rs).table(6).chains if c.startswith("CG-in_"))
    sh(ns, f"ip6tables-{variant}", "-D", chain, "-j", "DROP")
    diff = enforcer.diff(rs)
    assert f"+add {peer_set.name} {peer_set.elements[0]}" in diff
    assert f"+-A {chain} -j DROP" in diff
    assert enforcer.apply(rs).changed and enforcer.diff(rs) == []

    # a different policy set: chains and sets replaced, stale ones removed
    other = compile_all(other_policies, inv)[NODE]
    assert enforcer.apply(other).changed and enforcer.diff(other) == []
    assert set(sh(ns, "ipset", "list", "-n").split()) == {s.name for s in plan(other).sets}
    # a changed set goes in by create-and-swap
    swapped = _changed_set_ruleset(other)
    assert enforcer.apply(swapped).changed and enforcer.diff(swapped) == []

    assert enforcer.remove()
    after = sh(ns, save, "-t", "filter")
    assert "CG-" not in after and "-A FORWARD -j KUBE-TEST" in after and "-A KUBE-TEST -s 198.18.200.1/32 -j DROP" in after
    sh(ns, ipt, "-D", "FORWARD", "-j", "KUBE-TEST")
    sh(ns, ipt, "-F", "KUBE-TEST")
    sh(ns, ipt, "-X", "KUBE-TEST")


class FailingRunner:
    """The real tools, except one step that is refused (once)."""

    def __init__(self, netns: str, step: str) -> None:
        from callgate.enforcers.iptables.kernel import SubprocessRunner

        self.real = SubprocessRunner(netns)
        self.fail = failing(step)

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        if message := self.fail(argv, stdin):  # type: ignore[operator]
            raise KernelError(message)
        return self.real.run(argv, stdin)


@pytest.mark.kernel
@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_failed_apply_leaves_previous_state(variant: str, lab: object, clean: None, inv: Inventory,
                                                   rulesets: dict[str, RuleSet], other_policies: PolicySet) -> None:
    from callgate.lab.probe import probe_matrix

    ns = lab.node_netns(NODE)  # type: ignore[attr-defined]
    good = IptablesEnforcer(variant=variant, netns=ns)
    good.apply(rulesets[NODE])
    before = good.live_text()
    pairs = [("y/b", "x/a"), ("x/a", "y/b"), ("z/c", "y/b")]
    probes_before = probe_matrix(lab, inv, pairs=pairs, timeout=0.5)  # type: ignore[arg-type]
    for step in STEPS:
        for new in (compile_all(other_policies, inv)[NODE], _changed_set_ruleset(rulesets[NODE])):
            with pytest.raises(KernelError, match="simulated"):
                IptablesEnforcer(FailingRunner(ns, step), variant=variant).apply(new)
            assert good.live_text() == before, step
    # a set of ours exists with another type: refused before anything changes
    bad = plan(rulesets[NODE]).sets[0]
    clash = compile_all(other_policies, inv)[NODE]
    clash_set = plan(clash).sets[0].name
    if clash_set not in {s.name for s in plan(rulesets[NODE]).sets}:
        sh(ns, "ipset", "create", clash_set, "hash:ip,port" if bad.type == "hash:net" else "hash:net")
        with pytest.raises(KernelError, match="exists as"):
            good.apply(clash)
        sh(ns, "ipset", "destroy", clash_set)
        assert good.live_text() == before
    assert probe_matrix(lab, inv, pairs=pairs, timeout=0.5) == probes_before  # type: ignore[arg-type]


@pytest.mark.kernel
def test_kernel_auto_prefers_nft(lab: object) -> None:
    enforcer = get_enforcer("auto", netns=lab.node_netns(NODE))  # type: ignore[attr-defined]
    assert enforcer.name == "nft"
    assert get_enforcer("iptables", netns=lab.node_netns(NODE)).name == "iptables"  # type: ignore[attr-defined]


def test_fail_closed_layout(rulesets: dict[str, RuleSet]) -> None:
    fake = FakeIptables()
    enforcer = IptablesEnforcer(fake, fail_closed_prefix="cg")
    rs = rulesets["node-1"]
    tx = enforcer.plan(rs, known_interfaces=["cgxa0"])
    rules = tx.table(4).rules
    assert "-A CG-FORWARD -i cg+ -j CG-FC-IIF" in rules and "-A CG-FORWARD -o cg+ -j CG-FC-OIF" in rules
    assert "-A CG-FC-IIF -i cgxa0 -j RETURN" in rules and "-A CG-FC-OIF -o cgyb0 -j RETURN" in rules
    # every local endpoint of the RuleSet is known (isolated or not: x/c is not); others are dropped
    assert "-A CG-FC-IIF -i cgxc0 -j RETURN" in rules and not any("cgzz9" in r for r in rules)
    assert "-A CG-FC-PIN -m physdev --physdev-in cgxa0 -j RETURN" in rules  # bridge ports too
    assert tx.digest != plan(rs).digest  # the known set is part of what is compared
    enforcer.apply(rs, known_interfaces=["cgxa0"])
    assert not enforcer.apply(rs, known_interfaces=["cgxa0"]).changed
    assert enforcer.apply(rs, known_interfaces=["cgxa0", "cgzz9"]).changed
    assert enforcer.live_digest() == enforcer.applied.digest  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="fail-closed prefix"):
        IptablesEnforcer(fake, fail_closed_prefix="cg x")
    with pytest.raises(InputError, match="known interfaces"):
        enforcer.plan(rs, known_interfaces=["cg+"])


@pytest.mark.kernel
@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_fail_closed_cuts_off_unknown_interfaces(variant: str, lab: object, clean: None, inv: Inventory,
                                                        policies: PolicySet, rulesets: dict[str, RuleSet]) -> None:
    from callgate.lab.probe import probe_matrix

    unknown = "x/c"  # on node-1, not isolated; its interface not known yet (as before the agent resolves it)
    unresolved = Inventory(inv.namespaces, tuple(dataclasses.replace(ep, interface=None) if ep.key == unknown else ep
                                                 for ep in inv.endpoints))
    for node, e in _enforcers(lab, inv, variant).items():
        fc = IptablesEnforcer(variant=variant, netns=e.runner.netns, fail_closed_prefix="cg")  # type: ignore[attr-defined]
        fc.apply(compile_all(policies, unresolved)[node])
    seen = probe_matrix(lab, inv, timeout=0.7)  # type: ignore[arg-type]
    want = {k: v and unknown not in k[:2] for k, v in expected(policies, inv, seen).items()}
    wrong = sorted(k for k in seen if seen[k] != want[k])
    assert not wrong, wrong[:10]
    assert any(v for k, v in seen.items() if "x/a" in k[:2])  # known, non-isolated pods still talk


@pytest.mark.kernel
@pytest.mark.skipif(len(VARIANTS) < 2, reason="needs both iptables-legacy and iptables-nft")
def test_kernel_switching_variant_moves_the_chains(lab: object, clean: None, rulesets: dict[str, RuleSet]) -> None:
    ns = lab.node_netns(NODE)  # type: ignore[attr-defined]
    rs = rulesets[NODE]
    legacy = IptablesEnforcer(variant="legacy", netns=ns)
    nft = IptablesEnforcer(variant="nft", netns=ns)
    legacy.apply(rs)
    assert "CG-FORWARD" in sh(ns, "iptables-legacy-save", "-t", "filter")
    # the nft variant sees callgate's chains in legacy and reports them in its diff
    assert any(line.startswith("-# iptables-legacy-restore: callgate chains of the other variant")
               for line in nft.diff(rs))
    assert nft.apply(rs).changed
    assert nft.diff(rs) == [] and legacy.diff(rs) != []
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        assert "CG-" not in sh(ns, tool, "-t", "filter")
    assert "CG-FORWARD" in sh(ns, "ip6tables-nft-save", "-t", "filter")
    assert not nft.apply(rs).changed
