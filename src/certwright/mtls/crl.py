"""Service-side revocation: a CRL file or URL, refreshed, checked on every request.

Example::

    >>> from certwright.mtls.crl import CrlSource                       # doctest: +SKIP
    >>> crls = CrlSource("/etc/certwright/ca.crl", issuers=[Path("cert.pem"), Path("bundle.pem")])
    >>> crls.check(peer_certificate)        # raises CertificateRevoked / RevocationUnknown

* **Where from.** A path is looked at (``stat``) at most once per ``check_interval``
  seconds from the calling thread and re-read when it changed. An ``http(s)://`` URL is
  fetched by a background thread every ``refresh`` seconds (conditional GET), so a
  request never waits on the network.
* **Trust.** Every CRL must be signed by one of the ``issuers`` (CA certificates, such as
  the intermediates of the workload's own chain file and the bundle), found by name and
  authorityKeyIdentifier, and pass the checks of :mod:`certwright.verify.revocation`
  (cRLSign, signature, thisUpdate/nextUpdate, cRLNumber, no unknown critical extension,
  no delta or indirect CRL). A CRL whose cRLNumber is lower than the one in use is refused
  too: replaying an older CRL (plain HTTP is the norm for CRLs) would un-revoke.
* **Unusable input keeps the last good CRL** of its issuer while that one is not stale
  (``now <= nextUpdate``).
* **Fail closed.** A certificate whose issuer has no good CRL is refused
  (:class:`RevocationUnknown`), unless ``fail_open=True``: then it passes, and a warning
  is logged once per issuer.
* **O(1).** Revoked serials are kept in a set per issuer; the entry is read (for its
  reason) only for a revoked serial.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx
from cryptography import x509

from certwright.clock import Clock, SystemClock
from certwright.errors import CertwrightError, InvalidInputError, VerificationError
from certwright.files import read_certificates
from certwright.verify.names import describe, extension
from certwright.verify.profile import timestamp

# The verifier's CRL checks, reused so that the two never disagree (private names there
# for now; they deserve public ones).
from certwright.verify.revocation import check_crl, crls_of

_log = logging.getLogger("certwright.mtls")

IssuerKey = tuple[bytes, bytes | None]  # (issuer name DER, key identifier)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # about a million entries


class CertificateRevoked(VerificationError):
    """The certificate is on its issuer's current CRL."""


class RevocationUnknown(VerificationError):
    """No usable CRL of the certificate's issuer is at hand (fail closed)."""


class CrlError(InvalidInputError):
    """A CRL source cannot be set up (bad location or issuer certificates)."""


@runtime_checkable
class RevocationChecker(Protocol):
    """What :class:`certwright.mtls.peer.PeerVerifier` needs of a revocation source."""

    def check(self, certificate: x509.Certificate) -> None:
        """Return if ``certificate`` is not revoked; raise a ``VerificationError`` if it
        is or its status is unknown."""
        ...


def issuer_key_of(certificate: x509.Certificate) -> IssuerKey:
    """How a certificate names its issuer: issuer DN (DER) and authorityKeyIdentifier."""
    aki = extension(certificate, x509.AuthorityKeyIdentifier)
    key_id = aki.value.key_identifier if aki is not None else None
    return certificate.issuer.public_bytes(), key_id


@dataclass
class _IssuerCrl:
    """The good CRL in use for one issuer."""

    issuer: str
    crl: x509.CertificateRevocationList
    number: int
    next_update: datetime.datetime
    serials: frozenset[int]
    covers_leaves: bool
    reasons: dict[int, str] = field(default_factory=dict)  # filled on first hit


class CrlSource:
    """Revocation from a CRL file or URL (see the module docstring).

    ``issuers``: CA certificates, or PEM files of them (re-read at every reload: an
    intermediate rotates too); certificates that are not CAs are ignored, so the
    workload's own chain file can be given as is. Use as a context manager, or call
    :meth:`close`, to stop the background fetcher of a URL.
    """

    def __init__(
        self,
        location: str | Path,
        *,
        issuers: Iterable[x509.Certificate | Path],
        refresh: float = 300.0,
        check_interval: float = 1.0,
        fail_open: bool = False,
        clock: Clock | None = None,
        timeout: float = 10.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        background: bool = True,
    ) -> None:
        text = str(location)
        self.url = text if text.startswith(("http://", "https://")) else None
        self.path = None if self.url else Path(location)
        self._issuers = list(issuers)
        if not self._issuers:
            raise CrlError("a CRL source needs the certificates of the CAs whose CRLs it reads")
        self._load_issuers()  # fail at startup on a bad issuer file
        self.refresh_interval = refresh
        self.check_interval = check_interval
        self.fail_open = fail_open
        self._clock: Clock = clock or SystemClock()
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._crls: dict[bytes, dict[bytes | None, _IssuerCrl]] = {}
        self._lock = threading.Lock()  # the hot path's "is it time to look?" (never waits)
        self._load_lock = threading.Lock()  # one load at a time
        self._last_digest: bytes | None = None
        self._last_error: str | None = None
        self._seen: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._etag: str | None = None
        self._warned_open: set[IssuerKey] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.path is not None:
            self._load()  # a missing or corrupt CRL file is a setup error: say so at once
        else:
            self.refresh()
        self._next_check = time.monotonic() + check_interval
        if self.url and background:
            self._thread = threading.Thread(target=self._fetch_loop, name="certwright-crl", daemon=True)
            self._thread.start()

    # --- the hot path ---------------------------------------------------------------------

    def check(self, certificate: x509.Certificate) -> None:
        """Raise :class:`CertificateRevoked` or :class:`RevocationUnknown`, or return."""
        self.check_serial(issuer_key_of(certificate), certificate.serial_number, label=describe(certificate))

    def check_serial(self, issuer: IssuerKey, serial: int, *, label: str = "") -> None:
        """:meth:`check` for a certificate already reduced to issuer key and serial."""
        if self.path is not None:
            self._maybe_reload_file()
        state = self._find(issuer)
        who = label or f"serial {serial:#x}"
        if state is None or not state.covers_leaves:
            self._unknown(issuer, f"no usable CRL of the issuer of {who}{self._why()}")
            return
        if self._clock.now() > state.next_update:
            self._unknown(
                issuer,
                f"the CRL of {state.issuer} is stale (nextUpdate {timestamp(state.next_update)})"
                f"{self._why()}",
            )
            return
        if serial in state.serials:
            raise CertificateRevoked(f"certificate revoked: {self._reason(state, serial)} ({who})")

    def _find(self, issuer: IssuerKey) -> _IssuerCrl | None:
        by_key = self._crls.get(issuer[0])
        if not by_key:
            return None
        if issuer[1] is not None:
            return by_key.get(issuer[1])
        # No authorityKeyIdentifier in the certificate: the name decides if it is unique.
        return next(iter(by_key.values())) if len(by_key) == 1 else None

    def _unknown(self, issuer: IssuerKey, message: str) -> None:
        if not self.fail_open:
            raise RevocationUnknown(f"revocation status unknown: {message}")
        if issuer not in self._warned_open:
            self._warned_open.add(issuer)
            _log.warning("revocation status unknown, allowed (fail_open): %s", message)

    def _why(self) -> str:
        return f"; last load failed: {self._last_error}" if self._last_error else ""

    @staticmethod
    def _reason(state: _IssuerCrl, serial: int) -> str:
        if serial not in state.reasons:
            entry = state.crl.get_revoked_certificate_by_serial_number(serial)
            text = "reason unknown"
            if entry is not None:
                try:
                    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
                    text = f"reason {reason.value}"
                except x509.ExtensionNotFound:
                    text = "reason unspecified"
                except (ValueError, TypeError, x509.DuplicateExtension):
                    text = "malformed entry"
                text += f", at {timestamp(entry.revocation_date_utc)}"
            state.reasons[serial] = text
        return state.reasons[serial]

    # --- loading --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Load the CRL now (file or URL); on failure keep what is in use and log."""
        try:
            self._load()
        except CertwrightError as exc:
            self._last_error = str(exc)
            _log.warning("CRL %s not loaded, keeping the last good one: %s", self.location, exc)

    def _load(self) -> None:
        with self._load_lock:
            data = self._read_file() if self.path is not None else self._fetch()
            if data is not None:
                self._install(data)

    @property
    def location(self) -> str:
        return self.url or str(self.path)

    def _maybe_reload_file(self) -> None:
        now = time.monotonic()
        path = self.path
        if path is None or now < self._next_check or not self._lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + self.check_interval
            if _stat(path) != self._seen:
                self.refresh()
        finally:
            self._lock.release()

    def _read_file(self) -> bytes:
        assert self.path is not None
        self._seen = _stat(self.path)  # before reading: a change meanwhile is seen next time
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise CrlError(f"cannot read CRL file {self.path}: {exc.strerror}") from exc

    def _fetch(self) -> bytes | None:
        assert self.url is not None
        headers = {"If-None-Match": self._etag} if self._etag else {}
        try:
            with httpx.Client(timeout=self._timeout, follow_redirects=True) as client, client.stream(
                "GET", self.url, headers=headers
            ) as response:
                if response.status_code == 304:
                    return None
                if response.status_code != 200:
                    raise CrlError(f"GET {self.url}: HTTP {response.status_code}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise CrlError(f"GET {self.url}: CRL larger than {self._max_bytes} bytes")
                    chunks.append(chunk)
                etag = response.headers.get("ETag")
        except httpx.HTTPError as exc:
            raise CrlError(f"GET {self.url}: {exc}") from exc
        data = b"".join(chunks)
        self._etag = etag
        return data

    def _fetch_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self.refresh()

    def _load_issuers(self) -> list[x509.Certificate]:
        certs: list[x509.Certificate] = []
        for item in self._issuers:
            if isinstance(item, x509.Certificate):
                certs.append(item)
            else:
                try:
                    certs.extend(read_certificates(Path(item)))
                except InvalidInputError as exc:
                    raise CrlError(f"CRL issuers: {exc}") from exc
        cas = []
        for cert in certs:
            basic = extension(cert, x509.BasicConstraints)
            if basic is not None and basic.value.ca:
                cas.append(cert)
        return cas

    def _install(self, data: bytes) -> None:
        digest = hashlib.sha256(data).digest()
        if digest == self._last_digest:
            return  # unchanged since the last successful load: nothing to parse or log
        self._last_error = None
        crls = _parse_crls(data, self.location)
        issuers = self._load_issuers()
        now = self._clock.now()
        fresh = {name: dict(by_key) for name, by_key in self._crls.items()}
        claimed: set[int] = set()
        for issuer in issuers:
            for crl in crls_of(issuer, crls):
                claimed.add(id(crl))
                state = self._accept(crl, issuer, now)
                if state is not None:
                    fresh.setdefault(issuer.subject.public_bytes(), {})[_ski(issuer)] = state
        for crl in crls:
            if id(crl) not in claimed:
                _log.warning(
                    "CRL from %s in %s refused: its issuer is not among the known CA certificates",
                    crl.issuer.rfc4514_string(), self.location,
                )
        self._crls = fresh  # one assignment: readers see the old or the new map, never half
        if self._last_error is None:
            self._last_digest = digest

    def _accept(
        self, crl: x509.CertificateRevocationList, issuer: x509.Certificate, now: datetime.datetime
    ) -> _IssuerCrl | None:
        who = describe(issuer)
        try:
            check_crl(crl, issuer, now)
        except VerificationError as exc:
            _log.warning("CRL %s refused, keeping the last good one: %s", self.location, exc.reason)
            self._last_error = exc.reason
            return None
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        current = self._crls.get(issuer.subject.public_bytes(), {}).get(_ski(issuer))
        if current is not None and number < current.number:
            _log.warning(
                "CRL %s for %s refused: cRLNumber %d is older than %d in use (a replay?)",
                self.location, who, number, current.number,
            )
            return None
        idp = _idp(crl)
        covers = idp is None or not (idp.only_contains_ca_certs or idp.only_contains_attribute_certs)
        assert crl.next_update_utc is not None  # check_crl refuses a CRL without one
        _log.info("CRL for %s loaded from %s: number %d, %d entries", who, self.location, number, len(crl))
        return _IssuerCrl(
            issuer=who, crl=crl, number=number, next_update=crl.next_update_utc,
            serials=frozenset(entry.serial_number for entry in crl), covers_leaves=covers,
        )

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background fetcher (if any)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 1)

    def __enter__(self) -> CrlSource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _stat(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _ski(cert: x509.Certificate) -> bytes | None:
    ski = extension(cert, x509.SubjectKeyIdentifier)
    return ski.value.digest if ski is not None else None


def _idp(crl: x509.CertificateRevocationList) -> x509.IssuingDistributionPoint | None:
    try:
        return crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return None


def _parse_crls(data: bytes, source: str) -> Sequence[x509.CertificateRevocationList]:
    """Every CRL of a PEM file (several issuers may share one), or the one of a DER file."""
    try:
        if b"-----BEGIN X509 CRL-----" not in data:
            return [x509.load_der_x509_crl(data)]
        begin, end = b"-----BEGIN X509 CRL-----", b"-----END X509 CRL-----"
        blocks = [part[part.index(begin) :] + end for part in data.split(end) if begin in part]
        return [x509.load_pem_x509_crl(block + b"\n") for block in blocks]
    except ValueError as exc:
        raise CrlError(f"{source}: not a valid CRL: {exc}") from exc
