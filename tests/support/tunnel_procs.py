"""Long-running processes for the tunnel tests: started, watched through their output,
stopped by PID.

Output goes to a file (never a pipe nobody reads, which would block the process once
full); :meth:`Proc.wait_for` polls it with a deadline for a line such as
``listening on 127.0.0.1:PORT``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEADLINE = 30.0


class Proc:
    """One child process whose stdout and stderr go to ``log``."""

    def __init__(self, args: list[str], log: Path, *, cwd: Path | None = None) -> None:
        self.args = args
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            args,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, *, timeout: float = DEADLINE, start: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the output (from offset ``start``); fails if the
        process exits or the deadline passes first."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.output(), start)
            if match:
                return match
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.args[:4]} exited {self.popen.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen within {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def wait_count(self, pattern: str, count: int, *, timeout: float = DEADLINE) -> str:
        """Wait until ``pattern`` occurs ``count`` times in the output; return the output."""
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, text := self.output())) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen {count} times within {timeout}s:\n{text}")
            time.sleep(0.05)
        return text

    def stop(self, *, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._out.close()
        return self.popen.returncode


@contextmanager
def started(args: list[str], log: Path, *, cwd: Path | None = None) -> Iterator[Proc]:
    """Run ``args`` for the duration of the block; always stopped (by PID) afterwards."""
    proc = Proc(args, log, cwd=cwd)
    try:
        yield proc
    finally:
        proc.stop()


def certwright_cmd(*args: str | Path) -> list[str]:
    """The certwright console script next to the running Python, with ``args``."""
    exe = Path(sys.executable).parent / "certwright"
    return [str(exe), *(str(a) for a in args)]


@contextmanager
def http_server(directory: Path, log: Path) -> Iterator[int]:
    """``python3 -m http.server`` on 127.0.0.1 with port 0; yields the port it printed."""
    args = [
        sys.executable,
        "-u",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "--directory",
        str(directory),
        "0",
    ]
    with started(args, log) as proc:
        match = proc.wait_for(r"Serving HTTP on 127\.0\.0\.1 port (\d+)")
        yield int(match.group(1))


LISTENING = r"listening on 127\.0\.0\.1:(\d+)"


@contextmanager
def tunnel(kind: str, *args: str | Path, log: Path) -> Iterator[tuple[Proc, int]]:
    """``certwright tunnel KIND --listen 127.0.0.1:0 ARGS``; yields the process and its port."""
    with started(certwright_cmd("tunnel", kind, "--listen", "127.0.0.1:0", *args), log) as proc:
        yield proc, int(proc.wait_for(LISTENING).group(1))
