"""verify_chain: both engines, on small P-256 PKIs built here.

Every success is paired with a negative control that differs in one thing only, so
the success is known to depend on that thing. ``engine`` runs a test on the primary
path (``verify_chain``) and on the OpenSSL fallback alone (``verify_chain_via_openssl``):
the fallback must accept and refuse the same chains as the primary wherever both can
judge them.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from certwright.errors import InvalidInputError, VerificationError
from certwright.verify.chain import (
    Purpose,
    VerifiedChain,
    verify_chain,
    verify_chain_via_openssl,
)
from certwright.verify.constraints import (
    check_name_constraints,
    constraint_violation,
    uri_host,
    uri_within,
)

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
SERVER = [ExtendedKeyUsageOID.SERVER_AUTH]
CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH]
BOTH = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
SPIFFE = x509.UniformResourceIdentifier("spiffe://example.org/payments")
SVC_DNS = x509.DNSName("payments.example.org")

Verify = Callable[..., VerifiedChain]


# --- building PKIs -----------------------------------------------------------------------


@dataclass(frozen=True)
class CA:
    """A CA certificate and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def name(self) -> x509.Name:
        return self.cert.subject


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: CA | None,
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    issuer_key = issuer.key if issuer else key
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.name if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )


def make_ca(
    cn: str,
    issuer: CA | None = None,
    *,
    constraints: x509.NameConstraints | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    not_after: datetime.datetime = NOW + 3650 * DAY,
) -> CA:
    """A root (no issuer) or an intermediate, optionally name-constrained."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(_name(cn), key, issuer, not_before=NOW - 365 * DAY, not_after=not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(_usage(ca=True), True)
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, True)
    signer = issuer.key if issuer else key
    return CA(builder.sign(signer, hashes.SHA256()), key)


def make_leaf(
    issuer: CA,
    sans: Sequence[x509.GeneralName] = (SPIFFE, SVC_DNS),
    *,
    eku: Sequence[x509.ObjectIdentifier] = BOTH,
    cn: str = "payments",
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + 30 * DAY,
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(_name(cn), key, issuer, not_before=not_before, not_after=not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_usage(ca=False), True)
        .add_extension(x509.ExtendedKeyUsage(list(eku)), False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), False)
    )
    return builder.sign(issuer.key, hashes.SHA256())


def make_crl(
    issuer: CA,
    revoked: Sequence[x509.Certificate] = (),
    *,
    signer: ec.EllipticCurvePrivateKey | None = None,
    next_update: datetime.datetime = NOW + 7 * DAY,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.name)
        .last_update(NOW - DAY)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    for cert in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(NOW - DAY)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(signer or issuer.key, hashes.SHA256())


def trust_domain(*uri_subtrees: str) -> x509.NameConstraints:
    """certwright's intermediate constraints for trust domain example.org."""
    permitted: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uri_subtrees]
    permitted.append(x509.DNSName("example.org"))
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root() -> CA:
    return make_ca("certwright test root")


@pytest.fixture(scope="module")
def intermediate(root: CA) -> CA:
    """An unconstrained intermediate: the primary engine handles its chains."""
    return make_ca("certwright test intermediate", root)


@pytest.fixture(scope="module")
def td_intermediate(root: CA) -> CA:
    """An intermediate constrained to trust domain example.org (URI host and DNS zone)."""
    return make_ca("example.org intermediate", root, constraints=trust_domain("example.org"))


@pytest.fixture(scope="module")
def td_subdomain_intermediate(root: CA) -> CA:
    """Constrained with ``.example.org``: URIs on hosts *below* example.org."""
    return make_ca("sub.example.org intermediate", root, constraints=trust_domain(".example.org"))


@pytest.fixture(params=["primary", "openssl"])
def verify(request: pytest.FixtureRequest) -> Verify:
    """Each engine in turn: verify_chain itself, and the OpenSSL fallback alone."""
    return verify_chain if request.param == "primary" else verify_chain_via_openssl


def refused(verify: Verify, leaf: x509.Certificate, **kwargs: object) -> str:
    """Run ``verify`` expecting a refusal; return its reason."""
    with pytest.raises(VerificationError) as caught:
        verify(leaf, at=NOW, **kwargs)
    return caught.value.reason


# --- plain chains (both engines) ---------------------------------------------------------


def test_server_chain_with_dns_name(verify: Verify, root: CA, intermediate: CA) -> None:
    leaf = make_leaf(intermediate)
    result = verify(
        leaf, trusted=[root.cert], untrusted=[intermediate.cert], dns_name="payments.example.org",
        at=NOW,
    )
    assert result.chain == (leaf, intermediate.cert, root.cert)
    assert result.leaf == leaf
    assert result.purpose is Purpose.SERVER


def test_server_chain_hostname_mismatch(verify: Verify, root: CA, intermediate: CA) -> None:
    reason = refused(
        verify, make_leaf(intermediate), trusted=[root.cert], untrusted=[intermediate.cert],
        dns_name="billing.example.org",
    )
    assert "does not match billing.example.org" in reason


def test_hostname_is_never_matched_against_the_cn(verify: Verify, root: CA, intermediate: CA) -> None:
    # RFC 6125 6.4.4's CN fallback is not offered: the CN names the host, no SAN does.
    leaf = make_leaf(intermediate, [SPIFFE], cn="payments.example.org")
    reason = refused(
        verify, leaf, trusted=[root.cert], untrusted=[intermediate.cert],
        dns_name="payments.example.org",
    )
    assert "does not match" in reason


def test_client_chain(verify: Verify, root: CA, intermediate: CA) -> None:
    leaf = make_leaf(intermediate, eku=CLIENT)
    result = verify(
        leaf, trusted=[root.cert], untrusted=[intermediate.cert], purpose=Purpose.CLIENT, at=NOW
    )
    assert result.purpose is Purpose.CLIENT


def test_client_chain_needs_client_auth(verify: Verify, root: CA, intermediate: CA) -> None:
    reason = refused(
        verify, make_leaf(intermediate, eku=SERVER), trusted=[root.cert],
        untrusted=[intermediate.cert], purpose=Purpose.CLIENT,
    )
    assert "leaf lacks extendedKeyUsage clientAuth" in reason


def test_server_without_name_needs_server_auth(verify: Verify, root: CA, intermediate: CA) -> None:
    ok = verify(
        make_leaf(intermediate, eku=SERVER), trusted=[root.cert], untrusted=[intermediate.cert],
        at=NOW,
    )
    assert ok.purpose is Purpose.SERVER
    reason = refused(
        verify, make_leaf(intermediate, eku=CLIENT), trusted=[root.cert],
        untrusted=[intermediate.cert],
    )
    assert "leaf lacks extendedKeyUsage serverAuth" in reason


def test_server_with_name_needs_server_auth(verify: Verify, root: CA, intermediate: CA) -> None:
    reason = refused(
        verify, make_leaf(intermediate, eku=CLIENT), trusted=[root.cert],
        untrusted=[intermediate.cert], dns_name="payments.example.org",
    )
    assert "leaf lacks extendedKeyUsage serverAuth" in reason


def test_ip_address_san(verify: Verify, root: CA, intermediate: CA) -> None:
    loopback = ipaddress.IPv4Address("127.0.0.1")
    leaf = make_leaf(intermediate, [SPIFFE, x509.IPAddress(loopback)])
    chain = verify(
        leaf, trusted=[root.cert], untrusted=[intermediate.cert], ip_address=loopback, at=NOW
    )
    assert chain.leaf == leaf
    reason = refused(
        verify, leaf, trusted=[root.cert], untrusted=[intermediate.cert],
        ip_address=ipaddress.IPv4Address("127.0.0.2"),
    )
    assert "does not match 127.0.0.2" in reason


def test_expired_leaf(verify: Verify, root: CA, intermediate: CA) -> None:
    end = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    leaf = make_leaf(intermediate, not_before=end - 90 * DAY, not_after=end)
    reason = refused(verify, leaf, trusted=[root.cert], untrusted=[intermediate.cert])
    assert "certificate expired at 2026-01-01T00:00:00Z" in reason
    # Control: the same leaf verifies at a time inside its validity.
    verify(leaf, trusted=[root.cert], untrusted=[intermediate.cert], at=end - DAY)


def test_not_yet_valid_leaf(verify: Verify, root: CA, intermediate: CA) -> None:
    start = NOW + 10 * DAY
    leaf = make_leaf(intermediate, not_before=start, not_after=start + 30 * DAY)
    reason = refused(verify, leaf, trusted=[root.cert], untrusted=[intermediate.cert])
    assert "not valid before" in reason
    verify(leaf, trusted=[root.cert], untrusted=[intermediate.cert], at=start + DAY)


def test_expired_intermediate(verify: Verify, root: CA) -> None:
    stale = make_ca("stale intermediate", root, not_after=NOW - DAY)
    reason = refused(verify, make_leaf(stale), trusted=[root.cert], untrusted=[stale.cert])
    assert "expired at" in reason


def test_untrusted_root(verify: Verify, root: CA, intermediate: CA) -> None:
    stranger = make_ca("some other root")
    leaf = make_leaf(intermediate)
    reason = refused(verify, leaf, trusted=[stranger.cert], untrusted=[intermediate.cert])
    assert "no path to a trusted root" in reason
    verify(leaf, trusted=[stranger.cert, root.cert], untrusted=[intermediate.cert], at=NOW)


def test_missing_intermediate(verify: Verify, root: CA, intermediate: CA) -> None:
    reason = refused(verify, make_leaf(intermediate), trusted=[root.cert])
    assert "no path to a trusted root" in reason


def test_max_chain_depth(verify: Verify, root: CA, intermediate: CA) -> None:
    second = make_ca("second intermediate", intermediate)
    leaf = make_leaf(second)
    pool = [intermediate.cert, second.cert]
    assert len(verify(leaf, trusted=[root.cert], untrusted=pool, max_chain_depth=2, at=NOW).chain) == 4
    reason = refused(verify, leaf, trusted=[root.cert], untrusted=pool, max_chain_depth=1)
    assert "max_chain_depth" in reason


def test_dns_constraint_without_uri_constraints(verify: Verify, root: CA) -> None:
    zone = x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.org")], excluded_subtrees=None)
    constrained = make_ca("dns-only intermediate", root, constraints=zone)
    inside = make_leaf(constrained, [SVC_DNS])
    verify(inside, trusted=[root.cert], untrusted=[constrained.cert], at=NOW)
    outside = make_leaf(constrained, [x509.DNSName("payments.evil.example")])
    reason = refused(verify, outside, trusted=[root.cert], untrusted=[constrained.cert])
    assert "payments.evil.example outside the issuer's name constraints" in reason


# --- URI name constraints: the reason the fallback exists --------------------------------


def test_uri_constrained_chain_uses_openssl(root: CA, td_intermediate: CA) -> None:
    result = verify_chain(
        make_leaf(td_intermediate), trusted=[root.cert], untrusted=[td_intermediate.cert],
        dns_name="payments.example.org", at=NOW,
    )
    assert result.engine == "openssl"
    assert result.chain[1] == td_intermediate.cert


def test_uri_outside_trust_domain_is_refused(root: CA, td_intermediate: CA) -> None:
    evil = x509.UniformResourceIdentifier("spiffe://evil.example/x")
    leaf = make_leaf(td_intermediate, [evil, SVC_DNS])
    reason = refused(verify_chain, leaf, trusted=[root.cert], untrusted=[td_intermediate.cert])
    assert "identity spiffe://evil.example/x outside the issuer's name constraints" in reason


def test_uri_host_constraint_is_exact(root: CA, td_intermediate: CA) -> None:
    # RFC 5280 4.2.1.10: "example.org" names that host only, not its subdomains.
    sub = x509.UniformResourceIdentifier("spiffe://a.example.org/x")
    reason = refused(
        verify_chain, make_leaf(td_intermediate, [sub]), trusted=[root.cert],
        untrusted=[td_intermediate.cert],
    )
    assert "spiffe://a.example.org/x outside the issuer's name constraints" in reason


def test_uri_domain_constraint_covers_subdomains(root: CA, td_subdomain_intermediate: CA) -> None:
    # ".example.org" names hosts below example.org, and not example.org itself.
    pool = [td_subdomain_intermediate.cert]
    below = x509.UniformResourceIdentifier("spiffe://a.example.org/x")
    assert verify_chain(
        make_leaf(td_subdomain_intermediate, [below]), trusted=[root.cert], untrusted=pool, at=NOW
    ).engine == "openssl"
    reason = refused(
        verify_chain, make_leaf(td_subdomain_intermediate, [SPIFFE]), trusted=[root.cert],
        untrusted=pool,
    )
    assert "spiffe://example.org/payments outside" in reason


def test_dns_constraint_enforced_on_fallback(root: CA, td_intermediate: CA) -> None:
    leaf = make_leaf(td_intermediate, [SPIFFE, x509.DNSName("payments.evil.example")])
    reason = refused(verify_chain, leaf, trusted=[root.cert], untrusted=[td_intermediate.cert])
    assert "payments.evil.example outside the issuer's name constraints" in reason


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"not_after": NOW - DAY, "not_before": NOW - 30 * DAY}, "certificate expired at"),
        ({"eku": CLIENT}, "leaf lacks extendedKeyUsage serverAuth"),
    ],
)
def test_fallback_checks_leaf(
    root: CA, td_intermediate: CA, change: dict[str, object], expected: str
) -> None:
    leaf = make_leaf(td_intermediate, **change)  # type: ignore[arg-type]
    reason = refused(verify_chain, leaf, trusted=[root.cert], untrusted=[td_intermediate.cert])
    assert expected in reason


def test_fallback_checks_hostname_and_depth(root: CA, td_intermediate: CA) -> None:
    pool = [td_intermediate.cert]
    leaf = make_leaf(td_intermediate)
    assert "does not match" in refused(
        verify_chain, leaf, trusted=[root.cert], untrusted=pool, dns_name="x.example.org"
    )
    assert "max_chain_depth=0" in refused(
        verify_chain, leaf, trusted=[root.cert], untrusted=pool, max_chain_depth=0
    )


def test_fallback_refuses_wrong_ca(root: CA, td_intermediate: CA) -> None:
    stranger = make_ca("some other root")
    reason = refused(
        verify_chain, make_leaf(td_intermediate), trusted=[stranger.cert],
        untrusted=[td_intermediate.cert],
    )
    assert "no path to a trusted root" in reason


def test_uri_constraints_without_uri_san_stay_on_primary(root: CA, td_intermediate: CA) -> None:
    # cryptography fails only when a URI SAN meets a URI subtree; a DNS-only leaf does not.
    result = verify_chain(
        make_leaf(td_intermediate, [SVC_DNS]), trusted=[root.cert],
        untrusted=[td_intermediate.cert], at=NOW,
    )
    assert result.engine == "cryptography"


def test_no_fallback_for_other_failures(root: CA, intermediate: CA) -> None:
    # Without URI constraints the primary engine's refusal is final, its words kept.
    leaf = make_leaf(intermediate, not_before=NOW - 60 * DAY, not_after=NOW - DAY)
    reason = refused(verify_chain, leaf, trusted=[root.cert], untrusted=[intermediate.cert])
    assert "[cryptography: validation failed" in reason


def test_openssl_reads_a_host_like_cn_as_dns(root: CA, td_intermediate: CA) -> None:
    # A leaf without dNSName SAN whose CN looks like a host name: OpenSSL applies DNS
    # constraints to that CN (cryptography never reads the CN). A plain label is fine.
    pool = [td_intermediate.cert]
    verify_chain(make_leaf(td_intermediate, [SPIFFE], cn="payments"), trusted=[root.cert],
                 untrusted=pool, at=NOW)
    reason = refused(
        verify_chain, make_leaf(td_intermediate, [SPIFFE], cn="payments.prod"),
        trusted=[root.cert], untrusted=pool,
    )
    assert "subject CN payments.prod is read by OpenSSL as a DNS name" in reason


# --- revocation --------------------------------------------------------------------------


@pytest.fixture(params=["cryptography", "openssl"])
def issuing(request: pytest.FixtureRequest, intermediate: CA, td_intermediate: CA) -> CA:
    """An issuing CA per engine: a plain one takes the primary path, a trust-domain
    (URI-constrained) one the OpenSSL fallback."""
    return intermediate if request.param == "cryptography" else td_intermediate


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The engine the ``issuing`` fixture's CA leads verify_chain to."""
    return str(request.node.callspec.params["issuing"])


def test_revoked_leaf(root: CA, issuing: CA, engine: str) -> None:
    leaf = make_leaf(issuing)
    ok = verify_chain(
        leaf, trusted=[root.cert], untrusted=[issuing.cert], crls=[make_crl(issuing)], at=NOW
    )
    assert ok.engine == engine
    reason = refused(
        verify_chain, leaf, trusted=[root.cert], untrusted=[issuing.cert],
        crls=[make_crl(issuing, [leaf])],
    )
    assert "certificate revoked (reason: keyCompromise)" in reason


def test_revoked_intermediate(root: CA, issuing: CA) -> None:
    leaf = make_leaf(issuing)
    reason = refused(
        verify_chain, leaf, trusted=[root.cert], untrusted=[issuing.cert],
        crls=[make_crl(issuing), make_crl(root, [issuing.cert])],
    )
    assert "certificate revoked (reason: keyCompromise)" in reason
    assert issuing.cert.subject.rfc4514_string() in reason


def test_issuer_without_crl_is_not_revoked(root: CA, issuing: CA) -> None:
    # A CRL from another issuer, listing the same serial, says nothing about this leaf.
    leaf = make_leaf(issuing)
    other = make_ca("unrelated CA")
    stranger_crl = make_crl(other, [leaf])
    verify_chain(leaf, trusted=[root.cert], untrusted=[issuing.cert], crls=[stranger_crl], at=NOW)


def test_crl_signed_by_wrong_key_is_refused(root: CA, issuing: CA) -> None:
    """A CRL naming the issuer but not signed by its key fails verification (closed).

    Ignoring it would let whoever can tamper with the CRL file switch revocation off
    for that issuer; the caller asked for revocation checking, and the status of the
    leaf cannot be known, so certwright refuses rather than guesses.
    """
    forged = make_crl(issuing, signer=ec.generate_private_key(ec.SECP256R1()))
    reason = refused(
        verify_chain, make_leaf(issuing), trusted=[root.cert], untrusted=[issuing.cert],
        crls=[forged],
    )
    assert "invalid signature" in reason


def test_stale_crl_is_refused(root: CA, issuing: CA) -> None:
    stale = make_crl(issuing, next_update=NOW - datetime.timedelta(hours=2))
    reason = refused(
        verify_chain, make_leaf(issuing), trusted=[root.cert], untrusted=[issuing.cert],
        crls=[stale],
    )
    assert "CRL" in reason and "stale" in reason


def test_revocation_on_openssl_engine_alone(root: CA, intermediate: CA) -> None:
    leaf = make_leaf(intermediate)
    reason = refused(
        verify_chain_via_openssl, leaf, trusted=[root.cert], untrusted=[intermediate.cert],
        crls=[make_crl(intermediate, [leaf])],
    )
    assert "certificate revoked (reason: keyCompromise)" in reason


# --- arguments ---------------------------------------------------------------------------


def test_naive_time_is_refused(root: CA, intermediate: CA) -> None:
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        verify_chain(make_leaf(intermediate), trusted=[root.cert], at=datetime.datetime(2026, 1, 1))


def test_invalid_host_name_is_refused(root: CA, intermediate: CA) -> None:
    with pytest.raises(InvalidInputError, match="not a valid host name"):
        verify_chain(make_leaf(intermediate), trusted=[root.cert], dns_name="foo_bar.example.org")


def test_empty_trust_store_is_refused(intermediate: CA) -> None:
    with pytest.raises(InvalidInputError, match="trust anchor"):
        verify_chain(make_leaf(intermediate), trusted=[])


# --- the fallback's own name-constraint rules (RFC 5280 4.2.1.10) ------------------------

# Labels start with a letter: an all-digit dotted host is an IPv4 address, no domain.
_LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_LABELS = st.lists(_LABEL, min_size=1, max_size=4)


@given(labels=_LABELS, extra=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))
def test_uri_subtree_semantics(labels: list[str], extra: str) -> None:
    host = ".".join(labels)
    assert uri_within(host, host)  # a host constraint names that host ...
    assert not uri_within(f"{extra}.{host}", host)  # ... and not its subdomains
    assert uri_within(f"{extra}.{host}", "." + host)  # a domain one names those ...
    assert not uri_within(host, "." + host)  # ... and not the domain itself
    assert uri_host(f"spiffe://{host.upper()}/w") == host


def test_uri_without_host_is_outside_any_uri_constraint() -> None:
    nc = trust_domain("example.org")
    for uri in ("urn:uuid:1234", "spiffe://127.0.0.1/x", "spiffe:///x"):
        assert constraint_violation([x509.UniformResourceIdentifier(uri)], nc) == uri


def test_wildcard_san_may_not_reach_an_excluded_name() -> None:
    # CVE-2025-61727: excluding bar.example.com must also exclude *.example.com.
    nc = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")],
        excluded_subtrees=[x509.DNSName("bar.example.com")],
    )
    assert constraint_violation([x509.DNSName("*.example.com")], nc) == "*.example.com"
    assert constraint_violation([x509.DNSName("*.foo.example.com")], nc) is None


def test_fallback_enforces_uri_constraints_itself(root: CA, td_intermediate: CA) -> None:
    # Defence in depth: the path check refuses on its own, whatever OpenSSL decided.
    evil = make_leaf(td_intermediate, [x509.UniformResourceIdentifier("spiffe://evil.example/x")])
    with pytest.raises(VerificationError, match=r"spiffe://evil\.example/x outside"):
        check_name_constraints([evil, td_intermediate.cert, root.cert])
    check_name_constraints([make_leaf(td_intermediate), td_intermediate.cert, root.cert])
