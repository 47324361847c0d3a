"""callgate diff: two paths, two git revisions, and --live against a real kernel table."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from callgate.cli.main import app
from tests.golden_util import check_golden
from tests.helpers import ROOT, STANDARD_INVENTORY, standard, write
from tests.netns import host_interfaces

OLD = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80, protocol: TCP}]
"""
NEW = OLD.replace("ns: y", "ns: z").replace("port: 80, protocol: TCP", "port: 80, endPort: 81, protocol: TCP")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["diff", "-i", str(STANDARD_INVENTORY), *args])
    return result.exit_code, result.stdout


def test_paths_text_json_markdown(tmp_path: Path) -> None:
    old, new = write(tmp_path, "old.yaml", OLD), write(tmp_path, "new.yaml", NEW)
    code, text = invoke(str(old), str(new))
    assert code == 1
    check_golden("diff.txt", text.replace(str(tmp_path) + "/", ""))
    # By hand: z pods gain 80-81/TCP to x/a, y pods lose 80/TCP.
    assert "+ z/a -> x/a  80-81/TCP" in text and "- y/a -> x/a  80/TCP" in text
    code, out = invoke(str(old), str(new), "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["changed"] is True
    check_golden("diff.json", out.replace(str(tmp_path) + "/", ""))
    code, md = invoke(str(old), str(new), "--format", "markdown", "-g", "namespace")
    check_golden("diff.md", md.replace(str(tmp_path) + "/", ""))
    assert "| ➕ gained | `z` | `x` | 80-81/TCP | 3 of 9 pod pairs |" in md
    assert invoke(str(old), str(old)) == (0, f"no change in access between {old} and {old} (9 endpoints)\n")


def test_git_revisions(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    pol = _repo(tmp_path) / "policies"
    code, text = invoke("--git", "HEAD~1..HEAD", str(pol))
    assert code == 1 and "from HEAD~1 to HEAD" in text and "+ z/a -> x/a  80-81/TCP" in text
    assert invoke("--git", "HEAD", str(pol))[0] == 0  # working tree equals HEAD
    (pol / "p.yaml").write_text(OLD)
    code, text = invoke("--git", "HEAD", str(pol))
    assert code == 1 and "working tree" in text



def _repo(tmp_path: Path) -> Path:
    """A repository whose policies/p.yaml changed from OLD to NEW in its last commit."""
    repo = tmp_path / "repo"
    pol = repo / "policies"
    pol.mkdir(parents=True)

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=repo,
                       check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    (pol / "p.yaml").write_text(OLD)
    git("add", ".")
    git("commit", "-q", "-m", "old")
    (pol / "p.yaml").write_text(NEW)
    git("commit", "-q", "-am", "new")
    return repo


def test_git_typos_cannot_pass(tmp_path: Path) -> None:
    """A misspelt path or a revision that does not exist is an error that names it (exit 2,
    never 0 "no change" nor 1 "changed"); a path that exists at only one revision is fine."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = _repo(tmp_path)
    runner = CliRunner()
    base = ["diff", "-i", str(STANDARD_INVENTORY), "--git"]
    typo = runner.invoke(app, [*base, "HEAD~1..HEAD", str(repo / "polices")])
    assert typo.exit_code == 2 and "polices: no such path at HEAD~1, nor at HEAD" in typo.stderr
    assert "no change" not in typo.stdout
    typo = runner.invoke(app, [*base, "HEAD", str(repo / "polices")])
    assert typo.exit_code == 2 and "nor in the working tree" in typo.stderr
    bad = runner.invoke(app, [*base, "nosuchrev..HEAD", str(repo / "policies")])
    assert bad.exit_code == 2
    assert "--git: 'nosuchrev' is not a commit (branch, tag or revision) of the repository" in bad.stderr
    (repo / "added").mkdir()
    (repo / "added" / "q.yaml").write_text(OLD.replace("a-from-y", "q"))
    added = runner.invoke(app, [*base, "HEAD", str(repo / "added")])  # absent at HEAD: every policy is new
    assert added.exit_code == 1 and "LOST (" in added.stdout


def test_usage_errors(tmp_path: Path) -> None:
    """Usage mistakes exit 2, as everywhere; for diff, so does input that prevents comparing,
    since 1 means "access changed"."""
    runner = CliRunner()
    assert runner.invoke(app, ["diff", str(tmp_path)]).exit_code == 2  # no inventory
    assert invoke(str(tmp_path))[0] == 2  # one path only
    assert invoke("a", "b", "--format", "html")[0] == 2
    assert invoke(str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml"))[0] == 2  # no such files
    broken = write(tmp_path, "broken.yaml", "kind: [\n")
    result = runner.invoke(app, ["diff", "-i", str(STANDARD_INVENTORY), str(broken), str(broken)])
    assert result.exit_code == 2 and "invalid YAML" in result.stderr


@pytest.mark.kernel
def test_live_diff_in_own_netns(tmp_path: Path, netns: str) -> None:
    policy = write(tmp_path, "p.yaml", OLD)
    args = ["--live", "--node", "node-1", "-p", str(policy), "--netns", netns]
    code, out = invoke(*args)
    assert code == 1 and "+table inet callgate {" in out  # nothing live yet
    host_interfaces(netns, [ep.interface for ep in standard().endpoints if ep.node == "node-1" and ep.interface])
    applied = CliRunner().invoke(app, ["apply", "-i", str(STANDARD_INVENTORY), "-p", str(policy),
                                       "--node", "node-1", "--netns", netns])
    assert applied.exit_code == 0, applied.output
    assert invoke(*args) == (0, "in sync: the live ruleset on node-1 (nft) is the desired one\n")
    changed = write(tmp_path, "p2.yaml", NEW)
    code, out = invoke("--live", "--node", "node-1", "-p", str(changed), "--netns", netns)
    assert code == 1 and any(line.startswith("+") and "81" in line for line in out.splitlines())


def test_examples_exist() -> None:
    assert (ROOT / "examples" / "lint" / "bad.yaml").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_quiet_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Long operations report (done, total) up to total; the CLI draws a bar only for a
    person at a terminal, never in CI or when piped."""
    from callgate.analysis.diff import connectivity_diff
    from callgate.cli.analysis import output as cli
    from callgate.policy import load_policies

    old, new = write(tmp_path, "old.yaml", OLD), write(tmp_path, "new.yaml", NEW)
    seen: list[tuple[int, int]] = []
    connectivity_diff(standard(), load_policies(old), load_policies(new), progress=lambda d, t: seen.append((d, t)))
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1)) and seen[-1][0] == seen[-1][1]

    terminal = _Terminal()
    monkeypatch.setattr(cli.sys, "stderr", terminal)
    monkeypatch.delenv("CI", raising=False)
    with cli.progress_bar("comparing") as bar:
        assert bar is not None
        bar(1, 2)
    monkeypatch.setenv("CI", "true")
    with cli.progress_bar("comparing") as bar:
        assert bar is None
    monkeypatch.delenv("CI")
    monkeypatch.setattr(cli.sys, "stderr", io.StringIO())  # piped
    with cli.progress_bar("comparing") as bar:
        assert bar is None
