"""Shared fixtures of the mTLS integration tests: a test PKI and written workload files.

``pki`` is fresh per test (revocations and CRL numbers are per test); ``other_pki`` is a
second, unrelated CA with the same trust domain. ``server_files`` and ``client_files``
are a server workload (``spiffe://example.org/server``, DNS ``server.example.org``) and a client
workload (``spiffe://example.org/client``, role ``reader``) written under ``tmp_path``;
``write_workload`` writes more (attack material from ``pki.expired_leaf``,
``pki.forged_leaf``, ``other_pki.leaf``...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from certwright.mtls.context import TLSFiles
from support.pki import TestPKI, Workload

SERVER_ID = "spiffe://example.org/server"
CLIENT_ID = "spiffe://example.org/client"

WriteWorkload = Callable[[Workload, str], TLSFiles]


@pytest.fixture
def pki() -> TestPKI:
    return TestPKI.create()


@pytest.fixture
def other_pki() -> TestPKI:
    return TestPKI.create(name="Other")


@pytest.fixture
def write_workload(tmp_path: Path, pki: TestPKI) -> WriteWorkload:
    """Write ``workload`` under ``tmp_path/name`` with ``pki``'s bundle; returns its TLSFiles."""

    def write(workload: Workload, name: str) -> TLSFiles:
        files = workload.write(tmp_path / name, pki.bundle_pem)
        return TLSFiles(files.cert, files.key, files.bundle)

    return write


@pytest.fixture
def server_files(pki: TestPKI, write_workload: WriteWorkload) -> TLSFiles:
    return write_workload(pki.leaf(SERVER_ID, dns=("server.example.org",)), "server")


@pytest.fixture
def client_files(pki: TestPKI, write_workload: WriteWorkload) -> TLSFiles:
    return write_workload(pki.leaf(CLIENT_ID, roles=("reader",)), "client")
