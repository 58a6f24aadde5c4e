"""Fixtures for interop tests: a PKI per key type (see :mod:`support.interop`) and the peers.

One PKI per key type per test module.
"""

from __future__ import annotations

import pytest

from support.cli import KEY_TYPES
from support.env import require_tool
from support.interop import PKI, build_pki


@pytest.fixture(scope="session")
def openssl() -> str:
    return require_tool("openssl")


@pytest.fixture(scope="module", params=KEY_TYPES)
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A PKI of each key type (the tests using it run once per key type)."""
    return build_pki(tmp_path_factory.mktemp(f"pki-{request.param}"), request.param)
