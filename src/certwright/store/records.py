"""From an ``x509.Certificate`` to the row the inventory keeps, and search-name normalising.

No SQLAlchemy here (:mod:`~certwright.store.sqlite_batch` builds its rows with it too).
Everything is derived from the certificate itself (plus the CA's authorization-extension
OID), never from the request that produced it: an imported certificate and an issued one
are indexed the same way, and the row cannot claim what the DER does not say.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certwright.errors import InvalidCertificateError, InvalidInputError, InvalidKeyError, InvalidNameError
from certwright.issuance import Issued
from certwright.store.values import CertificateStatus, NameKind, serial_to_bytes
from certwright.x509.authz import DEFAULT_OID, Authorization
from certwright.x509.keys import key_type_of
from certwright.x509.names import SubjectAltNames, normalize_dns, normalize_email, normalize_uri, parse_ip

if TYPE_CHECKING:
    from certwright.store.models import CertificateRecord


def public_key_id(key: x509.Certificate | bytes) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo DER: what "revoke by key" matches on.

    Accepts a certificate or SPKI DER. SHA-256 of the whole SPKI (not RFC 5280's SHA-1 of
    the key bits) so that the algorithm parameters are part of the key's identity.
    """
    spki = (
        key
        if isinstance(key, bytes)
        else key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return hashlib.sha256(spki).digest()


def issuer_key_id_of(certificate: x509.Certificate) -> bytes:
    """The issuer's key identifier: the authorityKeyIdentifier, or for a root its own key id.

    Raises :class:`InvalidInputError` for a non-self-signed certificate without one: the
    caller must then say which issuer it is (RFC 5280 4.2.1.1 makes the AKI mandatory for
    every certificate but self-signed ones).
    """
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        if aki.key_identifier:
            return aki.key_identifier
    except x509.ExtensionNotFound:
        pass
    if certificate.issuer == certificate.subject:
        try:
            return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
    raise InvalidInputError(
        f"certificate {certificate.serial_number:x} has no authorityKeyIdentifier: give its issuer's key id"
    )


def record_from_certificate(
    certificate: x509.Certificate,
    *,
    profile: str | None,
    requested_by: str,
    created_at: datetime.datetime,
    extension_oid: str = DEFAULT_OID,
    issuer_key_id: bytes | None = None,
) -> CertificateRecord:
    """A new, status-good :class:`CertificateRecord` (not yet added to a session)."""
    # Imported here: the rest of this module builds plain rows, without SQLAlchemy.
    from certwright.store.models import CertificateName, CertificateRecord

    fields, names = certificate_fields(
        certificate,
        profile=profile,
        requested_by=requested_by,
        created_at=created_at,
        extension_oid=extension_oid,
        issuer_key_id=issuer_key_id,
    )
    record = CertificateRecord(**fields)
    record.names = [CertificateName(kind=kind, value=value) for kind, value in names]
    return record


def certificate_fields(
    certificate: x509.Certificate,
    *,
    profile: str | None,
    requested_by: str,
    created_at: datetime.datetime,
    extension_oid: str = DEFAULT_OID,
    issuer_key_id: bytes | None = None,
) -> tuple[dict[str, Any], list[tuple[NameKind, str]]]:
    """The column values of a new, status-good row, and its searchable names.

    Plain values, no ORM object: :mod:`~certwright.store.bulk` inserts thousands at once.
    """
    try:
        sans = SubjectAltNames.of(certificate)
    except ValueError as exc:
        serial = certificate.serial_number
        raise InvalidCertificateError(f"certificate {serial:x}: unreadable SANs: {exc}") from exc
    return _new_row(
        serial=certificate.serial_number,
        issuer=certificate.issuer.rfc4514_string(),
        issuer_key_id=issuer_key_id if issuer_key_id is not None else issuer_key_id_of(certificate),
        subject=certificate.subject.rfc4514_string(),
        sans=sans,
        authorization=Authorization.from_certificate(certificate, extension_oid),
        profile=profile,
        key_type=_key_type(certificate.public_key()),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        fingerprint=certificate.fingerprint(hashes.SHA256()),
        key_id=public_key_id(certificate),
        requested_by=requested_by,
        created_at=created_at,
        der=certificate.public_bytes(serialization.Encoding.DER),
    )


def issued_fields(
    issued: Issued,
    *,
    issuer: str,
    issuer_key_id: bytes,
    profile: str | None,
    requested_by: str,
    created_at: datetime.datetime,
) -> tuple[dict[str, Any], list[tuple[NameKind, str]]]:
    """:func:`certificate_fields` for a certificate just built, from the facts it was built of.

    Batch signing's path: parsing each certificate back costs ~90 us, more than building
    it. ``issuer`` is the issuing CA's subject (RFC 4514) and ``issuer_key_id`` its
    :attr:`~certwright.issuance.Authority.key_identifier`. The tests hold this equal,
    field for field, to :func:`certificate_fields` of the parsed certificate.
    """
    shared = shared_fields(
        issuer=issuer,
        issuer_key_id=issuer_key_id,
        profile=profile,
        requested_by=requested_by,
        created_at=created_at,
    )
    return issued_fields_of(shared, issued_own_fields(issued))


def shared_fields(
    *,
    issuer: str,
    issuer_key_id: bytes,
    profile: str | None,
    requested_by: str,
    created_at: datetime.datetime,
) -> dict[str, Any]:
    """The columns of a new, status-good row that all certificates of one batch share.

    With :func:`issued_own_fields` they make :func:`issued_fields`; a batch encodes these
    once (:meth:`~certwright.store.bulk.RowEncoder.with_constants`).
    """
    return {
        "issuer": issuer,
        "issuer_key_id": issuer_key_id,
        "profile": profile,
        "status": CertificateStatus.GOOD,
        "revoked_at": None,
        "revocation_reason": None,
        "requested_by": requested_by,
        "created_at": created_at,
        "renewed_from_id": None,  # a renewal sets it (EnrollmentService.renew)
    }


def issued_own_fields(issued: Issued) -> tuple[dict[str, Any], list[tuple[NameKind, str]]]:
    """The columns of a just-built certificate's row that are its own, and its names."""
    return _own_fields(
        serial=issued.serial,
        subject=issued.subject,
        sans=issued.sans,
        authorization=issued.authorization,
        key_type=issued.key_type.value,
        not_before=issued.not_before,
        not_after=issued.not_after,
        fingerprint=issued.fingerprint,
        key_id=public_key_id(issued.spki),
        der=issued.der,
    )


def _new_row(
    *,
    issuer: str,
    issuer_key_id: bytes,
    profile: str | None,
    requested_by: str,
    created_at: datetime.datetime,
    **own: Any,
) -> tuple[dict[str, Any], list[tuple[NameKind, str]]]:
    """The columns of a new, status-good row and its names: one place for every derivation."""
    return issued_fields_of(
        shared_fields(
            issuer=issuer,
            issuer_key_id=issuer_key_id,
            profile=profile,
            requested_by=requested_by,
            created_at=created_at,
        ),
        _own_fields(**own),
    )


def issued_fields_of(
    shared: dict[str, Any], own: tuple[dict[str, Any], list[tuple[NameKind, str]]]
) -> tuple[dict[str, Any], list[tuple[NameKind, str]]]:
    """A whole row from :func:`shared_fields` and a certificate's own columns and names."""
    fields, names = own
    return {**shared, **fields}, names


def _own_fields(
    *,
    serial: int,
    subject: str,
    sans: SubjectAltNames,
    authorization: Authorization,
    key_type: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    fingerprint: bytes,
    key_id: bytes,
    der: bytes,
) -> tuple[dict[str, Any], list[tuple[NameKind, str]]]:
    serial_to_bytes(serial)  # refuse an unstorable serial with a clear error
    fields: dict[str, Any] = {
        "serial": serial,
        "subject": subject,
        "identity": _identity(sans),
        "roles": list(authorization.roles),
        "attributes": authorization.attribute_map,
        "key_type": key_type,
        "not_before": not_before,
        "not_after": not_after,
        "fingerprint_sha256": fingerprint,
        "public_key_id": key_id,
        "der": der,
    }
    return fields, _names(sans)


def _identity(sans: SubjectAltNames) -> str | None:
    # The same rule as `certwright inspect`: exactly one URI SAN, and it is a SPIFFE ID.
    if len(sans.uris) == 1 and sans.uris[0].startswith("spiffe://"):
        return sans.uris[0]
    return None


def _key_type(public_key: object) -> str:
    try:
        return key_type_of(public_key).value  # type: ignore[arg-type]
    except InvalidKeyError:  # an imported certificate may use a key certwright never issues for
        return type(public_key).__name__


def _names(sans: SubjectAltNames) -> list[tuple[NameKind, str]]:
    # Stored in the form search_name() gives a query: DNS is case-insensitive (RFC 4343).
    names = [(NameKind.URI, u) for u in sans.uris]
    names += [(NameKind.DNS, d.lower()) for d in sans.dns]
    names += [(NameKind.IP, str(ip)) for ip in sans.ips]
    names += [(NameKind.EMAIL, _email(e)) for e in sans.emails]
    return names


def _email(address: str) -> str:
    local, _, domain = address.rpartition("@")  # RFC 5321 2.4: only the domain is case-insensitive
    return f"{local}@{domain.lower()}"


def search_name(kind: NameKind | str, value: str) -> tuple[NameKind, str]:
    """Normalise a SAN to look up: ``("dns", "API.example.org")`` -> ``(DNS, "api.example.org")``.

    Raises :class:`InvalidInputError` for an unknown kind or a malformed value.
    """
    if isinstance(kind, str):
        try:
            kind = NameKind(kind.strip().lower())
        except ValueError:
            valid = ", ".join(k.value for k in NameKind)
            raise InvalidNameError(f"unknown SAN kind {kind!r}: use one of {valid}") from None
    if kind is NameKind.DNS:
        return kind, normalize_dns(value)
    if kind is NameKind.IP:
        return kind, str(parse_ip(value))
    if kind is NameKind.EMAIL:
        return kind, normalize_email(value)
    return kind, normalize_uri(value)


def parse_san_query(spec: str) -> tuple[NameKind, str]:
    """``dns:api.example.org`` (the CLI's SAN spelling) to a normalised (kind, value)."""
    kind, sep, value = spec.partition(":")
    if not sep:
        raise InvalidNameError(f"SAN {spec!r}: expected dns:NAME, ip:ADDRESS, uri:URI or email:ADDRESS")
    return search_name(kind, value)


def issuance_details(row: CertificateRecord | Mapping[str, Any], profile: str | None) -> dict[str, Any]:
    """What an issuance event says: enough to recognise the certificate without the inventory.

    ``row`` is a stored record or the plain fields of a new row (:func:`issued_fields_of`).
    """
    get = row.get if isinstance(row, Mapping) else lambda key: getattr(row, key)
    not_after = get("not_after")
    assert isinstance(not_after, datetime.datetime)
    return {
        "issuer": get("issuer"),
        "subject": get("subject"),
        "identity": get("identity"),
        "profile": profile,
        "not_after": not_after.isoformat(),
        "fingerprint_sha256": bytes(get("fingerprint_sha256") or b"").hex(),
    }
