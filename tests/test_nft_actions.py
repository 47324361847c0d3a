"""Rule actions in the nft layout: flow-log rules, audit chains and per-endpoint limits,
kept in sync by incremental updates on the fake kernel and the real one."""

from __future__ import annotations

from typing import Any

import pytest

from callgate.compiler.ir import Verdict
from callgate.enforcers.base import FlowLogging
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.fake import FakeNftKernel
from callgate.enforcers.nft.kernel import LibNftables, NftKernel
from callgate.enforcers.nft.layout import families
from callgate.enforcers.nft.transaction import replace_table
from callgate.enforcers.nft.update import NftUpdate
from callgate.policy import load_policies
from tests.netns import nft
from tests.test_nft_update import ALL, NODE, S03, SCENARIOS, STATES, compile_, inv_doc

LOGGING = FlowLogging(group=7, allowed=False, rate=10)


def audit(namespace: str) -> Any:
    def change(doc: dict[str, Any]) -> None:
        doc["namespaces"][namespace]["labels"]["callgate.io/enforcement"] = "audit"
    return change


# The update walk, then namespaces going into audit and out of it again.
AUDIT_STATES = [*STATES, ("x in audit", inv_doc(audit("x")), ALL), ("x and y in audit",
                inv_doc(audit("x"), audit("y")), ALL), ("enforced again", inv_doc(), ALL)]


def walk(kernel: NftKernel, logging: FlowLogging | None) -> list[NftUpdate | None]:
    enforcer = NftablesEnforcer(kernel, fail_closed_prefix="cg", flow_logging=logging)
    steps: list[NftUpdate | None] = []
    for label, doc, policies in AUDIT_STATES:
        ruleset = compile_(doc, policies)
        known = [e["interface"] for e in doc["endpoints"] if e.get("node") == NODE and e.get("interface")]
        result = enforcer.apply(ruleset, known_interfaces=known)
        assert enforcer.in_sync(ruleset, known), (label, enforcer.diff(ruleset, known))
        steps.append(result.transaction if isinstance(result.transaction, NftUpdate) else None)
    return steps


@pytest.mark.parametrize("logging", [None, LOGGING])
def test_fake_kernel_walk_with_audit_and_flow_log_is_incremental(logging: FlowLogging | None) -> None:
    steps = walk(FakeNftKernel(), logging)
    assert all(tx is not None for tx in steps[1:])


def _text(logging: FlowLogging | None, *changes: Any) -> str:
    return replace_table(compile_(inv_doc(*changes), S03), logging=logging).text()


def test_without_flow_log_or_audit_the_table_is_the_plain_layout() -> None:
    text = _text(None)
    assert "log " not in text and "flowlimit" not in text and "audit_" not in text
    assert "\t\tcounter drop\n" in text  # the endpoint chain's default acts itself


def test_flow_log_logs_denials_with_their_rule_id_and_limits_per_local_address() -> None:
    text = _text(LOGGING)
    assert "set flowlimit4_in {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags timeout\n\t\ttimeout 60s\n\t}" in text
    assert "\tchain flowlimit_sets {\n\t\tupdate @flowlimit4_in { ip daddr  }\n" in text
    assert ("\tchain default_deny_in {\n\t\tcounter\n"
            "\t\tupdate @flowlimit4_in { ip daddr limit rate over 10/second burst 20 packets } counter drop "
            'comment "callgate flow-log limited"\n'
            "\t\tupdate @flowlimit6_in { ip6 daddr limit rate over 10/second burst 20 packets } counter drop "
            'comment "callgate flow-log limited"\n'
            '\t\tlog prefix "callgate deny ingress default" group 7 drop\n\t}') in text
    assert "goto default_deny_in" in text  # the endpoint chain's default goes there
    assert "callgate allow" not in text  # allowed connections only with --flow-log-allowed
    assert 'log prefix "callgate allow ingress ' in _text(FlowLogging(7, allowed=True))


def test_an_audited_namespace_logs_would_deny_and_lets_the_packet_pass() -> None:
    text = _text(LOGGING, audit("x"))
    assert ('\tchain audit_default_in {\n\t\tcounter\n'
            "\t\tupdate @flowlimit4_in { ip daddr limit rate over 10/second burst 20 packets } counter goto accept_decided "
            'comment "callgate flow-log limited"\n') in text
    assert 'log prefix "callgate would-deny ingress default" group 7 goto accept_decided\n' in text
    # Without a flow log, audit still never drops: the would-deny chains count and accept.
    unlogged = _text(None, audit("x"))
    assert "\tchain audit_default_in {\n\t\tcounter goto accept_decided\n\t}" in unlogged
    assert "drop" not in unlogged.split("chain in_")[1].split("}")[0]


def test_the_flow_log_settings_are_part_of_the_digest() -> None:
    ruleset = compile_(inv_doc(), S03)
    digests = {replace_table(ruleset, logging=logging).digest
               for logging in (None, LOGGING, FlowLogging(8), FlowLogging(7, allowed=True), FlowLogging(7, rate=11))}
    assert len(digests) == 5


@pytest.mark.kernel
def test_kernel_walk_with_audit_and_flow_log_stays_in_sync(netns: str) -> None:
    kernel = LibNftables(netns)
    try:
        steps = walk(kernel, LOGGING)
    finally:
        kernel.close()
    assert all(tx is not None for tx in steps[1:])
    # The text form of the walk's last state, loaded with nft -f, is what that state wants.
    _, doc, policies = AUDIT_STATES[-2]
    known = [e["interface"] for e in doc["endpoints"] if e.get("node") == NODE and e.get("interface")]
    text = NftablesEnforcer(FakeNftKernel(), "cg", flow_logging=LOGGING).plan(compile_(doc, policies), known).text()
    for family in families("node"):  # the walk's tables go; the text brings them back
        nft(netns, "delete", "table", family, "callgate")
    nft(netns, "-f", "-", stdin=text)
    enforcer = NftablesEnforcer(LibNftables(netns), "cg", flow_logging=LOGGING)
    try:
        assert enforcer.in_sync(compile_(doc, policies), known)
    finally:
        enforcer.close()


TIERS = load_policies(SCENARIOS / "08-admin-tier.yaml")


def _chains(text: str) -> dict[str, list[str]]:
    """chain name -> its rule lines, from nft text."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("\tchain "):
            current = out.setdefault(line.split()[1], [])
        elif line == "\t}":
            current = None
        elif current is not None:
            current.append(line.strip())
    return out


@pytest.mark.parametrize("changes", [(), (audit("x"),)], ids=["enforced", "x in audit"])
def test_tier_rules_log_in_their_own_chains_and_a_pass_never_logs(changes: tuple[Any, ...]) -> None:
    ruleset = compile_(inv_doc(*changes), TIERS)
    chains = _chains(replace_table(ruleset, logging=FlowLogging(7, allowed=True)).text())
    passes = {name: rules for name, rules in chains.items() if name.startswith("pass_")}
    assert passes, "the Admin tier passes on to the NetworkPolicy tier"
    assert not any("log " in rule for rules in passes.values() for rule in rules)
    admin = {rule.id: rule.verdict for ep in ruleset.endpoints for tier in ep.ingress for rule in tier.rules
             if rule.origins[0].tier == "Admin"}
    assert Verdict.PASS in admin.values() and Verdict.DENY in admin.values()
    logged = " ".join(rule for rules in chains.values() for rule in rules if "log prefix" in rule)
    for rule_id, verdict in admin.items():
        if verdict is Verdict.PASS:
            assert rule_id not in logged  # no record names a pass
        else:
            word = {Verdict.DENY: "would-deny" if changes else "deny", Verdict.ALLOW: "allow"}[verdict]
            assert f'log prefix "callgate {word} ingress {rule_id}"' in logged


@pytest.mark.kernel
def test_kernel_takes_the_tiered_table_with_flow_log_and_audit_and_its_updates(netns: str) -> None:
    enforcer = NftablesEnforcer(LibNftables(netns), fail_closed_prefix="cg", flow_logging=LOGGING)
    try:
        for doc, policies in ((inv_doc(), TIERS), (inv_doc(audit("x")), TIERS), (inv_doc(audit("x")), ALL),
                              (inv_doc(), TIERS)):
            ruleset = compile_(doc, policies)
            known = [e["interface"] for e in doc["endpoints"] if e.get("node") == NODE and e.get("interface")]
            enforcer.apply(ruleset, known_interfaces=known)
            assert enforcer.in_sync(ruleset, known), enforcer.diff(ruleset, known)
    finally:
        enforcer.remove()
        enforcer.close()
