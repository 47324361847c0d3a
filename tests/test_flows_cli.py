"""`callgate flows`: filters, table and JSON, bad lines, --follow across appends and a rotation."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from callgate.agent.flowlog.record import FlowPeer, FlowRecord
from callgate.cli.main import build_app


def _record(verdict: str, src: str | None, dst: str | None, policies: tuple[str, ...], port: int = 80) -> FlowRecord:
    return FlowRecord(time=1_764_510_000.25, node="node-1", verdict=verdict, direction="ingress", protocol="TCP",
                      src=FlowPeer("198.18.1.11", 40000, src), dst=FlowPeer("198.18.1.10", port, dst),
                      policies=policies)


RECORDS = [
    _record("deny", "x/b", "x/a", ("NetworkPolicy x/web",)),
    _record("allow", "y/a", "x/a", ("NetworkPolicy x/web", "App x/shop"), port=81),
    _record("would-deny", None, "z/c", ("NetworkPolicy z/deny-all",)),
]


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app("flows"), ["flows", *args])
    return result.exit_code, result.stdout, result.stderr


def _log(tmp_path: Path, *extra: str) -> str:
    path = tmp_path / "flows.jsonl"
    path.write_text("".join(r.line() for r in RECORDS) + "".join(extra))
    return str(path)


def _json(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_filters_combine_and_repeat(tmp_path: Path) -> None:
    path = _log(tmp_path)
    code, out, _ = _run(path, "-o", "json")
    assert code == 0 and _json(out) == [r.to_json() for r in RECORDS]
    assert _json(_run(path, "-o", "json", "--verdict", "deny", "--verdict", "would-deny")[1]) == [
        RECORDS[0].to_json(), RECORDS[2].to_json()]
    assert _json(_run(path, "-o", "json", "--namespace", "y")[1]) == [RECORDS[1].to_json()]
    assert _json(_run(path, "-o", "json", "--endpoint", "z/c")[1]) == [RECORDS[2].to_json()]
    assert _json(_run(path, "-o", "json", "--policy", "x/shop")[1]) == [RECORDS[1].to_json()]
    assert _json(_run(path, "-o", "json", "--policy", "NetworkPolicy x/web", "--verdict", "allow")[1]) == [
        RECORDS[1].to_json()]
    assert _run(path, "-o", "json", "--namespace", "q")[1] == ""


def test_table_fits_every_row(tmp_path: Path) -> None:
    code, out, _ = _run(_log(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "NODE", "VERDICT", "DIR", "PROTO", "SOURCE", "DESTINATION", "POLICIES"]
    assert lines[1].split("  ")[0] == "2025-11-30T13:40:00.250Z"
    assert "198.18.1.11:40000" in lines[3] and "z/c 198.18.1.10:80" in lines[3]
    assert lines[2].endswith("NetworkPolicy x/web, App x/shop")
    assert len({line.index("POLICIES" if i == 0 else "NetworkPolicy") for i, line in enumerate(lines)}) == 1


def test_bad_lines_are_named_and_exit_1_after_the_good_ones(tmp_path: Path) -> None:
    path = _log(tmp_path, "{not json\n", '{"time": 1}\n')
    code, out, err = _run(path, "-o", "json")
    assert code == 1
    assert len(_json(out)) == 3
    assert f"{path}:4: not a flow record: not JSON" in err
    assert f"{path}:5: not a flow record: missing field(s) node" in err


def test_usage_mistakes_exit_2(tmp_path: Path) -> None:
    assert _run(str(tmp_path / "nope.jsonl"))[0] == 2
    assert _run(_log(tmp_path), "--verdict", "drop")[0] == 2
    assert _run(_log(tmp_path), "-o", "yaml")[0] == 2
    assert _run("-", "--follow")[0] == 2


def _next_line(proc: subprocess.Popen[str], seconds: float = 10.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    assert ready, "no line from callgate flows --follow"
    return proc.stdout.readline()


def test_follow_sees_appends_and_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    path.write_text(RECORDS[0].line())
    proc = subprocess.Popen([sys.executable, "-m", "callgate", "flows", str(path), "-f", "-o", "json",
                             "--verdict", "deny", "--verdict", "would-deny"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(_next_line(proc)) == RECORDS[0].to_json()
        with path.open("a") as log:
            log.write(RECORDS[1].line())  # allow: filtered out
            line = RECORDS[2].line()
            log.write(line[:20])  # half a record is not read until it is whole
            log.flush()
            time.sleep(0.6)
            log.write(line[20:])
        assert json.loads(_next_line(proc)) == RECORDS[2].to_json()
        os.rename(path, tmp_path / "flows.jsonl.1")
        path.write_text(RECORDS[0].line())
        assert json.loads(_next_line(proc)) == RECORDS[0].to_json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
