"""Helpers shared by the store tests (fixtures are in conftest.py beside this file).

Importable as ``store_helpers`` by the test modules and the conftest, since pytest puts
this directory on ``sys.path`` for the tests here. (store_worker.py runs outside pytest
and imports only certwright.)
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from cryptography import x509

from certwright.issuance import Authority
from certwright.store import Store, add_certificate
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import SigningKey
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES

START = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
TRUST_DOMAIN = "example.org"

Issue = Callable[..., x509.Certificate]


def issue_with(authority: Authority, default_key: SigningKey) -> Issue:
    """A function issuing leaves from ``authority`` with keyword-only, test-friendly options."""

    def issue(
        *,
        identity: str | None = None,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        roles: tuple[str, ...] = (),
        attributes: tuple[tuple[str, str], ...] = (),
        lifetime: datetime.timedelta | None = None,
        key: SigningKey | None = None,
        profile: str = "mtls",
    ) -> x509.Certificate:
        return authority.issue(
            (key or default_key).public_key(),
            profile=BUILTIN_PROFILES[profile],
            identity=SpiffeId.parse(identity) if identity else None,
            sans=SubjectAltNames.create(dns=dns, ips=ips),
            authorization=Authorization(roles=roles, attributes=attributes),
            subject=None if identity or dns or ips else "CN=store test",
            lifetime=lifetime,
        )

    return issue


def store_cert(store: Store, cert: x509.Certificate, *, profile: str = "mtls") -> int:
    """Add ``cert`` in a transaction of its own; returns its row id."""
    with store.write() as session:
        return add_certificate(session, cert, profile=profile, requested_by="tester", created_at=START).id
