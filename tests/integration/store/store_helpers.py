"""Helpers shared by the store tests (fixtures are in conftest.py beside this file).

Importable as ``store_helpers`` by the test modules and the conftest, since pytest puts
this directory on ``sys.path`` for the tests here. (store_worker.py runs outside pytest
and imports only certwright.)
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
from cryptography import x509

from certwright.issuance import Authority
from certwright.store import Store, add_certificate
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import SigningKey
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES
from support.env import require

START = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
TRUST_DOMAIN = "example.org"
PG_ADMIN = os.environ.get("CERTWRIGHT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

Issue = Callable[..., x509.Certificate]


@functools.cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used for the tests (None when it can); asked once per run."""
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_ADMIN} is not reachable: {' '.join(str(exc).split())}"


def _pg_url(database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(PG_ADMIN)
    user = info.get("user", "postgres")
    host = info.get("host", "127.0.0.1")
    port = info.get("port", 5432)
    return f"postgresql+psycopg://{user}@{host}:{port}/{database}"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (its SQLAlchemy URL), dropped on exit.

    Skips (fails under CI) when the server cannot be reached.
    """
    problem = postgres_problem()
    require(problem is None, problem or "")
    name = f"certwright_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
