"""Fixtures of the agent's unit tests: a real in-memory CA behind a fake transport
(:mod:`support.agent_ca`), a fixed clock, a temporary credentials directory."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from certwright.agent.layout import CredentialDir, Credentials
from certwright.clock import FixedClock
from support.agent_ca import FakeCA
from support.pki import TestPKI


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    return TestPKI.create()


@pytest.fixture
def clock() -> FixedClock:
    # Now, to the second: the test CA's certificates are valid around the real time.
    return FixedClock(datetime.datetime.now(datetime.UTC).replace(microsecond=0))


@pytest.fixture
def ca(pki: TestPKI, clock: FixedClock) -> FakeCA:
    return FakeCA(pki, clock)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "web"


@pytest.fixture
def enrolled(ca: FakeCA, clock: FixedClock, workdir: Path) -> Credentials:
    """A workload enrolled now (24-hour certificate, DNS web.example.org) in ``workdir``."""
    creds = ca.credentials(clock.now(), dns=["web.example.org"])
    files = CredentialDir(workdir)
    with files.locked():
        files.store(creds)
    return creds
