"""A forked child's value, or the same value computed here whatever went wrong (callgate.forked)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from callgate import forked
from callgate.forked import Forked


def _in_child(parent: int) -> dict[str, Any]:
    """Says where it ran: the test checks that the child did the work."""
    return {"pid": os.getpid(), "parent": parent, "data": list(range(100_000))}


def test_the_child_computes_the_value() -> None:
    me = os.getpid()
    with Forked.started(lambda: _in_child(me)) as work:
        value = work.result()
    assert value["pid"] != me and value["parent"] == me
    assert value["data"] == list(range(100_000))  # bigger than a pipe's buffer


def _dies() -> int:
    if os.getpid() != PARENT[0]:
        os._exit(3)
    return 7


def _raises() -> int:
    if os.getpid() != PARENT[0]:
        raise RuntimeError("only in the child")
    return 7


def _unpicklable() -> Any:
    if os.getpid() != PARENT[0]:
        return lambda: 0
    return 7


PARENT = [0]


@pytest.mark.parametrize("work", [_dies, _raises, _unpicklable])
def test_a_child_that_gives_no_value_means_the_work_is_done_here(work: Any) -> None:
    PARENT[0] = os.getpid()
    with Forked.started(work) as running:
        assert running.result() == 7


def test_an_error_of_the_work_is_raised_here() -> None:
    def fails() -> int:
        raise ValueError("bad input")

    with Forked.started(fails) as running, pytest.raises(ValueError, match="bad input"):
        running.result()


def test_no_fork_means_the_work_is_done_here(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> int:
        raise OSError("no more processes")

    monkeypatch.setattr(forked.os, "fork", refused)
    me = os.getpid()
    with Forked.started(lambda: _in_child(me)) as work:
        assert work.result()["pid"] == me


def test_the_child_is_stopped_and_reaped_however_the_block_ends() -> None:
    pids = []
    with pytest.raises(RuntimeError), Forked.started(lambda: os.pause()) as work:
        assert work._child is not None
        pids.append(work._child._pid)
        raise RuntimeError("the parent failed first")
    with pytest.raises(ChildProcessError):  # killed and waited for: no zombie left
        os.waitpid(pids[0], os.WNOHANG)



def test_a_parent_that_reads_late_does_not_hold_the_child_back(tmp_path: Any) -> None:
    """The child goes on after sending more than a pipe holds, before the parent reads any."""
    done = tmp_path / "done"

    def produce(send: forked.Send) -> None:
        send(b"x" * (4 << 20))
        send("second")
        done.write_text("after both sends")

    child = forked.Child(produce)
    try:
        for _ in range(200):  # up to 10 s; the parent has read nothing yet
            if done.exists():
                break
            time.sleep(0.05)
        assert done.exists()
        assert list(child.received()) == [b"x" * (4 << 20), "second"]
    finally:
        child.close()
