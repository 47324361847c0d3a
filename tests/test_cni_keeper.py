"""The agent keeps the start gate in the node's chain when the primary CNI rewrites it.

Cilium rewrites its conflist whenever its agent restarts; before the keeper the
gate stayed out until the callgate agent pod restarted. The primary's rewrite
is simulated the way such programs write: a whole new file renamed over the
old one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from callgate.cli.main import app
from callgate.cni.install import ORIGINAL, install_chain
from callgate.cni.keeper import GateKeeper

PTP = {"cniVersion": "1.0.0", "name": "k8s-pod-network",
       "plugins": [{"type": "ptp", "ipam": {"type": "host-local", "subnet": "198.18.64.0/24"}},
                   {"type": "portmap", "capabilities": {"portMappings": True}}]}
GATE = {"type": "callgate-cni", "timeoutSeconds": 20.0, "interfacePrefix": "veth"}


def primary_writes(path: Path, data: dict[str, Any]) -> None:
    """As a CNI's installer does: a new file, renamed into place."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def plugins(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["plugins"]  # type: ignore[no-any-return]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    primary_writes(conf_dir / "05-cilium.conflist", PTP)
    assert install_chain(conf_dir, 20.0, "veth") is not None  # the init container's install
    return conf_dir


@pytest.fixture
def keeper(conf: Path) -> Any:
    k = GateKeeper(conf, interface_prefix="ignored-when-a-gate-is-there", interval=0.05)
    k.start()
    yield k
    k.stop()


def test_a_rewritten_chain_gets_the_gate_back_with_its_settings(conf: Path, keeper: GateKeeper) -> None:
    network = conf / "05-cilium.conflist"
    primary_writes(network, PTP)  # the primary's agent restarted
    wait_for(lambda: plugins(network)[-1] == GATE, "the gate back at the end of the chain")
    assert plugins(network) == [*PTP["plugins"], GATE]
    # The keeper counts a restore once its write is done: the file can show it first.
    wait_for(lambda: keeper.restored == 1, "the keeper to count the restore")
    time.sleep(0.3)  # further looks change nothing
    assert keeper.restored == 1


def test_a_plugin_appended_after_the_gate_moves_it_back_to_the_end(conf: Path, keeper: GateKeeper) -> None:
    network = conf / "05-cilium.conflist"
    bandwidth = {"type": "bandwidth"}
    primary_writes(network, {**PTP, "plugins": [*plugins(network), bandwidth]})
    wait_for(lambda: plugins(network)[-1] == GATE, "the gate at the end again")
    assert plugins(network) == [*PTP["plugins"], bandwidth, GATE]


def test_a_new_first_configuration_gets_the_gate(conf: Path, keeper: GateKeeper) -> None:
    """A CNI replaced by another one that sorts first: the runtime now uses that one."""
    calico = conf / "00-calico.conflist"
    primary_writes(calico, {**PTP, "name": "calico"})
    wait_for(lambda: plugins(calico)[-1] == GATE, "the gate in the new first configuration")


def test_a_broken_file_is_said_once_changes_nothing_and_is_retried(conf: Path, keeper: GateKeeper,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    network = conf / "05-cilium.conflist"
    with caplog.at_level(logging.WARNING, logger="callgate.cni"):
        network.write_text('{"cniVersion": "1.0.0", "plugins": [')  # a writer that does not rename
        time.sleep(0.5)
        assert network.read_text() == '{"cniVersion": "1.0.0", "plugins": ['
        said = [r for r in caplog.records if "cannot keep" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in caplog.records]
        primary_writes(network, PTP)
        wait_for(lambda: plugins(network)[-1] == GATE, "the gate back once the file is whole")


def test_the_settings_are_those_of_the_gate_when_the_keeper_was_made(conf: Path) -> None:
    """The agent makes its keeper before its slow start: a primary that rewrites the
    chain before the keeper's first look must not cost the gate its settings."""
    keeper = GateKeeper(conf, interface_prefix="other", interval=0.05)
    network = conf / "05-cilium.conflist"
    primary_writes(network, PTP)  # the gate is gone before the keeper starts
    keeper.start()
    try:
        assert plugins(network) == [*PTP["plugins"], GATE]  # timeout 20 and prefix veth, as installed
    finally:
        keeper.stop()


def test_a_single_plugin_conf_written_again_is_converted_again(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    single = {"cniVersion": "0.4.0", "name": "bridge", "type": "bridge", "bridge": "cni0"}
    primary_writes(conf_dir / "10-bridge.conf", single)
    keeper = GateKeeper(conf_dir, interface_prefix="veth", interval=0.05)
    keeper.start()  # no gate yet: installs with the default timeout and the given prefix
    try:
        conflist = conf_dir / "10-bridge.conflist"
        assert plugins(conflist) == [{"type": "bridge", "bridge": "cni0"},
                                     {"type": "callgate-cni", "timeoutSeconds": 30.0, "interfacePrefix": "veth"}]
        updated = {**single, "bridge": "cni1"}
        primary_writes(conf_dir / "10-bridge.conf", updated)  # the primary's new .conf sorts first
        wait_for(lambda: not (conf_dir / "10-bridge.conf").exists(), "the new .conf converted")
        assert plugins(conflist)[0] == {"type": "bridge", "bridge": "cni1"}
        assert json.loads((conf_dir / f"10-bridge.conf{ORIGINAL}").read_text()) == updated
    finally:
        keeper.stop()


def test_someone_elses_conflist_beside_a_conf_is_not_overwritten(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    primary_writes(conf_dir / "10-x.conf", {"cniVersion": "0.4.0", "name": "x", "type": "bridge"})
    primary_writes(conf_dir / "10-x.conflist", PTP)
    keeper = GateKeeper(conf_dir, interval=0.05)
    keeper.start()
    keeper.stop()
    assert plugins(conf_dir / "10-x.conflist") == PTP["plugins"]
    assert keeper.restored == 0


def test_the_option_needs_the_socket() -> None:
    result = CliRunner().invoke(app, ["agent", "--node", "n", "-i", "x", "-p", "y", "--cni-conf-dir", "/tmp"])
    assert result.exit_code == 2
    assert "--cni-conf-dir needs --cni-socket" in result.output


INVENTORY = """\
apiVersion: callgate/v1
kind: Inventory
namespaces: {x: {}}
endpoints: []
"""


@pytest.mark.kernel
def test_the_agent_puts_the_gate_back(tmp_path: Path, conf: Path, make_netns: Callable[[], str]) -> None:
    """`callgate agent --cni-socket … --cni-conf-dir …` as the DaemonSet runs it."""
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    (tmp_path / "policies").mkdir()
    argv = [sys.executable, "-m", "callgate", "agent", "--node", "node-1", "-i", str(tmp_path / "inventory.yaml"),
            "-p", str(tmp_path / "policies"), "--netns", make_netns(), "--metrics-address", "127.0.0.1:0",
            "--cni-socket", str(tmp_path / "agent.sock"), "--cni-conf-dir", str(conf)]
    agent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    network = conf / "05-cilium.conflist"
    try:
        wait_for(lambda: (tmp_path / "agent.sock").exists() or agent.poll() is not None, "the agent's socket")
        assert agent.poll() is None, agent.communicate()[1]
        primary_writes(network, PTP)
        wait_for(lambda: plugins(network)[-1] == GATE, "the agent to put the gate back")
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=20)
    assert agent.returncode == 0, err
    assert "put it back" in err
    assert plugins(network)[-1] == GATE  # stopping leaves the gate where it is
