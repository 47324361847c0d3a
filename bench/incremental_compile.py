"""Incremental compile at the target scale: ``python -m bench.incremental_compile [CHANGES] [--check-every N]``.

Builds the 50k-pod / 2k-namespace / 10k-policy target cluster (the spec and
seed of ``bench.__main__.FULL.target``), primes an
:class:`~callgate.compiler.incremental.IncrementalCompiler` for its node, then
makes CHANGES (default 200) changes the way ``bench.datapath._incremental``
does: alternately a pod added to an even namespace (a hot peer, so it joins
the 25,000-element set) and the ``bench-caller`` label toggled on one remote
pod of an odd namespace (it joins or leaves the server's peer set). Times each
update and the new RuleSet's digest, and checks every N-th result (default
20, and the last) against a fresh full compile: equal dataclasses and equal
digest. Then the agent's path: the same kind of changes as whole new
inventories through ``IncrementalCompiler.sync`` (diff by endpoint, then
update). Prints a human summary on stderr and one JSON object on stdout.

Python's cyclic garbage collector is left on, as in the engine; a full
collection over the 50,000-pod model now and then is what the max shows.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import statistics
import sys
import time
from typing import Any

from bench.synth import LABEL_CALLER, V4_BASE, Spec, generate, to_model
from callgate.compiler import Compiler, IncrementalCompiler
from callgate.policy.model import Endpoint, Inventory

TARGET = Spec(pods=50000, namespaces=2000, policies=10000, hot=3000, v6_every=1)  # = bench.__main__.FULL.target


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": statistics.median(ordered), "p99": at(0.99), "max": ordered[-1], "n": len(ordered)}


def changes(inventory: Inventory, node: str, count: int) -> list[tuple[str, Endpoint | None, Endpoint]]:
    """(kind, old, new) as bench.datapath._incremental makes them, in order."""
    by_ns: dict[str, Endpoint] = {}
    for ep in inventory.endpoints:
        by_ns.setdefault(ep.namespace, ep)
    even_ns = sorted(ns for ns in by_ns if int(ns[3:]) % 2 == 0)
    free = V4_BASE + len(inventory.endpoints) + 1
    toggled = next(ep for ep in inventory.endpoints if ep.node != node and int(ep.namespace[3:]) % 2)
    out: list[tuple[str, Endpoint | None, Endpoint]] = []
    for k in range(count):
        if k % 2 == 0:
            template = by_ns[even_ns[k % len(even_ns)]]
            new = dataclasses.replace(template, name=f"bench-added-{k}", node="node-1", interface=None,
                                      ips=(ipaddress.IPv4Address(free + 2 * k),), labels=dict(template.labels))
            out.append(("pod added", None, new))
        else:
            labels = dict(toggled.labels)
            if labels.pop(LABEL_CALLER, None) is None:
                labels[LABEL_CALLER] = "yes"
            new = dataclasses.replace(toggled, labels=labels)
            out.append(("label changed", toggled, new))
            toggled = new
    return out


def run(count: int, check_every: int, log: Any) -> dict[str, Any]:
    cluster = generate(TARGET)
    inventory, policies = to_model(cluster)
    node = cluster.node
    start = time.perf_counter()
    inc = IncrementalCompiler(policies, inventory, node)
    prime_s = time.perf_counter() - start
    start = time.perf_counter()
    full = Compiler(policies, inventory).compile(node)
    full_s = time.perf_counter() - start
    assert inc.ruleset == full and inc.ruleset.digest() == full.digest()
    log(f"primed in {prime_s:.2f} s (a plain full compile: {full_s:.2f} s); "
        f"{len(full.address_sets)} address sets, {sum(len(s.elements) for s in full.address_sets)} elements")
    compile_s: list[float] = []
    digest_s: list[float] = []
    kinds: list[str] = []
    paths: dict[str, int] = {}
    checked = 0
    plan = changes(inventory, node, count)
    for k, (kind, old, new) in enumerate(plan):
        start = time.perf_counter()
        ruleset = inc.update(old, new)
        compiled = time.perf_counter()
        ruleset.digest()
        done = time.perf_counter()
        compile_s.append(compiled - start)
        digest_s.append(done - compiled)
        kinds.append(kind)
        paths[inc.last_path] = paths.get(inc.last_path, 0) + 1
        if check_every and (k % check_every == check_every - 1 or k == len(plan) - 1):
            fresh = Compiler(policies, inc.inventory).compile(node)
            if ruleset != fresh or ruleset.digest() != fresh.digest():
                raise SystemExit(f"change {k + 1} ({kind}): the incremental RuleSet differs from a full compile")
            checked += 1
    sync_s = _sync_path(inc, policies, node, min(count, 100))
    total = [c + d for c, d in zip(compile_s, digest_s, strict=True)]
    result: dict[str, Any] = {"spec": dataclasses.asdict(TARGET), "changes": count, "prime_s": prime_s, "full_compile_s": full_s,
              "compile_ms": {k: v * 1000 if k != "n" else v for k, v in percentiles(compile_s).items()},
              "digest_ms": {k: v * 1000 if k != "n" else v for k, v in percentiles(digest_s).items()},
              "compile_and_digest_ms": {k: v * 1000 if k != "n" else v for k, v in percentiles(total).items()},
              "sync_ms": {k: v * 1000 if k != "n" else v for k, v in percentiles(sync_s).items()},
              "by_kind_compile_and_digest_ms": {
                  kind: {k: v * 1000 if k != "n" else v for k, v in percentiles(
                      [t for t, k2 in zip(total, kinds, strict=True) if k2 == kind]).items()}
                  for kind in sorted(set(kinds))},
              "paths": paths, "checked_against_full_compile": checked}
    for label in ("compile_ms", "digest_ms", "compile_and_digest_ms", "sync_ms"):  # milliseconds
        r = result[label]
        log(f"{label:>22}: p50 {r['p50']:.2f}  p99 {r['p99']:.2f}  max {r['max']:.2f}  (n={r['n']})")
    for kind, r in result["by_kind_compile_and_digest_ms"].items():
        log(f"{kind:>22}: p50 {r['p50']:.2f}  p99 {r['p99']:.2f}  max {r['max']:.2f}  (compile and digest)")
    log(f"paths: {paths}; {checked} results equal to a fresh full compile (== and digest)")
    return result


def _sync_path(inc: IncrementalCompiler, policies: Any, node: str, count: int) -> list[float]:
    """The agent's path: a whole new inventory per change, as a watcher's snapshot
    (the same endpoint objects but one), through sync(); digest included."""
    current = inc.inventory
    seconds = []
    for _, old, new in changes(current, node, count):
        endpoints = list(current.endpoints)
        if old is None:
            # A new name, and an odd address offset (the first phase used the even ones).
            endpoints.append(dataclasses.replace(new, name=new.name + "-sync", ips=(new.ips[0] + 1,)))
        else:
            endpoints[next(i for i, ep in enumerate(endpoints) if ep.key == old.key)] = new
        current = Inventory(current.namespaces, endpoints)
        start = time.perf_counter()
        inc.sync(policies, current).digest()
        seconds.append(time.perf_counter() - start)
        if inc.last_path != "incremental":
            raise SystemExit(f"sync took the {inc.last_path!r} path")
    return seconds


def main() -> None:
    args = sys.argv[1:]
    check_every = 20
    if "--check-every" in args:
        at = args.index("--check-every")
        check_every = int(args[at + 1])
        del args[at:at + 2]
    count = int(args[0]) if args else 200
    print(json.dumps(run(count, check_every, lambda msg: print(msg, file=sys.stderr))))


if __name__ == "__main__":
    main()
