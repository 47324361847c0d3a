"""The agent runs with the image's tools, not the developer's.

The image is Debian 12 with the apt packages the Dockerfile's final stage
installs. This machine is Debian 12 too, so the test builds a PATH holding
only the programs of those packages (``dpkg -L``, following
update-alternatives links such as ``iptables-restore``) and starts
``callgate agent`` as a process with it — nft and iptables backends — in a
node namespace where a pod has a host route and no interface annotation.
The pod must get programmed: that needs ``ip -j route`` (and, for iptables,
``ip netns exec``, ``iptables-restore``, ``ipset``). A control run with the
list minus iproute2 — the Dockerfile before issue #12 — must leave it
unprogrammed, so the test can tell the difference.

No container runtime is needed (none runs here); what differs between this
machine and the image beyond the package list is the Python environment,
which the agent's venv provides in both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dockerfile import image_packages

pytestmark = pytest.mark.kernel
POD_IP = "198.18.61.5"
INVENTORY = f"""\
apiVersion: callgate/v1
kind: Inventory
namespaces:
  x: {{}}
endpoints:
  - {{name: a, namespace: x, labels: {{app: a}}, node: node-1, ips: [{POD_IP}], ports: [{{port: 80}}]}}
"""
DENY_ALL = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""


def package_programs(packages: list[str], farm: Path) -> Path:
    """A directory of links to every program the packages install (what PATH finds in the image)."""
    owned: set[str] = set()
    for pkg in packages:
        listed = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
        if listed.returncode != 0:
            pytest.skip(f"the image's package {pkg} is not installed on this machine")
        owned |= {os.path.realpath(line) for line in listed.stdout.splitlines() if line.startswith("/")}
    farm.mkdir()
    for d in (Path("/usr/sbin"), Path("/usr/bin")):
        for prog in d.iterdir():
            if (prog.name not in {p.name for p in farm.iterdir()} and os.path.realpath(prog) in owned
                    and os.access(prog, os.X_OK) and not prog.is_dir()):
                (farm / prog.name).symlink_to(prog)
    return farm


@pytest.fixture
def node(make_netns: Callable[[], str]) -> str:
    """A node namespace with a pod's host veth and /32 route, no annotation anywhere."""
    ns = make_netns()
    for argv in (["link", "add", "vethimg0", "type", "veth", "peer", "name", "vethimg1"],
                 ["link", "set", "vethimg0", "up"], ["link", "set", "vethimg1", "up"],
                 ["route", "add", f"{POD_IP}/32", "dev", "vethimg0"]):
        subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True)
    return ns


def ask_programmed(sock: Path) -> dict[str, object] | None:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(b"GET /programmed?pod=x/a HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    return json.loads(data.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


def run_agent(tmp_path: Path, node: str, backend: str, path: Path, wait: float) -> dict[str, object] | None:
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "deny.yaml").write_text(DENY_ALL)
    sock = tmp_path / f"{backend}.sock"
    argv = [sys.executable, "-m", "callgate", "agent", "--node", "node-1", "-i", str(tmp_path / "inventory.yaml"),
            "-p", str(tmp_path / "policies"), "--netns", node, "--backend", backend, "--fail-closed-prefix", "veth",
            "--metrics-address", "127.0.0.1:0", "--cni-socket", str(sock), "--resync", "0.5"]
    proc = subprocess.Popen(argv, env={"PATH": str(path), "HOME": str(tmp_path)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    answer = None
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and proc.poll() is None:
            answer = ask_programmed(sock)
            if answer and answer["programmed"]:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        return answer
    finally:
        proc.terminate()
        proc.wait(10)
        # The agent leaves its rules (they are the policy); this namespace is deleted anyway.


@pytest.fixture(scope="module")
def packages() -> list[str]:
    return image_packages()


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_the_agent_programs_a_pod_with_only_the_images_programs(backend: str, node: str, tmp_path: Path,
                                                                 packages: list[str]) -> None:
    path = package_programs(packages, tmp_path / "bin")
    answer = run_agent(tmp_path, node, backend, path, wait=20)
    assert answer is not None and answer["programmed"] is True, answer
    assert "vethimg0" in str(answer["reason"])


def test_without_iproute2_the_pod_stays_unprogrammed(node: str, tmp_path: Path, packages: list[str]) -> None:
    path = package_programs([p for p in packages if p != "iproute2"], tmp_path / "bin")
    answer = run_agent(tmp_path, node, "nft", path, wait=3)
    # Without `ip` the agent can neither find the veth from the route nor inspect the node
    # for the guard: the pod is never programmed (which of the two it reports first varies).
    assert answer is not None and answer["programmed"] is False, answer
