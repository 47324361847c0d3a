"""What every test module shares: the ``kernel`` marker's skip and scratch network namespaces.

Tests marked ``kernel`` need root and ``ip netns``; where either is missing they
are skipped here, once, with the reason, instead of each module deciding for
itself. A kernel test that needs an empty namespace takes ``netns`` (one) or
``make_netns`` (as many as it asks for); both remove what they made after the
test, pass or fail.
"""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.netns import SCRATCH_PREFIX, kernel_unavailable


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put the root and ``callgate`` loggers back as they were after every test.

    In-process CLI runs configure logging (the agent's JSON handler, basicConfig)
    against the runner's stream, which is closed when the run ends. Left in place,
    every later test's background threads log into that closed stream ("Logging
    error ... I/O operation on closed file"), and ``propagate = False`` on
    ``callgate`` hides their records from ``caplog``: a test's outcome would then
    depend on which tests ran before it.
    """
    root, ours = logging.getLogger(), logging.getLogger("callgate")
    root_before, root_level = set(root.handlers), root.level
    ours_before = (ours.handlers[:], ours.level, ours.propagate)
    yield
    for handler in root.handlers[:]:
        # pytest's own capture handlers come and go with each phase; leave them be.
        if handler not in root_before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(root_level)
    ours.handlers[:], level, ours.propagate = ours_before
    ours.setLevel(level)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kernel_items = [item for item in items if item.get_closest_marker("kernel") is not None]
    if not kernel_items:
        return  # a unit-only run does not even probe
    reason = kernel_unavailable()
    if reason is not None:
        skip = pytest.mark.skip(reason=f"kernel test: {reason}")
        for item in kernel_items:
            item.add_marker(skip)


@pytest.fixture
def make_netns(request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """A factory of empty, uniquely named network namespaces, all deleted after the test."""
    # Unmarked tests run without root and outside the kernel lock (`-m "not kernel"`),
    # so a test that makes namespaces must say so.
    if request.node.get_closest_marker("kernel") is None:
        pytest.fail(f"{request.node.nodeid} uses a network namespace: mark it @pytest.mark.kernel")
    created: list[str] = []

    def make() -> str:
        name = f"{SCRATCH_PREFIX}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        created.append(name)
        return name

    yield make  # teardown below runs whether the test passed or failed
    stuck = [name for name in created
             if subprocess.run(["ip", "netns", "del", name], capture_output=True).returncode != 0]
    assert not stuck, f"could not delete network namespaces {stuck}"


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    """One empty network namespace, deleted after the test."""
    return make_netns()
