"""callgate-cni against a real agent HTTP server with a controllable status."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator

import pytest

from callgate.agent.failclosed import Programmed
from callgate.agent.metrics import AgentMetrics, StatusServer
from callgate.cni.plugin import run

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "cgxd0"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
        "ips": [{"address": "198.18.1.13/32", "interface": 1}]}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=d"}


class Status:
    def __init__(self) -> None:
        self.programmed = Programmed()

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return True, "ok"

    def wait_programmed(self, pod: str, interface: str | None, timeout: float) -> tuple[bool, str]:
        return self.programmed.wait(pod, interface, timeout)


@pytest.fixture
def agent() -> Iterator[tuple[Status, str]]:
    status = Status()
    server = StatusServer("127.0.0.1:0", AgentMetrics(), status)
    server.start()
    yield status, f"http://{server.address}"
    server.stop()


def cni(url: str, env: dict[str, str] | None = None, timeout: object = 5, **extra: object) -> tuple[int, dict]:
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "callgate-cni", "agentURL": url,
            "timeoutSeconds": timeout, "prevResult": PREV, **extra}
    out = io.StringIO()
    rc = run({**ENV, **(env or {})}, io.StringIO(json.dumps(conf)), out)
    return rc, json.loads(out.getvalue()) if out.getvalue() else {}


def test_add_waits_until_programmed_and_passes_prev_result(agent: tuple[Status, str]) -> None:
    status, url = agent
    timer = threading.Timer(0.3, status.programmed.publish, ({"x/d": "cgxd0"}, {}))
    timer.start()
    rc, out = cni(url)
    assert rc == 0 and out == PREV


def test_add_times_out_with_try_again_later(agent: tuple[Status, str]) -> None:
    _, url = agent
    rc, out = cni(url, timeout=0.3)
    assert rc == 1 and out["code"] == 11 and "x/d" in out["msg"] and "inventory" in out["details"]


def test_add_refuses_a_different_interface(agent: tuple[Status, str]) -> None:
    status, url = agent
    status.programmed.publish({"x/d": "cgother"}, {})
    rc, out = cni(url, timeout=0.2)
    assert rc == 1 and "cgother" in out["details"]


def test_unreachable_agent_is_try_again(agent: tuple[Status, str]) -> None:
    rc, out = cni("http://127.0.0.1:1", timeout=0.3)
    assert rc == 1 and out["code"] == 11 and "cannot reach" in out["details"]


@pytest.mark.parametrize(("env", "extra", "code"), [
    ({"CNI_ARGS": "K8S_POD_NAME=d"}, {}, 4),
    ({"CNI_ARGS": "garbage"}, {}, 4),
    ({}, {"agentURL": "file:///etc/passwd"}, 7),
    ({}, {"timeoutSeconds": "soon"}, 7),
    ({}, {"prevResult": None}, 7),
    ({}, {"cniVersion": "9.9.9"}, 1),
])
def test_bad_input_is_a_cni_error(env: dict[str, str], extra: dict[str, object], code: int) -> None:
    rc, out = cni("http://127.0.0.1:1", env=env, **extra)
    assert rc == 1 and out["code"] == code, out


def test_version_del_and_check(agent: tuple[Status, str]) -> None:
    status, url = agent
    out = io.StringIO()
    assert run({"CNI_COMMAND": "VERSION"}, io.StringIO(""), out) == 0
    assert "1.0.0" in json.loads(out.getvalue())["supportedVersions"]
    assert cni(url, env={"CNI_COMMAND": "DEL"}) == (0, {})
    rc, res = cni(url, env={"CNI_COMMAND": "CHECK"})
    assert rc == 1 and res["code"] == 100
    status.programmed.publish({"x/d": "cgxd0"}, {})
    assert cni(url, env={"CNI_COMMAND": "CHECK"}) == (0, {})


def test_not_json_on_stdin() -> None:
    out = io.StringIO()
    assert run(ENV, io.StringIO("{nope"), out) == 1
    assert json.loads(out.getvalue())["code"] == 6
