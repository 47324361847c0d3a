"""Names the property test of tests/test_rulesets_load.py found the backends writing
in a form the kernel refuses, pinned one by one (unit level; that test holds the
whole space against the real kernel)."""

from __future__ import annotations

import dataclasses
import re
import subprocess

import pytest

from callgate.compiler import Compiler, RuleSet
from callgate.enforcers.base import FailClosed
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.fake import FakeNftKernel
from callgate.enforcers.nft.transaction import replace_table
from callgate.errors import InputError
from tests.helpers import STANDARD_INVENTORY, policies_from
from tests.netns import nft


def isolated_a(tmp_path: object, interface: str) -> RuleSet:
    """x/a isolated (its ingress chain dispatched by ``interface``), from the standard model."""
    from pathlib import Path

    from callgate.policy import load_inventory

    inventory = load_inventory(STANDARD_INVENTORY)
    endpoints = tuple(dataclasses.replace(e, interface=interface) if e.key == "x/a" else e for e in inventory.endpoints)
    policies = policies_from(Path(str(tmp_path)), """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny, namespace: x}
        spec: {podSelector: {matchLabels: {pod: a}}}
    """)
    return Compiler(policies, dataclasses.replace(inventory, endpoints=endpoints)).compile("node-1")


@pytest.mark.parametrize("interface", ["-x", "+", "..."])
def test_interfaces_in_a_plain_set_are_quoted_in_the_text_form(tmp_path: object, interface: str) -> None:
    """The fail-closed set of known interfaces printed its elements bare: `elements = { + }`
    is a syntax error for `nft -f` (map keys were quoted already)."""
    ruleset = isolated_a(tmp_path, interface)
    text = replace_table(ruleset, FailClosed.build("cg", ruleset)).text()
    assert f'"{interface}"' in text, text
    rules = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))  # not the notes
    bare = re.findall(rf'(?<!"){re.escape(interface)}(?!")', rules)
    assert not bare, f"{interface!r} written bare in the text form:\n{text}"


@pytest.mark.kernel
@pytest.mark.parametrize("interface", ["-x", "+", "..."])
def test_text_form_with_odd_interfaces_loads(netns: str, tmp_path: object, interface: str) -> None:
    ruleset = isolated_a(tmp_path, interface)
    text = replace_table(ruleset, FailClosed.build("cg", ruleset)).text()
    nft(netns, "-f", "-", stdin=text)
    assert f'"{interface}"' in nft(netns, "list", "set", "inet", "callgate", "known_endpoint")


def test_an_interface_nft_cannot_name_is_refused_before_the_kernel(tmp_path: object) -> None:
    """libnftables JSON reads a string starting with '@' as a set reference: an endpoint
    on interface '@x' (a name Linux and callgate's validation allow) made the kernel
    refuse the whole transaction ('No such file or directory'). Now the plan says why
    first, as the iptables backend does for what it cannot express."""
    ruleset = isolated_a(tmp_path, "@x")
    kernel = FakeNftKernel()
    with pytest.raises(InputError) as err:
        NftablesEnforcer(kernel).apply(ruleset)
    assert str(err.value) == ("<input>: endpoint x/a: interface: interface '@x' cannot be written for nftables "
                              "(libnftables reads a name starting with '@' as a set); rename the interface")
    assert kernel.transactions == 0
    with pytest.raises(InputError):
        replace_table(isolated_a(tmp_path, "cgxa0"), FailClosed.build("cg", ruleset, ["@y"]))


@pytest.mark.kernel
def test_the_kernel_refused_a_leading_at(netns: str) -> None:
    """Why: what the kernel does with such an element, so the refusal stays honest."""
    add = ('{"nftables": [{"add": {"table": {"family": "inet", "name": "t"}}}, {"add": {"set": {"family": "inet", '
           '"table": "t", "name": "s", "type": "ifname"}}}, {"add": {"element": {"family": "inet", "table": "t", '
           '"name": "s", "elem": ["@x"]}}}]}')
    refused = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "-f", "-"], input=add, capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "No such file or directory" in refused.stderr


def test_notes_of_the_text_form_are_printable(tmp_path: object) -> None:
    """The '#' notes name endpoints and selectors; a NUL in one (the model takes any
    string) made `nft -f` stop with 'unexpected junk', an escape sequence reached the
    terminal. Notes are written with escapes for what is not printable."""
    ruleset = isolated_a(tmp_path, "cgxa0")
    ruleset = dataclasses.replace(ruleset, endpoints=tuple(
        dataclasses.replace(e, endpoint="x/a\x00\x1b[31m\nflush ruleset") for e in ruleset.endpoints))
    text = replace_table(ruleset).text()
    assert "\t# ingress of x/a\\x00\\x1b[31m\\nflush ruleset (cgxa0)\n" in text, text
    assert all(line.replace("\t", " ").isprintable() for line in text.splitlines())
