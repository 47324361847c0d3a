"""Every compiled ruleset loads: random valid models, with hostile-but-valid names,
compiled and checked by the kernel of a scratch namespace, for both backends.

* nft: the full replacement through libnftables' check mode, its text form
  (what ``callgate compile`` prints) through ``nft -c -f``, and the incremental
  transaction from another random ruleset, applied for real: the kernel takes
  it, and the table is then exactly the new ruleset's;
* iptables: the backend's own check (the sets created under staging names with
  every element, both restore files with ``--test`` against them).

So no transaction the kernel would refuse can reach ``apply``. The names come
from tests/strategies.py's renamings: quotes, backslashes, unicode, control
characters and 300 characters in policy, namespace, endpoint and label names;
every interface name Linux allows, odd ones included.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.compiler import Compiler
from callgate.compiler.ir import RuleSet
from callgate.enforcers.iptables.enforcer import IptablesEnforcer
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from tests.fuzz.settings import example_time_limit, fuzz_settings
from tests.netns import SCRATCH_PREFIX
from tests.strategies import inventories_with_nodes, policy_sets, rename, renamings, tiered_policy_sets

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def scratch() -> Iterator[str]:
    """One namespace for the module's examples (hypothesis runs many per test), deleted
    afterwards pass or fail. Each example starts from an empty table."""
    name = f"{SCRATCH_PREFIX}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)


@st.composite
def rulesets(draw: Any) -> RuleSet:
    inventory, policies = rename(draw(inventories_with_nodes()), draw(st.one_of(policy_sets(), tiered_policy_sets())),
                                 draw(renamings()))
    return Compiler(policies, inventory).compile("n1")


def known_interfaces(ruleset: RuleSet) -> list[str]:
    return sorted({e.interface for e in ruleset.endpoints if e.interface})


@fuzz_settings(120)
@given(before=rulesets(), after=rulesets(), fail_closed=st.booleans())
def test_nft_accepts_every_ruleset(scratch: str, before: RuleSet, after: RuleSet, fail_closed: bool) -> None:
    kernel = LibNftables(scratch)
    enforcer = NftablesEnforcer(kernel, fail_closed_prefix="cg" if fail_closed else None)
    try:
        with example_time_limit():
            enforcer.remove()
            full = enforcer.plan(after, known_interfaces(after))
            enforcer.check(full)
            text = subprocess.run(["ip", "netns", "exec", scratch, "nft", "-c", "-f", "-"], input=full.text(),
                                  capture_output=True, text=True)
            assert text.returncode == 0, f"nft -c -f refused the text form:\n{text.stderr}\n{full.text()}"
            enforcer.apply(before, known_interfaces=known_interfaces(before))
            result = enforcer.apply(after, known_interfaces=known_interfaces(after))
            if result.changed:
                assert result.mode in ("incremental", "full"), result
            assert enforcer.in_sync(after, known_interfaces(after)), enforcer.diff(after, known_interfaces(after))
    finally:
        enforcer.close()


@fuzz_settings(40)
@given(ruleset=rulesets(), fail_closed=st.booleans())
def test_iptables_accepts_every_ruleset(scratch: str, ruleset: RuleSet, fail_closed: bool) -> None:
    enforcer = IptablesEnforcer(netns=scratch, fail_closed_prefix="cg" if fail_closed else None)
    with example_time_limit():
        enforcer.check(enforcer.plan(ruleset, known_interfaces(ruleset)))
