"""Readable facts about a certificate or CSR: the data behind ``certwright inspect``.

Example::

    >>> from certwright.inspect import describe_certificate   # doctest: +SKIP
    >>> info = describe_certificate(cert)                      # doctest: +SKIP
    >>> info.to_json()["identity"]                              # doctest: +SKIP
    'spiffe://example.org/web'
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import AuthorityInformationAccessOID

from certwright.errors import CertwrightError, InvalidKeyError
from certwright.x509.authz import DEFAULT_OID, Authorization
from certwright.x509.keys import PublicKey, key_type_of
from certwright.x509.names import SubjectAltNames

_E = TypeVar("_E", bound=x509.ExtensionType)


class ChainPosition(enum.Enum):
    ROOT = "root"
    INTERMEDIATE = "intermediate"
    LEAF = "leaf"


@dataclass(frozen=True)
class CertificateInfo:
    """What ``inspect`` shows; :meth:`to_json` gives the stable JSON keys."""

    serial: str
    subject: str
    issuer: str
    identity: str | None
    roles: tuple[str, ...]
    attributes: dict[str, str]
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    uris: tuple[str, ...]
    emails: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    key_type: str
    is_ca: bool
    path_length: int | None
    fingerprint_sha256: str
    signature_algorithm: str
    position: ChainPosition
    key_usage: tuple[str, ...]
    extended_key_usage: tuple[str, ...]
    subject_key_id: str | None
    authority_key_id: str | None
    permitted_names: tuple[str, ...]
    excluded_names: tuple[str, ...]
    crl_urls: tuple[str, ...]
    ocsp_urls: tuple[str, ...]
    other_extensions: tuple[str, ...]
    now: datetime.datetime = field(compare=False)
    problems: tuple[str, ...] = ()

    @property
    def seconds_left(self) -> float:
        return (self.not_after - self.now).total_seconds()

    @property
    def days_left(self) -> float:
        return round(self.seconds_left / 86400, 2)

    @property
    def expired(self) -> bool:
        return self.seconds_left <= 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "certificate",
            "serial": self.serial,
            "subject": self.subject,
            "issuer": self.issuer,
            "identity": self.identity,
            "roles": list(self.roles),
            "attributes": dict(self.attributes),
            "dns": list(self.dns),
            "ips": list(self.ips),
            "uris": list(self.uris),
            "emails": list(self.emails),
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "days_left": self.days_left,
            "expired": self.expired,
            "key_type": self.key_type,
            "is_ca": self.is_ca,
            "path_length": self.path_length,
            "chain_position": self.position.value,
            "fingerprint_sha256": self.fingerprint_sha256,
            "signature_algorithm": self.signature_algorithm,
            "key_usage": list(self.key_usage),
            "extended_key_usage": list(self.extended_key_usage),
            "subject_key_id": self.subject_key_id,
            "authority_key_id": self.authority_key_id,
            "name_constraints": {
                "permitted": list(self.permitted_names),
                "excluded": list(self.excluded_names),
            },
            "crl_urls": list(self.crl_urls),
            "ocsp_urls": list(self.ocsp_urls),
            "other_extensions": list(self.other_extensions),
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class CSRInfo:
    subject: str
    identity: str | None
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    uris: tuple[str, ...]
    emails: tuple[str, ...]
    key_type: str
    signature_valid: bool
    asks_for_ca: bool
    requested_extensions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "csr",
            "subject": self.subject,
            "identity": self.identity,
            "dns": list(self.dns),
            "ips": list(self.ips),
            "uris": list(self.uris),
            "emails": list(self.emails),
            "key_type": self.key_type,
            "signature_valid": self.signature_valid,
            "asks_for_ca": self.asks_for_ca,
            "requested_extensions": list(self.requested_extensions),
        }


def _iso(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_name(key: PublicKey) -> str:
    try:
        return key_type_of(key).value
    except InvalidKeyError:
        return type(key).__name__


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


_KU_NAMES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign",
)
_KU_RFC = (
    "digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment",
    "keyAgreement", "keyCertSign", "cRLSign",
)


def _key_usage(cert: x509.Certificate) -> tuple[str, ...]:
    ku = _extension(cert, x509.KeyUsage)
    if ku is None:
        return ()
    return tuple(rfc for attr, rfc in zip(_KU_NAMES, _KU_RFC, strict=True) if getattr(ku, attr))


def _general_names(names: list[x509.GeneralName] | None) -> tuple[str, ...]:
    out = []
    for name in names or []:
        kind = {x509.DNSName: "dns", x509.UniformResourceIdentifier: "uri",
                x509.IPAddress: "ip", x509.RFC822Name: "email"}.get(type(name), "other")
        out.append(f"{kind}:{name.value}")
    return tuple(out)


def _position(cert: x509.Certificate, is_ca: bool) -> ChainPosition:
    if not is_ca:
        return ChainPosition.LEAF
    return ChainPosition.ROOT if cert.subject == cert.issuer else ChainPosition.INTERMEDIATE


def describe_certificate(
    cert: x509.Certificate,
    *,
    extension_oid: str = DEFAULT_OID,
    now: datetime.datetime | None = None,
) -> CertificateInfo:
    """Gather what a person (or a script) wants to know about ``cert``."""
    now = now or datetime.datetime.now(datetime.UTC)
    problems: list[str] = []
    try:
        sans = SubjectAltNames.of(cert)
    except ValueError as exc:
        problems.append(f"unreadable SAN extension: {exc}")
        sans = SubjectAltNames()
    try:
        authz = Authorization.from_certificate(cert, extension_oid)
    except CertwrightError as exc:
        problems.append(str(exc))
        authz = Authorization()
    identity = sans.uris[0] if len(sans.uris) == 1 and sans.uris[0].startswith("spiffe://") else None
    if len(sans.uris) > 1:
        problems.append(f"{len(sans.uris)} URI SANs: a workload certificate carries exactly one")
    bc = _extension(cert, x509.BasicConstraints)
    is_ca = bool(bc and bc.ca)
    eku = _extension(cert, x509.ExtendedKeyUsage)
    ski = _extension(cert, x509.SubjectKeyIdentifier)
    aki = _extension(cert, x509.AuthorityKeyIdentifier)
    nc = _extension(cert, x509.NameConstraints)
    cdp = _extension(cert, x509.CRLDistributionPoints)
    aia = _extension(cert, x509.AuthorityInformationAccess)
    known = {x509.BasicConstraints, x509.ExtendedKeyUsage, x509.SubjectKeyIdentifier,
             x509.AuthorityKeyIdentifier, x509.NameConstraints, x509.CRLDistributionPoints,
             x509.AuthorityInformationAccess, x509.KeyUsage, x509.SubjectAlternativeName}
    others = tuple(
        f"{e.oid.dotted_string} ({e.oid._name})" + (" critical" if e.critical else "")
        for e in cert.extensions
        if type(e.value) not in known and e.oid.dotted_string != extension_oid
    )
    return CertificateInfo(
        serial=format(cert.serial_number, "x"),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        identity=identity,
        roles=authz.roles,
        attributes=authz.attribute_map,
        dns=sans.dns,
        ips=tuple(str(ip) for ip in sans.ips),
        uris=sans.uris,
        emails=sans.emails,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=_key_name(cert.public_key()),
        is_ca=is_ca,
        path_length=bc.path_length if bc else None,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        signature_algorithm=cert.signature_algorithm_oid._name,
        position=_position(cert, is_ca),
        key_usage=_key_usage(cert),
        extended_key_usage=tuple(o._name for o in eku) if eku else (),
        subject_key_id=ski.digest.hex() if ski else None,
        authority_key_id=aki.key_identifier.hex() if aki and aki.key_identifier else None,
        permitted_names=_general_names(nc.permitted_subtrees if nc else None),
        excluded_names=_general_names(nc.excluded_subtrees if nc else None),
        crl_urls=tuple(
            str(n.value) for p in (cdp or []) for n in (p.full_name or [])
        ),
        ocsp_urls=tuple(
            str(d.access_location.value) for d in (aia or [])
            if d.access_method == AuthorityInformationAccessOID.OCSP
        ),
        other_extensions=others,
        now=now,
        problems=tuple(problems),
    )


def describe_csr(csr: x509.CertificateSigningRequest) -> CSRInfo:
    """What a CSR asks for, and whether its signature verifies."""
    sans = SubjectAltNames.of(csr)
    try:
        bc = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
        asks_ca = bool(bc.ca)
    except x509.ExtensionNotFound:
        asks_ca = False
    identity = sans.uris[0] if len(sans.uris) == 1 and sans.uris[0].startswith("spiffe://") else None
    return CSRInfo(
        subject=csr.subject.rfc4514_string(),
        identity=identity,
        dns=sans.dns,
        ips=tuple(str(ip) for ip in sans.ips),
        uris=sans.uris,
        emails=sans.emails,
        key_type=_key_name(csr.public_key()),
        signature_valid=csr.is_signature_valid,
        asks_for_ca=asks_ca,
        requested_extensions=tuple(e.oid._name for e in csr.extensions),
    )
