"""Flow records: the JSON Lines form, the writer, and logged packets decoded through the applied ruleset."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest

from callgate.agent.flowlog.decode import FlowContext, decode
from callgate.agent.flowlog.record import FIELDS, FlowPeer, FlowRecord, RecordError, parse_record
from callgate.agent.flowlog.writer import FlowLogError, FlowLogWriter
from callgate.compiler import compile_node
from callgate.enforcers.logprefix import LogLabel, parse_prefix
from callgate.enforcers.nflog import NflogPacket
from tests.helpers import policies_from, standard

RECORD = FlowRecord(time=1_764_510_000.5, node="node-1", verdict="deny", direction="ingress", protocol="TCP",
                    src=FlowPeer("198.18.1.11", 40000, "x/b"), dst=FlowPeer("198.18.1.10", 80, "x/a"),
                    policies=("NetworkPolicy x/web",))


def test_record_has_exactly_the_fields_in_order_and_reads_back() -> None:
    data = json.loads(RECORD.line())
    assert tuple(data) == FIELDS
    assert data["time"] == "2025-11-30T13:40:00.500000Z"
    assert data["src"] == {"ip": "198.18.1.11", "port": 40000, "endpoint": "x/b"}
    assert data["policies"] == ["NetworkPolicy x/web"]
    assert parse_record(RECORD.line()) == RECORD
    icmp = FlowRecord(time=0.0, node="n", verdict="would-deny", direction="egress", protocol="ICMP",
                      src=FlowPeer("fd00::1", None, None), dst=FlowPeer("fd00::2", None, None), policies=())
    assert json.loads(icmp.line())["dst"] == {"ip": "fd00::2", "port": None, "endpoint": None}
    assert parse_record(icmp.line()) == icmp


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("node"), "missing field(s) node"),
    (lambda d: d.update(verdict="drop"), "field verdict: expected one of deny, would-deny, allow, got 'drop'"),
    (lambda d: d.update(direction="in"), "field direction: expected ingress or egress"),
    (lambda d: d.update(time="yesterday"), "field time: expected RFC 3339"),
    (lambda d: d["src"].update(ip="not-an-ip"), "field src.ip: expected an IP address"),
    (lambda d: d["dst"].update(port=70000), "field dst.port: expected a port number or null"),
    (lambda d: d.update(policies="x"), "field policies: expected a list of strings"),
])
def test_a_line_that_is_not_a_record_names_the_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(RECORD.line())
    mutate(data)
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_record(json.dumps(data))
    with pytest.raises(RecordError, match="not JSON"):
        parse_record("{")


def test_writer_appends_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    path.write_text(RECORD.line())
    writer = FlowLogWriter(str(path))
    writer.write([RECORD, RECORD])
    writer.close()
    assert [parse_record(line) for line in path.read_text().splitlines()] == [RECORD] * 3


def test_writer_refuses_an_unwritable_path_at_once(tmp_path: Path) -> None:
    with pytest.raises(FlowLogError, match=r"--flow-log .*/missing/flows.jsonl: cannot open for writing: No such"):
        FlowLogWriter(str(tmp_path / "missing" / "flows.jsonl"))
    with pytest.raises(FlowLogError, match="Is a directory"):
        FlowLogWriter(str(tmp_path))


def test_prefix_round_trip_and_strangers() -> None:
    label = LogLabel("would-deny", "egress", "0123456789ab")
    assert label.prefix() == "callgate would-deny egress 0123456789ab"
    assert len(LogLabel("would-deny", "ingress", "default").prefix()) <= 63
    assert parse_prefix(label.prefix()) == label
    for stranger in ("", "callgate deny ingress 0123", "callgate drop ingress default", "IN=eth0 OUT="):
        assert parse_prefix(stranger) is None


POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""


def _tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]) + socket.inet_aton(src) + socket.inet_aton(dst)
    return ip + struct.pack("!HHIIHHHH", sport, dport, 0, 0, 0x5002, 0, 0, 0)


def _context(tmp_path: Path) -> FlowContext:
    inventory = standard()
    policies = policies_from(tmp_path, POLICIES)
    return FlowContext("node-1", compile_node(policies, inventory, "node-1"), inventory, policies)


def test_decode_names_the_rule_policy_and_the_isolating_policies_of_a_default_deny(tmp_path: Path) -> None:
    context = _context(tmp_path)
    (rule_id,) = [rid for rid, origins in context.ruleset.rule_origins().items()
                  if origins[0].policy == "NetworkPolicy x/web"]
    allowed = NflogPacket(socket.AF_INET, f"callgate allow ingress {rule_id}",
                          _tcp4("198.18.1.11", "198.18.1.10", 40000, 80), 1_764_510_000.5, 3, 4, 2)
    record = decode(allowed, context)
    assert record is not None
    assert record.to_json() == {
        "time": "2025-11-30T13:40:00.500000Z", "node": "node-1", "verdict": "allow", "direction": "ingress",
        "protocol": "TCP", "src": {"ip": "198.18.1.11", "port": 40000, "endpoint": "x/b"},
        "dst": {"ip": "198.18.1.10", "port": 80, "endpoint": "x/a"}, "policies": ["NetworkPolicy x/web"]}
    # No rule matched: every policy isolating the destination on ingress decided together.
    denied = NflogPacket(socket.AF_INET, "callgate deny ingress default",
                         _tcp4("198.51.100.7", "198.18.1.12", 40001, 81), None, 3, 4, 2)
    record = decode(denied, context, now=5.0)
    assert record is not None
    assert (record.time, record.src.endpoint, record.dst.endpoint, record.policies) == (
        5.0, None, "x/c", ("NetworkPolicy x/deny-all",))
    assert decode(NflogPacket(socket.AF_INET, "callgate deny ingress default",
                              _tcp4("198.18.1.11", "198.18.1.10", 1, 2), None, 0, 0, 0), context) is not None


def test_decode_skips_what_it_cannot_name(tmp_path: Path) -> None:
    context = _context(tmp_path)
    payload = _tcp4("198.18.1.11", "198.18.1.10", 40000, 80)
    for prefix in ("someone else", "callgate deny ingress ffffffffffff"):  # a stranger; an id not applied
        assert decode(NflogPacket(socket.AF_INET, prefix, payload, None, 0, 0, 0), context) is None
    assert decode(NflogPacket(socket.AF_INET, "callgate deny ingress default", payload[:10], None, 0, 0, 0),
                  context) is None


def test_agent_refuses_an_unwritable_flow_log_at_start(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from callgate.cli.main import build_app
    from tests.helpers import STANDARD_INVENTORY

    runner = CliRunner()
    base = ["agent", "--node", "node-1", "-i", str(STANDARD_INVENTORY)]
    result = runner.invoke(build_app("agent"), [*base, "--flow-log", str(tmp_path / "no" / "flows.jsonl")])
    assert result.exit_code == 1
    assert f"error: --flow-log {tmp_path}/no/flows.jsonl: cannot open for writing: No such file or directory" in (
        result.stderr)
    assert "Traceback" not in result.output
    for extra, message in ((["--flow-log-allowed"], "need --flow-log"), (["--enforcement", "dry-run"],
                                                                          "use enforce or audit")):
        result = runner.invoke(build_app("agent"), [*base, *extra])
        assert result.exit_code == 2 and message in result.stderr


def test_cluster_policy_rules_carry_tier_priority_and_rule_name() -> None:
    from callgate.agent.flowlog.decode import origin_label
    from callgate.compiler.ir import Origin

    assert origin_label(Origin("NetworkPolicy x/web", "ingress", 0)) == "NetworkPolicy x/web"
    assert origin_label(Origin("ClusterNetworkPolicy tenant-x", "ingress", 1, "Admin", 10, "no-z")) == (
        "ClusterNetworkPolicy tenant-x (Admin 10) no-z")
    assert origin_label(Origin("ClusterNetworkPolicy base", "egress", 0, "Baseline", 5)) == (
        "ClusterNetworkPolicy base (Baseline 5)")
