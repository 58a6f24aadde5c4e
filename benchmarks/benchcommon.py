"""What the benchmark scripts share: progress lines and the description of the machine.

The scripts run as ``python benchmarks/NAME.py``, so this directory is on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend as _backend


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


def machine_info(**extra: object) -> dict[str, object]:
    """CPU, cores, load, Python and OpenSSL versions: printed beside every figure."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    openssl_cli = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=True)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_ssl": ssl.OPENSSL_VERSION,
        "cryptography": cryptography.__version__,
        "cryptography_openssl": _backend.openssl_version_text(),
        "openssl_cli": openssl_cli.stdout.strip(),
        **extra,
    }


def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and every live descendant, plus the children ``root`` reaped
    (cutime + cstime): a ``serve`` supervisor's workers included."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None:
            parents[int(entry)] = int(fields[1])
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    root_fields = _stat(root)
    if root_fields is None:
        return 0.0
    total = int(root_fields[11]) + int(root_fields[12]) + int(root_fields[13]) + int(root_fields[14])
    for pid in ticks:
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor not in (0, 1, root):
            ancestor = parents.get(ancestor)
        if ancestor == root and pid != root:
            total += ticks[pid]
    return total / os.sysconf("SC_CLK_TCK")


# -- server processes -------------------------------------------------------------------------

_LISTENING = re.compile(r"listening on (https?://\S+)")


def certwright_exe() -> str:
    exe = Path(sys.executable).parent / "certwright"
    return str(exe) if exe.is_file() else "certwright"


class Process:
    """A server process started by the benchmark, stopped by PID; its output kept."""

    def __init__(self, name: str, command: list[str], *, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self.urls: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if found := _LISTENING.search(line):
                self.urls.put(found.group(1))

    def cpu_seconds(self) -> float:
        """CPU time of the process and its worker processes, living or reaped."""
        return tree_cpu_seconds(self.proc.pid)

    def fail(self, why: str) -> RuntimeError:
        return RuntimeError(f"{self.name}: {why}\n{''.join(self.lines[-40:])}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


class Serve(Process):
    """``certwright serve --dir DIR [--db URL]`` on free ports; ``api`` and ``public`` URLs."""

    def __init__(self, name: str, directory: Path, db_url: str | None, *, passphrase: str) -> None:
        env = {**os.environ, "CERTWRIGHT_CA_PASSPHRASE": passphrase, "PYTHONUNBUFFERED": "1",
               "CERTWRIGHT_ACCESS_LOG": "false", "CERTWRIGHT_LOG_LEVEL": "warning"}
        env.pop("CERTWRIGHT_DB", None)
        command = [certwright_exe(), "serve", "--dir", str(directory),
                   "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        if db_url:
            command += ["--db", db_url]
        super().__init__(name, command, env=env)
        self.directory = directory
        urls = []
        deadline = time.monotonic() + 120
        while len(urls) < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise self.fail("did not start")
            with contextlib.suppress(queue.Empty):
                urls.append(self.urls.get(timeout=0.1))
        self.api = next(u for u in urls if u.startswith("https://"))
        self.public = next(u for u in urls if u.startswith("http://"))
