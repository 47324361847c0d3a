"""The agent soak, its 70-second version (bench/soak.py; docs/reliability.md has the
30-minute one): a CLI agent at 2,000 pods under 50 pod changes/s and one policy
change/s, the API server dropped, the agent SIGKILLed and restarted, the table
tampered with, probes throughout. Nothing allowed breaks and nothing denied
passes outside the tamper windows, every fault is recovered from, and the final
table equals a fresh compile. RSS flatness needs the long run (processes live
under 40 s here) and is not judged."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import Soak
from bench.soak_model import Config
from bench.soak_report import judge

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]


def test_the_agent_survives_churn_and_faults(tmp_path: Path) -> None:
    cfg = Config(duration=70, pods=2000, drop_every=20, kill_every=30, tamper_every=25, warmup=10,
                 rss_check=False, out=tmp_path)
    rec = Soak(cfg).run()
    verdict = judge(rec, cfg)
    assert verdict["ok"], verdict["problems"]
    faults = verdict["faults"]
    assert len(faults["drop"]) >= 2 and len(faults["kill"]) >= 1 and len(faults["tamper"]) >= 2, faults
    assert all(w["recovered"] is not None for ws in faults.values() for w in ws), faults
    assert verdict["probe_rounds_in"]["kill"] >= 1 and verdict["probe_rounds_in"]["drop"] >= 1, "probes ran throughout"
    assert verdict["wrong_in_tamper_windows"] >= 1, "tampering shows in the probes (else they prove nothing)"
    assert verdict["changes"]["pod"] >= 50 * 50 and verdict["latency_ms"]["n"] >= 10
    assert verdict["final"]["equal"]
