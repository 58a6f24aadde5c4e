"""Who a verified certificate speaks for: its SPIFFE identity, roles and attributes.

Example::

    >>> from certwright.verify.identity import verify_identity   # doctest: +SKIP
    >>> result = verify_identity(leaf, trusted=[root], untrusted=[intermediate],
    ...                          purpose=Purpose.CLIENT)           # doctest: +SKIP
    >>> str(result.identity), result.roles                          # doctest: +SKIP
    ('spiffe://example.org/web', ('reader',))
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from certwright.errors import InvalidExtensionError, InvalidIdentityError, VerificationError
from certwright.verify.chain import Purpose, VerifiedChain, verify_chain
from certwright.x509.authz import DEFAULT_OID, Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.names import SubjectAltNames


@dataclass(frozen=True)
class VerifiedIdentity:
    """The outcome of a successful verification: the chain and what the leaf asserts."""

    chain: VerifiedChain
    identity: SpiffeId | None
    authorization: Authorization

    @property
    def roles(self) -> tuple[str, ...]:
        return self.authorization.roles

    @property
    def attributes(self) -> dict[str, str]:
        return self.authorization.attribute_map


def identity_of(certificate: x509.Certificate) -> SpiffeId | None:
    """The one SPIFFE identity of a certificate, or None when it carries no URI SAN.

    A certificate with two URI SANs is refused: which one would the peer be? (SPIFFE
    X509-SVID 2: an SVID contains exactly one URI SAN.)
    """
    uris = SubjectAltNames.of(certificate).uris
    if not uris:
        return None
    if len(uris) > 1:
        raise VerificationError(
            f"the certificate carries {len(uris)} URI SANs; a workload certificate has exactly one"
        )
    try:
        return SpiffeId.parse(uris[0])
    except InvalidIdentityError as exc:
        raise VerificationError(f"the certificate's URI SAN is not a valid SPIFFE ID: {exc}") from None


def authorization_of(
    certificate: x509.Certificate, extension_oid: str = DEFAULT_OID
) -> Authorization:
    """The roles and attributes of a certificate (empty when it has no extension)."""
    try:
        return Authorization.from_certificate(certificate, extension_oid)
    except InvalidExtensionError as exc:
        raise VerificationError(str(exc)) from None


def verify_identity(
    leaf: x509.Certificate,
    *,
    trusted: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate] = (),
    purpose: Purpose = Purpose.CLIENT,
    dns_name: str | None = None,
    ip_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
    at: datetime.datetime | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
    trust_domain: str | None = None,
    require_identity: bool = False,
    extension_oid: str = DEFAULT_OID,
) -> VerifiedIdentity:
    """Verify the chain of ``leaf``, then read its identity and roles.

    With ``trust_domain`` the identity must belong to it; with ``require_identity`` a
    certificate without one is refused.
    """
    chain = verify_chain(
        leaf, trusted=trusted, untrusted=untrusted, purpose=purpose, dns_name=dns_name,
        ip_address=ip_address, at=at, crls=crls,
    )
    identity = identity_of(leaf)
    if identity is None and (require_identity or trust_domain is not None):
        raise VerificationError("the certificate carries no SPIFFE identity (URI SAN)")
    if identity is not None and trust_domain is not None and not identity.member_of(trust_domain):
        raise VerificationError(f"identity {identity} is not in trust domain {trust_domain}")
    return VerifiedIdentity(chain, identity, authorization_of(leaf, extension_oid))
