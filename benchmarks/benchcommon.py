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
