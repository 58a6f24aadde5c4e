"""The OpenSSL fallback engine, through pyOpenSSL's public API only.

Why it exists: ``cryptography`` 50's verifier refuses any path whose CA constrains URIs
("unsupported name constraint") as soon as the leaf carries a URI SAN, and every
certwright workload certificate does (its SPIFFE ID), under intermediates that constrain
the trust domain (DESIGN.md). OpenSSL enforces URI constraints (RFC 5280 4.2.1.10).

What OpenSSL checks here: path building to a trust anchor (partial chains allowed, as
``cryptography``'s ``Store`` treats every stored certificate as an anchor), signatures,
validity at the requested time, basic constraints and pathLenConstraint, critical
extensions, name constraints (DNS, IP, URI, ...). What pyOpenSSL cannot ask of it (a
purpose, a host name, a depth limit) and the web-PKI profile rules ``cryptography``
adds are checked by :func:`certwright.verify.profile.check_path` on the built path.
Revocation is not OpenSSL's job here either (see :mod:`certwright.verify.revocation`).

Known strictness beyond the primary engine: OpenSSL does not backtrack to another path
once its first choice fails, and it reads a host-like subject CN as a DNS name for DNS
name constraints when the leaf has no dNSName SAN (docs/verification.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from OpenSSL import crypto

from certwright.errors import VerificationError
from certwright.verify.constraints import explain_constraint_violation
from certwright.verify.names import describe
from certwright.verify.profile import check_path, validity_defect
from certwright.verify.request import ChainRequest

# X509_V_ERR_* codes from OpenSSL's include/openssl/x509_vfy.h (stable ABI values;
# pyOpenSSL exposes the code but no names for it).
_NO_ISSUER = frozenset({2, 18, 19, 20, 21})  # unable to get issuer / self-signed / untrusted
_SIGNATURE_FAILURE = 7
_NOT_YET_VALID = 9
_EXPIRED = 10
_PERMITTED_VIOLATION = 47
_EXCLUDED_VIOLATION = 48

# PARTIAL_CHAIN: a trusted intermediate is an anchor, as in cryptography's Store.
# X509_STRICT: OpenSSL's RFC 5280 conformance checks (CA basicConstraints critical,
# keyCertSign, AKI/SKI presence, no empty-subject CA, ...), closer to cryptography's
# web-PKI profile than OpenSSL's lax default. Kept as defence in depth although it is
# slightly stricter than the primary engine: it also wants keyUsage on the anchor.
_FLAGS = crypto.X509StoreFlags.PARTIAL_CHAIN | crypto.X509StoreFlags.X509_STRICT


def verify_with_openssl(request: ChainRequest) -> tuple[x509.Certificate, ...]:
    """Build and verify a path with OpenSSL, then apply certwright's own checks.

    Returns the path, leaf first and trust anchor last; raises
    :class:`~certwright.errors.VerificationError`.
    """
    store = crypto.X509Store()
    for anchor in request.trusted:
        store.add_cert(_to_openssl(anchor))
    # set_time installs a fresh X509_VERIFY_PARAM, so it must come before set_flags.
    store.set_time(request.at)
    store.set_flags(_FLAGS)
    context = crypto.X509StoreContext(
        store, _to_openssl(request.leaf), [_to_openssl(c) for c in request.untrusted]
    )
    try:
        built = context.get_verified_chain()
    except crypto.X509StoreContextError as exc:
        raise VerificationError(_explain(exc, request)) from exc
    chain = tuple(cert.to_cryptography() for cert in built)
    check_path(chain, request)
    return chain


def _to_openssl(cert: x509.Certificate) -> crypto.X509:
    try:
        return crypto.X509.from_cryptography(cert)
    except crypto.Error as exc:
        raise VerificationError(f"OpenSSL cannot parse {describe(cert)}: {exc}") from exc


def _explain(exc: crypto.X509StoreContextError, request: ChainRequest) -> str:
    """Turn OpenSSL's error code into a specific reason, keeping its own words."""
    code, message = _code_and_message(exc)
    cert = exc.certificate.to_cryptography()
    if code in _NO_ISSUER:
        return f"no path to a trusted root: {message} ({describe(cert)})"
    if code == _SIGNATURE_FAILURE:
        return f"no path to a trusted root: signature of {describe(cert)} does not verify"
    if code in (_EXPIRED, _NOT_YET_VALID):
        return f"{validity_defect(cert, request.at) or message} ({describe(cert)})"
    if code in (_PERMITTED_VIOLATION, _EXCLUDED_VIOLATION):
        return _constraint_reason(cert, request, message)
    return f"{message} ({describe(cert)})"


def _code_and_message(exc: crypto.X509StoreContextError) -> tuple[int, str]:
    # pyOpenSSL documents ``errors`` as [error code, depth, message].
    errors: Sequence[object] = exc.errors
    code = errors[0] if errors and isinstance(errors[0], int) else -1
    return code, str(exc)


def _constraint_reason(cert: x509.Certificate, request: ChainRequest, message: str) -> str:
    # OpenSSL names only the certificate; find the identity and the CA among candidates.
    reason = explain_constraint_violation(cert, (*request.untrusted, *request.trusted))
    if reason is not None:
        return f"{reason}; openssl: {message}"
    return f"name outside the issuer's name constraints ({message}; {describe(cert)})"
