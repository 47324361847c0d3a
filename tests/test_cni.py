"""The CNI gate's agent side without a kernel: request checks, the answers, the
unix socket, and the built plugin against it (a gate whose state the test sets)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from callgate.agent import cni
from callgate.agent.attachments import Attachment, Attachments
from callgate.agent.cni_socket import CniSocket
from callgate.agent.failclosed import Programmed
from callgate.policy.inventory import inventory_from_dict
from tests.cni_node import build_plugin

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "veth1234"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
        "ips": [{"address": "198.18.1.13/24", "interface": 1}]}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=d;K8S_POD_INFRA_CONTAINER_ID=c1"}


class FakeGate:
    """Programs a pod when told to, as the reactor would after a sync."""

    def __init__(self) -> None:
        self.programmed = Programmed()
        self.attached: list[Attachment] = []
        self.detached: list[tuple[str, str]] = []
        self.live_ok = True
        self.is_ready = (True, "ok")

    def attach(self, attachment: Attachment) -> None:
        self.attached.append(attachment)

    def detach(self, pod: str, container_id: str) -> None:
        self.detached.append((pod, container_id))

    def wait_programmed(self, pod: str, interface: str | None, timeout: float) -> tuple[bool, str]:
        return self.programmed.wait(pod, interface, timeout)

    def check_programmed(self, pod: str, interface: str | None) -> tuple[bool, str]:
        ok, why = self.programmed.wait(pod, interface, 0)
        return (ok, why) if self.live_ok or not ok else (False, "the live table differed; replaced it")

    def ready(self) -> tuple[bool, str]:
        return self.is_ready


def call(gate: FakeGate, env: dict[str, str] | None = None, timeout: object = 5, **extra: object) -> tuple[int, dict]:
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "callgate-cni", "timeoutSeconds": timeout,
            "prevResult": PREV, **extra}
    rc, out = cni.handle(gate, {**ENV, **(env or {})}, json.dumps(conf).encode())
    return rc, json.loads(out) if out else {}


def test_add_hands_over_what_the_runtime_knows_and_waits() -> None:
    gate = FakeGate()
    threading.Timer(0.2, gate.programmed.publish, ({"x/d": "veth1234"}, {})).start()
    rc, out = call(gate)
    assert rc == 0 and out == PREV
    (att,) = gate.attached
    assert (att.pod, att.container_id, att.interface, [str(i) for i in att.ips]) == ("x/d", "c1", "veth1234",
                                                                                     ["198.18.1.13"])


def test_add_times_out_with_try_again_later() -> None:
    gate = FakeGate()
    gate.programmed.publish({}, {"x/d": "CNI ADD seen; waiting for the Pod object from the API"})
    rc, out = call(gate, timeout=0.2)
    assert rc == 1 and out["code"] == 11 and "x/d" in out["msg"] and "Pod object" in out["details"]


def test_add_refuses_a_different_interface() -> None:
    gate = FakeGate()
    gate.programmed.publish({"x/d": "vethother"}, {})
    rc, out = call(gate, timeout=0.2)
    assert rc == 1 and "vethother" in out["details"]


def test_interface_prefix_picks_the_veth_among_host_interfaces() -> None:
    gate = FakeGate()
    gate.programmed.publish({"x/d": "veth1234"}, {})
    prev = {**PREV, "interfaces": [{"name": "cni0"}, {"name": "veth1234"}, {"name": "eth0", "sandbox": "/p"}]}
    assert call(gate, prevResult=prev, interfacePrefix="veth")[0] == 0
    assert gate.attached[-1].interface == "veth1234"
    call(gate, prevResult=prev, timeout=0.1)  # two host interfaces, no prefix: none is the pod's
    assert gate.attached[-1].interface is None


def test_del_check_status_gc() -> None:
    gate = FakeGate()
    assert call(gate, env={"CNI_COMMAND": "DEL"}) == (0, {})
    assert gate.detached == [("x/d", "c1")]
    rc, res = call(gate, env={"CNI_COMMAND": "CHECK"})
    assert rc == 1 and res["code"] == 100
    gate.programmed.publish({"x/d": "veth1234"}, {})
    assert call(gate, env={"CNI_COMMAND": "CHECK"}) == (0, {})
    gate.live_ok = False
    rc, res = call(gate, env={"CNI_COMMAND": "CHECK"})
    assert rc == 1 and res["code"] == 100 and "differed" in res["details"]
    assert call(gate, env={"CNI_COMMAND": "STATUS"}) == (0, {})
    gate.is_ready = (False, "no ruleset applied yet")
    rc, res = call(gate, env={"CNI_COMMAND": "STATUS"})
    assert rc == 1 and res["code"] == 50
    assert call(gate, env={"CNI_COMMAND": "GC"}) == (0, {})


@pytest.mark.parametrize(("env", "extra", "code"), [
    ({"CNI_ARGS": "K8S_POD_NAME=d"}, {}, 4),
    ({"CNI_ARGS": "garbage"}, {}, 4),
    ({"CNI_ARGS": "K8S_POD_NAMESPACE=X_Y;K8S_POD_NAME=d"}, {}, 4),
    ({"CNI_CONTAINERID": ""}, {}, 4),
    ({"CNI_COMMAND": "EXPLODE"}, {}, 4),
    ({}, {"timeoutSeconds": "soon"}, 7),
    ({}, {"timeoutSeconds": 301}, 7),
    ({}, {"prevResult": None}, 7),
    ({}, {"prevResult": {**PREV, "ips": [{"address": "not-an-ip"}]}}, 7),
    ({}, {"cniVersion": "9.9.9"}, 1),
])
def test_bad_input_is_a_cni_error(env: dict[str, str], extra: dict[str, object], code: int) -> None:
    gate = FakeGate()
    rc, out = call(gate, env=env, **extra)
    assert rc == 1 and out["code"] == code, out
    assert not gate.attached


def test_not_json_on_stdin() -> None:
    rc, out = cni.handle(FakeGate(), ENV, b"{nope")
    assert rc == 1 and json.loads(out)["code"] == 6


# ---- attachments over the inventory ------------------------------------------------------

def test_attachments_overlay_the_inventory() -> None:
    inv = inventory_from_dict({"apiVersion": "callgate/v1", "kind": "Inventory",
                               "nodes": {"n1": {"labels": {"zone": "a"}, "addresses": ["198.18.9.1"]}}, "endpoints": [
        {"name": "new", "namespace": "x", "node": "n1", "ips": []},
        {"name": "old", "namespace": "x", "node": "n1", "ips": ["198.18.1.13"]},  # terminating, address reused
        {"name": "remote", "namespace": "x", "node": "n2", "ips": ["198.18.2.1"]}]})
    atts = Attachments()
    atts.add(Attachment("x/new", "c2", "veth1", (ip_address("198.18.1.13"),)))
    atts.add(Attachment("x/later", "c3", "veth2", (ip_address("198.18.1.14"),)))
    out, waiting = atts.overlay(inv, "n1")
    eps = {ep.key: ep for ep in out.endpoints}
    assert [str(i) for i in eps["x/new"].ips] == ["198.18.1.13"] and eps["x/new"].interface == "veth1"
    assert eps["x/old"].ips == () and [str(i) for i in eps["x/remote"].ips] == ["198.18.2.1"]
    assert list(waiting) == ["x/later"]
    assert out.node_info == inv.node_info and out.namespaces == inv.namespaces  # ClusterNetworkPolicy node peers
    # A late DEL of an older sandbox does not end the newer one's attachment.
    assert not atts.remove("x/new", "c1") and atts.remove("x/new", "c2")


# ---- the socket and the built plugin -------------------------------------------------------

@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if subprocess.run(["which", "gcc"], capture_output=True).returncode != 0:
        pytest.skip("needs gcc to build callgate-cni")
    return build_plugin(tmp_path_factory.mktemp("plugin") / "callgate-cni")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FakeGate, CniSocket]]:
    gate = FakeGate()
    server = CniSocket(str(tmp_path / "run" / "agent.sock"), gate)
    server.start()
    yield gate, server
    server.stop()


def run_plugin(plugin: Path, sock: Path, env: dict[str, str], stdin: str) -> tuple[int, str]:
    done = subprocess.run([str(plugin)], input=stdin, capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], **env, "CALLGATE_CNI_SOCKET": str(sock)})
    return done.returncode, done.stdout


def test_socket_is_private_and_removed_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "run" / "agent.sock"
    server = CniSocket(str(path), FakeGate())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)
    server.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        CniSocket(str(path), FakeGate())


def test_plugin_forwards_and_prints_the_agents_answer(plugin: Path, served: tuple[FakeGate, CniSocket]) -> None:
    gate, server = served
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "callgate-cni", "prevResult": PREV,
                       "timeoutSeconds": 5})
    threading.Timer(0.2, gate.programmed.publish, ({"x/d": "veth1234"}, {})).start()
    rc, out = run_plugin(plugin, server.path, ENV, conf)
    assert rc == 0 and json.loads(out) == PREV
    assert gate.attached[0].container_id == "c1"
    rc, out = run_plugin(plugin, server.path, {**ENV, "CNI_COMMAND": "CHECK", "CNI_ARGS": "K8S_POD_NAMESPACE=x"}, conf)
    assert rc == 1 and json.loads(out)["code"] == 4  # checked by the agent, printed by the plugin


def test_plugin_refuses_header_injection(plugin: Path, served: tuple[FakeGate, CniSocket]) -> None:
    gate, server = served
    rc, out = run_plugin(plugin, server.path, {**ENV, "CNI_ARGS": "K8S_POD_NAME=d\r\nCNI-Command: DEL"}, "{}")
    assert rc == 1 and json.loads(out)["code"] == 4 and not gate.attached and not gate.detached


def test_plugin_without_agent(plugin: Path, tmp_path: Path) -> None:
    sock = tmp_path / "absent.sock"
    rc, out = run_plugin(plugin, sock, ENV, "{}")
    err = json.loads(out)
    assert rc == 1 and err["code"] == 11 and str(sock) in err["details"]
    assert run_plugin(plugin, sock, {**ENV, "CNI_COMMAND": "DEL"}, "{}") == (0, "")
    rc, out = run_plugin(plugin, sock, {**ENV, "CNI_COMMAND": "STATUS"}, "{}")
    assert rc == 1 and json.loads(out)["code"] == 50
    rc, out = run_plugin(plugin, sock, {"CNI_COMMAND": "VERSION"}, "")
    assert rc == 0 and "1.1.0" in json.loads(out)["supportedVersions"]


def test_programmed_is_on_the_socket(served: tuple[FakeGate, CniSocket]) -> None:
    gate, server = served
    gate.programmed.publish({"x/d": "veth1234"}, {})

    def get(query: str) -> tuple[int, dict]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(server.path))
            s.sendall(f"GET /programmed?{query} HTTP/1.0\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    assert get("pod=x/d") == (200, {"pod": "x/d", "programmed": True, "reason": "x/d is programmed on veth1234"})
    assert get("pod=x/e")[1]["programmed"] is False
    assert get("pod=bad")[0] == 400 and get("pod=x/d&interface=a%20b")[0] == 400 and get("pod=x/d&wait=x")[0] == 400


def test_an_attachment_whose_pod_never_shows_up_expires() -> None:
    """The Pod was deleted and its DEL never reached the agent: after the longest ADD wait the
    attachment goes, and with it its claim on an address host-local will hand out again."""
    from callgate.agent.attachments import STALE_AFTER

    now = [1000.0]
    atts = Attachments(clock=lambda: now[0])
    atts.add(Attachment("x/gone", "c1", "veth1", (ip_address("198.18.1.13"),)))
    inv = inventory_from_dict({"apiVersion": "callgate/v1", "kind": "Inventory", "endpoints": [
        {"name": "other", "namespace": "x", "node": "n1", "ips": ["198.18.1.13"]}]})
    _, waiting = atts.overlay(inv, "n1")
    assert list(waiting) == ["x/gone"]  # an ADD may still be waiting for it
    now[0] += STALE_AFTER + 1
    out, waiting = atts.overlay(inv, "n1")
    assert waiting == {} and atts.snapshot() == {}
    assert [str(i) for i in out.endpoints[0].ips] == ["198.18.1.13"]
