"""Work on a second core: a forked child computing a value while this process goes on.

The analysis commands are one-shot processes over a model that is already in
memory, and some of their work splits into independent parts (the two IP
families of a dual-stack inventory, each with its own partition). Threads would
take turns on one core; a forked child gets the whole model for nothing (the
pages are shared until written) and runs on the other core, and only its
result, small next to the model, comes back pickled over a pipe.

Nothing depends on the child: :class:`Forked` computes the value here whenever
the child gave none (no fork, a child that died, raised or sent something that
does not unpickle), so the answer and any error are exactly those of the work
run in this process.

Only one-shot commands fork, and the caller says so. Their other threads, if
any, run C code the child never calls (``apply`` lists the live table through
libnftables while the policies are parsed ahead); the child's work is pure
computation. A long-running process does the work itself (the controller lints
with its watch threads alive): a fork copies every lock as it is, and a lock
one of them held at that moment would never be released in the child. The
child only computes and pickles (no output, no locks of this process's other
threads), then leaves with ``os._exit``, which runs no clean-up of the
parent's (atexit handlers, buffered output, temporary files).

A fork has a cost in the parent too: every page it writes afterwards is a
copy-on-write fault (~0.1 s of lint's checks after a fork at 50,000 pods).
Work that needs none of the model, only files, goes to a helper process
instead (:mod:`callgate.analysis.lint.places`).

Below every other package (like :mod:`callgate.procs`), so the policy reader
(:mod:`callgate.policy.ahead`) and the analyses share it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Generic, TypeVar

T = TypeVar("T")
Send = Callable[[Any], None]


class Child:
    """A forked child running ``produce(send)``: each value it sends arrives pickled in
    :meth:`received`. Fails with OSError when the fork does; see :meth:`close`."""

    def __init__(self, produce: Callable[[Send], None]) -> None:
        read_end, write_end = os.pipe()
        try:
            self._pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            raise
        if self._pid == 0:  # the child: produce, send, leave
            os.close(read_end)
            _run_child(produce, os.fdopen(write_end, "wb"))
        os.close(write_end)
        self._pipe: BinaryIO = os.fdopen(read_end, "rb")

    def received(self) -> Iterator[Any]:
        """Every value the child sent, until it ended (having sent all, or dying); then reaps it."""
        with self._pipe:
            while True:
                try:
                    value = pickle.load(self._pipe)
                except Exception:  # EOF: all sent, or the child died mid-value
                    break
                yield value
        self._reap()

    def close(self) -> None:
        """Stop the child if it still runs, reap it, close the pipe: safe to call twice."""
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._reap()
        if not self._pipe.closed:
            self._pipe.close()

    def _reap(self) -> None:
        if self._pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = 0


def _run_child(produce: Callable[[Send], None], out: BinaryIO) -> None:
    """In the child: run ``produce``, then leave without returning to the parent's code.

    What it sends is written by a thread of its own: a pipe holds 64 KiB, and the
    parent may read a value only after a long while (the YAML reader takes the
    inventory's tail when it has parsed the head: 3 s at Antrea's scale point).
    Written inline, that wait would hold the child's work back for as long."""
    try:
        gc.disable()  # the process ends right after; collections would only copy shared pages
        pickled: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        writer = threading.Thread(target=_write_all, args=(pickled, out))
        writer.start()

        def send(value: Any) -> None:
            pickled.put(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))

        with contextlib.suppress(BaseException):  # whatever went wrong, the parent does it again
            produce(send)
        pickled.put(None)
        writer.join()
    finally:
        os._exit(0)


def _write_all(pickled: queue.SimpleQueue[bytes | None], out: BinaryIO) -> None:
    """Write each pickled value in turn until None; a parent that stopped reading ends it."""
    with contextlib.suppress(OSError):
        while (value := pickled.get()) is not None:
            out.write(value)
            out.flush()
        out.close()


class Forked(Generic[T]):
    """``work()``, computed by a forked child while this process goes on; see the module
    docstring. Use :meth:`started` so the child is stopped however the block ends."""

    def __init__(self, work: Callable[[], T]) -> None:
        self._work = work
        try:
            self._child: Child | None = Child(lambda send: send((work(),)))
        except OSError:  # no fork: the work is done here when asked for
            self._child = None

    @classmethod
    @contextlib.contextmanager
    def started(cls, work: Callable[[], T]) -> Iterator[Forked[T]]:
        forked = cls(work)
        try:
            yield forked
        finally:
            forked.close()

    def result(self) -> T:
        """The child's value, or ``work()`` run here when the child gave none."""
        child, self._child = self._child, None
        if child is not None:
            sent = next(child.received(), None)
            child.close()
            if isinstance(sent, tuple) and len(sent) == 1:
                value: T = sent[0]
                return value
        return self._work()

    def close(self) -> None:
        if self._child is not None:
            self._child.close()
            self._child = None
