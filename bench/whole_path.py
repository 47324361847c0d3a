"""The user's whole path: ``callgate`` commands on files, timed from process start.

``python -m bench.whole_path '<Spec JSON>' [--netns NAME] [--timeout S] [--only apply,compile]``
writes the synthetic cluster as files — the inventory as callgate/v1 YAML, as
JSON, and as a ``kubectl get pods,namespaces -A -o json`` dump; the policies
as YAML and as a JSON List — and runs each command as its own process
(``python -m callgate ...``), as a user would: imports, parsing, validation,
compile, rendering and (``apply``) the kernel transaction all count. Each run
reports its wall time from the process start and the child's peak RSS
(``wait4``). The files are written by a separate process: a child's peak RSS
starts at its parent's RSS when it is forked (Linux carries the forked copy's
high-water mark across ``exec``), so the measuring process must stay small —
generating the cluster in it put every command at >= 728 MiB. ``apply`` runs into the given network namespace (root): from YAML and
from JSON into an empty table (the full transaction), then the JSON again
(the no-op re-apply, which reads the table back and compares). ``diff`` compares the policies with the
same policies less ten of them.

Prints one JSON object: command label -> {seconds, peak_rss_mib, rc}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.synth import Spec, api_objects, generate

ROOT = Path(__file__).resolve().parent.parent


def write_inputs(spec: Spec, where: Path) -> dict[str, Path]:
    cluster = generate(spec)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    paths = {
        "inventory.yaml": where / "inventory.yaml", "inventory.json": where / "inventory.json",
        "kubectl.json": where / "kubectl.json", "policies.yaml": where / "policies.yaml",
        "policies.json": where / "policies.json", "fewer.json": where / "fewer.json",
    }
    paths["inventory.yaml"].write_text(yaml.dump(cluster.inventory, Dumper=dumper))
    paths["inventory.json"].write_text(json.dumps(cluster.inventory))
    kinds = ("Namespace", "Pod")
    items = [o for o in api_objects(cluster) if o["kind"] in kinds]
    paths["kubectl.json"].write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=4))
    paths["policies.yaml"].write_text(yaml.dump_all(cluster.policies, Dumper=dumper))
    paths["policies.json"].write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": cluster.policies}))
    paths["fewer.json"].write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": cluster.policies[10:]}))
    return paths


def run(argv: list[str], timeout: float) -> dict[str, Any]:
    """One process, from its start: wall seconds, peak RSS, exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "callgate", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return {"seconds": None, "timeout": timeout, "peak_rss_mib": usage.ru_maxrss / 1024, "rc": None,
                    "argv": " ".join(argv)}
        time.sleep(0.005)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "rc": proc.returncode,
            "argv": " ".join(argv), "stderr": err[-300:] if proc.returncode else ""}


def _local_interfaces(inventory: Path, node: str, netns: str) -> None:
    """The node's endpoints' interfaces, as veths in ``netns``: apply refuses to
    enforce endpoints whose interface is not where the inventory says."""
    names = sorted({ep["interface"] for ep in json.loads(inventory.read_text())["endpoints"]
                    if ep.get("node") == node and ep.get("interface")})
    batch = "".join(f"link add {name} type veth peer name p{name}\n" for name in names)
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True, capture_output=True)


def measure(spec: Spec, netns: str | None, timeout: float, only: set[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"spec": dataclasses.asdict(spec)}
    with tempfile.TemporaryDirectory(prefix="cgb-files-") as tmp:
        written = subprocess.run([sys.executable, "-m", "bench.whole_path", json.dumps(dataclasses.asdict(spec)),
                                  "--write-to", tmp], cwd=ROOT, capture_output=True, text=True, check=True)
        p: dict[str, str] = json.loads(written.stdout)
        node = p.pop("node")
        out["bytes"] = {k: os.path.getsize(v) for k, v in p.items()}
        commands: list[tuple[str, list[str]]] = [
            ("compile yaml", ["compile", "-i", p["inventory.yaml"], "-p", p["policies.yaml"], "-n", node]),
            ("compile json", ["compile", "-i", p["inventory.json"], "-p", p["policies.json"], "-n", node]),
            ("compile kubectl-json", ["compile", "-i", p["kubectl.json"], "-p", p["policies.json"], "-n", node]),
            ("lint json", ["lint", "-i", p["inventory.json"], p["policies.json"]]),
            ("lint yaml (no inventory)", ["lint", p["policies.yaml"]]),
            ("diff json", ["diff", "-i", p["inventory.json"], p["policies.json"], p["fewer.json"]]),
        ]
        if netns is not None:
            _local_interfaces(Path(p["inventory.json"]), node, netns)
            commands[:0] = [
                ("apply yaml", ["apply", "-i", p["inventory.yaml"], "-p", p["policies.yaml"], "-n", node,
                                "--netns", netns]),
                ("apply json", ["apply", "-i", p["inventory.json"], "-p", p["policies.json"], "-n", node,
                                "--netns", netns]),
                ("apply json (unchanged)", ["apply", "-i", p["inventory.json"], "-p", p["policies.json"], "-n", node,
                                            "--netns", netns]),
            ]
        for label, argv in commands:
            if only is not None and label.split()[0] not in only:
                continue
            if label in ("apply yaml", "apply json"):  # from an empty table: the full transaction
                subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "callgate"],
                               capture_output=True, check=False)
            out[label] = run(argv, timeout)
            print(f"{label}: {out[label]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--netns", default=None, help="apply into this network namespace (root); default: no apply")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--only", default=None, help="comma-separated commands to run (apply, compile, lint, diff)")
    ap.add_argument("--write-to", default=None, help="only write the input files into this directory")
    args = ap.parse_args()
    if args.write_to:
        paths = {k: str(v) for k, v in write_inputs(Spec(**json.loads(args.spec)), Path(args.write_to)).items()}
        print(json.dumps({**paths, "node": generate(Spec(pods=1, namespaces=1, policies=0)).node}))
        return
    only = set(args.only.split(",")) if args.only else None
    print(json.dumps(measure(Spec(**json.loads(args.spec)), args.netns, args.timeout, only)))


if __name__ == "__main__":
    main()
