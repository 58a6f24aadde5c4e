"""The verified peer of a connection: identity, roles and attributes from its certificate.

Example::

    >>> verifier = PeerVerifier(Path("bundle.pem"), crl=crls, trust_domain="example.org")  # doctest: +SKIP
    >>> peer = verifier.peer_of(tls_socket)          # raises PeerRefused, with a reason
    >>> str(peer.identity), peer.roles
    ('spiffe://example.org/web', ('reader',))

**Who verified the chain.** ``ssl`` in Python 3.11 has no public way to get the chain the
handshake built (``SSLSocket.get_verified_chain`` is public from 3.13 only), just the leaf.
That is enough: a context made by :mod:`certwright.mtls.context` has ``CERT_REQUIRED``
(or ``CERT_OPTIONAL``: a certificate that is presented must verify), so OpenSSL already
refused, during the handshake, any leaf that does not chain to the bundle, is expired or
not yet valid, or breaks a CA's name constraints (URI constraints included, which OpenSSL
enforces); the connection never gets here. What the handshake does not know is what a
workload certificate means, so this module adds: exactly one valid SPIFFE ID, the trust
domain, the authorization extension, expiry again (a cached peer, a long-lived connection
outlive the handshake) and revocation. :meth:`PeerVerifier.peer_of` refuses a connection
whose context does not verify certificates at all (``CERT_NONE``), where the leaf would
be unverified. For a certificate no handshake verified, use
:meth:`PeerVerifier.peer_from_chain`.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
import threading
import types
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from certwright.access.policy import Subject
from certwright.clock import Clock, SystemClock
from certwright.errors import VerificationError
from certwright.files import read_certificates
from certwright.mtls.crl import CrlSource, IssuerKey, RevocationChecker, issuer_key_of
from certwright.verify.chain import Purpose
from certwright.verify.identity import authorization_of, identity_of, verify_identity
from certwright.verify.names import describe
from certwright.verify.profile import timestamp
from certwright.x509.authz import DEFAULT_OID
from certwright.x509.identity import SpiffeId, validate_trust_domain


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


@dataclass(frozen=True)
class _Entry:
    """What the cache keeps per certificate: the peer, or why it is refused for good."""

    peer: Peer | None
    refusal: str | None
    issuer: IssuerKey | None
    not_before: datetime.datetime | None


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
        clock: Clock | None = None,
    ) -> None:
        self.anchors = read_certificates(bundle) if isinstance(bundle, Path) else list(bundle)
        if crl is not None and not isinstance(crl, RevocationChecker):
            raise TypeError("crl must be a CrlSource (or have a check(certificate) method)")
        self.crl: RevocationChecker | None = crl
        self.trust_domain = validate_trust_domain(trust_domain) if trust_domain is not None else None
        self.require_identity = require_identity
        self.extension_oid = extension_oid
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.cache_size = cache_size
        self._clock: Clock = clock or SystemClock()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def peer_from_der(self, der: bytes) -> Peer:
        """The peer for a DER certificate the TLS handshake already verified.

        Parsing is cached per SHA-256 fingerprint; validity dates and revocation are
        checked on every call.
        """
        fingerprint = hashlib.sha256(der).hexdigest()
        entry = self._cached(fingerprint)
        if entry is None:
            entry = self._parse(der, fingerprint)
            self._remember(fingerprint, entry)
        if entry.peer is None:
            raise PeerRefused(entry.refusal or "refused")
        peer = entry.peer
        now = self._clock.now()
        # The handshake checked the dates, but a cached peer or a long-lived connection
        # outlives it (RFC 5280 6.1.3(a)(2) applies at the time of use).
        if now > peer.not_after:
            raise PeerRefused(f"certificate expired at {timestamp(peer.not_after)}")
        if entry.not_before is not None and now < entry.not_before:
            raise PeerRefused(f"certificate not valid before {timestamp(entry.not_before)}")
        self._check_revocation(peer, entry.issuer)
        return peer

    def peer_of(self, conn: ssl.SSLSocket | ssl.SSLObject | asyncio.BaseTransport) -> Peer:
        """The peer of a live TLS connection; ``PeerRefused`` if it presented none."""
        if isinstance(conn, asyncio.BaseTransport):
            tls = conn.get_extra_info("ssl_object")
            if not isinstance(tls, ssl.SSLObject | ssl.SSLSocket):
                raise PeerRefused("the connection does not use TLS")
        else:
            tls = conn
        if tls.context.verify_mode == ssl.CERT_NONE:
            # Without verification the leaf is whatever the peer sent: never an identity.
            raise PeerRefused("the TLS context does not verify peer certificates (CERT_NONE)")
        try:
            der = tls.getpeercert(binary_form=True)
        except ValueError:
            raise PeerRefused("the TLS handshake is not complete") from None
        if not der:
            raise PeerRefused("the peer presented no certificate")
        return self.peer_from_der(der)

    def peer_from_chain(
        self, chain: Sequence[bytes], *, purpose: Purpose = Purpose.CLIENT
    ) -> Peer:
        """The peer for a DER chain (leaf first) that no handshake verified, e.g. one
        passed on by a TLS-terminating proxy: the chain is verified against the bundle
        first (every call; not cached), then as :meth:`peer_from_der`."""
        if not chain:
            raise PeerRefused("the peer presented no certificate")
        try:
            certs = [x509.load_der_x509_certificate(der) for der in chain]
            verify_identity(
                certs[0], trusted=self.anchors, untrusted=certs[1:], purpose=purpose,
                at=self._clock.now(), extension_oid=self.extension_oid,
            )
        except ValueError as exc:
            raise PeerRefused(f"the peer's certificate cannot be parsed: {exc}") from None
        except VerificationError as exc:
            raise PeerRefused(exc.reason) from exc
        return self.peer_from_der(chain[0])

    # --- internals ------------------------------------------------------------------------

    def _cached(self, fingerprint: str) -> _Entry | None:
        with self._lock:
            entry = self._cache.get(fingerprint)
            if entry is not None:
                self._cache.move_to_end(fingerprint)
            return entry

    def _remember(self, fingerprint: str, entry: _Entry) -> None:
        with self._lock:
            self._cache[fingerprint] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _parse(self, der: bytes, fingerprint: str) -> _Entry:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            return _Entry(None, f"the peer's certificate cannot be parsed: {exc}", None, None)
        try:
            identity = identity_of(cert)  # SPIFFE X509-SVID 2: exactly one URI SAN
            if identity is None and (self.require_identity or self.trust_domain is not None):
                raise VerificationError("the certificate carries no SPIFFE identity (URI SAN)")
            if identity is not None and self.trust_domain and not identity.member_of(self.trust_domain):
                raise VerificationError(f"identity {identity} is not in trust domain {self.trust_domain}")
            authz = authorization_of(cert, self.extension_oid)
            issuer = issuer_key_of(cert)
        except VerificationError as exc:
            return _Entry(None, f"{exc.reason} ({describe(cert)})", None, None)
        peer = Peer(
            identity=identity,
            roles=authz.roles,
            attributes=types.MappingProxyType(authz.attribute_map),
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
            fingerprint=fingerprint,
            certificate=cert,
        )
        return _Entry(peer, None, issuer, cert.not_valid_before_utc)

    def _check_revocation(self, peer: Peer, issuer: IssuerKey | None) -> None:
        if self.crl is None:
            return
        try:
            if isinstance(self.crl, CrlSource) and issuer is not None:
                label = str(peer.identity) if peer.identity else describe(peer.certificate)
                self.crl.check_serial(issuer, peer.serial, label=label)
            else:
                self.crl.check(peer.certificate)
        except VerificationError as exc:
            raise PeerRefused(exc.reason) from exc
