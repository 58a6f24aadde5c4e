"""Fixtures of the store tests: one fresh database per test, on SQLite and on PostgreSQL.

``database_url`` is parametrised over both backends. SQLite gets a file in a fresh tmp
directory; PostgreSQL gets a database with a unique name on the server of
``CERTWRIGHT_TEST_POSTGRES`` (default: the project machines' 127.0.0.1:5432, trust auth),
created for the test and dropped (``WITH (FORCE)``) at teardown. When that server cannot
be reached the PostgreSQL half skips locally and fails under CI (``support.env.require``).

Certificates come from a real :class:`~certwright.issuance.Authority` on a fixed clock:
one P-256 root per session (cheap), an Authority per test so a test may move its clock.
Helpers that tests import live in ``store_helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from store_helpers import START, TRUST_DOMAIN, Issue, issue_with

from certwright.clock import FixedClock
from certwright.issuance import Authority, create_root
from certwright.store import Store, open_store
from certwright.x509.keys import KeyType, SigningKey, generate_key
from certwright.x509.profiles import CASettings
from support.postgres import PG_ADMIN, postgres_database

ROOT_DN = "CN=Store Test Root,O=Example"


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """The libpq URL of the server's maintenance database (to create and drop test databases)."""
    return PG_ADMIN


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to an empty database of ``backend``, removed after the test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'inventory.db'}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """For PostgreSQL-only tests: the URL of an empty database of its own."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """An inventory migrated to head."""
    opened = open_store(database_url, upgrade=True)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """For SQLite-only tests: an inventory file migrated to head."""
    with open_store(tmp_path / "inventory.db", upgrade=True) as opened:
        yield opened


@pytest.fixture
def clock() -> FixedClock:
    """The test's clock, shared with ``ca``: advance it to issue "later"."""
    return FixedClock(START)


@pytest.fixture(scope="session")
def settings() -> CASettings:
    return CASettings(trust_domain=TRUST_DOMAIN)


@pytest.fixture(scope="session")
def root_key() -> SigningKey:
    return generate_key(KeyType.EC_P256)


@pytest.fixture(scope="session")
def root(root_key: SigningKey, settings: CASettings) -> x509.Certificate:
    return create_root(root_key, subject=ROOT_DN, settings=settings, clock=FixedClock(START))


@pytest.fixture(scope="session")
def other_root(settings: CASettings) -> tuple[x509.Certificate, SigningKey]:
    """A second CA with the same DN but its own key (a re-keyed or unrelated issuer)."""
    key = generate_key(KeyType.EC_P256)
    return create_root(key, subject=ROOT_DN, settings=settings, clock=FixedClock(START)), key


@pytest.fixture
def ca(root: x509.Certificate, root_key: SigningKey, settings: CASettings, clock: FixedClock) -> Authority:
    return Authority(certificate=root, key=root_key, settings=settings, clock=clock)


@pytest.fixture(scope="session")
def leaf_key() -> SigningKey:
    return generate_key(KeyType.EC_P256)


@pytest.fixture
def issue(ca: Authority, leaf_key: SigningKey) -> Issue:
    """Issue a leaf from the test's CA (default: mtls profile, the session's leaf key)."""
    return issue_with(ca, leaf_key)
