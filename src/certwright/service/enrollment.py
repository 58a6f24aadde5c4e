"""Enrolment tokens, enrolment and renewal: the use cases behind ``certwright serve``.

INTERFACE STUB written by the lead (issue 5); the owner fills it in. Public signatures
are FIXED: the HTTP API codes against them in parallel.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography import x509

from certwright.clock import Clock, SystemClock
from certwright.errors import CertwrightError
from certwright.issuance import Authority
from certwright.store import Store
from certwright.x509.authz import DEFAULT_OID, Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import Profile


class TokenError(CertwrightError):
    """A token is unknown, used, expired, or does not cover the request (never says which
    of unknown/used/expired to an unauthenticated caller: ``public_message``)."""

    public_message = "the enrolment token is not valid"


class RenewalError(CertwrightError):
    """A renewal is refused: the presented certificate is unknown, revoked or expired, or
    the request asks for more than it holds."""


@dataclass(frozen=True)
class TokenGrant:
    """What a token allows: one identity, one profile, a SAN set, roles, a lifetime cap."""

    identity: SpiffeId
    profile: str
    sans: SubjectAltNames = SubjectAltNames()
    authorization: Authorization = Authorization()
    lifetime: datetime.timedelta | None = None


@dataclass(frozen=True)
class CreatedToken:
    """A new token: ``secret`` is shown once and stored only as a hash."""

    secret: str
    token_id: str
    grant: TokenGrant
    expires_at: datetime.datetime


@dataclass(frozen=True)
class Enrolled:
    """A certificate the inventory holds, and the chain to send with it (no root)."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


@dataclass
class EnrollmentService:
    """Tokens, enrol (token + CSR) and renew (current certificate + CSR), one transaction each."""

    store: Store
    authority: Authority
    profiles: dict[str, Profile]
    extension_oid: str = DEFAULT_OID
    clock: Clock = field(default_factory=SystemClock)

    def create_token(self, grant: TokenGrant, *, ttl: datetime.timedelta, actor: str) -> CreatedToken:
        """Store a single-use token for ``grant`` (audited, kind TOKEN)."""
        raise NotImplementedError

    def enroll(self, secret: str, csr: x509.CertificateSigningRequest, *, actor: str) -> Enrolled:
        """Redeem the token and issue for the CSR in one transaction (all or nothing)."""
        raise NotImplementedError

    def renew(
        self, presented: x509.Certificate, csr: x509.CertificateSigningRequest, *, actor: str
    ) -> Enrolled:
        """Issue a successor for ``presented`` (verified by the TLS handshake): same identity."""
        raise NotImplementedError
