"""Certificate chain verification: :func:`verify_chain`.

The primary engine is ``cryptography.x509.verification`` (RFC 5280 path validation with
the CA/B web-PKI profile). One case it cannot handle: ``cryptography`` 50 refuses a path
whose CA carries URI name constraints once the leaf has a URI SAN, while certwright's
intermediates constrain the trust domain's URIs (DESIGN.md). Such chains go to an
OpenSSL fallback (:mod:`certwright.verify.openssl_path`) that enforces those
constraints, plus certwright's own checks so the fallback is not looser than the primary
engine. Revocation (:mod:`certwright.verify.revocation`) is then checked on the path
either engine built. ``docs/verification.md`` tells the whole story.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509 import verification as cv
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from certwright.errors import InvalidInputError, VerificationError
from certwright.verify.constraints import explain_constraint_violation, has_uri_constraints
from certwright.verify.names import IPAddress, describe, subject_alt_names
from certwright.verify.openssl_path import verify_with_openssl
from certwright.verify.profile import leaf_defect, peer_name_defect, validity_defect
from certwright.verify.request import ChainRequest, Purpose, build_request
from certwright.verify.revocation import check_revocation

__all__ = ["Engine", "Purpose", "VerifiedChain", "verify_chain", "verify_chain_via_openssl"]

Engine = Literal["cryptography", "openssl"]


@dataclass(frozen=True)
class VerifiedChain:
    """A path that verified: leaf first, trust anchor last, and how it was verified."""

    chain: tuple[x509.Certificate, ...]
    purpose: Purpose
    engine: Engine

    @property
    def leaf(self) -> x509.Certificate:
        """The end-entity certificate that was verified."""
        return self.chain[0]


def verify_chain(
    leaf: x509.Certificate,
    *,
    trusted: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate] = (),
    purpose: Purpose = Purpose.SERVER,
    dns_name: str | None = None,
    ip_address: IPAddress | None = None,
    at: datetime.datetime | None = None,
    max_chain_depth: int | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> VerifiedChain:
    """Verify ``leaf`` up to one of ``trusted`` for ``purpose``.

    ``untrusted`` are candidate intermediates; ``dns_name`` / ``ip_address`` is the
    expected peer (matched against SANs only, RFC 6125); without one, a SERVER leaf is
    verified for its chain and serverAuth EKU alone (workloads are identified by their
    URI SAN elsewhere). ``at`` is a timezone-aware instant (default: now).
    ``max_chain_depth`` caps the number of intermediates (default 8). ``crls`` are
    checked for every certificate whose issuer published one among them.

    Raises :class:`~certwright.errors.VerificationError` with a specific reason, or
    ``TypeError`` / :class:`~certwright.errors.InvalidInputError` for bad arguments.
    """
    request = build_request(
        leaf,
        trusted=trusted,
        untrusted=untrusted,
        purpose=purpose,
        dns_name=dns_name,
        ip_address=ip_address,
        at=at,
        max_chain_depth=max_chain_depth,
        crls=crls,
    )
    engine: Engine = "cryptography"
    try:
        chain = _verify_with_cryptography(request)
    except VerificationError:
        if not _needs_openssl(request):
            raise
        chain, engine = verify_with_openssl(request), "openssl"
    check_revocation(chain, request.crls, request.at)
    return VerifiedChain(chain=chain, purpose=request.purpose, engine=engine)


def verify_chain_via_openssl(
    leaf: x509.Certificate,
    *,
    trusted: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate] = (),
    purpose: Purpose = Purpose.SERVER,
    dns_name: str | None = None,
    ip_address: IPAddress | None = None,
    at: datetime.datetime | None = None,
    max_chain_depth: int | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> VerifiedChain:
    """The OpenSSL fallback engine alone, same contract as :func:`verify_chain`.

    For conformance runs and tests that compare the engines; applications call
    :func:`verify_chain`, which uses it only when it has to.
    """
    request = build_request(
        leaf,
        trusted=trusted,
        untrusted=untrusted,
        purpose=purpose,
        dns_name=dns_name,
        ip_address=ip_address,
        at=at,
        max_chain_depth=max_chain_depth,
        crls=crls,
    )
    chain = verify_with_openssl(request)
    check_revocation(chain, request.crls, request.at)
    return VerifiedChain(chain=chain, purpose=request.purpose, engine="openssl")


def _needs_openssl(request: ChainRequest) -> bool:
    """Whether the primary engine's refusal may be its URI name-constraint gap.

    Decided from the certificates, not from the error text: the text is not a stable
    API, and when several candidate paths fail ``cryptography`` reports only one of
    their errors ("candidates exhausted: ..."), so a URI-constraint failure can hide
    behind another. cryptography 50 fails exactly when a URI SAN meets a URI subtree,
    so both must be present: a leaf URI SAN and a candidate CA constraining URIs.

    The other gap is Ed25519, which cryptography's web-PKI policy forbids while certwright
    issues Ed25519 CAs; the fallback permits it (and only it) beyond that policy.
    """
    if any(_uses_ed25519(c) for c in (request.leaf, *request.untrusted, *request.trusted)):
        return True
    try:
        sans = subject_alt_names(request.leaf)
    except VerificationError:
        return False
    if not any(isinstance(san, x509.UniformResourceIdentifier) for san in sans):
        return False
    return any(has_uri_constraints(ca) for ca in (*request.untrusted, *request.trusted))


def _uses_ed25519(cert: x509.Certificate) -> bool:
    return cert.signature_algorithm_oid == SignatureAlgorithmOID.ED25519


# --- the primary engine: cryptography.x509.verification ----------------------------------


def _verify_with_cryptography(request: ChainRequest) -> tuple[x509.Certificate, ...]:
    ca_policy, ee_policy = _extension_policies(request)
    builder = (
        cv.PolicyBuilder()
        .store(cv.Store(list(request.trusted)))
        .time(request.at)
        .max_chain_depth(request.max_chain_depth)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
    )
    untrusted = list(request.untrusted)
    try:
        if request.peer_name is not None and request.purpose is Purpose.SERVER:
            chain = _server_verifier(builder, request).verify(request.leaf, untrusted)
        else:
            # SERVER without a name uses the client verifier with serverAuth EKU rules
            # (see _extension_policies): cryptography's server verifier needs a name.
            chain = builder.build_client_verifier().verify(request.leaf, untrusted).chain
    except cv.VerificationError as exc:
        raise VerificationError(_explain(str(exc), request)) from exc
    if request.purpose is Purpose.CLIENT:
        # The client verifier returns the SANs rather than matching a name; match here.
        defect = peer_name_defect(request.leaf, request)
        if defect is not None:
            raise VerificationError(defect)
    return tuple(chain)


def _server_verifier(builder: cv.PolicyBuilder, request: ChainRequest) -> cv.ServerVerifier:
    subject: cv.Subject
    if request.ip_address is not None:
        subject = x509.IPAddress(request.ip_address)
    else:
        subject = x509.DNSName(request.dns_name or "")
    try:
        return builder.build_server_verifier(subject)
    except ValueError as exc:  # e.g. "foo_bar.example.com": not a preferred-syntax name
        raise InvalidInputError(f"invalid peer name {request.peer_name!r}: {exc}") from exc


def _extension_policies(
    request: ChainRequest,
) -> tuple[cv.ExtensionPolicy, cv.ExtensionPolicy]:
    """cryptography's web-PKI extension policies, with two certwright adjustments.

    Both use the public ``ExtensionPolicy`` API (cryptography >= 45) and replace one
    rule each with a Python validator that keeps the original rule otherwise:

    * keyUsage may be absent from a *trust anchor* (it must still be present, with
      keyCertSign, on every intermediate). RFC 5280 6.1.1(d) takes only the anchor's
      name and key, and 6.1.4(n) / 6.3.3(f) check keyUsage only "if present";
    * for SERVER without a peer name, the client verifier is used, and its EKU rules
      (clientAuth) are swapped for the serverAuth ones the server verifier applies.
    """
    anchors = frozenset(request.trusted)

    def ca_key_usage(_p: cv.Policy, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
        if ku is None and cert not in anchors:
            raise ValueError("issuer lacks keyUsage")  # CA/B BR 7.1.2.10.7
        if ku is not None and not ku.key_cert_sign:
            raise ValueError("issuer keyUsage lacks keyCertSign")  # RFC 5280 4.2.1.3

    ca = cv.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.KeyUsage, cv.Criticality.AGNOSTIC, ca_key_usage
    )
    ee = cv.ExtensionPolicy.webpki_defaults_ee()
    if request.purpose is Purpose.SERVER and request.peer_name is None:
        ca = ca.may_be_present(
            x509.ExtendedKeyUsage, cv.Criticality.NON_CRITICAL, _ca_allows_server_auth
        )
        ee = ee.may_be_present(
            x509.ExtendedKeyUsage, cv.Criticality.NON_CRITICAL, _leaf_allows_server_auth
        )
    return ca, ee


def _leaf_allows_server_auth(
    _policy: cv.Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    # Same rule as cryptography's own for its policy EKU (RFC 5280 4.2.1.12, CA/B BR
    # 7.1.2.7.10): absent means any purpose; present must list serverAuth itself.
    if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise ValueError("leaf lacks extendedKeyUsage serverAuth")


def _ca_allows_server_auth(
    _policy: cv.Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    # An EKU in a CA restricts the purposes it may issue for (CA/B BR 7.1.2.10.6).
    if eku is not None and not (
        ExtendedKeyUsageOID.SERVER_AUTH in eku
        or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku
    ):
        raise ValueError("issuer extendedKeyUsage does not allow serverAuth")


# --- turning cryptography's terse errors into reasons ------------------------------------

# Fragments of cryptography 50's messages and what they mean for certwright's users.
# Unknown messages are still passed on verbatim, so a wording change only loses polish.
_MEANINGS: tuple[tuple[str, str], ...] = (
    ("no interior errors", "no path to a trusted root"),
    ("signature does not match", "no path to a trusted root: an issuer signature does not verify"),
    ("exceeds max depth", "no path to a trusted root within max_chain_depth={depth}"),
    ("Neither EKU nor anyEKU", "issuer extendedKeyUsage does not allow {eku}"),
    ("unsupported name constraint", "an issuer uses a name constraint form cryptography lacks"),
    (
        "Forbidden public key algorithm",
        "a certificate's key type is outside the web-PKI profile (RSA >= 2048, ECDSA P-256/384/521)",
    ),
    ("Forbidden signature algorithm", "a signature algorithm outside the web-PKI profile"),
)


def _explain(message: str, request: ChainRequest) -> str:
    """A specific reason for a primary-engine failure, keeping cryptography's words."""
    detail = f"[cryptography: {message}]"
    try:
        defect = leaf_defect(request.leaf, request)
    except VerificationError as exc:
        defect = exc.reason
    if defect is not None:
        return f"{defect} {detail}"
    if "name constraint" in message and "unsupported" not in message:
        candidates = (*request.untrusted, *request.trusted)
        reason = explain_constraint_violation(request.leaf, candidates)
        return f"{reason or 'leaf name outside the issuer name constraints'} {detail}"
    if "not valid at validation time" in message:
        return f"{_invalid_issuer(request)} {detail}"
    for fragment, meaning in _MEANINGS:
        if fragment in message:
            text = meaning.format(depth=request.max_chain_depth, eku=request.purpose.eku_name)
            return f"{text} {detail}"
    return f"chain did not verify {detail}"


def _invalid_issuer(request: ChainRequest) -> str:
    for cert in (*request.untrusted, *request.trusted):
        defect = validity_defect(cert, request.at)
        if defect is not None:
            return f"no valid path to a trusted root: {defect} ({describe(cert)})"
    return "no valid path to a trusted root: an issuer is not valid at the verification time"
