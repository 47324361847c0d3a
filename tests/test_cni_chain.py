"""The CNI start gate on a node lab, in kubelet's order, over the real reference plugins.

A conflist ``ptp`` or ``bridge`` (+ host-local) → ``callgate-cni`` (built from C) is run the
way libcni runs it (:mod:`tests.libcni`), against an agent on the Kubernetes
source (:mod:`tests.cni_node`). The Pod objects exist without an address
while ADD runs — kubelet writes ``status.podIP`` only after the chain has
returned — and every verdict is a real TCP connection between sandboxes.

Policy: in namespace ``shop``, pods ``app=web`` accept TCP 80 only from
``app=client``; ``app=other`` is not allowed.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cni_node import Node, Pod, bridge_conflist, build_plugin, plugins_missing, ptp_conflist, wait
from tests.fake_apiserver import FakeAPIServer
from tests.libcni import CniPluginError, Runtime, Sandbox

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(plugins_missing() is not None, reason=str(plugins_missing()))]

WEB_FROM_CLIENT = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "web-from-client", "namespace": "shop"},
    "spec": {"podSelector": {"matchLabels": {"app": "web"}},
             "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                          "ports": [{"port": 80}]}]}}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plugin(tmp_path_factory.mktemp("plugin") / "callgate-cni")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, plugin: Path) -> Iterator[Node]:
    with FakeAPIServer() as api:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        api.create(WEB_FROM_CLIENT)
        lab = Node(tmp_path_factory.mktemp("node"), plugin, api)
        try:
            lab.start()
            yield lab
        finally:
            lab.stop()


_subnets = iter(range(40, 80))


def network(node: Node, tmp_path: Path, two_addresses: bool = False) -> Runtime:
    """A ptp network of its own for one test (subnet, host-local data directory)."""
    third = next(_subnets)
    net = f"198.18.{third}"
    limits = {"range_start": f"{net}.10", "range_end": f"{net}.11"} if two_addresses else {}
    return node.runtime(ptp_conflist(f"net{third}", f"{net}.0/24", tmp_path / "ipam", **limits))


def pods(suffix: str) -> tuple[Pod, Pod, Pod]:
    return (Pod("shop", f"web-{suffix}", {"app": "web"}), Pod("shop", f"client-{suffix}", {"app": "client"}),
            Pod("shop", f"other-{suffix}", {"app": "other"}))


def test_add_in_kubelets_order_is_enforced_when_add_returns(node: Node, tmp_path: Path) -> None:
    runtime = network(node, tmp_path)
    web, client, other = pods("a")
    for pod in (client, other, web):
        node.kubelet_add(runtime, pod, write_status=False)
    # The API knows none of the addresses yet: what the plugin handed over is enforced.
    assert all(not p["status"].get("podIP") for p in node.api.objects("Pod"))
    assert node.reach(client, web) and not node.reach(other, web)
    assert node.programmed(web)["programmed"] is True
    # kubelet writes the statuses; the agent reconciles, the verdicts stay.
    for pod in (client, other, web):
        node.write_status(pod)
    node.settle(client, other, web)
    assert node.reach(client, web) and not node.reach(other, web)


def test_concurrent_adds_all_pass_and_are_enforced(node: Node, tmp_path: Path) -> None:
    runtime = network(node, tmp_path)
    group = [Pod("shop", f"web-c{i}", {"app": "web"}) for i in range(4)]
    client, other = Pod("shop", "client-c", {"app": "client"}), Pod("shop", "other-c", {"app": "other"})
    errors: list[BaseException] = []
    took: list[float] = []

    def add(pod: Pod) -> None:
        try:
            took.append(node.kubelet_add(runtime, pod))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(p,)) for p in (*group, client, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len({p.ip for p in (*group, client, other)}) == 6, "host-local handed out distinct addresses"
    for web in group:
        assert node.reach(client, web) and not node.reach(other, web)
    assert max(took) < 10, took


def test_recreated_sandbox_with_a_new_address(node: Node, tmp_path: Path) -> None:
    runtime = network(node, tmp_path)
    web, client, other = pods("r")
    for pod in (client, other, web):
        node.kubelet_add(runtime, pod)
    old_ip, old_sandbox = web.ip, web.sandbox
    assert old_sandbox is not None and web.server is not None
    # The sandbox dies (DEL in reverse order), a new one is made: host-local gives a new address
    # while the API still shows the old podIP.
    runtime.delete(old_sandbox)
    web.server.kill()
    node.drop_sandbox(old_sandbox)
    node.kubelet_add(runtime, web, write_status=False)
    assert web.ip != old_ip
    assert node.api.get("Pod", web.name, "shop")["status"]["podIP"] == old_ip  # type: ignore[index]
    assert node.reach(client, web) and not node.reach(other, web)
    node.write_status(web)
    node.settle(web)
    assert node.reach(client, web) and not node.reach(other, web)


def test_ip_reuse_by_host_local(node: Node, tmp_path: Path) -> None:
    """Two addresses only: a freed address goes to the next pod while the API still
    shows it on the terminating one."""
    runtime = network(node, tmp_path, two_addresses=True)
    client, first = Pod("shop", "client-u", {"app": "client"}), Pod("shop", "other-u", {"app": "other"})
    node.kubelet_add(runtime, client)
    node.kubelet_add(runtime, first)
    # `first` terminates: deletionTimestamp set, sandbox gone (its address freed), object still there.
    terminating = first.api_object(with_status=True)
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    node.api.update(terminating)
    assert first.sandbox is not None
    runtime.delete(first.sandbox)
    web = Pod("shop", "web-u", {"app": "web"})
    node.kubelet_add(runtime, web, write_status=False)
    assert web.ip == first.ip, "host-local reused the freed address"
    assert node.reach(client, web)
    node.write_status(web)  # both pods now claim the address in the API
    node.settle(web)  # the terminating pod does not push the running one out of the inventory
    assert node.reach(client, web)
    node.api.delete("Pod", first.name, "shop")
    wait(lambda: node.reactor.last_sync is not None and all(
        ep.key != first.key for ep in node.reactor.last_sync.snapshot.inventory.endpoints), "the deletion")
    assert node.reach(client, web)


def check_with_the_table_deleted(node: Node, runtime: Runtime, sandbox: Sandbox,
                                 while_gone: Callable[[], bool] = lambda: True) -> tuple[CniPluginError, int]:
    """Delete the live table, see ``while_gone`` hold, and CHECK: the error, and the
    reactor's repairs just before the deletion.

    A sync the agent had already queued (a status event's, coalesced) may find the
    table gone first and repair it; ``while_gone`` or CHECK then rightly fail or pass.
    That is told apart from a miss by the repair it counted, and tried again."""
    for _ in range(3):
        repairs = node.reactor.repairs
        node.nft("delete", "table", "inet", "callgate")
        if while_gone():
            try:
                runtime.check(sandbox)
            except CniPluginError as failed:
                return failed, repairs
        assert node.reactor.repairs > repairs, "the table was deleted, nothing repaired it, and it went unnoticed"
    pytest.fail("three times in a row a queued sync repaired the deleted table before the test looked")


def test_check_tells_the_truth_and_repairs_at_once(node: Node, tmp_path: Path) -> None:
    runtime = network(node, tmp_path)
    web, client, other = pods("k")
    for pod in (client, other, web):
        node.kubelet_add(runtime, pod)
    assert web.sandbox is not None
    node.settle(client, other, web)
    runtime.check(web.sandbox)
    # The table gone, the denied pair connects, and CHECK says so.
    failed, repairs = check_with_the_table_deleted(node, runtime, web.sandbox, lambda: node.reach(other, web))
    assert failed.plugin == "callgate-cni" and failed.code == 100
    assert "differed" in failed.details
    # Repaired at once, not at the next resync (60 s here).
    assert node.reactor.repairs == repairs + 1
    assert not node.reach(other, web) and node.reach(client, web)
    runtime.check(web.sandbox)
    # A rule slipped in, digest untouched: still a CHECK failure.
    node.nft("insert", "rule", "inet", "callgate", "forward", "accept")
    with pytest.raises(CniPluginError):
        runtime.check(web.sandbox)
    runtime.check(web.sandbox)


def test_del_ends_the_attachment(node: Node, tmp_path: Path) -> None:
    runtime = network(node, tmp_path)
    web = Pod("shop", "web-d", {"app": "web"})
    node.kubelet_add(runtime, web, write_status=False)
    assert web.sandbox is not None and web.key in node.reactor.attachments.snapshot()
    runtime.delete(web.sandbox)
    assert web.key not in node.reactor.attachments.snapshot()
    wait(lambda: node.programmed(web)["programmed"] is False, "the pod to be unprogrammed")
    runtime.delete(web.sandbox)  # DEL twice is fine


def test_without_the_agent_add_fails_fast_and_del_succeeds(node: Node, tmp_path: Path) -> None:
    runtime = node.runtime(ptp_conflist("gone", "198.18.99.0/24", tmp_path / "ipam"), socket=tmp_path / "no.sock")
    pod = Pod("shop", "lonely", {"app": "web"})
    pod.sandbox = node.new_sandbox(pod)
    started = time.monotonic()
    with pytest.raises(CniPluginError) as failed:
        runtime.add(pod.sandbox)
    assert time.monotonic() - started < 5
    assert failed.value.plugin == "callgate-cni" and failed.value.code == 11
    assert "not running" in failed.value.msg and "no.sock" in failed.value.details
    runtime.delete(pod.sandbox)  # the runtime tears the sandbox down: DEL must not fail


def test_plugin_binary_is_static(plugin: Path) -> None:
    out = subprocess.run(["file", str(plugin)], capture_output=True, text=True).stdout
    assert "statically linked" in out, out


def test_a_fresh_install_puts_a_working_gate_in_place(node: Node, tmp_path: Path, plugin: Path) -> None:
    """`callgate cni install` on a node whose network is ptp: the runtime then runs the gate."""
    from typer.testing import CliRunner

    from callgate.cli.main import app
    from tests.libcni import ConfList, Runtime

    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    primary = ptp_conflist("installed", "198.18.98.0/24", tmp_path / "ipam")
    primary.plugins.pop()  # the node's own network: ptp only
    (conf_dir / "10-ptp.conflist").write_text(json.dumps(
        {"cniVersion": primary.cni_version, "name": primary.name, "plugins": primary.plugins}))
    result = CliRunner().invoke(app, ["cni", "install", "--plugin", str(plugin), "--conf-dir", str(conf_dir),
                                      "--bin-dir", str(bin_dir), "--timeout", "20"])
    assert result.exit_code == 0, result.output
    runtime = Runtime(ConfList.load(conf_dir / "10-ptp.conflist"), [bin_dir, node.bin], tmp_path / "cache",
                      node.netns, env={"CALLGATE_CNI_SOCKET": str(node.socket)})
    assert [p["type"] for p in runtime.conflist.plugins] == ["ptp", "callgate-cni"]
    web, client, other = pods("i")
    for pod in (client, other, web):
        node.kubelet_add(runtime, pod, write_status=False)
    assert node.reach(client, web) and not node.reach(other, web)


def test_bridge_chain_in_kubelets_order(node: Node, tmp_path: Path) -> None:
    """The bridge plugin: no per-pod route, random veth names, bridged traffic. The gate hands
    the agent the veth (picked by interfacePrefix from the bridge's result) and the address."""
    runtime = node.runtime(bridge_conflist("bridged", "cgbr0", "198.18.90.0/24", tmp_path / "ipam"))
    web, client, other = pods("b")
    for pod in (client, other, web):
        node.kubelet_add(runtime, pod, write_status=False)
    assert web.sandbox is not None
    cached = runtime.cached_result(web.sandbox)
    assert cached is not None and next(i["name"] for i in cached["interfaces"] if "sandbox" not in i) == "cgbr0"
    assert node.reactor.programmed.snapshot()[web.key].startswith("veth")
    assert node.reach(client, web) and not node.reach(other, web)  # bridged, same node
    for pod in (client, other, web):
        node.write_status(pod)
    node.settle(client, other, web)
    assert node.reach(client, web) and not node.reach(other, web)
    # CHECK tells the truth here too, and the repair is at once.
    runtime.check(web.sandbox)
    failed, _ = check_with_the_table_deleted(node, runtime, web.sandbox)
    assert failed.code == 100
    assert not node.reach(other, web) and node.reach(client, web)
    # A recreated sandbox on the bridge gets a new address the API does not know yet.
    old_ip = web.ip
    runtime.delete(web.sandbox)
    assert web.server is not None
    web.server.kill()
    node.drop_sandbox(web.sandbox)
    node.kubelet_add(runtime, web, write_status=False)
    assert web.ip != old_ip
    assert node.reach(client, web) and not node.reach(other, web)
