"""`callgate <command>` imports only the module of that command.

A process started for `callgate apply` must not pay for numpy and the lint
engine (analysis), asyncio (lab) or the Kubernetes client; the table that
says which module registers which command is checked here against what the
modules actually register.
"""

from __future__ import annotations

import subprocess
import sys

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
            "from callgate.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numpy', 'asyncio', 'callgate.analysis', 'kubernetes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_module_with_one_command_still_takes_it_as_a_subcommand() -> None:
    from typer.testing import CliRunner

    for command in ("agent", "controller"):
        result = CliRunner().invoke(build_app(command), [command, "--help"])
        assert result.exit_code == 0, result.output
        assert f" {command} [OPTIONS]" in result.output
