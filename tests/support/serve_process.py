"""The real ``certwright serve`` as a subprocess, for integration tests and benchmarks.

Started with port 0 for both listeners by default; the bound ports are read from its
output ("listening on https://HOST:PORT", "listening on http://HOST:PORT"). Always stopped
by PID (SIGTERM, then SIGKILL past a deadline) when the ``with`` block ends.

Example::

    with ServeProcess(tmp_path / "data") as server:
        httpx.get(server.http_url + "/healthz")
    assert server.returncode == 0
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from support.cli import PASSPHRASE, PASSPHRASE_ENV, certwright_exe

_LISTENING = re.compile(r"listening on (https?)://(\S+)")
START_TIMEOUT = 60.0  # first start makes two CA keys (scrypt) and a few certificates
STOP_TIMEOUT = 30.0


class ServeProcess:
    """One ``certwright serve --dir DIR`` process; ``args`` are added to the command line."""

    def __init__(
        self,
        directory: Path,
        *args: str | Path,
        passphrase: str | None = PASSPHRASE,
        env: dict[str, str] | None = None,
        listen: str = "127.0.0.1:0",
        http_listen: str = "127.0.0.1:0",
    ) -> None:
        self.directory = directory
        self.command = [
            str(certwright_exe()),
            "serve",
            "--dir",
            str(directory),
            "--listen",
            listen,
            "--http-listen",
            http_listen,
            *(str(a) for a in args),
        ]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CERTWRIGHT_")}
        if passphrase is not None:
            self.env[PASSPHRASE_ENV] = passphrase
        self.env.update(env or {})
        self.proc: subprocess.Popen[str] | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.api_url = ""
        self.http_url = ""
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def output(self) -> str:
        return "--- stdout\n" + "".join(self.stdout) + "--- stderr\n" + "".join(self.stderr)

    def start(self, *, timeout: float = START_TIMEOUT) -> ServeProcess:
        """Start and wait until both listeners are announced (or the process exits)."""
        self.proc = self._popen()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not (self.api_url and self.http_url):
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise TimeoutError(f"certwright serve did not start within {timeout} s\n{self.output}")
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the process is exiting
                self.returncode = self.proc.wait(timeout=STOP_TIMEOUT)
                raise RuntimeError(f"certwright serve exited with {self.returncode}\n{self.output}")
            match = _LISTENING.search(line)
            if match and match.group(1) == "https":
                self.api_url = f"https://{match.group(2)}"
            elif match:
                self.http_url = f"http://{match.group(2)}"
        return self

    def run_to_exit(self, *, timeout: float = START_TIMEOUT) -> int:
        """Start a process expected to exit on its own (a refused start); its exit code."""
        self.proc = self._popen()
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self.stdout.append(out)
        self.stderr.append(err)
        self.returncode = self.proc.returncode
        return self.returncode

    def _popen(self) -> subprocess.Popen[str]:
        # stdin is not a terminal: serve must never wait at a passphrase prompt in a test.
        return subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, *, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout=timeout)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown, requests in flight are cut (the replica tests' crash)."""
        assert self.proc is not None
        self.proc.kill()
        self.returncode = self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.returncode = self.proc.returncode
        return self.returncode

    def _pump(self, stream: object, sink: list[str], announce: bool) -> None:
        assert hasattr(stream, "readline")
        for line in iter(stream.readline, ""):
            sink.append(line)
            if announce:
                self._lines.put(line)
        if announce:
            self._lines.put(None)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
