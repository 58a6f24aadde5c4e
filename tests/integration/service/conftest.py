"""Fixtures of the service-layer tests: a real SQLite inventory per test and a real two-level CA.

The root and the issuing intermediate are made once per session (on a fixed clock, a day
before the tests' ``START``); each test gets a fresh inventory file and an
:class:`~certwright.issuance.Authority` on its own :class:`~certwright.clock.FixedClock`,
shared with the services, so a test can move time forward.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certwright.clock import FixedClock
from certwright.issuance import Authority, create_root
from certwright.service import CertificateService, RevocationService
from certwright.store import Store, open_store
from certwright.x509.keys import KeyType, SigningKey, generate_key
from certwright.x509.profiles import CASettings

START = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
TRUST_DOMAIN = "example.org"


@pytest.fixture(scope="session")
def settings() -> CASettings:
    return CASettings(trust_domain=TRUST_DOMAIN, dns_zones=("svc.example.org",))


@pytest.fixture(scope="session")
def root_key() -> SigningKey:
    return generate_key(KeyType.EC_P256)


@pytest.fixture(scope="session")
def root(root_key: SigningKey, settings: CASettings) -> x509.Certificate:
    return create_root(
        root_key,
        subject="CN=Service Test Root",
        settings=settings,
        clock=FixedClock(START - datetime.timedelta(days=1)),
    )


@pytest.fixture(scope="session")
def intermediate_key() -> SigningKey:
    return generate_key(KeyType.EC_P256)


@pytest.fixture(scope="session")
def intermediate(
    root: x509.Certificate, root_key: SigningKey, intermediate_key: SigningKey, settings: CASettings
) -> x509.Certificate:
    parent = Authority(
        certificate=root,
        key=root_key,
        settings=settings,
        clock=FixedClock(START - datetime.timedelta(days=1)),
    )
    return parent.create_intermediate(intermediate_key.public_key(), subject="CN=Service Test Issuing CA")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def authority(
    intermediate: x509.Certificate,
    intermediate_key: SigningKey,
    root: x509.Certificate,
    settings: CASettings,
    clock: FixedClock,
) -> Authority:
    return Authority(
        certificate=intermediate, key=intermediate_key, settings=settings, chain=(root,), clock=clock
    )


@pytest.fixture
def root_authority(
    root: x509.Certificate, root_key: SigningKey, settings: CASettings, clock: FixedClock
) -> Authority:
    return Authority(certificate=root, key=root_key, settings=settings, clock=clock)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "inventory.db"


@pytest.fixture
def store(database: Path) -> Iterator[Store]:
    opened = open_store(database, upgrade=True)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def certificates(store: Store, authority: Authority, clock: FixedClock) -> CertificateService:
    return CertificateService(store=store, authority=authority, clock=clock, actor="test:alice")


@pytest.fixture
def revocations(store: Store, intermediate: x509.Certificate, clock: FixedClock) -> RevocationService:
    return RevocationService(store=store, issuer=intermediate, clock=clock, actor="test:bob")
