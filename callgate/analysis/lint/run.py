"""Running lint: over files (``callgate lint``), or over items someone else read (the controller)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from callgate.analysis.lint.checks import document, inventory, redundancy, tiers
from callgate.analysis.lint.config import LintConfig, apply_suppressions
from callgate.analysis.lint.findings import Finding, LintResult
from callgate.analysis.lint.linter import Linter
from callgate.policy.documents import files_under
from callgate.policy.model import Inventory


def lint(paths: Iterable[str | Path], inventory: Inventory | None = None, config: LintConfig | None = None,
         inventory_paths: Sequence[str] = (), skip_other_kinds: bool = False, forks: bool = False) -> LintResult:
    """Lint policy files and directories; never raises for problems *in* the files
    (only for paths that do not exist). ``skip_other_kinds``: see :func:`other_kind`;
    ``forks``: see :class:`Linter` (``callgate lint`` says yes)."""
    linter = Linter(inventory, inventory_paths, skip_other_kinds, forks)
    paths = list(paths)
    with linter.placing_ahead(paths):
        linter.read(paths)
        linter.drop_duplicates()
        linter.compile_apps()
        run_checks(linter, config or LintConfig())
    inventory_files = [str(p) for p in files_under(inventory_paths)] if inventory_paths else []
    return LintResult(sorted(linter.findings, key=Finding.sort_key), linter.files, inventory_files, linter.skipped)


def run_checks(linter: Linter, config: LintConfig) -> None:
    """Every semantic check on the linter's items, then (with the findings placed in
    their files) the suppressions of ``config`` and of the items' documents."""
    for item in linter.items:
        document.check(linter, item)
    compiled = [i for i in linter.items if i.policy is not None]
    cluster = [i for i in linter.items if i.cluster is not None]
    cluster_policies = tuple(i.cluster for i in cluster if i.cluster is not None)
    reported: redundancy.Reported = set()
    # The document checks' findings (most of a big lint's) are placed in their files
    # beside the other checks, when a helper does that (Linter.placing_ahead).
    linter.want_places()
    tiers.check(linter, cluster)
    if linter.inventory is not None:
        inventory.check(linter, compiled, cluster_policies)
        tiers.check_inventory(linter, cluster)
        reported = redundancy.exact(linter, compiled, cluster_policies)
    redundancy.syntactic(linter, compiled, reported)
    linter.place()
    linter.findings = apply_suppressions(linter.findings, (i.doc for i in linter.items), config)
