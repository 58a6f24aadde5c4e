"""Checks certwright makes itself on a built path, with clear reasons.

Two users:

* the OpenSSL fallback (:mod:`certwright.verify.openssl_path`): OpenSSL builds the path,
  checks signatures, validity, basic constraints, path length and name constraints, but
  through pyOpenSSL's public API it cannot be given a purpose, a host name or a maximum
  depth, and it is laxer than ``cryptography``'s web-PKI profile on algorithms and on
  the leaf's shape. :func:`check_path` re-imposes those rules so the fallback is never
  looser than the primary engine on anything both claim to check;
* the primary path's error explanation (:func:`leaf_defect`), which names the one
  path-independent defect of the leaf, if any, instead of an engine's terse message.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from certwright.errors import VerificationError
from certwright.verify.constraints import check_name_constraints
from certwright.verify.names import describe, extension, matches_peer, subject_alt_names
from certwright.verify.request import ChainRequest

# CA/B BR 7.1.3.2, as cryptography's verifier enforces it (WEBPKI_PERMITTED_SIGNATURE_
# ALGORITHMS): no SHA-1, no MD5, no DSA. certwright adds Ed25519 (RFC 8410): an internal
# PKI is not bound by the web PKI's list, and certwright issues Ed25519 CAs.
PERMITTED_SIGNATURE_OIDS = frozenset(
    {
        SignatureAlgorithmOID.ED25519,
        SignatureAlgorithmOID.RSA_WITH_SHA256,
        SignatureAlgorithmOID.RSA_WITH_SHA384,
        SignatureAlgorithmOID.RSA_WITH_SHA512,
        SignatureAlgorithmOID.RSASSA_PSS,
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)
_PSS_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
# CA/B BR 6.1.5 / 7.1.3.1: RSA >= 2048 bits, EC on the NIST curves P-256/384/521 only.
_MIN_RSA_BITS = 2048
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def timestamp(moment: datetime.datetime) -> str:
    """RFC 3339 UTC form used in every reason: ``2026-01-01T00:00:00Z``."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- single-certificate facts -------------------------------------------------------------


def validity_defect(cert: x509.Certificate, at: datetime.datetime) -> str | None:
    """Why ``cert`` is not valid at ``at`` (RFC 5280 6.1.3(a)(2)), or ``None``."""
    if at > cert.not_valid_after_utc:
        return f"certificate expired at {timestamp(cert.not_valid_after_utc)}"
    if at < cert.not_valid_before_utc:
        return f"certificate not valid before {timestamp(cert.not_valid_before_utc)}"
    return None


def leaf_eku_defect(leaf: x509.Certificate, request: ChainRequest) -> str | None:
    """Why the leaf's extendedKeyUsage does not allow the purpose, or ``None``.

    RFC 5280 4.2.1.12: an absent extension means "any purpose" (as in cryptography and
    OpenSSL). A present one must list the purpose itself; anyExtendedKeyUsage does not
    do on a leaf (CA/B BR 7.1.2.7.10, which cryptography enforces).
    """
    ext = extension(leaf, x509.ExtendedKeyUsage)
    if ext is None or request.purpose.eku in ext.value:
        return None
    return f"leaf lacks extendedKeyUsage {request.purpose.eku_name}"


def peer_name_defect(leaf: x509.Certificate, request: ChainRequest) -> str | None:
    """Why the leaf does not name the expected peer (RFC 6125 6.4), or ``None``."""
    if request.peer_name is None:
        return None
    sans = subject_alt_names(leaf)
    if matches_peer(sans, dns_name=request.dns_name, ip_address=request.ip_address):
        return None
    listed = ", ".join(str(s.value) for s in sans if isinstance(s, x509.DNSName | x509.IPAddress))
    return f"leaf does not match {request.peer_name} (its DNS/IP SANs: {listed or 'none'})"


def leaf_defect(leaf: x509.Certificate, request: ChainRequest) -> str | None:
    """The first path-independent reason the leaf must be refused, or ``None``.

    Each of these alone rejects the chain whatever path an engine builds, so naming it
    is never misleading.
    """
    validity = validity_defect(leaf, request.at)
    if validity is not None:
        return f"{validity} (leaf {describe(leaf)})"
    return leaf_eku_defect(leaf, request) or peer_name_defect(leaf, request)


# --- whole-path checks for the OpenSSL fallback ------------------------------------------


def check_path(chain: Sequence[x509.Certificate], request: ChainRequest) -> None:
    """Impose on an OpenSSL-built path what the primary engine would have checked.

    ``chain`` is leaf first, trust anchor last. Raises :class:`VerificationError`.
    """
    _check_depth(chain, request)
    for cert in chain:
        _fail(validity_defect(cert, request.at), cert)
        _check_public_key(cert)
        _check_serial(cert)
    for cert in chain[:-1]:
        _check_signature_algorithm(cert)  # the anchor's self-signature is not relied on
    _check_leaf(chain[0], request)
    for ca in chain[1:]:
        _check_ca(ca, request, anchor=ca is chain[-1])
    check_name_constraints(chain)


def _fail(defect: str | None, cert: x509.Certificate) -> None:
    if defect is not None:
        raise VerificationError(f"{defect} ({describe(cert)})")


def _check_depth(chain: Sequence[x509.Certificate], request: ChainRequest) -> None:
    # Same count as cryptography: intermediates between leaf and anchor, self-issued
    # ones included (stricter than RFC 5280 6.1.4(l), like Go and webpki).
    intermediates = max(len(chain) - 2, 0)
    if intermediates > request.max_chain_depth:
        raise VerificationError(
            f"chain has {intermediates} intermediates, more than "
            f"max_chain_depth={request.max_chain_depth}"
        )


def _check_serial(cert: x509.Certificate) -> None:
    # RFC 5280 4.1.2.2: at most 20 octets. As in cryptography, a 21st leading zero octet
    # (DER sign padding) is tolerated, and non-positive serials are too (old roots).
    if abs(cert.serial_number).bit_length() > 160:
        _fail("serial number longer than 20 octets", cert)


def _check_leaf(leaf: x509.Certificate, request: ChainRequest) -> None:
    _fail(leaf_eku_defect(leaf, request), leaf)
    basic = extension(leaf, x509.BasicConstraints)
    if basic is not None and basic.value.ca:
        # CA/B BR 7.1.2.7.8: a CA certificate is not a valid end entity.
        _fail("leaf is a CA certificate (basicConstraints cA=TRUE)", leaf)
    usage = extension(leaf, x509.KeyUsage)
    if usage is not None and usage.value.key_cert_sign:
        _fail("leaf keyUsage asserts keyCertSign", leaf)  # RFC 5280 4.2.1.3
    if extension(leaf, x509.NameConstraints) is not None:
        _fail("leaf carries nameConstraints", leaf)  # RFC 5280 4.2.1.10: CAs only
    if extension(leaf, x509.AuthorityKeyIdentifier) is None:
        _fail("leaf lacks authorityKeyIdentifier", leaf)  # RFC 5280 4.2.1.1
    _check_leaf_san(leaf)
    _fail(peer_name_defect(leaf, request), leaf)


def _check_leaf_san(leaf: x509.Certificate) -> None:
    san = extension(leaf, x509.SubjectAlternativeName)
    if san is None or not list(san.value):
        # CA/B BR 7.1.2.7.12 (and cryptography, for servers and clients alike).
        _fail("leaf has no subjectAltName", leaf)
        return
    # RFC 5280 4.2.1.6: critical exactly when the subject is empty.
    empty_subject = len(leaf.subject) == 0
    if san.critical != empty_subject:
        state = "empty" if empty_subject else "non-empty"
        _fail(f"subjectAltName criticality is wrong for a {state} subject", leaf)


def _check_ca(ca: x509.Certificate, request: ChainRequest, *, anchor: bool) -> None:
    """cryptography's web-PKI CA profile, with its trust-anchor keyUsage exemption."""
    if len(ca.subject) == 0:
        _fail("issuer has an empty subject", ca)  # RFC 5280 4.1.2.6: CAs MUST have one
    basic = extension(ca, x509.BasicConstraints)
    if basic is None or not basic.critical or not basic.value.ca:
        # RFC 5280 4.2.1.9: CAs MUST carry a critical basicConstraints with cA TRUE.
        _fail("issuer lacks a critical basicConstraints with cA=TRUE", ca)
    usage = extension(ca, x509.KeyUsage)
    if (usage is None and not anchor) or (usage is not None and not usage.value.key_cert_sign):
        # RFC 5280 4.2.1.3 / 6.1.4(n); an anchor may omit it (RFC 5280 6.1.1(d)).
        _fail("issuer keyUsage lacks keyCertSign", ca)
    aki = extension(ca, x509.AuthorityKeyIdentifier)
    if aki is not None and (
        aki.value.key_identifier is None
        or aki.value.authority_cert_issuer is not None
        or aki.value.authority_cert_serial_number is not None
    ):
        # CA/B BR 7.1.2.11.1: keyIdentifier only.
        _fail("issuer authorityKeyIdentifier is not a bare keyIdentifier", ca)
    eku = extension(ca, x509.ExtendedKeyUsage)
    if eku is not None and not (
        request.purpose.eku in eku.value or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku.value
    ):
        # An EKU in a CA restricts what it may issue for (CA/B BR 7.1.2.10.6).
        _fail(f"issuer extendedKeyUsage does not allow {request.purpose.eku_name}", ca)


def _check_signature_algorithm(cert: x509.Certificate) -> None:
    oid = cert.signature_algorithm_oid
    if oid not in PERMITTED_SIGNATURE_OIDS:
        _fail(f"signature algorithm {oid.dotted_string} is not permitted", cert)
    if oid == SignatureAlgorithmOID.RSASSA_PSS and not isinstance(
        cert.signature_hash_algorithm, _PSS_HASHES
    ):
        _fail("RSASSA-PSS signature with a hash other than SHA-256/384/512", cert)


def _check_public_key(cert: x509.Certificate) -> None:
    try:
        key = cert.public_key()
    except (ValueError, TypeError) as exc:
        raise VerificationError(f"unsupported public key ({describe(cert)}): {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            _fail(f"RSA key of {key.key_size} bits is below {_MIN_RSA_BITS}", cert)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            _fail(f"elliptic curve {key.curve.name} is not permitted", cert)
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        _fail(f"public key type {type(key).__name__} is not permitted", cert)
