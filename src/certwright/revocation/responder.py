"""The delegated OCSP responder certificate: issue it, check it, know when to rotate it.

RFC 6960 4.2.2.2: a CA may delegate signing OCSP responses to a responder certificate it
issues directly, marked with id-kp-OCSPSigning; certwright's built-in ``ocsp-responder``
profile also carries id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1), so relying parties trust it
for its (short) lifetime without checking its own status. Keeping that lifetime short and
renewing at two thirds of it is what makes ocsp-nocheck safe.

Issuing and storing the responder key belongs to the CA directory (a later issue); here
:func:`issue_responder` takes any authority that can issue under a profile (``issuance.Authority``
does), so this package does not import the issuance layer.

Example::

    >>> import datetime
    >>> from certwright.issuance import Authority, create_root
    >>> from certwright.x509.keys import generate_key
    >>> from certwright.x509.profiles import CASettings
    >>> settings = CASettings(trust_domain="example.org")
    >>> key = generate_key()
    >>> root = create_root(key, subject="CN=Example Root", settings=settings)
    >>> responder_key = generate_key()
    >>> cert = issue_responder(Authority(certificate=root, key=key, settings=settings), responder_key)
    >>> responder_needs_rotation(cert, cert.not_valid_before_utc + datetime.timedelta(days=1))
    False
"""

from __future__ import annotations

import datetime
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certwright.errors import InvalidCertificateError, InvalidKeyError
from certwright.x509.keys import PublicKey, SigningKey
from certwright.x509.profiles import BUILTIN_PROFILES, Profile

RESPONDER_PROFILE = "ocsp-responder"


class ResponderIssuer(Protocol):
    """What :func:`issue_responder` needs of an authority (``issuance.Authority`` fits)."""

    @property
    def certificate(self) -> x509.Certificate: ...

    def issue(
        self,
        public_key: PublicKey,
        *,
        profile: Profile,
        subject: x509.Name | str | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> x509.Certificate: ...


def issue_responder(
    authority: ResponderIssuer,
    key: SigningKey | PublicKey,
    *,
    subject: x509.Name | str | None = None,
    lifetime: datetime.timedelta | None = None,
    profile: Profile | None = None,
) -> x509.Certificate:
    """Issue a delegated OCSP responder certificate for ``key`` under the ``ocsp-responder`` profile.

    The subject defaults to ``CN=<issuer CN> OCSP Responder``; the lifetime to the profile's
    (7 days for the built-in one).
    """
    public_key: PublicKey = key.public_key() if isinstance(key, SigningKey) else key
    if subject is None:
        subject = _default_subject(authority.certificate)
    return authority.issue(
        public_key,
        profile=profile or BUILTIN_PROFILES[RESPONDER_PROFILE],
        subject=subject,
        lifetime=lifetime,
    )


def _default_subject(issuer: x509.Certificate) -> x509.Name:
    names = issuer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = str(names[0].value) if names else "certwright CA"
    suffix = " OCSP Responder"
    # X.520: a CN is at most 64 characters.
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, base[: 64 - len(suffix)] + suffix)])


def responder_needs_rotation(responder: x509.Certificate, now: datetime.datetime) -> bool:
    """Whether to issue a new responder certificate: less than a third of its lifetime is left.

    The same "renew at two thirds" rule as for leaves; also true once it has expired.
    """
    not_before, not_after = responder.not_valid_before_utc, responder.not_valid_after_utc
    return not_after - now < (not_after - not_before) / 3


def check_responder(
    *,
    issuer: x509.Certificate,
    responder: x509.Certificate,
    responder_key: SigningKey,
    now: datetime.datetime,
) -> None:
    """Refuse a responder certificate that relying parties would not accept for ``issuer``.

    RFC 6960 4.2.2.2: a delegated responder's certificate is issued directly by the CA that
    issued the certificates in question and includes id-kp-OCSPSigning; its key must be the
    one that signs, and it must be valid now (RFC 5280 6.1.3).
    """
    who = responder.subject.rfc4514_string() or "the responder certificate"
    try:
        responder.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        detail = str(exc) or "its signature does not verify with the issuer's key"
        raise InvalidCertificateError(
            f"{who} is not issued by {issuer.subject.rfc4514_string()} (RFC 6960 4.2.2.2): {detail}"
        ) from None
    try:
        usages = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        raise InvalidCertificateError(
            f"{who} lacks the id-kp-OCSPSigning extended key usage (RFC 6960 4.2.2.2): "
            "issue it with the ocsp-responder profile"
        )
    try:
        usage = responder.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        raise InvalidCertificateError(f"{who} may not sign: its keyUsage lacks digitalSignature")
    if _spki(responder_key.public_key()) != _spki(responder.public_key()):
        raise InvalidKeyError("the responder key does not match the responder certificate")
    if not responder.not_valid_before_utc <= now < responder.not_valid_after_utc:
        raise InvalidCertificateError(
            f"{who} is not valid now ({now.isoformat()}): it is valid from "
            f"{responder.not_valid_before_utc.isoformat()} to {responder.not_valid_after_utc.isoformat()}"
        )


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
