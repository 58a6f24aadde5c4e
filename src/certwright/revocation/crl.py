"""Full CRLs (RFC 5280 section 5), assembled by streaming the revoked entries into DER.

Why not ``cryptography``'s ``CertificateRevocationListBuilder``: it wants every entry as a
``RevokedCertificate`` object, built one by one through ``RevokedCertificateBuilder``, all
held in memory until ``sign``, which then re-encodes them; and each
``add_revoked_certificate`` copies the list so far, so the time grows with the square of
the count (100,000 entries take about 9 s, 1,000,000 would take a quarter of an hour).
Here each ``(serial, revoked_at, reason)`` tuple is encoded the moment it arrives and
written out in 64 KiB chunks to a spooled temporary file (in memory up to 1 MiB, on disk
in ``TMPDIR`` beyond): whatever iterable supplies the entries (a generator, a database
cursor), nothing is kept per entry, and the process holds at most one copy of the CRL at a
time - the TBSCertList while it is signed, then the returned ``bytes`` - about 44 octets
an entry. The fixed parts (names, times, the CRL extensions) are encoded by
``cryptography`` once per CRL; the tests prove the result byte for byte equal to the
builder's for the same input.

Layout (RFC 5280 5.1)::

    CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue BIT STRING }
    TBSCertList ::= SEQUENCE {
        version v2, signature AlgorithmIdentifier, issuer Name, thisUpdate Time, nextUpdate Time,
        revokedCertificates SEQUENCE OF SEQUENCE {
            userCertificate INTEGER, revocationDate Time, crlEntryExtensions Extensions OPTIONAL
        } OPTIONAL,
        crlExtensions [0] EXPLICIT Extensions }

The file starts with room for the headers, whose lengths are known only once the entries
are written; they go into that room at the end, and the CRL is read back from where they
begin.

Example::

    >>> import datetime
    >>> from cryptography import x509
    >>> from certwright.issuance import create_root
    >>> from certwright.x509.keys import generate_key
    >>> from certwright.x509.profiles import CASettings
    >>> key = generate_key()
    >>> root = create_root(key, subject="CN=Example Root", settings=CASettings(trust_domain="example.org"))
    >>> now = datetime.datetime.now(datetime.UTC)
    >>> crl = build_crl(issuer=root, key=key, crl_number=1, this_update=now,
    ...                 next_update=now + datetime.timedelta(days=1),
    ...                 entries=[RevokedEntry(42, now, x509.ReasonFlags.key_compromise)])
    >>> x509.load_der_x509_crl(crl).get_revoked_certificate_by_serial_number(42) is not None
    True
"""

from __future__ import annotations

import datetime
import io
import tempfile
import urllib.parse
from collections.abc import Iterable
from typing import IO, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from certwright.errors import InvalidInputError, InvalidKeyError
from certwright.revocation.entries import DELTA_ONLY_REASONS, RevokedEntry, require_aware
from certwright.x509 import der
from certwright.x509.keys import SigningKey
from certwright.x509.signing import signer_for

# RFC 5280 4.1.2.2 and 5.2.3: serials and CRL numbers are at most 20 octets; like
# cryptography, certwright takes 159 bits as the bound (a positive 20-octet INTEGER).
MAX_SERIAL = 1 << 159
MAX_CRL_NUMBER = 1 << 159
# RFC 5280 5.1.2.4: times from 1950 on (UTCTime cannot say earlier; cryptography refuses it too).
_EARLIEST = datetime.datetime(1950, 1, 1, tzinfo=datetime.UTC)

_V2 = der.integer(1)  # RFC 5280 5.1.2.1: v2, since crlExtensions are present
# Room for a header: tag, 0x80|n, and up to 8 length octets.
_MAX_HEADER = 10
_MEMO_LIMIT = 4096  # encoded revocation times remembered (see _write_entries)
# Entries are written out in chunks; the CRL stays in memory up to the spool size, and goes
# to a temporary file beyond it, so the only large allocation is the returned ``bytes``.
_CHUNK_SIZE = 1 << 16
_SPOOL_SIZE = 1 << 20


def _reason_extensions() -> dict[x509.ReasonFlags | None, bytes]:
    """crlEntryExtensions DER per reason (RFC 5280 5.3.1), empty where the extension is left out.

    RFC 5280 5.3.1: "the reason code CRL entry extension SHOULD be absent instead of using
    the unspecified (0) reasonCode value" - so None and unspecified both omit it.
    """
    oid = der.oid(CRLEntryExtensionOID.CRL_REASON)
    table: dict[x509.ReasonFlags | None, bytes] = {None: b"", x509.ReasonFlags.unspecified: b""}
    for flag in x509.ReasonFlags:
        if flag is x509.ReasonFlags.unspecified or flag in DELTA_ONLY_REASONS:
            continue
        table[flag] = der.sequence(der.extension(oid, False, x509.CRLReason(flag).public_bytes()))
    return table


_REASON_EXTENSIONS = _reason_extensions()


def build_crl(
    *,
    issuer: x509.Certificate,
    key: SigningKey,
    entries: Iterable[RevokedEntry] | Iterable[tuple[int, datetime.datetime, x509.ReasonFlags | None]],
    crl_number: int,
    this_update: datetime.datetime,
    next_update: datetime.datetime,
    distribution_point: str | None = None,
) -> bytes:
    """A full CRL of ``issuer``, signed with ``key``, as DER.

    ``entries`` is consumed once, in order, and may be any iterable of
    ``(serial, revoked_at, reason)``; each serial must appear once (the inventory's unique
    serials guarantee it: checking here would hold every serial in memory). With
    ``distribution_point`` the CRL carries a critical issuingDistributionPoint naming that
    URL (RFC 5280 5.2.5), which must then be the one in the certificates' CRL distribution
    points. Times are written in whole seconds, UTC.

    Raises :class:`~certwright.errors.InvalidInputError` (a ``ValueError``) for a bad
    argument or entry, :class:`~certwright.errors.InvalidKeyError` when ``key`` is not the
    issuer's.
    """
    _check_issuer(issuer, key)
    _check_times(this_update, next_update)
    extensions = der.tlv(0xA0, der.sequence(*_crl_extensions(issuer, crl_number, distribution_point)))
    signer = signer_for(key)
    name = issuer.subject.public_bytes()
    fixed = b"".join((_V2, signer.algorithm_der, name, der.time(this_update), der.time(next_update)))
    # The CRL is laid out in a spooled temporary file (in memory while small):
    # [room][TBS header][fixed][revokedCertificates header][entries...][extensions][alg][sig];
    # the headers, whose lengths depend on what follows, are written into the room last.
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_SIZE) as out:
        reserve = 3 * _MAX_HEADER + len(fixed)
        out.write(bytes(reserve))
        size = _write_entries(out, entries)
        # RFC 5280 5.1.2.6: "When there are no revoked certificates, the revoked certificates
        # list MUST be absent."
        prefix = fixed + (_header(der.SEQUENCE, size) if size else b"")
        prefix = _header(der.SEQUENCE, len(prefix) + size + len(extensions)) + prefix
        start = reserve - len(prefix)
        out.seek(start)
        out.write(prefix)
        out.seek(0, io.SEEK_END)
        out.write(extensions)
        out.seek(start)
        tbs = out.read()  # the one signature; the TBS is dropped before the result is read
        tail = signer.algorithm_der + der.bit_string(signer.sign(tbs))
        out.write(tail)
        outer = _header(der.SEQUENCE, len(tbs) + len(tail))
        del tbs
        out.seek(start - len(outer))
        out.write(outer)
        out.seek(start - len(outer))
        return out.read()


def _header(tag: int, size: int) -> bytes:
    return bytes((tag,)) + der.length(size)


def _write_entries(
    out: IO[bytes],
    entries: Iterable[tuple[int, datetime.datetime, x509.ReasonFlags | None]],
) -> int:
    """Write each entry's DER (RFC 5280 5.1.2.6) to ``out``, keeping nothing per entry.

    Returns the number of octets written.
    """
    written = 0
    chunk = bytearray()
    # Revocations in bulk share their second: a bounded memo of encoded times (datetimes and
    # bytes are not tracked by the garbage collector, so it costs no collections either).
    times: dict[datetime.datetime, bytes] = {}
    reasons = _REASON_EXTENSIONS
    for serial, revoked_at, reason in entries:
        time = times.get(revoked_at)
        if time is None:
            time = _revocation_time(revoked_at)
            if len(times) >= _MEMO_LIMIT:
                times.clear()
            times[revoked_at] = time
        try:
            extensions = reasons[reason]
        except (KeyError, TypeError):
            _refuse_reason(reason)
        if not isinstance(serial, int):
            raise TypeError(f"a CRL entry's serial must be an int, not {type(serial).__name__}")
        if not 0 < serial < MAX_SERIAL:
            raise InvalidInputError(
                f"CRL entry serial {serial:#x} is out of range: RFC 5280 4.1.2.2 serials are "
                "positive and at most 20 octets"
            )
        # INTEGER, minimal two's complement of a positive number (X.690 8.3); an entry is at
        # most 2 + 20 + 17 + 14 octets, so every length here is one octet.
        body = serial.to_bytes((serial.bit_length() >> 3) + 1, "big")
        size = len(body) + 2 + len(time) + len(extensions)
        chunk += b"\x30%c\x02%c%b%b%b" % (size, len(body), body, time, extensions)
        if len(chunk) >= _CHUNK_SIZE:
            out.write(chunk)
            written += len(chunk)
            chunk.clear()
    out.write(chunk)
    return written + len(chunk)


def _revocation_time(revoked_at: datetime.datetime) -> bytes:
    """The revocationDate DER of an entry, after checking the time."""
    if revoked_at.__class__ is not datetime.datetime or revoked_at.tzinfo is not datetime.UTC:
        require_aware(revoked_at, "a CRL entry's revoked_at")
        revoked_at = revoked_at.astimezone(datetime.UTC)
    if revoked_at.year < _EARLIEST.year:
        raise InvalidInputError(f"revocation time {revoked_at.isoformat()} is before 1950 (RFC 5280 5.1.2.4)")
    return time_der(revoked_at)


def _refuse_reason(reason: object) -> NoReturn:
    if reason in DELTA_ONLY_REASONS:
        raise InvalidInputError(
            "removeFromCRL belongs in delta CRLs only (RFC 5280 5.3.1), not in a full CRL"
        )
    raise TypeError(f"a CRL entry's reason must be an x509.ReasonFlags or None, not {reason!r}")


def time_der(value: datetime.datetime) -> bytes:
    """The DER of a Time (RFC 5280 5.1.2.4), as ``der.time`` writes it, four times faster.

    UTCTime for 1950-2049, GeneralizedTime otherwise, whole seconds, UTC; ``value`` must be
    timezone-aware and from 1950 on (checked by the callers). The tests hold it equal to
    ``der.time`` for any instant.
    """
    if value.tzinfo is not datetime.UTC:
        value = value.astimezone(datetime.UTC)
    year = value.year
    if year < 2050:
        return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (
            year % 100,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
        )
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (
        year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
    )


def _check_issuer(issuer: x509.Certificate, key: SigningKey) -> None:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != issuer.public_key().public_bytes(*spki):
        raise InvalidKeyError("the CRL signing key does not match the issuer certificate's public key")
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    # RFC 5280 4.2.1.3: a CA key that signs CRLs MUST be certified with keyUsage, and the
    # cRLSign bit is what allows it; relying parties check it (RFC 5280 6.3.3(f)).
    if usage is None or not usage.crl_sign:
        raise InvalidInputError(
            f"issuer {issuer.subject.rfc4514_string()} may not sign CRLs: its keyUsage lacks cRLSign"
        )


def _check_times(this_update: datetime.datetime, next_update: datetime.datetime) -> None:
    require_aware(this_update, "this_update")
    require_aware(next_update, "next_update")
    if this_update < _EARLIEST:
        raise InvalidInputError(f"this_update {this_update.isoformat()} is before 1950 (RFC 5280 5.1.2.4)")
    # Compared as written (whole seconds): RFC 5280 5.1.2.5 nextUpdate "MUST be ... greater
    # than or equal to thisUpdate"; certwright wants a CRL that is valid for some time.
    if next_update.replace(microsecond=0) <= this_update.replace(microsecond=0):
        raise InvalidInputError(
            f"next_update ({next_update.isoformat()}) must be after this_update ({this_update.isoformat()})"
        )


def _crl_extensions(issuer: x509.Certificate, crl_number: int, distribution_point: str | None) -> list[bytes]:
    """authorityKeyIdentifier, cRLNumber and (optionally) issuingDistributionPoint, as DER."""
    if isinstance(crl_number, bool) or not isinstance(crl_number, int):
        raise TypeError(f"crl_number must be an int, not {type(crl_number).__name__}")
    if not 0 <= crl_number < MAX_CRL_NUMBER:
        # RFC 5280 5.2.3: "a non-negative integer"; "MUST NOT use CRLNumber values longer than 20 octets".
        raise InvalidInputError(f"crl_number {crl_number} is out of range: 0 <= crl_number < 2**159")
    try:
        key_id = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        key_id = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
    # RFC 5280 5.2.1: conforming CRL issuers MUST use the key identifier method (non-critical).
    aki = x509.AuthorityKeyIdentifier(
        key_identifier=key_id, authority_cert_issuer=None, authority_cert_serial_number=None
    )
    parts = [
        der.extension(der.oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER), False, aki.public_bytes()),
        # RFC 5280 5.2.3: cRLNumber, a monotonic sequence number, MUST be included, non-critical.
        der.extension(der.oid(ExtensionOID.CRL_NUMBER), False, x509.CRLNumber(crl_number).public_bytes()),
    ]
    if distribution_point is not None:
        idp = x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(_check_url(distribution_point))],
            relative_name=None,
            only_contains_user_certs=False,
            only_contains_ca_certs=False,
            only_some_reasons=None,
            indirect_crl=False,
            only_contains_attribute_certs=False,
        )
        # RFC 5280 5.2.5: "this extension MUST be marked critical" (it scopes the CRL).
        idp_oid = der.oid(ExtensionOID.ISSUING_DISTRIBUTION_POINT)
        parts.append(der.extension(idp_oid, True, idp.public_bytes()))
    return parts


def _check_url(url: str) -> str:
    if not isinstance(url, str):
        raise TypeError(f"distribution_point must be a str, not {type(url).__name__}")
    # A GeneralName URI is an IA5String (RFC 5280 4.2.1.6): ASCII, with a scheme and a host.
    parts = urllib.parse.urlsplit(url) if url.isascii() else None
    if parts is None or not parts.scheme or not parts.netloc or any(c.isspace() for c in url):
        raise InvalidInputError(
            f"distribution_point {url!r} is not an absolute ASCII URL (e.g. http://pki.example.org/ca.crl)"
        )
    return url
