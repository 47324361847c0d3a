"""Faults during apply: each leaves the old rules or the new ones, never a mix, and
says so in one clear log line (or, for a command, one error message).

* the kernel or a tool refusing midway, EPERM, a namespace or library gone: the
  agent keeps the previous rules, logs one line without a traceback, retries,
  and applies once the fault is gone (fake kernels; every iptables step, as
  tests/test_iptables_backend.py holds the backend itself to undo at each one);
* an `apply` process killed with SIGKILL in the middle of its transaction, many
  times over: the table is always exactly the old one or the new one (nft is one
  netlink batch; iptables is not, see docs/iptables.md and the agent's repair);
* no CAP_NET_ADMIN (EPERM from the real kernel): refused, nothing changed;
* ENOSPC on the state directory (/run/callgate: the lab's record; the agent
  writes none, its lock is a socket): refused, nothing left behind;
* a veth that disappears between compile and apply: the new rules go in whole,
  and the agent drops the endpoint at its next look;
* two agents on one network namespace: the second exits 1 with a message naming
  the first, and changes nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from callgate.agent.lock import AgentLock, LockError
from callgate.agent.metrics import AgentMetrics
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.compiler import Compiler, RuleSet
from callgate.enforcers.base import Enforcer
from callgate.enforcers.iptables.enforcer import IptablesEnforcer
from callgate.enforcers.iptables.fake import FakeIptables
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.fake import FakeNftKernel
from callgate.enforcers.nft.kernel import Command, LibNftables
from callgate.enforcers.routes import InterfaceResolver
from callgate.errors import KernelError
from callgate.watchers.base import Snapshot
from tests.helpers import write
from tests.test_agent_reactor import A_FROM_B, C_FROM_B, NODE, WAIT, inventory, snap

CALLGATE = str(Path(sys.executable).with_name("callgate"))


class FaultyKernel(FakeNftKernel):
    """A fake kernel whose next ``faults`` transactions raise ``error`` (then it heals)."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None
        self.faults = 0

    def run(self, commands: list[Command], check: bool = False) -> None:
        if self.faults > 0 and self.error is not None:
            self.faults -= 1
            raise self.error
        super().run(commands, check)


def reactor(enforcer: Enforcer, retry: float = 0.2) -> Reactor:
    r = Reactor(ReactorConfig(node=NODE, resync=3600.0, coalesce=0.01, max_delay=1.0, retry=retry),
                enforcer, InterfaceResolver(runner=lambda _argv: "[]"), AgentMetrics())
    r.start()
    return r


def send(r: Reactor, event: Snapshot) -> None:
    """Hand ``event`` to the reactor and wait until its own sync has ended, applied or
    failed. Counting syncs is not enough: the interfaces here never resolve, so the
    reactor also looks again every ``retry`` seconds, and such a look may end first."""
    r.on_event(event)
    assert r.wait_for(lambda: r.settled is event, WAIT)


def agent_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [rec for rec in caplog.records if rec.name.startswith("callgate.agent") and rec.levelno >= level]


FAULTS: dict[str, Callable[[], BaseException]] = {
    "refused": lambda: KernelError("Could not process rule: No such file or directory"),
    "EPERM": lambda: KernelError("Operation not permitted"),
    "ENOBUFS": lambda: KernelError("Could not process rule: No buffer space available"),
    "netns gone": lambda: OSError(errno.ENOENT, "setns into cgx: No such file or directory"),
    "library gone": lambda: OSError(errno.ENOENT, "libnftables.so.1: cannot open shared object file"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_failed_apply_keeps_the_old_rules_and_says_so_once(fault: str, caplog: pytest.LogCaptureFixture) -> None:
    kernel = FaultyKernel()
    enforcer = NftablesEnforcer(kernel)
    r = reactor(enforcer, retry=1.0)  # time to look at the failure before the retry applies
    try:
        old, new = snap(), snap(policies=(A_FROM_B, C_FROM_B))
        send(r, old)
        old_rules = r.last_sync.ruleset if r.last_sync else None
        assert old_rules is not None
        kernel.error, kernel.faults = FAULTS[fault](), 2  # the incremental attempt and the full one
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="callgate"):
            send(r, new)
            assert enforcer.in_sync(old_rules), "the old rules, whole"
            ready, why = r.ready()
            assert not ready and why.startswith("last apply failed (previous rules still enforced)"), why
            errors = agent_records(caplog, logging.WARNING)
            assert [rec.getMessage() for rec in errors] == ["apply failed; the previous rules stay in the kernel"]
            assert errors[0].exc_info is None, "a fault is not a bug: no traceback"
            assert str(FAULTS[fault]()) in errors[0].fields["error"]  # type: ignore[attr-defined]
            # The fault goes away: the next retry applies the new rules.
            assert r.wait_for(lambda: r.last_sync is not None and r.last_sync.snapshot is new, WAIT)
        assert r.last_sync is not None and enforcer.in_sync(r.last_sync.ruleset) and r.ready()[0]
    finally:
        r.stop()


def test_an_interface_the_backend_cannot_write_is_one_clear_line(caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeNftKernel()
    r = reactor(NftablesEnforcer(kernel))
    try:
        send(r, snap())
        bad = inventory()
        bad = type(bad)(bad.namespaces, tuple(
            e if e.key != "x/a" else dataclasses.replace(e, interface="@cga0") for e in bad.endpoints))
        with caplog.at_level(logging.INFO, logger="callgate"):
            send(r, snap(inv=bad))
        errors = agent_records(caplog, logging.WARNING)
        assert len(errors) == 1 and "interface '@cga0' cannot be written for nftables" in errors[0].fields["error"]  # type: ignore[attr-defined]
        assert kernel.transactions == 1
    finally:
        r.stop()


def test_iptables_failing_at_every_step_keeps_the_old_rules(caplog: pytest.LogCaptureFixture) -> None:
    """The reactor over the iptables backend, one tool call refused at a time: after
    each failure the live state is the old one whole, one line says so, and the retry
    applies the new one."""
    fake = FakeIptables()
    enforcer = IptablesEnforcer(fake)
    old_snap = snap()
    probe = reactor(enforcer)
    send(probe, old_snap)
    calls_before = len(fake.calls)
    send(probe, snap(policies=(A_FROM_B, C_FROM_B)))
    steps = len(fake.calls) - calls_before
    probe.stop()
    assert steps >= 5
    for k in range(steps):
        fake = FakeIptables()
        enforcer = IptablesEnforcer(fake)
        r = reactor(enforcer, retry=1.0)  # time to read the live state before the retry applies
        try:
            send(r, old_snap)
            old_text = enforcer.live_text()
            seen = [0]

            def fail_kth(_argv: Sequence[str], _stdin: str | None, k: int = k, seen: list[int] = seen) -> str | None:
                seen[0] += 1
                return "simulated: iptables-restore: line 3 failed" if seen[0] == k + 1 else None

            fake.fail = fail_kth
            caplog.clear()
            new = snap(policies=(A_FROM_B, C_FROM_B))
            with caplog.at_level(logging.INFO, logger="callgate"):
                send(r, new)
            fake.fail = None  # the calls below are the test's; the retry applies the new rules
            live = enforcer.live_text()
            if r.apply_error:
                assert live == old_text, f"step {k}: not the old rules"
                assert [rec.getMessage() for rec in agent_records(caplog, logging.WARNING)] == [
                    "apply failed; the previous rules stay in the kernel"], k
            assert r.wait_for(lambda r=r, new=new: r.last_sync is not None and r.last_sync.snapshot is new, WAIT)
            assert r.last_sync is not None and enforcer.in_sync(r.last_sync.ruleset), k
        finally:
            r.stop()


# ============================================================================ kernel

def big_rulesets(tmp_path: Path, pods: int) -> tuple[Path, Path, Path]:
    """An inventory of ``pods`` remote pods and two policy files whose tables differ in
    every set (a full replacement of ~``pods`` elements each way)."""
    endpoints = [{"name": "a", "namespace": "x", "labels": {"pod": "a"}, "node": NODE, "interface": "cga0",
                  "ips": ["198.18.0.1"]}]
    endpoints += [{"name": f"r{i}", "namespace": "x", "labels": {"pod": "r", "half": str(i % 2)}, "node": "node-2",
                   "ips": [f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"]} for i in range(2, pods + 2)]
    inv = tmp_path / "inventory.json"
    inv.write_text(json.dumps({"apiVersion": "callgate/v1", "kind": "Inventory", "endpoints": endpoints}))

    def pol(name: str, half: str, port: int) -> Path:
        return write(tmp_path, f"{name}.yaml", f"""
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {{name: {name}, namespace: x}}
            spec:
              podSelector: {{matchLabels: {{pod: a}}}}
              ingress: [{{from: [{{podSelector: {{matchLabels: {{half: "{half}"}}}}}}], ports: [{{port: {port}}}]}}]
        """)
    return inv, pol("old", "0", 80), pol("new", "1", 81)


def host_veth(netns: str, name: str = "cga0") -> None:
    """The local endpoint's host-side veth, which apply's guard looks for in the node's
    namespace (both ends stay in it: nothing needs to flow)."""
    subprocess.run(["ip", "-n", netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], check=True)


@pytest.mark.kernel
def test_apply_killed_mid_transaction_leaves_old_or_new(netns: str, tmp_path: Path) -> None:
    """SIGKILL at random moments of `callgate apply` (a 30,000-element table each way):
    the table is always exactly one of the two. nft commits one netlink batch."""
    from callgate.policy import load_inventory, load_policies

    inv, old, new = big_rulesets(tmp_path, 30_000)
    host_veth(netns)
    inventory = load_inventory(inv)
    rulesets = {p: Compiler(load_policies(p), inventory).compile(NODE) for p in (old, new)}
    enforcer = NftablesEnforcer(LibNftables(netns))
    try:
        texts = {p: enforcer.desired_text(rs) for p, rs in rulesets.items()}

        def apply(policies: Path) -> subprocess.Popen[bytes]:
            return subprocess.Popen([CALLGATE, "apply", "-i", str(inv), "-p", str(policies), "--node", NODE,
                                     "--netns", netns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        assert apply(old).wait() == 0
        # What is killed is a replacing apply (it reads the live table before its
        # transaction), so its time, not the first apply's, spreads the kills.
        start = time.monotonic()
        assert apply(new).wait() == 0
        whole = time.monotonic() - start  # process start, load, compile, transaction: kills spread over it
        outcomes = {"old": 0, "new": 0}
        current = new
        # Twelve kills spread over 0.3-1.2 times that; an apply's time varies with the
        # machine's load, so while the kills have not yet landed on both sides they go
        # on, later and later (up to 2.2 times), rather than fail on timing alone.
        for attempt in range(24):
            if attempt >= 12 and outcomes["old"] and outcomes["new"]:
                break
            proc = apply(new if current == old else old)
            time.sleep(whole * (0.3 + 0.08 * attempt))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            live = enforcer.live_text()
            assert live in (texts[old], texts[new]), f"attempt {attempt}: a mix of the two tables"
            current = old if live == texts[old] else new
            outcomes["old" if current == old else "new"] += 1
        assert outcomes["old"] and outcomes["new"], f"the kills should land on both sides: {outcomes}"
    finally:
        enforcer.close()


@pytest.mark.kernel
def test_without_net_admin_apply_is_refused_and_changes_nothing(netns: str, tmp_path: Path) -> None:
    """EPERM from the kernel: the message says so and what callgate needs; the table stays."""
    inv, old, new = big_rulesets(tmp_path, 10)
    host_veth(netns)
    assert subprocess.run([CALLGATE, "apply", "-i", str(inv), "-p", str(old), "--node", NODE, "--netns", netns],
                          capture_output=True).returncode == 0
    enforcer = NftablesEnforcer(LibNftables(netns))
    try:
        before = enforcer.live_text()
        refused = subprocess.run(["ip", "netns", "exec", netns, "setpriv", "--bounding-set=-net_admin", "--",
                                  CALLGATE, "apply", "-i", str(inv), "-p", str(new), "--node", NODE],
                                 capture_output=True, text=True)
        assert refused.returncode == 1, refused
        assert refused.stderr == ("error: nftables needs CAP_NET_ADMIN, which this process does not have "
                                  "(callgate needs root for this command)\n"), refused.stderr
        assert enforcer.live_text() == before
    finally:
        enforcer.close()


@pytest.fixture
def full_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled up: the state directory with no space left."""
    mount = tmp_path / "state"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.kernel
def test_lab_with_no_space_for_its_record_builds_nothing(full_state_dir: Path) -> None:
    from callgate.lab.netns import LabError, list_netns
    from callgate.lab.topology import Lab
    from tests.helpers import standard

    lab = Lab("cgf", state_dir=full_state_dir)
    with pytest.raises(LabError) as err:
        lab.up(standard())
    assert str(err.value) == f"cannot record the lab in {full_state_dir}/lab-cgf.json: No space left on device"
    assert list_netns("cgf-") == []
    assert sorted(p.name for p in full_state_dir.iterdir()) == ["filler"], "no partial record left"


@pytest.mark.kernel
def test_a_veth_gone_between_compile_and_apply(make_netns: Callable[[], str], tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """The interface of a local pod disappears after the reactor compiled for it and
    before the transaction: nft matches interfaces by name, so the new rules go in
    whole (in sync); at its next look the agent finds no route to the pod any more
    and drops it from the table, saying so in one line."""
    node, pod = make_netns(), make_netns()
    sh = ["ip", "-n", node]
    subprocess.run([*sh, "link", "add", "cgv0", "type", "veth", "peer", "name", "eth0", "netns", pod], check=True)
    subprocess.run([*sh, "link", "set", "cgv0", "up"], check=True)
    subprocess.run([*sh, "route", "add", "198.18.1.10/32", "dev", "cgv0"], check=True)
    inv = inventory()
    inv = type(inv)(inv.namespaces, tuple(
        dataclasses.replace(e, interface=None) if e.key == "x/a" else e for e in inv.endpoints))
    enforcer = NftablesEnforcer(LibNftables(node))
    real_apply = enforcer.apply
    gone = [False]

    def apply_after_the_veth_went(ruleset: RuleSet, *args: Any, **kwargs: Any) -> Any:
        if not gone[0] and any(e.interface == "cgv0" for e in ruleset.endpoints):
            subprocess.run([*sh, "link", "del", "cgv0"], check=True)
            gone[0] = True
        return real_apply(ruleset, *args, **kwargs)

    enforcer.apply = apply_after_the_veth_went  # type: ignore[method-assign]
    r = Reactor(ReactorConfig(node=NODE, resync=0.3, coalesce=0.01, retry=0.2), enforcer,
                InterfaceResolver(node), AgentMetrics())
    r.start()
    try:
        with caplog.at_level(logging.INFO, logger="callgate"):
            first = snap(inv=inv)
            r.on_event(first)
            assert r.wait_for(lambda: r.last_sync is not None and gone[0], WAIT)
            applied = r.last_sync
            assert applied is not None and any(e.interface == "cgv0" for e in applied.ruleset.endpoints)
            assert enforcer.in_sync(applied.ruleset, applied.known), "the new rules, whole"
            assert r.wait_for(lambda: "x/a" in r.unresolved, WAIT), "the agent notices at its next look"
            after = r.last_sync
            assert after is not None and not any(e.endpoint == "x/a" for e in after.ruleset.endpoints)
            assert enforcer.in_sync(after.ruleset, after.known)
        said = [rec for rec in agent_records(caplog, logging.WARNING) if rec.getMessage() == "endpoint not programmed"]
        assert len(said) == 1 and said[0].fields["endpoint"] == "x/a"  # type: ignore[attr-defined]
    finally:
        r.stop()
        enforcer.close()


@pytest.mark.kernel
def test_the_lock_is_one_per_network_namespace(make_netns: Callable[[], str]) -> None:
    one, other = make_netns(), make_netns()
    held = AgentLock.acquire(one)
    try:
        with pytest.raises(LockError, match=rf"another callgate agent already enforces this network namespace "
                                            rf"\(pid {os.getpid()}\)"):
            AgentLock.acquire(one)
        AgentLock.acquire(other).release()  # another namespace: its own lock
    finally:
        held.release()
    AgentLock.acquire(one).release()  # released: free again


@pytest.mark.kernel
def test_a_second_agent_exits_and_changes_nothing(netns: str, tmp_path: Path) -> None:
    inv, old, new = big_rulesets(tmp_path, 10)
    host_veth(netns)
    base = [CALLGATE, "agent", "--node", NODE, "-i", str(inv), "--netns", netns, "--resync", "1"]
    first = subprocess.Popen([*base, "-p", str(old), "--metrics-address", "127.0.0.1:0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    enforcer = NftablesEnforcer(LibNftables(netns))
    try:
        deadline = time.monotonic() + 20
        while enforcer.live_digest() is None:
            assert time.monotonic() < deadline and first.poll() is None, "the first agent did not apply"
            time.sleep(0.1)
        digest = enforcer.live_digest()
        second = subprocess.run([*base, "-p", str(new), "--metrics-address", "127.0.0.1:0"],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert second.stderr.strip() == (f"error: another callgate agent already enforces this network namespace "
                                         f"(pid {first.pid}); stop it first (one agent per node)")
        time.sleep(1.5)  # a resync of the first agent: nothing moved
        assert enforcer.live_digest() == digest and first.poll() is None
        first.send_signal(signal.SIGKILL)  # the kernel releases the lock with the process
        first.wait()
        third = subprocess.Popen([*base, "-p", str(new), "--metrics-address", "127.0.0.1:0"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while enforcer.live_digest() == digest:
                assert time.monotonic() < deadline and third.poll() is None, "the restarted agent did not take over"
                time.sleep(0.1)
        finally:
            third.terminate()
            third.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        enforcer.close()


def test_drift_is_repaired_while_changes_keep_coming() -> None:
    """Found by the soak (bench/soak.py): a sync for an event postponed the next drift
    check, so with a change more often than --resync (50 pod changes/s, resync 5 s)
    a flushed set stayed flushed until the changes paused. An incremental transaction
    only looks at what it changes; an added rule is invisible to it."""
    kernel = FakeNftKernel()
    enforcer = NftablesEnforcer(kernel)
    r = Reactor(ReactorConfig(node=NODE, resync=0.3, coalesce=0.01, max_delay=0.05, retry=0.2),
                enforcer, InterfaceResolver(runner=lambda _argv: "[]"), AgentMetrics())
    r.start()
    try:
        send(r, snap())
        kernel.run([{"add": {"rule": {"family": "inet", "table": "callgate", "chain": "forward",
                                      "expr": [{"accept": None}]}}}])
        deadline = time.monotonic() + 3.0
        n = 0
        while r.repairs == 0 and time.monotonic() < deadline:
            n += 1
            # Remote pods keep coming: set elements, a new RuleSet at every sync. (Adaptive
            # coalescing can fold a pod that comes and goes into one sync whose RuleSet is the
            # last one: that apply compares the whole table and repairs at once, which is
            # not the case this test is about.)
            r.on_event(snap(inventory(extra=min(n, 200))))
            time.sleep(0.02)
        assert r.repairs >= 1, f"no drift check in 3 s of changes ({r.mode_counts})"
        assert r.mode_counts["incremental"] >= 3, "the changes went in as incremental transactions"
        last = r.last_sync
        assert r.wait_for(lambda: last is not None and enforcer.in_sync(last.ruleset, last.known), WAIT)
    finally:
        r.stop()
