"""An OCSP responder core (RFC 6960, profiled by RFC 5019): DER request in, DER response out.

CFSSL-style: the responder asks a tiny :class:`StatusSource` about one serial and keeps the
signed answers. Without a nonce, a response is signed once and served from memory until
``refresh_before`` ahead of its nextUpdate (RFC 5019 2.2.4, 6.2), so the hot path is a
request parse and a dict lookup; a request with a nonce gets a fresh signature that
echoes it. No I/O, no HTTP: the edges hand over the request body and send back
:attr:`OCSPAnswer.der`, with HTTP caching headers taken from :class:`OCSPAnswer`.

Rules followed, each also cited where it is enforced:

* one certificate per request (RFC 5019 2.1.1); a request listing several is answered
  ``malformedRequest``, like any request that cannot be parsed, is empty or oversized;
* the responder answers only for its issuer: the CertID's issuer name and key hashes
  must match it, computed with SHA-1 or SHA-256; anything else is ``unauthorized``
  (RFC 6960 2.3, RFC 5019 2.2.3);
* good / revoked (time, reason) / unknown (RFC 6960 2.2); thisUpdate, nextUpdate and
  producedAt are always set (RFC 5019 2.2.4); nextUpdate never outlives the responder
  certificate;
* signed by the delegated responder certificate, identified by key hash and included in
  the response (RFC 6960 4.2.2.2, 4.2.2.3);
* the nonce is echoed (RFC 6960 4.4.1); a nonce of 0 or more than 128 octets is
  ``malformedRequest`` (RFC 9654 2.1); request signatures are ignored (RFC 5019 2.1.2).

``cryptography``'s ``OCSPResponseBuilder`` builds the responses: unlike the CRL, one response
is small and the cache makes building rare, so hand-assembled DER would buy nothing.
Its producedAt is the system clock's (the builder takes no time); thisUpdate and
nextUpdate come from the injected clock.

Thread safety: :meth:`OCSPResponder.respond` may run in several threads at once; the cache
reads without a lock, writes take one, and an invalidation that races with a signing keeps
the stale answer out of the cache.

Example::

    >>> import datetime
    >>> from cryptography.x509 import ocsp
    >>> from certwright.clock import SystemClock
    >>> from certwright.issuance import Authority, create_root
    >>> from certwright.revocation.responder import issue_responder
    >>> from certwright.x509.keys import generate_key
    >>> from certwright.x509.profiles import CASettings
    >>> settings = CASettings(trust_domain="example.org")
    >>> ca_key, responder_key = generate_key(), generate_key()
    >>> root = create_root(ca_key, subject="CN=Example Root", settings=settings)
    >>> authority = Authority(certificate=root, key=ca_key, settings=settings)
    >>> responder_cert = issue_responder(authority, responder_key)
    >>> class Everything:
    ...     def lookup(self, serial):
    ...         return CertificateStatus.good()
    >>> responder = OCSPResponder(issuer=root, responder=responder_cert, responder_key=responder_key,
    ...                           source=Everything(), clock=SystemClock())
    >>> request = ocsp.OCSPRequestBuilder().add_certificate(responder_cert, root, hashes.SHA256()).build()
    >>> answer = responder.answer(request.public_bytes(serialization.Encoding.DER))
    >>> ocsp.load_der_ocsp_response(answer.der).certificate_status
    <OCSPCertStatus.GOOD: 0>
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from certwright.clock import Clock
from certwright.errors import InvalidInputError
from certwright.revocation.entries import CertificateStatus, CertStatus
from certwright.revocation.responder import check_responder
from certwright.x509 import der
from certwright.x509.keys import SigningKey, signature_hash

_log = logging.getLogger(__name__)

# A lone RFC 5019 request is under 100 octets; a signed one with its certificates a few KiB.
MAX_REQUEST_SIZE = 16 * 1024
# RFC 9654 2.1: a nonce of 1 to 128 octets; anything else is refused as malformedRequest.
MAX_NONCE_SIZE = 128
_SERIAL_LIMIT = 1 << 160
# The CertID hash algorithms answered (RFC 5019 2.1.1: SHA-1; RFC 9919 adds SHA-256).
# SHA-1 here names a certificate, it signs nothing: the protocol requires it.
CERT_ID_HASHES: tuple[hashes.HashAlgorithm, ...] = (hashes.SHA1(), hashes.SHA256())  # noqa: S303


class StatusSource(Protocol):
    """Where the responder learns a certificate's status (the inventory, in the service layer)."""

    def lookup(self, serial: int) -> CertificateStatus | None:
        """The status of the certificate with ``serial`` from this issuer; None when unknown."""
        ...


@dataclass(frozen=True)
class OCSPAnswer:
    """A DER OCSPResponse and what the HTTP edge needs to serve it.

    ``cacheable`` says whether HTTP caches may keep it until ``next_update`` (RFC 5019 6.2:
    ``max-age``, ``Expires``, ``Last-Modified`` from ``this_update``): true for a successful
    response without a nonce, false otherwise.
    """

    der: bytes
    response_status: ocsp.OCSPResponseStatus
    cert_status: ocsp.OCSPCertStatus | None = None
    this_update: datetime.datetime | None = None
    next_update: datetime.datetime | None = None
    cacheable: bool = False


@dataclass(frozen=True)
class OCSPStats:
    """Counters for metrics (approximate under threads): answers served and signatures made."""

    from_cache: int
    signed: int
    unsuccessful: int


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> OCSPAnswer:
    response = ocsp.OCSPResponseBuilder.build_unsuccessful(status)
    return OCSPAnswer(der=response.public_bytes(serialization.Encoding.DER), response_status=status)


MALFORMED = _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
UNAUTHORIZED = _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
TRY_LATER = _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)


@dataclass(frozen=True)
class _Query:
    """What a parsed request asks: which serial, hashed how, with which nonce."""

    serial: int
    algorithm: hashes.HashAlgorithm
    name_hash: bytes
    key_hash: bytes
    nonce: bytes | None


def _key_of(query: _Query) -> tuple[int, str]:
    """The cache key of a query's response (RFC 6960 4.2.1: its CertID names the hash)."""
    return query.serial, query.algorithm.name


class OCSPResponder:
    """Answers OCSP requests about the certificates of one issuer; see the module docstring.

    ``validity`` is the span from thisUpdate to nextUpdate; a cached response is signed anew
    once less than ``refresh_before`` of it remains. At most ``max_cached`` responses are
    kept (the oldest go first); answers for unknown serials are never cached, so requests
    for made-up serials cannot fill memory (they cost a signature each: rate-limit them at
    the edge).
    """

    def __init__(
        self,
        *,
        issuer: x509.Certificate,
        responder: x509.Certificate,
        responder_key: SigningKey,
        source: StatusSource,
        clock: Clock,
        validity: datetime.timedelta = datetime.timedelta(hours=1),
        refresh_before: datetime.timedelta = datetime.timedelta(minutes=15),
        max_cached: int = 1_000_000,
        max_request_size: int = MAX_REQUEST_SIZE,
    ) -> None:
        if not datetime.timedelta(0) < refresh_before < validity:
            raise InvalidInputError(
                f"refresh_before ({refresh_before}) must be positive and shorter than validity ({validity})"
            )
        if max_cached < 0 or max_request_size <= 0:
            raise InvalidInputError("max_cached must be >= 0 and max_request_size > 0")
        check_responder(issuer=issuer, responder=responder, responder_key=responder_key, now=clock.now())
        self.issuer = issuer
        self.responder = responder
        self._signer = (responder, responder_key, signature_hash(responder_key))
        self._source = source
        self._clock = clock
        self._validity = validity
        self._refresh_before = refresh_before
        self._max_cached = max_cached
        self._max_request_size = max_request_size
        self._not_before = responder.not_valid_before_utc
        self._not_after = responder.not_valid_after_utc
        self._issuer_hashes = _issuer_hashes(issuer)
        # (serial, CertID hash name) -> (refresh at, answer). RFC 6960 4.2.1: the response's
        # CertID repeats the request's, so SHA-1 and SHA-256 requests need their own responses.
        self._cache: dict[tuple[int, str], tuple[datetime.datetime, OCSPAnswer]] = {}
        self._lock = threading.Lock()
        self._epoch = 0  # bumped by every invalidation
        self._from_cache = self._signed = self._unsuccessful = 0

    def respond(self, request_der: bytes) -> bytes:
        """The DER OCSPResponse for a DER OCSPRequest; never raises for a bad request."""
        return self.answer(request_der).der

    def answer(self, request_der: bytes) -> OCSPAnswer:
        """Like :meth:`respond`, with the response's times and cacheability for the HTTP edge."""
        settled = self._settle(request_der)
        if isinstance(settled, OCSPAnswer):
            return settled
        query, now = settled
        epoch = self._epoch
        try:
            status = self._source.lookup(query.serial)
        except Exception:
            # RFC 6960 2.3 tryLater: the inventory is unreachable; the caller may retry.
            _log.exception("OCSP status lookup failed for serial %#x", query.serial)
            self._unsuccessful += 1
            return TRY_LATER
        answer = self._sign(query, status, now)
        if query.nonce is None and status is not None:
            self._store(_key_of(query), answer, epoch)
        return answer

    def cached_answer(self, request_der: bytes) -> OCSPAnswer | None:
        """:meth:`answer`, when it needs neither the status source nor a signature; else None.

        For an event loop, which must not wait for the inventory: a malformed or
        unauthorized request, or a cached response still fresh, is answered here; None
        means the caller should run :meth:`answer` where blocking is allowed.
        """
        settled = self._settle(request_der)
        return settled if isinstance(settled, OCSPAnswer) else None

    def _settle(self, request_der: bytes) -> OCSPAnswer | tuple[_Query, datetime.datetime]:
        """The answer if it is already known (refusals, the cache), else the query and the time."""
        query = self._parse(request_der)
        if isinstance(query, OCSPAnswer):
            self._unsuccessful += 1
            return query
        now = self._clock.now()
        if not self._not_before <= now < self._not_after:
            # The responder certificate has expired (or is not valid yet): every response it
            # signed would be refused. Transient until it is rotated (responder_needs_rotation).
            self._unsuccessful += 1
            return TRY_LATER
        if query.nonce is None:
            cached = self._cache.get(_key_of(query))
            if cached is not None and now < cached[0]:
                self._from_cache += 1
                return cached[1]
        return query, now

    def rotate(self, responder: x509.Certificate, responder_key: SigningKey) -> None:
        """Sign with a new delegated responder certificate and key from now on.

        For a long-running server: the responder certificate is short-lived (RFC 6960
        4.2.2.2.1 leaves revocation checking of it out, so certwright keeps it to days) and
        must be replaced before it expires. The pair is checked like the first one; cached
        responses, signed by the old certificate, are dropped.
        """
        now = self._clock.now()
        check_responder(issuer=self.issuer, responder=responder, responder_key=responder_key, now=now)
        with self._lock:
            # One assignment per field under the lock; _sign reads them once per response.
            self._signer = (responder, responder_key, signature_hash(responder_key))
            self.responder = responder
            self._not_before = responder.not_valid_before_utc
            self._not_after = responder.not_valid_after_utc
            self._epoch += 1
            self._cache.clear()

    def invalidate(self, serial: int) -> None:
        """Forget the cached responses for ``serial`` (call it when its status changes)."""
        with self._lock:
            self._epoch += 1
            for algorithm in CERT_ID_HASHES:
                self._cache.pop((serial, algorithm.name), None)

    def invalidate_all(self) -> None:
        """Forget every cached response (after a bulk revocation, for example)."""
        with self._lock:
            self._epoch += 1
            self._cache.clear()

    @property
    def stats(self) -> OCSPStats:
        return OCSPStats(from_cache=self._from_cache, signed=self._signed, unsuccessful=self._unsuccessful)

    def _parse(self, request_der: bytes) -> _Query | OCSPAnswer:
        if not isinstance(request_der, bytes | bytearray | memoryview):
            return MALFORMED
        if not request_der or len(request_der) > self._max_request_size:
            return MALFORMED
        try:
            request = ocsp.load_der_ocsp_request(bytes(request_der))
            extensions = list(request.extensions)
        except (ValueError, TypeError, NotImplementedError, x509.DuplicateExtension):
            # NotImplementedError: several requests in one (RFC 5019 2.1.1 allows one).
            return MALFORMED
        nonce = None
        for extension in extensions:
            if isinstance(extension.value, x509.OCSPNonce):
                nonce = extension.value.nonce
                if not 0 < len(nonce) <= MAX_NONCE_SIZE:
                    return MALFORMED  # RFC 9654 2.1
            elif extension.critical:
                # RFC 6960 4.4: unrecognized extensions are ignored unless critical.
                return MALFORMED
        try:
            algorithm = request.hash_algorithm
        except UnsupportedAlgorithm:
            return UNAUTHORIZED  # a CertID hash we cannot compute cannot name our issuer
        expected = self._issuer_hashes.get(algorithm.name)
        name_hash, key_hash = request.issuer_name_hash, request.issuer_key_hash
        if expected is None or expected != (name_hash, key_hash):
            # RFC 6960 2.3 / RFC 5019 2.2.3: not a certificate this responder is authoritative for.
            return UNAUTHORIZED
        serial = request.serial_number
        if not 0 < serial < _SERIAL_LIMIT:
            # RFC 5280 4.1.2.2: serials are positive and at most 20 octets, so no certificate
            # has this one (and a negative one could not even be echoed in the CertID).
            return MALFORMED
        return _Query(serial, algorithm, name_hash, key_hash, nonce)

    def _sign(self, query: _Query, status: CertificateStatus | None, now: datetime.datetime) -> OCSPAnswer:
        responder, key, digest = self._signer  # one read: a rotation cannot mix two pairs
        this_update = now.astimezone(datetime.UTC).replace(microsecond=0)
        next_update = min(this_update + self._validity, responder.not_valid_after_utc)
        if status is None:
            cert_status, revoked_at, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
        elif status.status is CertStatus.GOOD:
            cert_status, revoked_at, reason = ocsp.OCSPCertStatus.GOOD, None, None
        else:
            cert_status = ocsp.OCSPCertStatus.REVOKED
            assert status.revoked_at is not None  # CertificateStatus guarantees it
            revoked_at = status.revoked_at.astimezone(datetime.UTC).replace(microsecond=0)
            # As in CRL entries (RFC 5280 5.3.1), an unspecified reason is left out.
            reason = None if status.reason is x509.ReasonFlags.unspecified else status.reason
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=query.name_hash,
                issuer_key_hash=query.key_hash,
                serial_number=query.serial,
                algorithm=query.algorithm,
                cert_status=cert_status,
                this_update=this_update,
                next_update=next_update,
                revocation_time=revoked_at,
                revocation_reason=reason,
            )
            # RFC 6960 4.2.2.3: byKey; 4.2.1: the certs field carries the delegated responder.
            .responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
            .certificates([responder])
        )
        if query.nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(query.nonce), critical=False)  # RFC 6960 4.4.1
        response = builder.sign(key, digest)
        self._signed += 1
        return OCSPAnswer(
            der=response.public_bytes(serialization.Encoding.DER),
            response_status=ocsp.OCSPResponseStatus.SUCCESSFUL,
            cert_status=cert_status,
            this_update=this_update,
            next_update=next_update,
            cacheable=query.nonce is None,
        )

    def _store(self, key: tuple[int, str], answer: OCSPAnswer, epoch: int) -> None:
        if self._max_cached == 0:
            return
        assert answer.next_update is not None
        refresh_at = answer.next_update - self._refresh_before
        with self._lock:
            if self._epoch != epoch:
                return  # invalidated while this answer was being made: it may be stale already
            self._cache.pop(key, None)
            while len(self._cache) >= self._max_cached:
                del self._cache[next(iter(self._cache))]  # oldest signed first
            self._cache[key] = (refresh_at, answer)


def _issuer_hashes(issuer: x509.Certificate) -> dict[str, tuple[bytes, bytes]]:
    """CertID issuerNameHash and issuerKeyHash per hash algorithm (RFC 6960 4.1.1).

    The name hash covers the DER of the issuer's subject; the key hash covers the value of
    the subjectPublicKey BIT STRING, without tag, length and unused-bits octet.
    """
    name = issuer.subject.public_bytes()
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _, start, _ = der.read_tlv(spki)
    _, _, algorithm_end = der.read_tlv(spki, start)
    _, bits_start, bits_end = der.read_tlv(spki, algorithm_end)
    key_bits = spki[bits_start + 1 : bits_end]
    return {
        algorithm.name: (
            hashlib.new(algorithm.name, name, usedforsecurity=False).digest(),
            hashlib.new(algorithm.name, key_bits, usedforsecurity=False).digest(),
        )
        for algorithm in CERT_ID_HASHES
    }
