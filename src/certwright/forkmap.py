"""Numbered tasks run in forked worker processes, their results handed back in order.

What batch signing needs from a process pool, and no more: workers forked from the
caller (so they inherit its opened CA key instead of re-deriving or pickling it), each
taking the next task number from a shared counter (the faster worker takes more), and
the results read by the caller itself, in task order, as it iterates.

Why not ``multiprocessing.Pool``: its three helper threads in the caller (task feeder,
result reader, worker watcher) cost 0.13-0.18 s of CPU per 5,000 certificates and compete
for the GIL with the thread that records the batch, and on two cores that CPU is taken
from the workers. Here the caller waits on the workers' pipes with ``select`` and does
nothing else. Linux only (``fork``), like the batch CLI.

A task that raises sends its exception back; iterating re-raises it (as ``Pool`` does).
A worker that dies without a word (killed, out of memory) makes iteration raise
:class:`WorkerLost` once the results it owed are known to be missing.

Example::

    >>> from certwright.forkmap import ForkMap
    >>> with ForkMap(lambda i: i * i, count=4, jobs=2) as squares:   # doctest: +SKIP
    ...     list(squares)
    [0, 1, 4, 9]
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import selectors
import signal
import struct
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")

# Each result travels as one frame: task number, status, payload length, then the pickle.
_FRAME = struct.Struct("<IBI")
_DONE, _RAISED = 0, 1
_READ = 1 << 16


class WorkerLost(RuntimeError):
    """A worker process ended before sending the results of the tasks it had taken."""


class ForkMap(Generic[_T]):
    """``run(0) ... run(count - 1)`` on ``jobs`` forked processes; iterate for the results.

    ``setup()`` runs once in each worker, before its first task. The workers start at
    once. Use it as a context manager: leaving stops any worker still running.
    """

    def __init__(
        self,
        run: Callable[[int], _T],
        *,
        count: int,
        jobs: int,
        setup: Callable[[], None] | None = None,
    ) -> None:
        self._count = count
        self._next: Any = multiprocessing.get_context("fork").Value("q", 0)
        self._selector = selectors.DefaultSelector()
        self._buffers: dict[int, bytearray] = {}
        self._pids: list[int] = []
        self._done: dict[int, _T] = {}
        readers: list[int] = []
        try:
            for _ in range(max(1, jobs)):
                reader, writer = os.pipe()
                readers.append(reader)
                pid = os.fork()
                if pid == 0:  # the worker: never returns into the caller's code
                    for fd in readers:
                        os.close(fd)
                    _work(run, setup, self._next, count, writer)
                os.close(writer)
                self._pids.append(pid)
                self._selector.register(reader, selectors.EVENT_READ)
                self._buffers[reader] = bytearray()
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[_T]:
        for number in range(self._count):
            while number not in self._done:
                self._receive(number)
            yield self._done.pop(number)

    def _receive(self, waiting_for: int) -> None:
        """Read whatever the workers have written; raise what a task raised."""
        if not self._buffers:
            raise WorkerLost(
                f"the worker processes ended without the result of task {waiting_for}{self._statuses()}"
            )
        for key, _ in self._selector.select():
            fd = int(key.fd)
            data = os.read(fd, _READ)
            if not data:
                self._selector.unregister(fd)
                os.close(fd)
                del self._buffers[fd]
                continue
            buffer = self._buffers[fd]
            buffer += data
            self._frames(buffer)

    def _frames(self, buffer: bytearray) -> None:
        start = 0
        while len(buffer) - start >= _FRAME.size:
            number, status, length = _FRAME.unpack_from(buffer, start)
            end = start + _FRAME.size + length
            if len(buffer) < end:
                break
            value = pickle.loads(memoryview(buffer)[start + _FRAME.size : end])  # noqa: S301 - our own forked workers
            start = end
            if status == _RAISED:
                raise value
            self._done[number] = value
        del buffer[:start]

    def _statuses(self) -> str:
        ended = []
        for pid in self._pids:
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    ended.append(f"worker {pid}: {_describe(status)}")
        return f" ({'; '.join(ended)})" if ended else ""

    def close(self) -> None:
        """Stop the workers still running and reap them all (idempotent)."""
        for fd in list(self._buffers):
            self._selector.unregister(fd)
            os.close(fd)
        self._buffers.clear()
        self._selector.close()
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._pids.clear()

    def __enter__(self) -> ForkMap[_T]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _work(
    run: Callable[[int], Any], setup: Callable[[], None] | None, counter: Any, count: int, fd: int
) -> None:
    """A worker's life: take task numbers until none are left, send each result, exit."""
    code = 0
    number = count
    try:
        if setup is not None:
            setup()
        while True:
            with counter.get_lock():
                number = counter.value
                if number >= count:
                    break
                counter.value = number + 1
            _send(fd, number, _DONE, pickle.dumps(run(number), pickle.HIGHEST_PROTOCOL))
    except BaseException as exc:  # sent to the caller, who raises it
        code = 1
        with contextlib.suppress(BaseException):
            _send(fd, number, _RAISED, _pickled_error(exc))
    finally:
        # Never unwind into the caller's code (a test runner, the CLI): no atexit
        # handlers, no buffers flushed twice.
        os._exit(code)


def _pickled_error(exc: BaseException) -> bytes:
    try:
        return pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle still says what it was
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"), pickle.HIGHEST_PROTOCOL)


def _send(fd: int, number: int, status: int, payload: bytes) -> None:
    data = memoryview(_FRAME.pack(number, status, len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
