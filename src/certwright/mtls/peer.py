"""The verified peer of a connection. INTERFACE STUB: signatures fixed, bodies to fill."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from certwright.access.policy import Subject
from certwright.errors import VerificationError
from certwright.x509.authz import DEFAULT_OID
from certwright.x509.identity import SpiffeId


class PeerRefused(VerificationError):
    """The peer's certificate is missing, unverifiable, revoked, or names no valid identity."""


@dataclass(frozen=True)
class Peer:
    """Who is on the other end, from its verified certificate (parsed once, cached)."""

    identity: SpiffeId | None
    roles: tuple[str, ...]
    attributes: Mapping[str, str]
    serial: int
    not_after: datetime.datetime
    fingerprint: str  # SHA-256 of the DER certificate, lowercase hex
    certificate: x509.Certificate

    @property
    def subject(self) -> Subject:
        """The access-policy view of this peer."""
        return Subject(str(self.identity) if self.identity else None, self.roles)


class PeerVerifier:
    """Turns a live connection into a :class:`Peer`, or refuses it.

    ``bundle``: trust anchors (a PEM path or certificates). ``crl``: an optional
    revocation source (refreshed by itself). ``trust_domain``: when set, identities
    outside it are refused. Results are cached per certificate fingerprint (the
    revocation check is not cached: a certificate revoked later is refused at once).
    """

    def __init__(
        self,
        bundle: Path | Sequence[x509.Certificate],
        *,
        crl: object | None = None,
        trust_domain: str | None = None,
        require_identity: bool = True,
        extension_oid: str = DEFAULT_OID,
        cache_size: int = 4096,
    ) -> None:
        raise NotImplementedError

    def peer_from_der(self, der: bytes) -> Peer:
        """The peer for a DER certificate the TLS handshake already verified."""
        raise NotImplementedError

    def peer_of(self, conn: ssl.SSLSocket | ssl.SSLObject | asyncio.BaseTransport) -> Peer:
        """The peer of a live TLS connection; ``PeerRefused`` if it presented none."""
        raise NotImplementedError
