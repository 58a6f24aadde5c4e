"""What the tests need from outside the Python environment, and where the repository is.

Tests that need something outside the Python environment (an apt-installed peer, the
shared x509-limbo suite) call :func:`require`. On a developer machine without it they
skip with a reason that names what is missing; CI sets ``CERTWRIGHT_REQUIRE_ALL=1`` so the
same condition fails the run instead of silently skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SHARED = REPO_ROOT.parent / "shared"


def require(condition: bool, reason: str) -> None:
    """Skip (or, under CI, fail) the calling test unless ``condition`` holds."""
    if condition:
        return
    if os.environ.get("CERTWRIGHT_REQUIRE_ALL") == "1":
        pytest.fail(f"required by CI but missing: {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Return the path of an external program, or skip/fail naming it."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path
