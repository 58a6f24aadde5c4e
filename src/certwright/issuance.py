"""The authority: self-signed roots, intermediates, and leaves from CSRs or public keys.

Issuance assembles the TBSCertificate from parts encoded once per issuer and profile (the
issuer name, signature algorithm, authority key identifier, key usage, EKU, basic
constraints, URLs) and the few parts that differ per certificate (serial, validity,
subject, key, SANs, key identifier, authorization extension), then makes one signature.
``cryptography``'s CertificateBuilder re-encodes every extension from Python objects on
each call, which costs two to three signatures' worth of time per leaf; the tests check
that what is built here is byte for byte what the builder produces.

Example::

    >>> from certwright.issuance import create_root, Authority
    >>> from certwright.x509.keys import generate_key
    >>> from certwright.x509.profiles import BUILTIN_PROFILES, CASettings
    >>> from certwright.x509.identity import SpiffeId
    >>> settings = CASettings(trust_domain="example.org")
    >>> root_key = generate_key()
    >>> root = create_root(root_key, subject="CN=Example Root", settings=settings)
    >>> ca = Authority(certificate=root, key=root_key, settings=settings)
    >>> leaf = ca.issue(generate_key().public_key(), profile=BUILTIN_PROFILES["mtls"],
    ...                 identity=SpiffeId.parse("spiffe://example.org/web"))
    >>> leaf.issuer == root.subject
    True
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import ipaddress
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from certwright.clock import Clock, SystemClock
from certwright.errors import InvalidCSRError, InvalidInputError, PolicyViolation
from certwright.x509 import der
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, PublicKey, SigningKey, key_type_of
from certwright.x509.names import SubjectAltNames, parse_subject
from certwright.x509.profiles import (
    BUILTIN_PROFILES,
    CASettings,
    ExtendedKeyUsage,
    KeyUsageFlag,
    Profile,
    Request,
)
from certwright.x509.signing import signer_for

# RFC 5280 4.1.2.2: at most 20 octets, positive. 127 random bits (CA/B asks for >= 64).
SERIAL_BITS = 127
_V3 = der.tlv(0xA0, der.integer(2))
_OID = {
    oid: der.oid(oid)
    for oid in (
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
        ExtensionOID.OCSP_NO_CHECK,
    )
}


# The SubjectKeyIdentifier extension for a 20-octet SHA-1 key id, minus the id itself.
_SKI_PREFIX = der.extension(
    _OID[ExtensionOID.SUBJECT_KEY_IDENTIFIER], False, der.tlv(der.OCTET_STRING, bytes(20))
)[:-20]
_SAN_OID = _OID[ExtensionOID.SUBJECT_ALTERNATIVE_NAME]
_NO_SANS = SubjectAltNames()
_NO_AUTHORIZATION = Authorization()


@functools.lru_cache(maxsize=64)  # certificates issued in the same second share it
def _validity_der(not_before: datetime.datetime, not_after: datetime.datetime) -> bytes:
    return der.sequence(der.time(not_before), der.time(not_after))


def random_serial() -> int:
    """A positive serial number of :data:`SERIAL_BITS` CSPRNG bits (never zero)."""
    while True:
        # os.urandom directly (what secrets.randbits reads, without its two Python frames).
        serial = int.from_bytes(os.urandom(_SERIAL_BYTES), "big") >> _SERIAL_SHIFT
        if serial:
            return serial


_SERIAL_BYTES = (SERIAL_BITS + 7) // 8
_SERIAL_SHIFT = _SERIAL_BYTES * 8 - SERIAL_BITS


class _SubjectKey(NamedTuple):
    """The subject's key as issuance needs it: SubjectPublicKeyInfo DER and key type."""

    spki: bytes
    key_type: KeyType


def _subject_key(public_key: PublicKey) -> _SubjectKey:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    usual = _usual_spki(spki)
    return _SubjectKey(spki, usual[1] if usual is not None else key_type_of(public_key))


# AlgorithmIdentifier DER of the fixed-size key types (RFC 5480 2.1.1, RFC 8410 3).
_SPKI_ALGORITHMS = {
    der.sequence(der.oid("1.2.840.10045.2.1"), der.oid("1.2.840.10045.3.1.7")): KeyType.EC_P256,
    der.sequence(der.oid("1.2.840.10045.2.1"), der.oid("1.3.132.0.34")): KeyType.EC_P384,
    der.sequence(der.oid("1.3.101.112")): KeyType.ED25519,
}


def _csr_subject_and_key(csr: x509.CertificateSigningRequest) -> tuple[bytes, _SubjectKey]:
    """The CSR's subject Name (DER) and key, read in one pass over its DER (RFC 2986 4.1).

    The key is taken as the CSR holds it only when it is one of the usual fixed-size keys
    (:func:`_usual_spki`) with an uncompressed point: that saves building a key object
    and encoding it again (~10 us a certificate). Only for requests whose signature
    verified: that check already loaded, and so validated, the key (an off-curve point
    fails it). A compressed or hybrid point (X9.62; a CSR may carry one, many verifiers
    refuse it in a certificate), RSA and anything unusual are loaded and encoded anew,
    uncompressed.
    """
    info = csr.tbs_certrequest_bytes
    _, start, end = der.read_tlv(info)
    _, _, version_end = der.read_tlv(info, start)
    _, _, subject_end = der.read_tlv(info, version_end)
    _, _, spki_end = der.read_tlv(info, subject_end)
    subject = info[version_end:subject_end]
    spki = info[subject_end:spki_end]
    usual = _usual_spki(spki) if spki_end <= end else None
    if usual is None or (usual[1] is not KeyType.ED25519 and spki[len(usual[0])] != _UNCOMPRESSED):
        return subject, _subject_key(csr.public_key())
    return subject, _SubjectKey(spki, usual[1])


_UNCOMPRESSED = 0x04  # X9.62 point form (SEC 1 2.3.3)


def _key_id(spki: bytes) -> bytes:
    """RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits (no tag, length, pad octet)."""
    usual = _usual_spki(spki)
    if usual is not None:  # the usual P-256, P-384 or Ed25519 key: the bits follow the header
        return hashlib.sha1(spki[len(usual[0]) :], usedforsecurity=False).digest()
    _, start, _ = der.read_tlv(spki)
    _, _, alg_end = der.read_tlv(spki, start)
    _, bits_start, bits_end = der.read_tlv(spki, alg_end)
    return hashlib.sha1(spki[bits_start + 1 : bits_end], usedforsecurity=False).digest()


def _spki_header(algorithm: bytes, key_size: int) -> bytes:
    """What precedes the key in an SPKI of ``algorithm`` with a ``key_size``-byte key: the
    SEQUENCE and BIT STRING headers, the AlgorithmIdentifier and the unused-bits octet."""
    bits_header = b"\x03" + der.length(1 + key_size) + b"\x00"
    body_size = len(algorithm) + len(bits_header) + key_size
    return b"\x30" + der.length(body_size) + algorithm + bits_header


def _spki_headers() -> dict[int, tuple[bytes, KeyType]]:
    """SPKI length -> its header and key type, for the fixed-size keys (EC points
    uncompressed): _key_id hashes what follows the header instead of parsing three DER
    headers for every leaf, and _subject_key reads the key type from it."""
    sizes = {KeyType.EC_P256: 65, KeyType.EC_P384: 97, KeyType.ED25519: 32}
    headers = {}
    for algorithm, key_type in _SPKI_ALGORITHMS.items():
        header = _spki_header(algorithm, sizes[key_type])
        headers[len(header) + sizes[key_type]] = (header, key_type)
    return headers


_SPKI_HEADERS = _spki_headers()


def _usual_spki(spki: bytes) -> tuple[bytes, KeyType] | None:
    """The header and key type when ``spki`` is one of the usual fixed-size keys, else None."""
    usual = _SPKI_HEADERS.get(len(spki))
    return usual if usual is not None and spki.startswith(usual[0]) else None


def _san_value(sans: SubjectAltNames) -> bytes:
    # GeneralName tags (RFC 5280 4.2.1.6): [1] rfc822Name, [2] dNSName, [6] URI, [7] iPAddress.
    tlv = der.tlv
    parts = [tlv(0x86, u.encode("ascii")) for u in sans.uris]
    if sans.dns:
        parts += [tlv(0x82, d.encode("ascii")) for d in sans.dns]
    if sans.ips:
        parts += [tlv(0x87, ip.packed) for ip in sans.ips]
    if sans.emails:
        parts += [tlv(0x81, e.encode("ascii")) for e in sans.emails]
    return der.sequence(*parts)


def _key_usage(flags: frozenset[KeyUsageFlag]) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=KeyUsageFlag.DIGITAL_SIGNATURE in flags,
        content_commitment=KeyUsageFlag.CONTENT_COMMITMENT in flags,
        key_encipherment=KeyUsageFlag.KEY_ENCIPHERMENT in flags,
        data_encipherment=KeyUsageFlag.DATA_ENCIPHERMENT in flags,
        key_agreement=KeyUsageFlag.KEY_AGREEMENT in flags,
        key_cert_sign=KeyUsageFlag.KEY_CERT_SIGN in flags,
        crl_sign=KeyUsageFlag.CRL_SIGN in flags,
        encipher_only=False,
        decipher_only=False,
    )


def name_constraints(settings: CASettings) -> x509.NameConstraints:
    """Permitted subtrees for an issuing CA: the trust domain as URI host, and the DNS zones.

    RFC 5280 4.2.1.10: a URI constraint names a host; ``example.org`` matches SPIFFE IDs
    of exactly that trust domain. A DNS constraint covers the zone and all names below it.
    """
    permitted: list[x509.GeneralName] = [x509.UniformResourceIdentifier(settings.trust_domain)]
    permitted += [x509.DNSName(zone) for zone in settings.dns_zones]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _profile_extensions(profile: Profile, settings: CASettings) -> tuple[list[bytes], list[bytes]]:
    """The DER of a profile's fixed extensions: (before the SAN, after the AKI)."""
    head = [
        der.extension(
            _OID[ExtensionOID.BASIC_CONSTRAINTS],
            True,
            x509.BasicConstraints(ca=profile.ca, path_length=profile.path_length).public_bytes(),
        ),
        der.extension(_OID[ExtensionOID.KEY_USAGE], True, _key_usage(profile.key_usage).public_bytes()),
    ]
    if profile.extended_key_usage:
        eku = x509.ExtendedKeyUsage([e.oid for e in profile.extended_key_usage])
        head.append(der.extension(_OID[ExtensionOID.EXTENDED_KEY_USAGE], False, eku.public_bytes()))
    tail = []
    if profile.name_constraints:
        # RFC 5280 4.2.1.10: conforming CAs MUST mark this extension critical.
        tail.append(
            der.extension(
                _OID[ExtensionOID.NAME_CONSTRAINTS], True, name_constraints(settings).public_bytes()
            )
        )
    # The CA-wide URLs describe what this CA publishes for its leaves; a CA profile gets
    # URLs only when it names them itself (they would point at the parent's CRL).
    crl_urls = profile.crl_urls or ((), settings.crl_urls)[not profile.ca]
    if crl_urls:
        points = [
            x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None) for u in crl_urls
        ]
        tail.append(
            der.extension(
                _OID[ExtensionOID.CRL_DISTRIBUTION_POINTS],
                False,
                x509.CRLDistributionPoints(points).public_bytes(),
            )
        )
    # An ocsp-nocheck responder is not itself checked by OCSP (RFC 6960 4.2.2.2.1): no OCSP URL.
    ocsp_urls = profile.ocsp_urls or ((), settings.ocsp_urls)[not profile.ca]
    if profile.ocsp_no_check:
        ocsp_urls = ()
    access = [
        x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(u))
        for u in ocsp_urls
    ]
    access += [
        x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(u))
        for u in (profile.ca_issuer_urls or ((), settings.ca_issuer_urls)[not profile.ca])
    ]
    if access:
        tail.append(
            der.extension(
                _OID[ExtensionOID.AUTHORITY_INFORMATION_ACCESS],
                False,
                x509.AuthorityInformationAccess(access).public_bytes(),
            )
        )
    if profile.ocsp_no_check:
        # RFC 6960 4.2.2.2.1: responders trusted for their lifetime carry id-pkix-ocsp-nocheck.
        tail.append(der.extension(_OID[ExtensionOID.OCSP_NO_CHECK], False, x509.OCSPNoCheck().public_bytes()))
    return head, tail


_EMPTY_NAME = der.sequence()
_CN_OID = der.oid(NameOID.COMMON_NAME)


def _default_label(identity: SpiffeId | None, sans: SubjectAltNames) -> _CsrLabel | None:
    """The default subject: a CN label only (identity lives in the SAN, not the subject).

    RFC 5280 4.1.2.6 / X.520: CN is a UTF8String of at most 64 characters.
    """
    if identity is not None and identity.path:
        # Without a DNS SAN, OpenSSL reads a dotted CN as a host name and holds it to the
        # issuer's DNS name constraints (NAME_CONSTRAINTS_check_CN): "api.v2" would make
        # the chain fail, so the label keeps no dots. (The last segment, as segments[-1].)
        label = identity.path.rpartition("/")[2].replace(".", "-")
    elif sans.dns:
        label = sans.dns[0]
    else:
        return None
    return _cn_label(label[:64])


def _cn_label(value: str) -> _CsrLabel:
    """A subject of one CN, ``value``, pre-encoded (what ``x509.Name([CN=value])`` encodes)."""
    encoded = value.encode("utf-8")
    if len(encoded) < len(_CN_HEADERS):  # the usual short label: its three headers at once
        return _CsrLabel(value, _CN_HEADERS[len(encoded)] + encoded)
    utf8 = der.tlv(0x0C, encoded)
    return _CsrLabel(value, der.sequence(der.tlv(der.SET, der.sequence(_CN_OID, utf8))))


def _cn_headers() -> list[bytes]:
    # Name ::= SEQUENCE { SET { SEQUENCE { OID, UTF8String } } }: everything before the
    # value depends only on its length (up to 256 bytes: 64 characters of 4 bytes).
    headers = []
    for size in range(257):
        name = der.sequence(der.tlv(der.SET, der.sequence(_CN_OID, der.tlv(0x0C, bytes(size)))))
        headers.append(name[: len(name) - size])
    return headers


_CN_HEADERS = _cn_headers()


def rfc4514_value(value: str) -> str:
    """An attribute value escaped as RFC 4514 2.4 asks, exactly as ``cryptography`` writes it.

    Lets issuance name a one-CN subject in text (the inventory's ``subject`` column)
    without building ``x509.Name`` objects; the tests hold it equal to
    ``x509.Name.rfc4514_string()`` for any text.
    """
    if not value:
        return ""
    if _RFC4514_SPECIAL.search(value) is None and value[0] not in "# " and value[-1] != " ":
        return value  # the usual label: nothing to escape
    for special, escaped in _RFC4514_ESCAPES:
        value = value.replace(special, escaped)
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


# The backslash first, so the escapes added after it are not escaped again.
_RFC4514_ESCAPES = (
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("+", "\\+"),
    (",", "\\,"),
    (";", "\\;"),
    ("<", "\\<"),
    (">", "\\>"),
    ("\0", "\\00"),
)
_RFC4514_SPECIAL = re.compile("[" + re.escape("".join(c for c, _ in _RFC4514_ESCAPES)) + "]")


class _Validity(NamedTuple):
    """A validity period: its DER, and its bounds as the DER says them (UTC, whole seconds)."""

    der: bytes
    not_before: datetime.datetime
    not_after: datetime.datetime


@dataclass(frozen=True)
class _Template:
    """Everything about a certificate that is fixed for one issuer and one profile."""

    prefix: bytes  # version + (serial goes here) ... see Authority._tbs
    algorithm: bytes
    issuer: bytes
    head: bytes
    tail: bytes


_PROOF = object()


@dataclass(frozen=True)
class VerifiedCSR:
    """A CSR whose self-signature verified. Only :func:`verify_csr` makes one.

    Lets batch signing verify requests ahead of time (while the CA key is still being
    opened) without a "skip the check" flag anyone could pass.
    """

    csr: x509.CertificateSigningRequest
    _proof: object = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._proof is not _PROOF:
            raise TypeError("VerifiedCSR is made by verify_csr(), not directly")


def verify_csr(csr: x509.CertificateSigningRequest) -> VerifiedCSR:
    """Check a CSR's signature (RFC 2986 3: proof that the requester holds the key)."""
    if not csr.is_signature_valid:
        raise InvalidCSRError(
            "the CSR signature does not verify: it was altered or not signed by its own key"
        )
    return VerifiedCSR(csr, _PROOF)


@dataclass(frozen=True)
class Issued:
    """A certificate as DER, with the facts that were encoded into it.

    What batch signing indexes without parsing the certificate back: every field here
    is exactly what went into the TBSCertificate (the tests compare each one with the
    parsed certificate). ``sans`` are the SANs in certificate order, identity first.
    """

    der: bytes
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime
    spki: bytes
    key_type: KeyType
    sans: SubjectAltNames
    authorization: Authorization
    subject: str  # RFC 4514, as ``x509.Name.rfc4514_string()`` writes the certificate's subject

    def __reduce__(self) -> tuple[Callable[..., Issued], tuple[object, ...]]:
        # Batch workers send every certificate back to the parent, which records it: as
        # plain values (times as POSIX seconds) it pickles and loads ~5x cheaper than as
        # datetimes, enums and dataclasses.
        sans = self.sans
        return (
            _issued_from_values,
            (
                self.der,
                self.serial,
                int(self.not_before.timestamp()),
                int(self.not_after.timestamp()),
                self.spki,
                self.key_type.value,
                (sans.uris, sans.dns, tuple(ip.packed for ip in sans.ips), sans.emails),
                self.authorization,
                self.subject,
            ),
        )

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the DER (what ``Certificate.fingerprint(SHA256())`` gives)."""
        return hashlib.sha256(self.der).digest()

    def pem(self) -> bytes:
        """The PEM encoding, line for line what ``public_bytes(PEM)`` writes."""
        flat = base64.b64encode(self.der)  # lines of 64 columns, as RFC 7468 asks
        lines = b"\n".join([flat[i : i + 64] for i in range(0, len(flat), 64)])
        return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


@functools.lru_cache(maxsize=256)  # a batch's certificates share a handful of validity bounds
def _utc_time(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _issued_from_values(
    der_bytes: bytes,
    serial: int,
    not_before: int,
    not_after: int,
    spki: bytes,
    key_type: str,
    sans: tuple[tuple[str, ...], tuple[str, ...], tuple[bytes, ...], tuple[str, ...]],
    authorization: Authorization,
    subject: str,
) -> Issued:
    """:class:`Issued` back from what its ``__reduce__`` gave (the SANs were normalised already)."""
    uris, dns, ips, emails = sans
    return Issued(
        der=der_bytes,
        serial=serial,
        not_before=_utc_time(not_before),
        not_after=_utc_time(not_after),
        spki=spki,
        key_type=KeyType(key_type),
        sans=SubjectAltNames(
            dns=dns, ips=tuple(ipaddress.ip_address(ip) for ip in ips), uris=uris, emails=emails
        ),
        authorization=authorization,
        subject=subject,
    )


class Authority:
    """A CA that issues: its certificate, private key, the chain above it, and settings.

    ``chain`` lists the certificates above this one (its issuer first, the root last);
    :meth:`chain_for` returns what a leaf should present.
    """

    def __init__(
        self,
        *,
        certificate: x509.Certificate,
        key: SigningKey,
        settings: CASettings,
        chain: tuple[x509.Certificate, ...] = (),
        clock: Clock | None = None,
    ) -> None:
        own_spki = _subject_key(key.public_key()).spki
        if own_spki != _subject_key(certificate.public_key()).spki:
            raise InvalidInputError("the CA key does not match the CA certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.value.ca:
            raise InvalidInputError("the certificate is not a CA certificate (no CA:true)")
        self.certificate = certificate
        self.key = key
        self.settings = settings
        self.chain = chain
        self.clock: Clock = clock or SystemClock()
        self._signer = signer_for(key)
        self._issuer_der = certificate.subject.public_bytes()
        self._aki = der.extension(
            _OID[ExtensionOID.AUTHORITY_KEY_IDENTIFIER],
            False,
            der.sequence(der.tlv(0x80, _key_id(own_spki))),
        )
        self._templates: dict[int, tuple[Profile, _Template]] = {}
        self._authz_oid = der.oid(settings.extension_oid)
        self._dns_zones = _permitted_dns(certificate)
        self._issuer_start = certificate.not_valid_before_utc
        self._issuer_end = certificate.not_valid_after_utc
        # One-entry memos of the batch path (see _validity_of and _authz_extension).
        # The key: the second, as a POSIX time (SystemClock) or as the clock's datetime.
        self._last_validity: tuple[tuple[object, datetime.timedelta], _Validity] | None = None
        self._last_authz: tuple[Authorization, bytes] | None = None

    @property
    def key_identifier(self) -> bytes:
        """The key id this CA writes in its certificates' authorityKeyIdentifier."""
        return _key_id(_subject_key(self.key.public_key()).spki)

    def chain_for_leaf(self) -> tuple[x509.Certificate, ...]:
        """Certificates a leaf presents after itself: this CA and those above it, no root."""
        return tuple(c for c in (self.certificate, *self.chain) if not _self_signed(c))

    def issue(
        self,
        public_key: PublicKey,
        *,
        profile: Profile,
        identity: SpiffeId | None = None,
        sans: SubjectAltNames | None = None,
        authorization: Authorization | None = None,
        subject: x509.Name | str | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> x509.Certificate:
        """Issue a certificate for ``public_key`` under ``profile``.

        The identity becomes the certificate's one URI SAN; ``sans`` adds DNS names, IP
        addresses and email addresses. Raises :class:`PolicyViolation` with the reason
        when the profile does not allow the request.
        """
        return self._issue(
            _subject_key(public_key),
            profile=profile,
            identity=identity,
            sans=sans,
            authorization=authorization,
            subject=subject,
            lifetime=lifetime,
        ).certificate

    def issue_issued(
        self,
        public_key: PublicKey,
        *,
        profile: Profile,
        identity: SpiffeId | None = None,
        sans: SubjectAltNames | None = None,
        authorization: Authorization | None = None,
        subject: x509.Name | str | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> Issued:
        """:meth:`issue`, returning the DER and its facts (:class:`Issued`): for callers that
        record what they issue (the inventory's row is built from the facts, ~25 us,
        instead of from the parsed certificate, ~100 us)."""
        return self._issue(
            _subject_key(public_key),
            profile=profile,
            identity=identity,
            sans=sans,
            authorization=authorization,
            subject=subject,
            lifetime=lifetime,
        )

    def issue_for_csr_key(
        self,
        csr: VerifiedCSR,
        *,
        profile: Profile,
        identity: SpiffeId | None = None,
        sans: SubjectAltNames | None = None,
        authorization: Authorization | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> Issued:
        """:meth:`issue_issued` for the key of a verified CSR, and nothing else of it.

        For callers that decide the names themselves from a grant (enrolment, renewal):
        the CSR's subject, SANs and extensions are ignored, the subject is the default
        label. A usual fixed-size key with an uncompressed point is taken from the CSR's
        DER as it is (no key object is built and encoded again; :func:`verify_csr` has
        loaded, and so validated, it); any other key is loaded and encoded anew
        (:func:`_csr_subject_and_key`).

        Example::

            issued = authority.issue_for_csr_key(verify_csr(csr), profile=profile, identity=sid)
        """
        _, key = _csr_subject_and_key(csr.csr)
        return self._issue(
            key,
            profile=profile,
            identity=identity,
            sans=sans,
            authorization=authorization,
            subject=None,
            lifetime=lifetime,
        )

    def _issue(
        self,
        key: _SubjectKey,
        *,
        profile: Profile,
        identity: SpiffeId | None,
        sans: SubjectAltNames | None,
        authorization: Authorization | None,
        subject: x509.Name | str | _CsrLabel | None,
        lifetime: datetime.timedelta | None,
    ) -> Issued:
        if sans is None:
            sans = _NO_SANS
        if authorization is None:
            authorization = _NO_AUTHORIZATION
        request = Request(
            key_type=key.key_type,
            identity=identity,
            sans=sans,
            authorization=authorization,
            lifetime=lifetime,
        )
        profile.check(request, self.settings)
        if identity is not None:
            # The identity leads: it is the certificate's one URI SAN (checked above).
            sans = SubjectAltNames(uris=(str(identity),), dns=sans.dns, ips=sans.ips, emails=sans.emails)
        if isinstance(subject, _CsrLabel):
            self._check_common_names((subject.value,), sans)
            subject_der, subject_text = subject.der, "CN=" + rfc4514_value(subject.value)
        else:
            name = parse_subject(subject) if isinstance(subject, str) else subject
            if name is None:
                label = _default_label(identity, sans)
                subject_der, subject_text = (
                    (_EMPTY_NAME, "") if label is None else (label.der, "CN=" + rfc4514_value(label.value))
                )
            else:
                common_names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
                self._check_common_names([str(a.value) for a in common_names], sans)
                subject_der, subject_text = name.public_bytes(), name.rfc4514_string()
        if subject_der == _EMPTY_NAME and not sans:
            # RFC 5280 4.1.2.6, 4.2.1.6: an empty subject needs a SAN, else the certificate names nobody.
            raise PolicyViolation(
                f"the certificate would name nobody: give a subject (e.g. CN=...) or a SAN that profile "
                f"{profile.name!r} allows",
                field="subject",
            )
        return self._build_issued(
            key,
            profile=profile,
            subject=subject_der,
            subject_text=subject_text,
            sans=sans,
            authorization=authorization,
            lifetime=profile.lifetime_for(lifetime),
        )

    def _check_common_names(self, common_names: Sequence[str], sans: SubjectAltNames) -> None:
        """Refuse a host-name-like CN that the issuer's DNS name constraints exclude.

        With no DNS SAN, OpenSSL (and so nginx, curl, Python's ssl) checks a CN that looks
        like a host name against the DNS name constraints: such a certificate would be
        issued fine and then refused by every relying party.
        """
        if sans.dns or not self._dns_zones:
            return
        for common_name in common_names:
            value = common_name.lower().rstrip(".")
            if "." not in value or not _HOSTNAME_LIKE.fullmatch(value):
                continue
            if not any(value == z or value.endswith("." + z) for z in self._dns_zones):
                raise PolicyViolation(
                    f"subject CN {value!r} looks like a host name outside the issuer's DNS name "
                    f"constraints ({', '.join(self._dns_zones)}); OpenSSL-based peers would refuse "
                    "the certificate: use a CN without dots, or add the name as a DNS SAN in a zone",
                    field="subject",
                )

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest | VerifiedCSR,
        *,
        profile: Profile,
        identity: SpiffeId | None = None,
        sans: SubjectAltNames | None = None,
        authorization: Authorization | None = None,
        subject: x509.Name | str | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> x509.Certificate:
        """Issue for a CSR after verifying its signature (proof of possession).

        Of the CSR's requested extensions only the SANs are read, and they pass the same
        profile checks as any request; a request for CA:true is refused outright, the rest
        (key usage, EKU, anything else) is ignored: the profile decides those. A
        :class:`VerifiedCSR` (from :func:`verify_csr`) is not verified a second time.
        """
        return self.sign_csr_issued(
            csr,
            profile=profile,
            identity=identity,
            sans=sans,
            authorization=authorization,
            subject=subject,
            lifetime=lifetime,
        ).certificate

    def sign_csr_issued(
        self,
        csr: x509.CertificateSigningRequest | VerifiedCSR,
        *,
        profile: Profile,
        identity: SpiffeId | None = None,
        sans: SubjectAltNames | None = None,
        authorization: Authorization | None = None,
        subject: x509.Name | str | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> Issued:
        """:meth:`sign_csr`, returning the DER and its facts (:class:`Issued`) unparsed.

        For callers that write and index many certificates (batch signing): they need
        the bytes and the facts, and parsing each certificate back costs more than
        building it.
        """
        csr = (csr if isinstance(csr, VerifiedCSR) else verify_csr(csr)).csr
        requested, wants_ca = _csr_requests(csr)
        if wants_ca and not profile.ca:
            raise PolicyViolation(
                f"the CSR asks for CA:true, which profile {profile.name!r} does not issue",
                field="basic_constraints",
            )
        identity = _identity_from_csr(requested, identity)
        extra = SubjectAltNames(dns=requested.dns, ips=requested.ips, emails=requested.emails)
        merged = extra.merge(sans) if sans is not None else extra
        subject_der, key = _csr_subject_and_key(csr)
        return self._issue(
            key,
            profile=profile,
            identity=identity,
            sans=merged,
            authorization=authorization,
            subject=_csr_label(csr, subject_der) if subject is None else subject,
            lifetime=lifetime,
        )

    def create_intermediate(
        self,
        public_key: PublicKey,
        *,
        subject: x509.Name | str,
        profile: Profile | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> x509.Certificate:
        """Issue a subordinate CA certificate, name-constrained by the intermediate profile."""
        profile = profile or BUILTIN_PROFILES["intermediate-ca"]
        if not profile.ca:
            raise PolicyViolation(f"profile {profile.name!r} is not a CA profile", field="profile")
        return self.issue(public_key, profile=profile, subject=subject, lifetime=lifetime)

    def _template(self, profile: Profile) -> _Template:
        cached = self._templates.get(id(profile))
        if cached is not None and cached[0] is profile:
            return cached[1]
        head, tail = _profile_extensions(profile, self.settings)
        template = _Template(
            prefix=_V3,
            algorithm=self._signer.algorithm_der,
            issuer=self._issuer_der,
            head=b"".join(head),
            tail=b"".join(tail),
        )
        self._templates[id(profile)] = (profile, template)
        return template

    def _validity_of(self, lifetime: datetime.timedelta) -> _Validity:
        """:meth:`_validity` and its encodings, remembered for the current second.

        A batch issues hundreds of certificates a second, all with the same validity.
        """
        last = self._last_validity
        # On the system clock the second is read as time.time(): no datetime is built for
        # every certificate of the second (both read the system's real-time clock).
        second = (
            int(time.time()) if type(self.clock) is SystemClock else self.clock.now().replace(microsecond=0)
        )
        if last is not None and last[0] == (second, lifetime):
            return last[1]
        now = (
            second
            if isinstance(second, datetime.datetime)
            else datetime.datetime.fromtimestamp(second, datetime.UTC)
        )
        not_before, not_after = self._validity(lifetime, now=now)
        validity = _Validity(
            _validity_der(not_before, not_after),
            # What der.time() wrote: UTC, whole seconds.
            not_before.astimezone(datetime.UTC).replace(microsecond=0),
            not_after.astimezone(datetime.UTC).replace(microsecond=0),
        )
        self._last_validity = ((second, lifetime), validity)
        return validity

    def _validity(
        self, lifetime: datetime.timedelta, *, now: datetime.datetime
    ) -> tuple[datetime.datetime, datetime.datetime]:
        issuer_start, issuer_end = self._issuer_start, self._issuer_end
        if now >= issuer_end:
            raise PolicyViolation(f"the issuing CA expired at {issuer_end.isoformat()}", field="issuer")
        not_before = max(now - self.settings.backdate, issuer_start)
        # A leaf never outlives its issuer (RFC 5280 6.1.3 would reject it at that point).
        not_after = min(now + lifetime, issuer_end)
        if not_after <= not_before:
            # An issuer not valid yet (a clock behind its notBefore) would give an inverted validity.
            raise PolicyViolation(
                f"the issuing CA is not valid before {issuer_start.isoformat()}", field="issuer"
            )
        return not_before, not_after

    def _authz_extension(self, authorization: Authorization) -> bytes:
        last = self._last_authz
        if last is not None and last[0] is authorization:  # a batch gives every certificate the same
            return last[1]
        encoded = der.extension(self._authz_oid, False, authorization.to_der())
        self._last_authz = (authorization, encoded)
        return encoded

    def _build_issued(
        self,
        key: _SubjectKey,
        *,
        profile: Profile,
        subject: bytes,
        subject_text: str,
        sans: SubjectAltNames,
        authorization: Authorization,
        lifetime: datetime.timedelta,
    ) -> Issued:
        template = self._template(profile)
        validity = self._validity_of(lifetime)
        # RFC 5280 4.2.1.6: with an empty subject the SAN extension MUST be critical.
        san = der.extension(_SAN_OID, subject == _EMPTY_NAME, _san_value(sans)) if sans else b""
        authz = self._authz_extension(authorization) if authorization else b""
        extensions = der.sequence(
            template.head, san, _SKI_PREFIX, _key_id(key.spki), self._aki, template.tail, authz
        )
        serial = random_serial()
        tbs = der.sequence(
            template.prefix,
            der.integer(serial),
            template.algorithm,
            template.issuer,
            validity.der,
            subject,
            key.spki,
            der.tlv(0xA3, extensions),
        )
        signature = self._signer.sign(tbs)
        return Issued(
            der=der.sequence(tbs, template.algorithm, der.bit_string(signature)),
            serial=serial,
            not_before=validity.not_before,
            not_after=validity.not_after,
            spki=key.spki,
            key_type=key.key_type,
            sans=sans,
            authorization=authorization,
            subject=subject_text,
        )


def create_root(
    key: SigningKey,
    *,
    subject: x509.Name | str,
    settings: CASettings,
    lifetime: datetime.timedelta | None = None,
    profile: Profile | None = None,
    clock: Clock | None = None,
) -> x509.Certificate:
    """Create a self-signed root CA certificate for ``key``."""
    profile = profile or BUILTIN_PROFILES["root-ca"]
    if not profile.ca:
        raise PolicyViolation(f"profile {profile.name!r} is not a CA profile", field="profile")
    name = parse_subject(subject) if isinstance(subject, str) else subject
    if len(name) == 0:
        raise InvalidInputError("a root CA needs a subject name (for example CN=Example Root CA)")
    request = Request(
        key_type=key_type_of(key),
        identity=None,
        sans=SubjectAltNames(),
        authorization=Authorization(),
        lifetime=lifetime,
    )
    profile.check(request, settings)
    clock = clock or SystemClock()
    now = clock.now().replace(microsecond=0)
    # A throw-away self-signed shell gives the Authority machinery an issuer to work from;
    # the real root is then issued by that authority to itself (same name, same key).
    shell = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - settings.backdate)
        .not_valid_after(now + profile.lifetime_for(lifetime) + settings.backdate)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, _hash_for(key))
    )
    authority = Authority(certificate=shell, key=key, settings=settings, clock=clock)
    return authority._build_issued(
        _subject_key(key.public_key()),
        profile=profile,
        subject=name.public_bytes(),
        subject_text=name.rfc4514_string(),
        sans=SubjectAltNames(),
        authorization=Authorization(),
        lifetime=profile.lifetime_for(lifetime),
    ).certificate


def _hash_for(key: SigningKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


_HOSTNAME_LIKE = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+")


def _permitted_dns(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        str(n.value).lower().lstrip(".")
        for n in constraints.permitted_subtrees or ()
        if isinstance(n, x509.DNSName)
    )


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _csr_requests(csr: x509.CertificateSigningRequest) -> tuple[SubjectAltNames, bool]:
    """The SANs a CSR asks for, and whether it asks for CA:true (one pass over its extensions)."""
    sans, wants_ca = SubjectAltNames(), False
    try:
        for ext in csr.extensions:  # cryptography parses them lazily, here
            if isinstance(ext.value, x509.SubjectAlternativeName):
                sans = SubjectAltNames.from_extension(ext.value)
            elif isinstance(ext.value, x509.BasicConstraints):
                wants_ca = ext.value.ca
    except ValueError as exc:
        raise InvalidCSRError(f"the CSR has a malformed extension: {exc}") from exc
    return sans, wants_ca


def _identity_from_csr(requested: SubjectAltNames, identity: SpiffeId | None) -> SpiffeId | None:
    if len(requested.uris) > 1:
        raise PolicyViolation(
            "the CSR asks for more than one URI SAN; a certificate carries exactly one identity",
            field="uri",
        )
    if not requested.uris:
        return identity
    asked = SpiffeId.parse(requested.uris[0])
    if identity is not None and asked != identity:
        raise PolicyViolation(
            f"the CSR asks for identity {asked}, but the request is for {identity}",
            field="identity",
        )
    return asked


class _CsrLabel(NamedTuple):
    """A subject of just the CSR's CN, pre-encoded (what ``x509.Name([CN=value])`` encodes)."""

    value: str
    der: bytes


def _csr_label(csr: x509.CertificateSigningRequest, subject: bytes) -> _CsrLabel | x509.Name | None:
    """Only the CSR's CN is kept, as a label: other subject fields are the CA's to assert.

    ``subject`` is the CSR's subject DER (see :func:`_csr_subject_and_key`).
    """
    value = _only_cn(subject)
    if value is None:  # not the usual one-CN subject: let cryptography read it
        common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not common_names:
            return None
        value = str(common_names[0].value)
    if not 1 <= len(value) <= 64:  # ub-common-name: let x509.Name give its usual error
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])
    # A UTF8String CN in one RDN, as cryptography encodes it, without building the objects.
    return _cn_label(value)


def _only_cn(name: bytes) -> str | None:
    """The value of a Name that is exactly one UTF8String CN (what most requests hold), else None.

    Reading it from the DER spares building ``x509.Name`` objects (~15 us a request). The
    request was parsed (and so checked as DER) when it was loaded; anything else, e.g.
    a PrintableString, several attributes or invalid UTF-8, returns None and is read
    through ``csr.subject`` as before. The tests hold both readings equal.
    """
    try:
        tag, rdns, end = der.read_tlv(name)
        set_tag, rdn, set_end = der.read_tlv(name, rdns)
        seq_tag, attribute, seq_end = der.read_tlv(name, rdn)
        _, _, oid_end = der.read_tlv(name, attribute)
        string_tag, value, value_end = der.read_tlv(name, oid_end)
    except ValueError:
        return None
    shape = (tag, set_tag, seq_tag, string_tag, set_end, seq_end, value_end)
    if shape != (der.SEQUENCE, der.SET, der.SEQUENCE, 0x0C, end, end, end):
        return None
    if name[attribute:oid_end] != _CN_OID:
        return None
    try:
        return name[value:value_end].decode("utf-8")
    except UnicodeDecodeError:
        return None


__all__ = [
    "Authority",
    "ExtendedKeyUsage",
    "Issued",
    "VerifiedCSR",
    "create_root",
    "name_constraints",
    "random_serial",
    "verify_csr",
]
