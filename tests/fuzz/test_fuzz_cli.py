"""Fuzzing every command that reads policy or inventory files, in-process.

Each example is one mutated file (tests/fuzz/seeds.py, mutate.py) given to one
command where its kind of file goes, the other input being valid: the command
ends with its documented exit code — 0, or 1 with an ``error:`` line per problem
(``diff``: 2 when it cannot compare, 1 meaning "access changed") — never with a
traceback, and everything it prints is printable. ``apply --dry-run`` asks an
in-memory kernel here, without the guard's look at this host (no_kernel). A few
hostile files also go through the installed ``callgate`` as processes
(test_hostile_files_as_processes).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.fake import FakeNftKernel
from tests.fuzz.mutate import FuzzFile, mutated_files
from tests.fuzz.oracle import CliResult, bounded_memory, check_cli, run_cli
from tests.fuzz.seeds import INVENTORY, NODE, POLICIES, SEEDS, Seed
from tests.fuzz.settings import example_time_limit, fuzz_settings


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    with bounded_memory():
        yield


def command_line(command: str, role: str, path: Path) -> list[str]:
    """``command`` with the fuzzed file where a file of its role goes."""
    inventory, policies = (str(INVENTORY), str(path)) if role == "policy" else (str(path), str(POLICIES))
    inputs = ["-i", inventory, "-p", policies]
    return {
        "compile": ["compile", *inputs, "--node", NODE],
        "compile-ir": ["compile", *inputs, "--node", NODE, "--format", "ir"],
        "compile-iptables": ["compile", *inputs, "--node", NODE, "--backend", "iptables", "--format", "json"],
        "apply": ["apply", *inputs, "--node", NODE, "--dry-run"],
        "lint": ["lint", "-i", inventory, policies],
        "diff": ["diff", "-i", inventory, str(POLICIES), policies, "--format", "json"],
        "explain": ["explain", *inputs, "x/a", "y/b", "80/TCP"],
        "matrix": ["matrix", *inputs],
        "graph": ["graph", *inputs, "--format", "dot"],
        "convert": ["convert", "--to", "app", policies],
    }[command]


COMMANDS = ("compile", "compile-ir", "compile-iptables", "apply", "lint", "diff", "explain", "matrix", "graph",
            "convert")


def check_command(command: str, result: CliResult) -> None:
    if command == "diff":  # 1: access changed; 2: it could not compare (bad input among them)
        assert result.exception is None and result.exit_code in (0, 1, 2), result
        if result.exit_code == 2:
            assert any(line.startswith("error: ") for line in result.stderr.splitlines()), result
        return
    # lint: 1 also means findings at --fail-on, reported on stdout
    check_cli(result, error_expected_on_1=command != "lint")
    for line in result.stdout.splitlines():
        assert line.replace("\t", " ").isprintable(), result


@st.composite
def cases(draw: Any) -> tuple[str, Seed, FuzzFile]:
    seed = draw(st.sampled_from(SEEDS))
    return draw(st.sampled_from(COMMANDS)), seed, draw(mutated_files(seed.documents))


def in_memory_kernel(*_args: Any, **_kwargs: Any) -> NftablesEnforcer:
    return NftablesEnforcer(FakeNftKernel())


@contextlib.contextmanager
def no_kernel() -> Iterator[None]:
    """``apply --dry-run`` against the in-memory kernel, and without the guard's look
    at this host (callgate/enforcers/guard.py): that look depends on the host's
    interfaces, not on the file, and would stop every valid input before its
    transaction is planned and printed, which is what is fuzzed here."""
    with mock.patch("callgate.cli.engine.get_enforcer", in_memory_kernel), \
            mock.patch("callgate.cli.engine.prepare", lambda *_a, **_k: None):
        yield


@fuzz_settings(500)
@given(cases())
def test_commands_end_cleanly(case: tuple[str, Seed, FuzzFile]) -> None:
    command, seed, fuzz = case
    with tempfile.TemporaryDirectory(prefix="cgfuzz-") as tmp, example_time_limit(), no_kernel():
        path = Path(tmp) / f"input{fuzz.suffix}"
        path.write_bytes(fuzz.data)
        check_command(command, run_cli(command_line(command, seed.role, path)))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: s.name)
def test_commands_on_the_seeds(command: str, seed: Seed, tmp_path: Path) -> None:
    """Unmutated, the same judgement holds (and the command lines are right: every
    seed a command can use gets exit 0)."""
    from tests.fuzz.mutate import write_documents

    path = tmp_path / "seed.yaml"
    path.write_text(write_documents(seed.documents, "block")[0])
    with no_kernel():
        result = run_cli(command_line(command, seed.role, path))
    check_command(command, result)
    unknown_kind = seed.name == "clusternetworkpolicy"
    if not unknown_kind and command not in ("lint", "diff"):
        assert result.exit_code == 0, result


HOSTILE_FILES = {
    "kind-mapping": "apiVersion: networking.k8s.io/v1\nkind: {a: b}\nmetadata: {name: p, namespace: x}\n",
    "alias-bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    "nul-name": 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: "a\\0b", namespace: x}\n'
                "spec: {podSelector: {}}\n",
    "not-yaml": "apiVersion: [\n\t: :\n",
}


@pytest.mark.parametrize("command", ["compile", "lint", "matrix"])
@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hostile_files_as_processes(command: str, name: str, tmp_path: Path) -> None:
    """Spot checks of the in-process judgement: the console script itself, in its own
    process, ends with exit 1 and error lines, no traceback."""
    import subprocess
    import sys

    path = tmp_path / "hostile.yaml"
    path.write_text(HOSTILE_FILES[name])
    done = subprocess.run([str(Path(sys.executable).with_name("callgate")), *command_line(command, "policy", path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "error" in (done.stderr + done.stdout).lower(), done.stderr[-2000:]
