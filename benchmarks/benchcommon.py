"""What the benchmark scripts share: progress lines and the description of the machine.

The scripts run as ``python benchmarks/NAME.py``, so this directory is on ``sys.path``.
"""

from __future__ import annotations

import os
import platform
import ssl
import subprocess
import sys
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
