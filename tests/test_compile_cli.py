"""``callgate compile``: --format (text, json, ir) and --backend (nft, iptables) are
independent choices, mistakes are usage errors, and no kernel is touched."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from callgate.cli.main import app
from tests.helpers import SHOP

ARGS = ["compile", "-i", str(SHOP / "inventory.yaml"), "-p", str(SHOP / "apps.yaml"), "-n", "node-1"]


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any use of libnftables (a probe for ``auto`` included) fails the test."""
    touched: list[str] = []

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        touched.append("libnftables")
        raise AssertionError("compile touched the kernel")

    monkeypatch.setattr("nftables.Nftables", refuse)
    return touched


def compile_(*args: str) -> Result:
    return CliRunner().invoke(app, [*ARGS, *args])


def test_text_is_each_backends_own_syntax() -> None:
    nft = compile_("--format", "text")
    assert nft.exit_code == 0, nft.output
    assert nft.stdout.startswith("table inet callgate {")
    assert nft.stdout == compile_().stdout  # text and nft are the defaults
    ipt = compile_("--format", "text", "--backend", "iptables")
    assert ipt.exit_code == 0, ipt.output
    assert ipt.stdout.startswith("# ipset\ncreate cg-") and "\n*filter\n:CG-FORWARD - [0:0]\n" in ipt.stdout


def test_json_is_each_backends_machine_form() -> None:
    nft = json.loads(compile_("--format", "json").stdout)
    assert nft["nftables"][0] == {"add": {"table": {"family": "inet", "name": "callgate"}}}
    ipt = compile_("--format", "json", "--backend", "iptables")
    assert ipt.exit_code == 0, ipt.output
    data = json.loads(ipt.stdout)
    text = compile_("--format", "text", "--backend", "iptables").stdout
    # The same content as the text form: every set with its elements, every rule line.
    for s in data["ipsets"]:
        assert f"create {s['name']} {s['type']} family {s['family']}\n" in text
        assert all(f"add {s['name']} {e}\n" in text for e in s["elements"])
    for tool in ("iptables", "ip6tables"):
        assert data[tool]["chains"][0] == "CG-FORWARD" and data[tool]["jumps"] == ["FORWARD -> CG-FORWARD"]
        assert all(line + "\n" in text for line in data[tool]["rules"])
    assert len(data["iptables"]["rules"]) > 5


def test_ir_is_the_same_for_every_backend() -> None:
    ir = compile_("--format", "ir")
    assert ir.exit_code == 0, ir.output
    assert set(json.loads(ir.stdout)) == {"node", "address_sets", "port_sets", "endpoints", "unbound", "local"}
    assert compile_("--format", "ir", "--backend", "iptables").stdout == ir.stdout


@pytest.mark.parametrize("args", [
    ("--format", "nft", "--backend", "iptables"),  # another backend's format: no silent switch
    ("--format", "nft-json", "--backend", "iptables"),
    ("--format", "yaml"),
    ("--backend", "pf"),
])
def test_unknown_format_or_backend_is_a_usage_error(args: tuple[str, ...]) -> None:
    result = compile_(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Invalid value" in result.output


def test_auto_is_refused_without_probing_the_kernel(no_kernel: list[str]) -> None:
    result = compile_("--backend", "auto")
    assert result.exit_code == 2, result.output
    assert "never touches a kernel" in " ".join(result.output.split())
    assert no_kernel == []
