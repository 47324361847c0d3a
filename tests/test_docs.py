"""Every `$ callgate ...` shown in README.md and docs/*.md, run, and its output compared,
as doctests do: the documentation cannot drift from the tool.

A fenced block whose first line is ``$ callgate ...`` is a transcript: each ``$``
line a command (run from the repository root, stdout and stderr together, as a
terminal shows them), the lines up to the next ``$`` its output. A line ``...``
(indented or not) stands for any number of lines. A comment just before the fence marks blocks
that cannot run here:

* ``<!-- doctest: skip (why) -->``: illustrative (files that are not in the
  repository, a running agent);
* ``<!-- doctest: kernel netns=NAME -->``: needs a network namespace: run under
  the ``kernel`` marker in a scratch namespace standing in for NAME.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from callgate.policy import load_inventory
from tests.helpers import ROOT
from tests.netns import host_interfaces

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CALLGATE = str(Path(sys.executable).with_name("callgate"))
_MARK = re.compile(r"<!-- doctest: (?P<what>skip|kernel)(?: netns=(?P<netns>\S+))?[^>]*-->")


@dataclass
class Transcript:
    file: str
    line: int
    mark: str  # "", "skip" or "kernel"
    netns: str | None
    steps: list[tuple[str, list[str]]]  # (command, expected output lines)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def transcripts() -> list[Transcript]:
    found: list[Transcript] = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("```"):
                i += 1
                continue
            start = i
            i += 1
            body: list[str] = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            i += 1
            if not body or not body[0].startswith("$ callgate"):
                continue
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            mark = _MARK.search(before)
            steps: list[tuple[str, list[str]]] = []
            for line in body:
                if line.startswith("$ "):
                    steps.append((line[2:], []))
                else:
                    steps[-1][1].append(line)
            found.append(Transcript(path.relative_to(ROOT).as_posix(), start + 2, mark["what"] if mark else "",
                                    mark["netns"] if mark else None, steps))
    return found


def matches(expected: list[str], got: list[str]) -> bool:
    """Line by line, trailing spaces ignored; ``...`` (indented or not) matches any number of lines."""
    expected = [e.rstrip() for e in expected]
    got = [g.rstrip() for g in got]

    def at(e: int, g: int) -> bool:
        if e == len(expected):
            return g == len(got)
        if expected[e].strip() == "...":
            return any(at(e + 1, k) for k in range(g, len(got) + 1))
        return g < len(got) and expected[e] == got[g] and at(e + 1, g + 1)

    return at(0, 0)


def run_transcript(t: Transcript, substitute: Callable[[str], str] = lambda s: s) -> None:
    for command, expected in t.steps:
        argv = shlex.split(substitute(command))
        assert argv[0] == "callgate", f"{t.id}: only callgate commands run here; mark the block skip: {command}"
        # A pipe's width and no colour, as in CI; the terminal's width would change help text.
        env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb", "CI": "1"}
        done = subprocess.run([CALLGATE, *argv[1:]], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120)
        got = substitute(done.stdout).splitlines()
        want = [substitute(line) for line in expected]
        assert matches(want, got), (f"{t.id}: `{command}` printed\n" + "\n".join(got)
                                    + "\n--- the documentation shows ---\n" + "\n".join(want))


ALL = transcripts()


def test_every_transcript_is_found() -> None:
    """The parser sees the blocks the documentation has (a guard against a parser that finds nothing)."""
    files = {t.file for t in ALL}
    assert {"README.md", "docs/analysis.md"} <= files
    assert sum(len(t.steps) for t in ALL) >= 15


@pytest.mark.parametrize("transcript", [t for t in ALL if not t.mark], ids=lambda t: t.id)
def test_documented_output(transcript: Transcript) -> None:
    run_transcript(transcript)


@pytest.mark.kernel
@pytest.mark.parametrize("transcript", [t for t in ALL if t.mark == "kernel"], ids=lambda t: t.id)
def test_documented_output_in_a_namespace(transcript: Transcript, netns: str) -> None:
    assert transcript.netns, f"{transcript.id}: a kernel block names the namespace it stands in for"
    host_interfaces(netns, sorted(_local_interfaces(transcript)))
    run_transcript(transcript, lambda text: text.replace(transcript.netns or "", netns))


def _local_interfaces(t: Transcript) -> set[str]:
    """The host-side interfaces of the nodes the transcript's commands name: the
    scratch namespace stands in for that node, so it needs them (apply refuses an
    endpoint whose interface is not where the inventory says)."""
    names: set[str] = set()
    for command, _ in t.steps:
        argv = shlex.split(command)
        options = dict(itertools.pairwise(argv))
        inventory, node = options.get("-i") or options.get("--inventory"), options.get("--node")
        if inventory and node:
            names.update(ep.interface for ep in load_inventory([str(ROOT / inventory)]).endpoints
                         if ep.node == node and ep.interface)
    return names


def test_skipped_blocks_say_why() -> None:
    for t in ALL:
        if t.mark == "skip":
            before = (ROOT / t.file).read_text().splitlines()[t.line - 3]
            assert re.search(r"skip \(.+\)", before), f"{t.id}: say why the block cannot run"


def test_readme_names_the_packages_setup_installs() -> None:
    """README's apt list is scripts/setup.sh's, package for package."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installed = re.search(r"^for pkg in (.+); do$", setup, re.M)
    assert installed, "setup.sh's package loop moved: update this test"
    readme = " ".join((ROOT / "README.md").read_text().split())
    listed = re.search(r"apt packages `([^`]+)`", readme)
    assert listed and listed.group(1).split() == installed.group(1).split()


def test_agent_doc_shows_only_agent_options() -> None:
    """Every `--option` docs/agent.md writes is an option of `callgate agent`, unless its
    line says whose it is (the benchmark's, the CNI plugin's, nft's...)."""
    agent_help = subprocess.run([CALLGATE, "agent", "-h"], capture_output=True, text=True,
                                env={**os.environ, "COLUMNS": "200"}).stdout
    known = set(re.findall(r"--[a-z][a-z0-9-]+", agent_help))
    for n, line in enumerate((ROOT / "docs" / "agent.md").read_text().splitlines(), start=1):
        if re.search(r"bench|pytest|kubectl|curl|nft |ip netns|CNI|callgate (apply|compile|lab|cni)", line):
            continue
        for option in re.findall(r"`[^`]*?(--[a-z][a-z0-9-]+)", line):
            assert option in known, f"docs/agent.md:{n}: {option} is not an option of callgate agent"
