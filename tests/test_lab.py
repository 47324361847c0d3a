"""The test lab itself: real namespaces, real packets, clean teardown.

Kernel tests build labs named ``cgl`` (namespaces ``cgl-…``) and nothing else;
every fixture takes its lab down in ``finally`` so a failing test leaves no
namespace behind. Planning tests (names, validation) need no kernel.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from callgate.cli.lab import lab_app
from callgate.lab import Lab, LabError, probe_details, probe_matrix
from callgate.lab.netns import exec_in, in_netns, list_netns
from callgate.lab.topology import LabState, NodePlan, PodPlan, safe
from callgate.policy import Endpoint, Inventory, load_inventory
from callgate.policy.inventory import inventory_from_dict
from tests.helpers import ROOT, STANDARD_INVENTORY, standard

PREFIX = "cgl"
LAB_NAME = re.compile(rf"{PREFIX}-(fabric|n-[a-z0-9-]{{1,20}}|p-[0-9a-f]{{10}})")

def leftovers() -> list[str]:
    return list_netns(f"{PREFIX}-")


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab object whose namespaces are gone before and after the test."""
    lab = Lab(PREFIX)
    lab.down()  # whatever an aborted earlier run left behind
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def standard_lab(lab: Lab) -> Iterator[tuple[Lab, Inventory]]:
    inventory = standard()
    lab.up(inventory)
    yield lab, inventory  # the `lab` fixture tears down, even on failure


# --------------------------------------------------------------------------- reachability


@pytest.mark.kernel
def test_every_pod_reaches_every_pod_without_rules(standard_lab: tuple[Lab, Inventory]) -> None:
    lab, inventory = standard_lab
    results = probe_details(lab, inventory)
    # 9 pods x 8 others x {80,81}x{TCP,UDP} x {IPv4,IPv6}
    assert len(results) == 9 * 8 * 4 * 2
    failed = {k: (r.error, r.reply) for k, r in results.items() if not r.ok}
    assert failed == {}


DROP_TCP_81 = """
table inet cgltest {
    chain forward {
        type filter hook forward priority filter; policy accept;
        tcp dport 81 drop
    }
}
"""


@pytest.mark.kernel
def test_a_dropped_path_is_observed_as_blocked(standard_lab: tuple[Lab, Inventory]) -> None:
    lab, inventory = standard_lab
    node = lab.node_netns("node-1")
    node_of = {ep.key: ep.node for ep in inventory.endpoints}
    exec_in(node, ["nft", "-f", "-"], input=DROP_TCP_81)
    try:
        observed = probe_matrix(lab, inventory)
    finally:
        exec_in(node, ["nft", "delete", "table", "inet", "cgltest"])
    # node-1 forwards every packet from or to its own pods, and nothing else.
    expected = {
        key: not (key[3:] == (81, "TCP") and "node-1" in (node_of[key[0]], node_of[key[1]]))
        for key in observed
    }
    assert observed == expected
    assert not all(observed.values())
    # Without the table the path is open again.
    assert all(probe_matrix(lab, inventory, ports=[(81, "TCP")]).values())


STATEFUL_ALLOW = """
table inet cgltest {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ct state established,related accept
    }
}
"""


@pytest.mark.kernel
def test_probes_start_from_an_empty_connection_table(standard_lab: tuple[Lab, Inventory]) -> None:
    """Flows tracked under an earlier ruleset must not make a later probe pass:
    each probe round flushes conntrack on the lab's nodes first."""
    lab, inventory = standard_lab
    src = next(ep for ep in inventory.endpoints if ep.key == "x/a")
    node = lab.node_netns(src.node)
    exec_in(node, ["nft", "-f", "-"], input=STATEFUL_ALLOW)
    try:
        assert all(probe_matrix(lab, inventory, pairs=[("x/a", "y/b")], families=(4,),
                                ports=[(80, "UDP")]).values())
        # The UDP probe's flow is tracked (and would be for 30 s) ...
        assert "dport=80" in exec_in(node, ["conntrack", "-L", "-p", "udp"], check=False)
        # ... until the next probe round, which starts from an empty table.
        probe_matrix(lab, inventory, pairs=[("x/a", "y/b")], families=(4,), ports=[(80, "TCP")])
        assert "dport=80" not in exec_in(node, ["conntrack", "-L", "-p", "udp"], check=False)
    finally:
        exec_in(node, ["nft", "delete", "table", "inet", "cgltest"])


@pytest.mark.kernel
def test_probe_matrix_narrows_to_pairs_families_and_ports(standard_lab: tuple[Lab, Inventory]) -> None:
    lab, inventory = standard_lab
    observed = probe_matrix(lab, inventory, pairs=[("x/a", "y/b"), ("y/b", "y/b")], families=(6,),
                            ports=[(80, "UDP"), (9999, "TCP")])
    assert observed == {("x/a", "y/b", 6, 80, "UDP"): True}  # self-pairs and undeclared ports are skipped


# --------------------------------------------------------------------------- teardown


@pytest.mark.kernel
def test_down_removes_namespaces_and_servers_and_is_idempotent(lab: Lab) -> None:
    state = lab.up(standard())
    names = lab.existing_netns()
    assert len(names) == 1 + 2 + 9 and all(LAB_NAME.fullmatch(n) for n in names)
    pids = {p.pid: p.netns for p in state.pods}
    assert all(pid is not None and in_netns(pid, ns) for pid, ns in pids.items())
    assert lab.state_path.exists()

    deleted = lab.down()
    assert sorted(deleted) == sorted(names)
    assert leftovers() == []
    assert not lab.state_path.exists()
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert lab.down() == []  # again: nothing to do, no error


@pytest.mark.kernel
def test_down_works_from_another_process(lab: Lab) -> None:
    state = lab.up(standard())
    code = f"from callgate.lab import Lab; print(len(Lab({PREFIX!r}).down()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "12"
    assert leftovers() == []
    assert all(pod.pid is not None and not in_netns(pod.pid, pod.netns) for pod in state.pods)


@pytest.mark.kernel
def test_running_tears_down_on_error(lab: Lab) -> None:
    with pytest.raises(RuntimeError, match="boom"), lab.running(standard()):
        assert len(leftovers()) == 12
        raise RuntimeError("boom")
    assert leftovers() == []


@pytest.mark.kernel
def test_failed_up_cleans_up_after_itself(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(state: Any) -> None:
        raise LabError("simulated failure while starting servers")

    monkeypatch.setattr(lab, "_start_servers", broken)
    with pytest.raises(LabError, match="simulated"):
        lab.up(standard())
    assert leftovers() == []


@pytest.mark.kernel
def test_up_refuses_a_lab_that_exists(standard_lab: tuple[Lab, Inventory]) -> None:
    _, inventory = standard_lab
    with pytest.raises(LabError, match="already exists"):
        Lab(PREFIX).up(inventory)
    assert len(leftovers()) == 12  # the running lab was left alone


# --------------------------------------------------------------------------- awkward inventories


def awkward_inventory() -> Inventory:
    """Hostile node names, dotted and missing interfaces, single-stack pods, no-node and SCTP."""
    def ep(name: str, node: str | None, ips: list[str], **extra: Any) -> dict[str, Any]:
        ports = [{"name": "web", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"},
                 {"name": "sig", "port": 9, "protocol": "SCTP"}]
        return {"name": name, "namespace": "odd", "node": node, "ips": ips, "ports": ports, **extra}

    return inventory_from_dict({
        "apiVersion": "callgate/v1", "kind": "Inventory",
        "endpoints": [
            ep("dual", "Node_A/../..", ["198.18.50.1", "fd00:50::1"], interface="cg.dual"),
            ep("v4only", "Node_A/../..", ["198.18.50.2"]),
            ep("v6only", "-n-x y", ["fd00:50::3"]),
            ep("dual2", "-n-x y", ["198.18.50.4", "fd00:50::4"], interface="cg-d2"),
            ep("nowhere", None, ["198.18.50.5"]),
        ],
    })


@pytest.mark.kernel
def test_awkward_inventory_builds_and_connects(lab: Lab) -> None:
    inventory = awkward_inventory()
    state = lab.up(inventory)
    assert all(LAB_NAME.fullmatch(n) for n in lab.existing_netns())
    assert state.skipped == ["odd/nowhere: no node"]
    observed = probe_details(lab, inventory)
    # Only pairs sharing a family; SCTP is never probed.
    assert {k[4] for k in observed} == {"TCP", "UDP"}
    assert ("odd/v4only", "odd/v6only", 4, 8080, "TCP") not in observed
    assert ("odd/dual", "odd/v6only", 6, 8080, "TCP") in observed
    assert {k: r.error for k, r in observed.items() if not r.ok} == {}


def test_names_are_safe_and_short() -> None:
    lab = Lab(PREFIX)
    assert lab.node_netns("node-1") == "cgl-n-node-1"
    for hostile in ("Node_A/../..", "-rf", "a" * 300, "x\ny", "", "NODE-1"):
        assert LAB_NAME.fullmatch(lab.node_netns(hostile)), hostile
    assert safe("Node-1") != safe("node-1")  # cleaned names keep apart by their hash
    assert LAB_NAME.fullmatch(lab.pod_netns("x/a; rm -rf /"))


@pytest.mark.parametrize("prefix", ["", "cg-l", "CGL", "1cg", "averyverylongprefix", "cg/l"])
def test_bad_lab_names_are_refused(prefix: str) -> None:
    with pytest.raises(LabError, match="lab name"):
        Lab(prefix)


def one_pod(ips: list[str], interface: str | None = None) -> Inventory:
    """Built as model objects, past the loader's validation: the lab must not trust its input."""
    addresses = tuple(ipaddress.ip_address(i) for i in ips)
    return Inventory(endpoints=(Endpoint("a", "x", {}, "n1", addresses, interface),))


@pytest.mark.parametrize(("ips", "interface", "message"), [
    (["10.0.0.1"], None, "outside the lab's ranges"),
    (["198.19.255.7"], None, "outside the lab's ranges"),  # the uplink network
    (["2001:db8::1"], None, "outside the lab's ranges"),
    (["198.18.0.1"], "uplink", "cannot be used"),
    (["198.18.0.1"], "-evil", "cannot be used"),
    (["198.18.0.1"], "a:b", "cannot be used"),
    (["198.18.0.1"], "sixteen-chars-xx", "cannot be used"),
])
def test_plan_refuses_what_the_lab_cannot_build(ips: list[str], interface: str | None, message: str) -> None:
    with pytest.raises(LabError, match=message):
        Lab(PREFIX).plan(one_pod(ips, interface))


def test_plan_refuses_duplicate_interfaces_on_a_node() -> None:
    inventory = standard()
    x_a, x_b, x_c, *rest = inventory.endpoints
    x_c = dataclasses.replace(x_c, interface=x_a.interface)  # x/a and x/c share node-1
    inventory = Inventory(inventory.namespaces, (x_a, x_b, x_c, *rest))
    with pytest.raises(LabError, match="more than one endpoint"):
        Lab(PREFIX).plan(inventory)


# --------------------------------------------------------------------------- CLI


def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(lab_app, name="lab")
    return app


@pytest.mark.kernel
def test_cli_up_status_netns_probe_down(lab: Lab, tmp_path: Path) -> None:
    runner, app = CliRunner(), cli()
    inv = str(STANDARD_INVENTORY)

    result = runner.invoke(app, ["lab", "up", "-i", inv, "--name", PREFIX])
    assert result.exit_code == 0, result.output
    assert "9 pods" in result.output

    result = runner.invoke(app, ["lab", "status", "--name", PREFIX])
    assert result.exit_code == 0 and "cgl-n-node-2" in result.output and "x/a" in result.output

    result = runner.invoke(app, ["lab", "netns", "node-1", "--name", PREFIX])
    assert result.exit_code == 0 and result.output.strip() == "cgl-n-node-1"
    result = runner.invoke(app, ["lab", "netns", "node-9", "--name", PREFIX])
    assert result.exit_code == 1

    # No policies: everything is expected to pass, and does.
    empty = tmp_path / "policies"
    empty.mkdir()
    args = ["lab", "probe", "-i", inv, "-p", str(empty), "--name", PREFIX, "--family", "4", "--port", "81/TCP"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "72 probes" in result.output and "all match" in result.output

    # A drop the policies do not ask for: reported as mismatches, exit 1.
    exec_in(lab.node_netns("node-2"), ["nft", "-f", "-"], input=DROP_TCP_81)
    try:
        result = runner.invoke(app, args)
    finally:
        exec_in(lab.node_netns("node-2"), ["nft", "delete", "table", "inet", "cgltest"])
    assert result.exit_code == 1, result.output
    assert "MISMATCH x/b -> x/a 81/TCP IPv4: was blocked (timeout), expected allowed" in result.output

    result = runner.invoke(app, ["lab", "down", "--name", PREFIX])
    assert result.exit_code == 0 and "deleted 12 namespaces" in result.output
    assert leftovers() == []


@pytest.mark.kernel
def test_cli_probe_without_a_lab_fails_cleanly(lab: Lab, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["lab", "probe", "-i", str(STANDARD_INVENTORY), "-p", str(tmp_path),
                                        "--name", PREFIX])
    assert result.exit_code == 1
    assert "is lab 'cgl' up" in result.output


@pytest.mark.kernel
@pytest.mark.parametrize("topology", ["bridge", "macvlan"])
def test_cli_other_topologies_and_the_labs_inventory(lab: Lab, tmp_path: Path, topology: str) -> None:
    runner, app = CliRunner(), cli()
    inv = str(STANDARD_INVENTORY)
    result = runner.invoke(app, ["lab", "up", "-i", inv, "--name", PREFIX, "--topology", topology])
    assert result.exit_code == 0, result.output
    assert f"({topology})" in result.output and "9 pods" in result.output
    assert ("callgate lab inventory" in result.output) == (topology == "macvlan")
    printed = runner.invoke(app, ["lab", "inventory", "-i", inv, "--name", PREFIX])
    assert printed.exit_code == 0, printed.output
    (tmp_path / "lab.yaml").write_text(printed.output)
    built = load_inventory(tmp_path / "lab.yaml")
    a = built.endpoint("x/a")
    assert a is not None
    if topology == "macvlan":  # no host side: the pod's own namespace instead
        assert a.interface is None and a.netns == f"/run/netns/{lab.pod_netns('x/a')}"
        assert json.loads(exec_in(lab.node_netns("node-1"), ["ip", "-j", "link", "show"]))  # uplink and lo only
        kinds = {json.loads(exec_in(lab.pod_netns("x/a"), ["ip", "-j", "-d", "link", "show", "eth0"]))[0]
                 ["linkinfo"]["info_kind"]}
        assert kinds == {"macvlan"}
    else:  # the host sides are ports of the node's bridge
        assert a.interface == "cgxa0" and a.netns is None
        port = json.loads(exec_in(lab.node_netns("node-1"), ["ip", "-j", "link", "show", "cgxa0"]))[0]
        assert port["master"] == "br0"
    assert [ep.key for ep in built.endpoints] == [ep.key for ep in standard().endpoints]
    status = runner.invoke(app, ["lab", "status", "--name", PREFIX])
    assert status.exit_code == 0 and f"lab {PREFIX} ({topology})" in status.output
    empty = tmp_path / "policies"
    empty.mkdir()
    probed = runner.invoke(app, ["lab", "probe", "-i", str(tmp_path / "lab.yaml"), "-p", str(empty), "--name", PREFIX,
                                 "--port", "80/UDP"])
    assert probed.exit_code == 0 and "144 probes" in probed.output and "all match" in probed.output
    assert runner.invoke(app, ["lab", "up", "-i", inv, "--name", "cgl2", "--topology", "mesh"]).exit_code == 2


def test_the_labs_inventory_keeps_the_nodes() -> None:
    """The inventory as a lab built it (interfaces or netns filled in) still names the
    nodes' labels and addresses, which ClusterNetworkPolicy nodes peers select."""
    inv = load_inventory(ROOT / "examples" / "conformance" / "inventory.yaml")
    ep = inv.endpoints[0]
    assert ep.node is not None and inv.node_info
    pod = PodPlan(ep.key, ep.node, "cgl-p-x", None, [str(ip) for ip in ep.ips], [80], [])
    state = LabState("cgl", "cgl-fabric", [NodePlan(ep.node, "cgl-n-x", "cgl-f-x", "198.19.255.1", "fd00:ff::1",
                                                    [pod])], topology="macvlan")
    built = state.inventory(inv)
    assert built.node_info == inv.node_info
    assert built.endpoint(ep.key) == dataclasses.replace(ep, interface=None, netns="/run/netns/cgl-p-x")
