"""Fixtures for the CLI integration tests (helpers: :mod:`support.cli`, :mod:`support.certs`).

CAs cost two scrypt key encryptions to create and one decryption per signing command,
so test modules create theirs once, with module-scoped fixtures built on ``make_ca``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.cli import make_ca


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One P-256 CA per test module: trust domain example.org, DNS zone svc.example.org."""
    return make_ca(tmp_path_factory.mktemp("ca") / "ca")


@pytest.fixture(scope="module")
def other_ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA for the same trust domain (wrong-bundle negative controls)."""
    return make_ca(tmp_path_factory.mktemp("other") / "ca", key_type="ed25519")
