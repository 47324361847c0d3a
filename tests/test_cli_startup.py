"""`callgate <command>` imports only the module of that command, and one-shot
commands end without tearing their model down.

A process started for `callgate apply` must not pay for numpy and the lint
engine (analysis), asyncio (lab) or the Kubernetes client; the table that
says which module registers which command is checked here against what the
modules actually register. apply, compile, lint and diff leave through
``os._exit``: their exit status and every byte of their output must still
come out as a normal exit's would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

from callgate.cli.main import COMMAND_MODULES, MODULES, build_app, register


def command_names(app: typer.Typer) -> set[str]:
    names = {c.name for c in app.registered_commands}
    names |= {g.name for g in app.registered_groups}
    return {n for n in names if n}


def test_the_command_table_names_every_command_of_every_module() -> None:
    registered: dict[str, str] = {}
    for module in MODULES:
        scratch = typer.Typer()
        register(scratch, module)
        registered.update((name, module) for name in command_names(scratch))
    assert registered == COMMAND_MODULES


def test_a_known_command_builds_only_its_module_and_anything_else_builds_all() -> None:
    assert command_names(build_app("apply")) == {"apply", "compile"}
    everything = command_names(build_app(None))
    assert everything == set(COMMAND_MODULES)
    assert command_names(build_app("--help")) == everything
    assert command_names(build_app("no-such-command")) == everything


def test_apply_and_compile_start_without_numpy_or_asyncio() -> None:
    code = ("import sys; sys.argv = ['callgate', 'compile', '--help']\n"
            "import callgate.cli.main as cli\n"
            "def keep_going(code):\n    raise SystemExit(code)\n"
            "cli._exit_now = keep_going  # one-shot commands leave with os._exit: stay to look\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numpy', 'asyncio', 'callgate.analysis', 'kubernetes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_module_with_one_command_still_takes_it_as_a_subcommand() -> None:
    from typer.testing import CliRunner

    for command in ("agent", "controller"):
        result = CliRunner().invoke(build_app(command), [command, "--help"])
        assert result.exit_code == 0, result.output
        assert f" {command} [OPTIONS]" in result.output


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def callgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callgate", *args], capture_output=True, text=True, timeout=120)


def test_one_shot_commands_exit_with_their_status_and_all_their_output() -> None:
    shop = EXAMPLES / "shop"
    done = callgate("compile", "-i", str(shop / "inventory.yaml"), "-p", str(shop), "--node", "node-2",
                    "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["nftables"]  # all of it: a cut document does not parse

    lint = callgate("lint", str(EXAMPLES / "lint"))
    assert lint.returncode == 1  # the examples hold errors on purpose
    assert lint.stdout.rstrip().splitlines()[-1].endswith("in 2 files")

    missing = callgate("compile", "-i", str(shop / "no-such-file.yaml"), "-p", str(shop), "--node", "node-2")
    assert missing.returncode == 2
    assert "no such file or directory" in missing.stderr
