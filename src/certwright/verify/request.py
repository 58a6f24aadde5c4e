"""What a chain verification is asked to prove, normalised once for every engine.

:class:`ChainRequest` is the single, validated form of ``verify_chain``'s arguments: the
primary engine (``cryptography``), the OpenSSL fallback, the own checks and the
revocation check all read the same object, so they cannot disagree about the time, the
purpose or the peer name.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certwright.errors import InvalidInputError
from certwright.verify.names import IPAddress, is_dns_name

# cryptography's own default (policy/mod.rs, DEFAULT_MAX_CHAIN_DEPTH): the number of
# intermediates allowed between the leaf and the trust anchor. The OpenSSL fallback
# applies the same figure so both engines accept the same path lengths.
DEFAULT_MAX_CHAIN_DEPTH = 8



class Purpose(enum.Enum):
    """What the leaf certificate is being verified for (RFC 5280 4.2.1.12)."""

    SERVER = "server"  # id-kp-serverAuth
    CLIENT = "client"  # id-kp-clientAuth

    @property
    def eku(self) -> x509.ObjectIdentifier:
        """The extendedKeyUsage purpose OID this purpose requires."""
        if self is Purpose.SERVER:
            return ExtendedKeyUsageOID.SERVER_AUTH
        return ExtendedKeyUsageOID.CLIENT_AUTH

    @property
    def eku_name(self) -> str:
        """The RFC 5280 name of :attr:`eku`, for messages."""
        return "serverAuth" if self is Purpose.SERVER else "clientAuth"


@dataclass(frozen=True)
class ChainRequest:
    """The validated inputs of one verification."""

    leaf: x509.Certificate
    trusted: tuple[x509.Certificate, ...]
    untrusted: tuple[x509.Certificate, ...]
    purpose: Purpose
    dns_name: str | None
    ip_address: IPAddress | None
    at: datetime.datetime
    max_chain_depth: int
    crls: tuple[x509.CertificateRevocationList, ...]

    @property
    def peer_name(self) -> str | None:
        """The expected peer name as text (DNS name or IP address), if any."""
        if self.dns_name is not None:
            return self.dns_name
        if self.ip_address is not None:
            return str(self.ip_address)
        return None


def build_request(
    leaf: x509.Certificate,
    *,
    trusted: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    purpose: Purpose,
    dns_name: str | None,
    ip_address: IPAddress | None,
    at: datetime.datetime | None,
    max_chain_depth: int | None,
    crls: Sequence[x509.CertificateRevocationList],
) -> ChainRequest:
    """Check the caller's arguments (``TypeError``/``ValueError``) and normalise them."""
    if not isinstance(leaf, x509.Certificate):
        raise TypeError("leaf must be a cryptography.x509.Certificate")
    if not isinstance(purpose, Purpose):
        raise TypeError("purpose must be a certwright Purpose")
    trusted_t = _certificates("trusted", trusted)
    if not trusted_t:
        raise InvalidInputError("trusted must hold at least one trust anchor")
    if dns_name is not None and ip_address is not None:
        raise InvalidInputError("give dns_name or ip_address, not both")
    if ip_address is not None and not isinstance(
        ip_address, ipaddress.IPv4Address | ipaddress.IPv6Address
    ):
        raise TypeError("ip_address must be an ipaddress.IPv4Address or IPv6Address")
    if max_chain_depth is not None and not 0 <= max_chain_depth <= 255:
        # cryptography stores the depth in a u8; refuse what it cannot represent.
        raise InvalidInputError("max_chain_depth must be between 0 and 255")
    return ChainRequest(
        leaf=leaf,
        trusted=trusted_t,
        untrusted=_certificates("untrusted", untrusted),
        purpose=purpose,
        dns_name=_dns_name(dns_name),
        ip_address=ip_address,
        at=_utc(at),
        max_chain_depth=DEFAULT_MAX_CHAIN_DEPTH if max_chain_depth is None else max_chain_depth,
        crls=_crls(crls),
    )


def _certificates(what: str, certs: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    result = tuple(certs)
    if not all(isinstance(c, x509.Certificate) for c in result):
        raise TypeError(f"{what} must hold cryptography.x509.Certificate objects")
    return result


def _crls(
    crls: Sequence[x509.CertificateRevocationList],
) -> tuple[x509.CertificateRevocationList, ...]:
    result = tuple(crls)
    if not all(isinstance(c, x509.CertificateRevocationList) for c in result):
        raise TypeError("crls must hold cryptography.x509.CertificateRevocationList objects")
    return result


def _dns_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError("dns_name must be a str")
    # A reference identifier is a host name in preferred syntax, as A-labels (RFC 6125
    # 6.2.1, RFC 1123 2.1); checked here so both engines refuse the same names.
    if not is_dns_name(name):
        raise InvalidInputError(f"dns_name {name!r} is not a valid host name")
    return name.lower()



def _utc(at: datetime.datetime | None) -> datetime.datetime:
    if at is None:
        # Fix "now" once, so every engine and the CRL check judge the same instant.
        return datetime.datetime.now(datetime.UTC)
    if not isinstance(at, datetime.datetime):
        raise TypeError("at must be a datetime.datetime")
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInputError("at must be timezone-aware (UTC)")
    # RFC 5280 4.1.2.5: validity has whole-second granularity; cryptography truncates
    # the same way, so 00:00:00.005 is still within a notAfter of 00:00:00.
    return at.astimezone(datetime.UTC).replace(microsecond=0)
