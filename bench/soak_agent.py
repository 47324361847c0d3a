"""The agent process a soak runs, kills and restarts (bench/soak.py)."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.soak_model import NODE, PREFIX, Config

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProcess:
    """The CLI agent, restarted as often as the soak kills it; its log is kept per incarnation."""

    def __init__(self, cfg: Config, netns: str, api_url: str) -> None:
        self.cfg, self.netns, self.api_url = cfg, netns, api_url
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.count = 0

    def start(self) -> None:
        self.count += 1
        log = open(self.cfg.out / f"agent-{self.count}.log", "wb")  # noqa: SIM115 - handed to the child
        limit = self.cfg.agent_mem

        def bounded() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callgate", "agent", "--node", NODE, "--netns", self.netns,
             "--source", "kubernetes", "--server", self.api_url, "--resync", str(self.cfg.resync),
             "--fail-closed-prefix", PREFIX, "--metrics-address", f"127.0.0.1:{self.port}", "--coalesce-ms", "50"],
            stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, preexec_fn=bounded, env=env)
        log.close()
        self.started = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError as err:
            return 0, str(err)

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def metrics(self) -> dict[str, float]:
        """The agent's counters that matter here, from /metrics ({} when it cannot answer)."""
        from prometheus_client.parser import text_string_to_metric_families

        code, text = self.get("/metrics")
        if code != 200:
            return {}
        wanted = {"callgate_drift_repairs_total", "callgate_apply_errors_total", "callgate_applies_total",
                  "callgate_source_errors_total", "callgate_event_to_live_seconds_count",
                  "callgate_event_to_live_seconds_sum", "callgate_set_elements"}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in wanted:
                    key = s.name + ("{" + s.labels["mode"] + "}" if "mode" in s.labels else "")
                    out[key] = s.value
        return out


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


