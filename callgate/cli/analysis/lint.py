"""``callgate lint``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from callgate.analysis.lint import report
from callgate.analysis.lint.config import find_config
from callgate.analysis.lint.rules import RULES, Severity, lookup, rules_markdown
from callgate.analysis.lint.run import lint
from callgate.cli.analysis.output import stdout
from callgate.cli.common import EXIT_OK, EXIT_USER, fail, require_paths, usage_error
from callgate.policy import load_inventory
from callgate.policy.documents import SUFFIXES, files_under, gc_paused


class LintFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"
    JUNIT = "junit"


class FailOn(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


def lint_cmd(
    paths: Annotated[list[str] | None, typer.Argument(
        metavar="PATH", help="Policy files or directories (recursive).")] = None,
    inventory: Annotated[list[str] | None, typer.Option(
        "--inventory", "-i", metavar="PATH", help="Inventory (callgate/v1 or a kubectl Pod/Namespace dump) for "
        "the semantic checks that need to know the pods. Repeatable.")] = None,
    fmt: Annotated[LintFormat, typer.Option(
        "--format", "-f", metavar="[text|json|sarif|junit]", case_sensitive=False,
        help="text for people; json (an object: findings, files, counts), SARIF 2.1.0 or JUnit XML for CI.")
    ] = LintFormat.TEXT,
    fail_on: Annotated[FailOn | None, typer.Option(
        "--fail-on", metavar="[error|warning|info]", case_sensitive=False,
        help="Exit 1 when a finding reaches this severity (default: config, else error).")] = None,
    disable: Annotated[list[str] | None, typer.Option(
        "--disable", "-d", metavar="RULE", help="Rule id or name to skip (repeatable), on top of the config.")] = None,
    config: Annotated[str | None, typer.Option(
        "--config", metavar="FILE", help="Config file (.callgate.yaml or pyproject.toml). Default: the nearest one "
        "from the current directory up.")] = None,
    skip_other_kinds: Annotated[bool, typer.Option(
        "--skip-other-kinds", help="Skip files and documents that are not NetworkPolicy, App or inventory objects "
        "(CI configs, Helm values, Deployments) instead of reporting them (CG002); kind NetworkPolicy or App "
        "under another apiVersion is still reported. The pre-commit hook sets it.")] = False,
    explain_rule: Annotated[str | None, typer.Option(
        "--explain", metavar="RULE", help="Print the documentation of a rule (id or name, or 'all') and exit.")
    ] = None,
) -> None:
    """Check NetworkPolicy, callgate/v1 App and ClusterNetworkPolicy files for mistakes.

    Schema and API-server validation, then semantic checks (with --inventory:
    selectors that select nothing, unresolved named ports, redundant rules,
    namespaces without default-deny...). Every finding has file:line:column,
    the object, the field and a hint. Exit 1 when findings reach --fail-on, or
    when a directory holds no policy file at all.

    \b
    Example: callgate lint -i inventory.yaml policies/ --format sarif > lint.sarif
    """
    if explain_rule is not None:
        if explain_rule.lower() == "all":
            typer.echo(rules_markdown(), nl=False)
            return
        text = report.explain(explain_rule)
        if text is None:
            usage_error(f"--explain: unknown lint rule {explain_rule!r}; rules: {', '.join(r.id for r in RULES)}")
        typer.echo(text, nl=False)
        return
    if not paths:
        usage_error("give at least one policy file or directory (or --explain RULE)")
    require_paths("'PATH'", paths)
    if inventory:
        require_paths("'--inventory' / '-i'", inventory)
    # A directory without a single policy file is almost always a typo or a move:
    # passing it silently would let CI lint nothing and succeed.
    empty = [p for p in paths if Path(p).is_dir() and not files_under([p])]
    if empty:
        fail(f"no policy files ({', '.join('*' + s for s in SUFFIXES)}) in {', '.join(empty)}")
    cfg = find_config(Path.cwd(), config)
    for ref in disable or ():
        rule = lookup(ref)
        if rule is None:
            usage_error(f"--disable {ref!r}: unknown lint rule; rules: {', '.join(r.id for r in RULES)}")
        cfg.disable.add(rule.id)
    threshold = Severity.parse(fail_on.value) if fail_on else (cfg.fail_on or Severity.ERROR)
    # One-shot: the cluster's millions of objects live until the command ends, and the
    # collector walking them again and again freed next to nothing (2.4-3 s at 50k pods).
    with gc_paused():
        inv = load_inventory(inventory) if inventory else None
        result = lint(paths, inv, cfg, inventory_paths=inventory or (), skip_other_kinds=skip_other_kinds,
                      forks=True)
        if fmt is LintFormat.TEXT:
            report.text(result, stdout())
        elif fmt is LintFormat.JSON:
            typer.echo(report.to_json(result))
        elif fmt is LintFormat.SARIF:
            typer.echo(report.sarif(result))
        else:
            typer.echo(report.junit(result, threshold), nl=False)
    raise typer.Exit(EXIT_USER if result.failed(threshold) else EXIT_OK)
