"""Docker hosts: from a container's start to its rules in the kernel.

A real dockerd in a lab network namespace (callgate/lab/dockerd.py, the image
of tests/docker_lab.py), the examples/docker stack running, and an in-process
agent on it as `callgate agent --source docker` builds it (DockerSource ->
Reactor with the guard -> nftables in the lab namespace, coalesce 50 ms, the
source's debounce 50 ms: the CLI agent's defaults). Then, STARTS
times: create a replica of the stack's `api` service, start it, and poll
(every millisecond, through a second libnftables handle) until the table the
kernel holds carries rules for it; the replica is removed again, untimed,
before the next one.

Two spans per start, both in milliseconds:

* ``started_to_enforced``: from the container's ``State.StartedAt`` (the
  engine's record of its process starting, taken right after runc started it,
  before the ``start`` event is sent; dockerd and the bench share the clock) to
  the rules being live: callgate's share, and how long a new container runs
  before its policy holds;
* ``call_to_enforced``: from the start API call (``docker start``) to the rules
  being live: what an operator waits, the engine's own start (runc, vfs)
  included.

    sudo .venv/bin/python -m bench.docker_latency 100     # prints JSON on its last line
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "examples" / "docker" / "policies"
NODE = "docker-1"


def possible() -> str | None:
    """Why this part cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, dockerd)"
    from tests.docker_lab import skip_reason

    return skip_reason()


def _labels(service: str, number: int) -> dict[str, str]:
    return {"com.docker.compose.project": "notes", "com.docker.compose.service": service,
            "com.docker.compose.container-number": str(number)}


def unix_ns(stamp: str) -> int:
    """Docker's RFC 3339 time with nanoseconds (``2026-11-30T15:28:44.123456789Z``) in ns since the epoch."""
    whole, _, rest = stamp.rstrip("Z").partition(".")
    seconds = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int((rest + "000000000")[:9])


def measure(starts: int) -> dict[str, Any]:
    import docker as docker_py

    from callgate.agent.reactor import Reactor, ReactorConfig
    from callgate.enforcers import get_enforcer, guard
    from callgate.enforcers.routes import InterfaceResolver
    from callgate.watchers.docker_client import make_client
    from callgate.watchers.docker_links import VethResolver
    from callgate.watchers.docker_source import DockerSource
    from tests.docker_lab import PLAIN, engine, remove, run

    tag = os.environ.get("CGB_LAB_TAG") or uuid.uuid4().hex[:6]
    with engine(f"cgb-docker-{tag}") as (lab, client):
        client.create_network("notes_front", driver="bridge", ipam=docker_py.types.IPAMConfig(
            pool_configs=[docker_py.types.IPAMPool(subnet="198.18.225.0/24")]))
        for service, port in (("web", 80), ("api", 8080), ("db", 5432)):
            run(client, f"notes-{service}-1", labels=_labels(service, 1), network="notes_front", image=PLAIN,
                command=["/bin/httpd", "-f", "-p", str(port)], exposed=[f"{port}/tcp"])
        # What `callgate agent --source docker` builds (the guard included: it looks at
        # each new container's bridge port before its rules go in); a second enforcer,
        # with its own libnftables handle, reads what the kernel holds.
        enforcer, watcher = get_enforcer("nft", lab.netns), get_enforcer("nft", lab.netns)
        reactor = Reactor(ReactorConfig(node=NODE, resync=3600), enforcer, InterfaceResolver(lab.netns),
                          guard=lambda ruleset: guard.check(ruleset, lab.netns, enforcer.name))
        api, where = make_client(lab.host)
        source = DockerSource(api, where, NODE, VethResolver(lab.netns), [POLICIES])
        reactor.start()
        source.start(reactor.on_event)

        def enforced(key: str) -> bool:
            applied = enforcer.applied
            return (applied is not None and any(ep.endpoint == key for ep in applied.ruleset.endpoints)
                    and watcher.live_digest() == applied.digest)

        def gone(key: str) -> bool:
            applied = enforcer.applied
            return applied is not None and all(ep.endpoint != key for ep in applied.ruleset.endpoints)

        def until(predicate: Any, what: str, timeout: float = 30.0) -> None:
            deadline = time.perf_counter() + timeout
            while not predicate():
                if time.perf_counter() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                time.sleep(0.001)

        call_to_enforced: list[float] = []
        started_to_enforced: list[float] = []
        before = dict(reactor.mode_counts)
        try:
            until(lambda: enforced("notes/notes-db-1"), "the stack's rules")
            for n in range(starts):
                name = f"notes-api-{n + 2}"
                created = client.create_container(
                    PLAIN, command=["/bin/httpd", "-f", "-p", "8080"], name=name, labels=_labels("api", n + 2),
                    ports={"8080/tcp": {}}, host_config=client.create_host_config(network_mode="notes_front"))
                t0 = time.perf_counter()
                client.start(created["Id"])
                until(lambda key=f"notes/{name}": enforced(key), f"{name}'s rules")
                t1, wall = time.perf_counter(), time.time_ns()
                call_to_enforced.append((t1 - t0) * 1000)
                started_at = unix_ns(client.inspect_container(created["Id"])["State"]["StartedAt"])
                started_to_enforced.append((wall - started_at) / 1e6)
                remove(client, name)
                until(lambda key=f"notes/{name}": gone(key), f"{name} to leave")
        finally:
            after = dict(reactor.mode_counts)
            source.stop()
            reactor.stop()
            enforcer.close()
            watcher.close()
            api.close()
        return {"available": True, "starts": starts, "started_to_enforced_ms": started_to_enforced,
                "call_to_enforced_ms": call_to_enforced,
                "transactions": {k: after[k] - before.get(k, 0) for k in after},
                "engine": str(client.version().get("Version", "?"))}


def main() -> int:
    starts = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    why = possible()
    if why is not None:
        print(json.dumps({"available": False, "why": why}))
        return 0
    print(json.dumps(measure(starts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
