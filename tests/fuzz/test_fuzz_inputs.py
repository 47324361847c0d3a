"""Fuzzing every reader of user input: mutated files and API objects are accepted, or
refused with problems that name the file (and the object and field when there is
one); nothing raises anything else, hangs, or grows without bound.

Readers: the policy and inventory loaders (also given each other's files), lint,
the agent's files source, and the Kubernetes source's converters with the
controller's lint of what they produce. The CLI commands on top of them:
test_fuzz_cli.py.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from callgate.analysis.lint.findings import Finding
from callgate.analysis.lint.run import lint
from callgate.compiler import Compiler
from callgate.controller import lint_state
from callgate.errors import MAX_MESSAGE, InputError, ProblemCode
from callgate.policy import load_inventory, load_policies
from callgate.policy.positions import SAFE_LOADER
from callgate.watchers.base import Snapshot
from callgate.watchers.files import FilesSource
from callgate.watchers.k8s_convert import NAMESPACES, PODS, POLICIES, Converted, assemble, convert
from tests.fuzz.mutate import FuzzFile, mutated_document, mutated_files, shape, write_documents
from tests.fuzz.oracle import bounded_memory, check_problems
from tests.fuzz.seeds import INVENTORY, KUBECTL_LIST, NETWORK_POLICY, NODE, SEEDS, Seed
from tests.fuzz.seeds import POLICIES as POLICY_FILE
from tests.fuzz.settings import example_time_limit, fuzz_settings


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    with bounded_memory():
        yield


@st.composite
def cases(draw: Any) -> tuple[Seed, FuzzFile]:
    seed = draw(st.sampled_from(SEEDS))
    return seed, draw(mutated_files(seed.documents))


def written(directory: str, fuzz: FuzzFile) -> Path:
    path = Path(directory) / f"input{fuzz.suffix}"
    path.write_bytes(fuzz.data)
    return path


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: s.name)
def test_seeds_are_valid(seed: Seed, tmp_path: Path) -> None:
    """Mutations start from valid input (or, for a kind callgate does not read yet, from
    input refused for its kind alone)."""
    path = tmp_path / "seed.yaml"
    path.write_text(write_documents(seed.documents, "block")[0])
    try:
        if seed.role == "policy":
            inventory, policies = load_inventory(INVENTORY), load_policies(path)
        else:
            inventory, policies = load_inventory(path), load_policies(POLICY_FILE)
    except InputError as err:
        assert {p.code for p in err.problems} == {ProblemCode.UNKNOWN_KIND}, err
        return
    Compiler(policies, inventory).compile(NODE)


def check_findings(findings: list[Finding], files: set[str]) -> None:
    for f in findings:
        assert f.file in files, f
        assert f.message.isprintable() and len(f.message) <= MAX_MESSAGE, f
        assert f.object is None or (f.object.isprintable() and f.field is not None), f


@fuzz_settings(600)
@given(cases())
def test_readers_refuse_or_accept_cleanly(case: tuple[Seed, FuzzFile]) -> None:
    seed, fuzz = case
    with tempfile.TemporaryDirectory(prefix="cgfuzz-") as tmp, example_time_limit():
        path = written(tmp, fuzz)
        for load in (load_policies, load_inventory):  # each also given the other's files
            try:
                load(path)
            except InputError as err:
                check_problems(err.problems, [path])
        check_findings(lint([path]).findings, {str(path)})
        inventory, policies = (INVENTORY, path) if seed.role == "policy" else (path, POLICY_FILE)
        loaded = FilesSource([inventory], [policies]).load()  # the agent's reader: never raises
        if not isinstance(loaded, Snapshot):
            assert loaded.message
            check_problems(loaded.problems, [path])


# -- the Kubernetes source: objects as the API serves them -----------------------------------------

API_SEEDS = [(PODS, item) for item in KUBECTL_LIST["items"] if item["kind"] == "Pod"] + [
    (NAMESPACES, item) for item in KUBECTL_LIST["items"] if item["kind"] == "Namespace"] + [(POLICIES, NETWORK_POLICY)]


@st.composite
def api_objects(draw: Any) -> tuple[str, Any]:
    """An object as the API would serve it: what JSON can carry, decoded as the client
    decodes it (json.loads: string keys, no node reached twice). The YAML writer's
    tags and repeated keys are resolved on the way, as a decoder would."""
    kind, seed = draw(st.sampled_from(API_SEEDS))
    document = draw(mutated_document(seed))
    assume(not shape(document)[1])
    text, _ = write_documents([document], "flow")
    try:
        obj = json.loads(json.dumps(yaml.load(text, Loader=SAFE_LOADER), default=str))
    except (yaml.YAMLError, RecursionError):
        assume(False)
    return kind, obj


@fuzz_settings(800)
@given(st.lists(api_objects(), min_size=1, max_size=3))
def test_api_objects_are_converted_or_skipped(objects: list[tuple[str, Any]]) -> None:
    """The converters skip what they cannot use with a problem, never raise; the state
    assembled from them, and the controller's lint of it, never raise either."""
    with example_time_limit():
        entries: dict[str, dict[tuple[str, str], Converted]] = {PODS: {}, NAMESPACES: {}, POLICIES: {}}
        for kind, obj in objects:
            converted = convert(kind, obj)
            if converted is None:
                continue  # nothing to name it by: the reflector drops it
            for problem in converted.problems:
                assert problem.file == "kubernetes" and str(problem).isprintable(), problem
            entries[kind][(converted.ref.namespace or "", converted.ref.name)] = converted
        state = assemble(entries)
        for report in lint_state(state):
            assert report.message.isprintable(), report
