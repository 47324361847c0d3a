"""Probing the lab: who really reaches whom.

Two halves live here:

* ``python -m callgate.lab.probe`` runs inside ONE pod's network namespace. It
  reads a JSON list of targets on stdin::

      [{"ip": "198.18.1.11", "port": 80, "protocol": "TCP", "src": "198.18.1.10"}]

  probes them all at once (asyncio) and prints one JSON result per target, in
  order: ``{"ok": bool, "reply": str|null, "error": str|null, "ms": float}``.
  TCP succeeds when the connection opens and the server's greeting arrives
  within the timeout; UDP when a random token comes back (sent twice at most,
  because a single datagram may meet a neighbour entry still being resolved).
  This half imports only the standard library, so it starts fast.

* :func:`probe_matrix` (host side) starts one such process per source pod, all
  in parallel, and returns ``{(src, dst, family, port, protocol): reached}``.
  Dropped traffic costs one timeout per round, not per probe (a second round
  re-asks only the probes that timed out), so the whole standard model (576
  probes) takes about two timeouts when everything is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callgate.lab.topology import Lab
    from callgate.policy.model import Endpoint, Inventory

DEFAULT_TIMEOUT = 1.0
UDP_TRIES = 2

MatrixKey = tuple[str, str, int, int, str]  # (src key, dst key, family, port, protocol)


# --------------------------------------------------------------------------- in the pod


@dataclass
class ProbeResult:
    ok: bool
    reply: str | None = None
    error: str | None = None
    ms: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reply": self.reply, "error": self.error, "ms": round(self.ms, 1)}


def _local(src: str | None) -> tuple[str, int] | None:
    return (src, 0) if src else None


async def probe_tcp(ip: str, port: int, src: str | None, timeout: float) -> ProbeResult:
    """Connect and read the server's greeting, all within ``timeout``."""

    async def attempt() -> bytes:
        reader, writer = await asyncio.open_connection(ip, port, local_addr=_local(src))
        try:
            return await reader.read(256)
        finally:
            writer.close()

    try:
        data = await asyncio.wait_for(attempt(), timeout)
    except TimeoutError:
        return ProbeResult(False, error="timeout")
    except OSError as exc:
        return ProbeResult(False, error=exc.strerror or type(exc).__name__)
    if not data:
        return ProbeResult(False, error="connection closed without a reply")
    return ProbeResult(True, reply=data.decode(errors="replace").strip())


class _Catcher(asyncio.DatagramProtocol):
    """Collects replies and ICMP errors of one connected UDP socket."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.inbox.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.inbox.put_nowait(exc)  # e.g. port unreachable: a definite "no"


async def probe_udp(ip: str, port: int, src: str | None, timeout: float, tries: int = UDP_TRIES) -> ProbeResult:
    """Send a random token (``tries`` times within ``timeout``) and wait for its echo."""
    loop = asyncio.get_running_loop()
    try:
        transport, catcher = await loop.create_datagram_endpoint(
            _Catcher, remote_addr=(ip, port), local_addr=_local(src))
    except OSError as exc:
        return ProbeResult(False, error=exc.strerror or type(exc).__name__)
    token = os.urandom(8).hex().encode()
    try:
        for _ in range(tries):
            transport.sendto(token)
            try:
                item = await asyncio.wait_for(catcher.inbox.get(), timeout / tries)
            except TimeoutError:
                continue
            if isinstance(item, Exception):
                return ProbeResult(False, error=getattr(item, "strerror", None) or str(item))
            if item == token:
                return ProbeResult(True, reply=item.decode())
        return ProbeResult(False, error="timeout")
    finally:
        transport.close()


async def probe_one(target: dict[str, Any], timeout: float) -> ProbeResult:
    started = time.monotonic()
    ip, port, protocol, src = str(target["ip"]), int(target["port"]), target["protocol"], target.get("src")
    if protocol == "TCP":
        result = await probe_tcp(ip, port, src, timeout)
    elif protocol == "UDP":
        result = await probe_udp(ip, port, src, timeout)
    else:
        result = ProbeResult(False, error=f"cannot probe protocol {protocol!r}")
    result.ms = (time.monotonic() - started) * 1000
    return result


async def probe_all(targets: Sequence[dict[str, Any]], timeout: float) -> list[ProbeResult]:
    return list(await asyncio.gather(*(probe_one(t, timeout) for t in targets)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callgate.lab.probe",
                                     description="Probe the JSON list of targets on stdin; print JSON results.")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per probe")
    args = parser.parse_args(argv)
    targets = json.load(sys.stdin)
    if not isinstance(targets, list):
        print("callgate.lab.probe: stdin must hold a JSON list of targets", file=sys.stderr)
        return 2
    results = asyncio.run(probe_all(targets, args.timeout))
    json.dump([r.as_json() for r in results], sys.stdout)
    sys.stdout.write("\n")
    return 0


# --------------------------------------------------------------------------- on the host


@dataclass(frozen=True)
class Target:
    key: MatrixKey
    ip: str
    src: str

    def as_json(self) -> dict[str, Any]:
        _, _, _, port, protocol = self.key
        return {"ip": self.ip, "port": port, "protocol": protocol, "src": self.src}


def address_of(ep: Endpoint, family: int) -> str | None:
    """The endpoint's first address of ``family``, the one the evaluator is asked about."""
    return next((str(ip) for ip in ep.ips if ip.version == family), None)


def plan_targets(inventory: Inventory, pairs: Iterable[tuple[str, str]] | None = None,
                 families: Iterable[int] = (4, 6),
                 ports: Iterable[tuple[int, str]] | None = None) -> dict[str, list[Target]]:
    """Probes to run, grouped by source endpoint key.

    Only endpoints the lab builds (on a node, with an address) take part. Each
    destination is probed on its declared TCP/UDP ports (``ports`` narrows the
    choice further); a pod never probes itself.
    """
    from callgate.lab.topology import in_lab  # host side only: keeps the in-pod start-up light

    lab_eps = {ep.key: ep for ep in inventory.endpoints if in_lab(ep)}
    if pairs is None:
        pairs = [(s, d) for s in lab_eps for d in lab_eps if s != d]
    wanted = {(int(p), str(proto).upper()) for p, proto in ports} if ports is not None else None
    families = tuple(families)
    plan: dict[str, list[Target]] = {}
    for src_key, dst_key in pairs:
        src, dst = lab_eps.get(src_key), lab_eps.get(dst_key)
        if src is None or dst is None or src_key == dst_key:
            continue
        declared = sorted({(p.port, p.protocol) for p in dst.ports if p.protocol in ("TCP", "UDP")})
        for family in families:
            src_ip, dst_ip = address_of(src, family), address_of(dst, family)
            if src_ip is None or dst_ip is None:
                continue
            for port, protocol in declared:
                if wanted is None or (port, protocol) in wanted:
                    key = (src_key, dst_key, family, port, protocol)
                    plan.setdefault(src_key, []).append(Target(key, dst_ip, src_ip))
    return plan


def expected_reply(key: MatrixKey) -> str | None:
    """What the lab server answers on TCP: its own identity, so a wrong route shows."""
    _, dst, _, port, protocol = key
    return f"{dst} {port}/TCP" if protocol == "TCP" else None


def _run_source(netns: str, targets: list[Target], timeout: float) -> list[ProbeResult]:
    from callgate.lab.netns import LabError, exec_in

    argv = [sys.executable, "-m", "callgate.lab.probe", "--timeout", str(timeout)]
    # Generous outer timeout: all probes run concurrently, so a healthy run ends
    # shortly after ``timeout``; the rest is interpreter start-up on a busy host.
    out = exec_in(netns, argv, input=json.dumps([t.as_json() for t in targets]), timeout=timeout * 4 + 30)
    try:
        raw = json.loads(out)
    except json.JSONDecodeError as exc:
        raise LabError(f"probe in {netns} printed no JSON: {out[:200]!r}") from exc
    if not isinstance(raw, list) or len(raw) != len(targets):
        raise LabError(f"probe in {netns} returned {len(raw)} results for {len(targets)} targets")
    results = []
    for target, item in zip(targets, raw, strict=True):
        result = ProbeResult(bool(item["ok"]), item.get("reply"), item.get("error"), float(item.get("ms", 0)))
        want = expected_reply(target.key)
        if result.ok and want is not None and result.reply != want:
            result = ProbeResult(False, result.reply, f"answered by the wrong server: {result.reply!r}", result.ms)
        results.append(result)
    return results


def _probe_round(lab: Lab, plan: dict[str, list[Target]], timeout: float) -> dict[MatrixKey, ProbeResult]:
    """One probe process per source pod, all at once."""
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        futures = {src: pool.submit(_run_source, lab.pod_netns(src), targets, timeout)
                   for src, targets in plan.items() if targets}
        found: dict[MatrixKey, ProbeResult] = {}
        for src, future in futures.items():
            found.update(zip((t.key for t in plan[src]), future.result(), strict=True))
    return found


def forget_connections(lab: Lab, inventory: Inventory) -> None:
    """Empty the connection-tracking table of every node namespace of the lab
    (and, in a macvlan lab, of every pod's).

    A probe asks "does the policy let a *new* connection through?". A UDP probe
    whose source port happens to equal one used under an earlier ruleset within
    conntrack's timeout would instead match that old flow and pass as
    ``ct state established`` — true of every stateful enforcer, and not what a
    probe measures. Flushing first makes each probe round start from nothing.
    """
    from callgate.lab.netns import exec_in, netns_exists

    namespaces = [lab.node_netns(node) for node in sorted(inventory.nodes())]
    state = lab.load_state()
    if state is not None and state.topology == "macvlan":
        # No host hook sees a macvlan pod's traffic: callgate tracks it inside the pod.
        namespaces += [pod.netns for pod in state.pods]
    for ns in namespaces:
        if netns_exists(ns):
            # Exit status 0 also when there was nothing to delete.
            exec_in(ns, ["conntrack", "--flush"])


def probe_details(lab: Lab, inventory: Inventory, pairs: Iterable[tuple[str, str]] | None = None,
                  families: Iterable[int] = (4, 6), ports: Iterable[tuple[int, str]] | None = None,
                  timeout: float = DEFAULT_TIMEOUT, retries: int = 1) -> dict[MatrixKey, ProbeResult]:
    """Like :func:`probe_matrix`, with the reply or error of every probe."""
    from callgate.lab.netns import LabError, netns_exists

    plan = plan_targets(inventory, pairs, families, ports)
    for src_key in plan:
        ns = lab.pod_netns(src_key)
        if not netns_exists(ns):
            raise LabError(f"pod {src_key} has no network namespace {ns}: is lab {lab.prefix!r} up "
                           "with this inventory?")
    if not plan:
        return {}
    forget_connections(lab, inventory)
    found = _probe_round(lab, plan, timeout)
    for _ in range(retries):
        # Only silence is worth asking again: on a loaded host a probe can miss its
        # deadline, while a refusal or a wrong answer is already definite.
        again = {src: [t for t in targets if found[t.key].error == "timeout"] for src, targets in plan.items()}
        if not any(again.values()):
            break
        found.update(_probe_round(lab, again, timeout))
    return found


def probe_matrix(lab: Lab, inventory: Inventory, pairs: Iterable[tuple[str, str]] | None = None,
                 families: Iterable[int] = (4, 6), ports: Iterable[tuple[int, str]] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = 1) -> dict[MatrixKey, bool]:
    """Observed reachability in a running lab.

    Keys are ``(src_key, dst_key, family, port, protocol)``; ``pairs`` limits
    the (src_key, dst_key) pairs (default: every ordered pair of lab pods),
    ``ports`` the (port, protocol) pairs (default: every destination's declared
    TCP/UDP ports). One probe process per source pod, all in parallel; probes
    that timed out are tried ``retries`` more times, so dropped traffic costs
    ``(1 + retries) * timeout`` in all, and a busy host no false "blocked".
    """
    details = probe_details(lab, inventory, pairs, families, ports, timeout, retries)
    return {key: result.ok for key, result in details.items()}


if __name__ == "__main__":
    sys.exit(main())
