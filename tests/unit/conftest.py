"""Shared fixtures of the unit tests: keys, a fixed clock, CA settings and authorities.

Keys are generated once per session (RSA-4096 takes a good fraction of a second) and
authorities are built on a :class:`FixedClock`, so every test sees the same "now".
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from certwright.clock import FixedClock
from certwright.issuance import Authority, create_root
from certwright.x509.keys import KeyType, SigningKey, generate_key
from certwright.x509.profiles import CASettings
from support.env import require_tool

START = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="session")
def start() -> datetime.datetime:
    """The instant every fixed clock of the unit tests starts at."""
    return START


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture(scope="session")
def key_for() -> Callable[[KeyType], SigningKey]:
    """One private key per KeyType for the whole session (generated on first use)."""
    cache: dict[KeyType, SigningKey] = {}

    def get(key_type: KeyType) -> SigningKey:
        if key_type not in cache:
            cache[key_type] = generate_key(key_type)
        return cache[key_type]

    return get


@pytest.fixture(scope="session")
def leaf_keys() -> Callable[[KeyType], SigningKey]:
    """A second key per KeyType, so leaves never share the CA's key."""
    cache: dict[KeyType, SigningKey] = {}

    def get(key_type: KeyType) -> SigningKey:
        if key_type not in cache:
            cache[key_type] = generate_key(key_type)
        return cache[key_type]

    return get


@pytest.fixture(scope="session")
def settings() -> CASettings:
    return CASettings(trust_domain="example.org")


@pytest.fixture(scope="session")
def authority_for(
    key_for: Callable[[KeyType], SigningKey], settings: CASettings
) -> Callable[[KeyType], Authority]:
    """A root CA (and its Authority) per key type, on a clock fixed at START."""
    cache: dict[KeyType, Authority] = {}

    def get(key_type: KeyType) -> Authority:
        if key_type not in cache:
            key = key_for(key_type)
            clock = FixedClock(START)
            root = create_root(
                key, subject=f"CN=Test Root {key_type.value},O=Example", settings=settings, clock=clock
            )
            cache[key_type] = Authority(certificate=root, key=key, settings=settings, clock=clock)
        return cache[key_type]

    return get


@pytest.fixture(scope="session")
def authority(authority_for: Callable[[KeyType], Authority]) -> Authority:
    """The default CA of the tests: an ECDSA P-256 root."""
    return authority_for(KeyType.EC_P256)


def _hash_for(key: SigningKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


@pytest.fixture(scope="session")
def rebuild() -> Callable[[x509.Certificate, SigningKey], x509.Certificate]:
    """Re-create a certificate with cryptography's CertificateBuilder from its own content.

    Same serial, validity, subject, issuer, public key and extensions (same order, same
    criticality), signed with ``ca_key`` and the hash certwright uses for that key.
    """

    def build(certificate: x509.Certificate, ca_key: SigningKey) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .serial_number(certificate.serial_number)
            .issuer_name(certificate.issuer)
            .subject_name(certificate.subject)
            .public_key(certificate.public_key())
            .not_valid_before(certificate.not_valid_before_utc)
            .not_valid_after(certificate.not_valid_after_utc)
        )
        for extension in certificate.extensions:
            builder = builder.add_extension(extension.value, critical=extension.critical)
        return builder.sign(ca_key, _hash_for(ca_key))

    return build


@pytest.fixture(scope="session")
def openssl() -> Callable[[], str]:
    """``support.env.require_tool("openssl")``: call it inside the test that needs it."""
    return lambda: require_tool("openssl")
