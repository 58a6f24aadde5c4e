"""Every built-in profile's output passes pkilint's RFC 5280 certificate linter.

The linter is assembled exactly as pkilint's own ``lint_pkix_cert lint`` command builds it
(``pkilint/bin/lint_pkix_cert.py`` in pkilint 0.13): the decoding validators for the
RFC 5280 name attributes and extensions, then the issuer, validity, subject, extensions
and SPKI validator containers, run over the certificate's DER.

Which findings count: ``lint_pkix_cert`` prints (and counts in its exit code) every finding
down to its default threshold, INFO. Issue 2 asks for "no error or warning", so FATAL, ERROR
and WARNING fail a test; NOTICE and INFO (for example
``pkix.subject_key_identifier_method_1_identified``, which only says how the key identifier
was derived) are shown in the failure message but are not failures; DEBUG is ignored.

One known finding is filtered, and only that one: pkilint checks URIs with a web-URL
validator that knows only web schemes, so it reports ``pkix.invalid_uri_syntax`` for every
``spiffe://`` URI. The filter is exact (code *and* a ``spiffe://`` value), so the same code
on any other URI still fails.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkilint import loader as pkilint_loader
from pkilint.pkix import certificate as pkix_certificate
from pkilint.pkix import extension as pkix_extension
from pkilint.pkix import name as pkix_name
from pkilint.validation import ValidationFindingSeverity

from certwright.issuance import Authority, create_root
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, generate_key
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings

Severity = ValidationFindingSeverity
FAILING = (Severity.FATAL, Severity.ERROR, Severity.WARNING)
REPORTED = (Severity.NOTICE, Severity.INFO)
KNOWN_SPIFFE_FINDING = "pkix.invalid_uri_syntax"

KEY_TYPES = (KeyType.EC_P256, KeyType.EC_P384, KeyType.ED25519, KeyType.RSA_2048)
PROFILES = ("root-ca", "intermediate-ca", "server", "client", "mtls", "ocsp-responder")
TRUST_DOMAIN = "example.org"
ZONES = ("example.org", "svc.cluster.example")
URLS = {
    "crl_urls": ("http://pki.example.org/crl/issuing.crl",),
    "ocsp_urls": ("http://ocsp.example.org/",),
    "ca_issuer_urls": ("http://pki.example.org/issuing.crt",),
}


def _validator() -> object:
    # Mirrors pkilint/bin/lint_pkix_cert.py main(): same decoders, same containers.
    return pkix_certificate.create_pkix_certificate_validator_container(
        pkix_certificate.create_decoding_validators(
            pkix_name.ATTRIBUTE_TYPE_MAPPINGS, pkix_extension.EXTENSION_MAPPINGS
        ),
        [
            pkix_certificate.create_issuer_validator_container([]),
            pkix_certificate.create_validity_validator_container(),
            pkix_certificate.create_subject_validator_container([]),
            pkix_certificate.create_extensions_validator_container([]),
            pkix_certificate.create_spki_validator_container([]),
        ],
    )


@dataclass(frozen=True)
class Finding:
    path: str
    code: str
    severity: str
    message: str | None

    def __str__(self) -> str:
        return f"{self.severity} {self.code} @ {self.path}" + (f": {self.message}" if self.message else "")


def lint(cert: x509.Certificate, validator: object) -> list[Finding]:
    """Every pkilint finding of severity INFO or above (lint_pkix_cert's default threshold)."""
    document = pkilint_loader.RFC5280CertificateDocumentLoader().load_der_document(
        cert.public_bytes(serialization.Encoding.DER), "certificate"
    )
    results = validator.validate(document.root)  # type: ignore[attr-defined]
    return [
        Finding(str(result.node.path), d.finding.code, d.finding.severity.name, d.message)
        for result in results
        for d in result.finding_descriptions
        if d.finding.severity <= Severity.INFO
    ]


def is_known_spiffe_finding(finding: Finding) -> bool:
    return (
        finding.code == KNOWN_SPIFFE_FINDING
        and finding.message is not None
        and '"spiffe://' in finding.message
    )


def assert_clean(cert: x509.Certificate, validator: object, label: str) -> None:
    findings = [f for f in lint(cert, validator) if not is_known_spiffe_finding(f)]
    failing = [f for f in findings if Severity[f.severity] in FAILING]
    reported = [f for f in findings if Severity[f.severity] in REPORTED]
    assert not failing, (
        f"pkilint (RFC 5280) on {label}:\n  "
        + "\n  ".join(map(str, failing))
        + ("\nalso reported (not failing):\n  " + "\n  ".join(map(str, reported)) if reported else "")
    )


@dataclass(frozen=True)
class Hierarchy:
    root: x509.Certificate
    intermediate: x509.Certificate
    issuing: Authority
    root_authority: Authority
    key_type: KeyType


def _hierarchy(key_type: KeyType, *, urls: bool) -> Hierarchy:
    settings = CASettings(trust_domain=TRUST_DOMAIN, dns_zones=ZONES, **(URLS if urls else {}))
    root_key = generate_key(key_type)
    root = create_root(root_key, subject="CN=Lint Root CA,O=Example", settings=settings)
    root_authority = Authority(certificate=root, key=root_key, settings=settings)
    intermediate_profile = BUILTIN_PROFILES["intermediate-ca"]
    if urls:
        # CA profiles take no CA-wide URLs (those are the intermediate's own CRL / OCSP);
        # an intermediate that names its parent's CRL and certificate does so in its profile.
        intermediate_profile = dataclasses.replace(
            intermediate_profile,
            crl_urls=("http://pki.example.org/crl/root.crl",),
            ca_issuer_urls=("http://pki.example.org/root.crt",),
        )
    issuing_key = generate_key(key_type)
    intermediate = root_authority.create_intermediate(
        issuing_key.public_key(), subject="CN=Lint Issuing CA,O=Example", profile=intermediate_profile
    )
    issuing = Authority(certificate=intermediate, key=issuing_key, settings=settings, chain=(root,))
    return Hierarchy(root, intermediate, issuing, root_authority, key_type)


@pytest.fixture(scope="module")
def validator() -> object:
    return _validator()


@pytest.fixture(scope="module")
def hierarchies() -> dict[tuple[KeyType, bool], Hierarchy]:
    """Hierarchies built on first use, per (key type, with URLs), shared by the module."""
    return {}


def hierarchy(cache: dict[tuple[KeyType, bool], Hierarchy], key_type: KeyType, urls: bool) -> Hierarchy:
    if (key_type, urls) not in cache:
        cache[(key_type, urls)] = _hierarchy(key_type, urls=urls)
    return cache[(key_type, urls)]


def issue(h: Hierarchy, profile_name: str) -> x509.Certificate:
    """A realistic certificate of ``profile_name`` from hierarchy ``h``."""
    if profile_name == "root-ca":
        return h.root
    if profile_name == "intermediate-ca":
        return h.intermediate
    profile = BUILTIN_PROFILES[profile_name]
    public_key = generate_key(h.key_type).public_key()
    if profile_name == "server":
        return h.issuing.issue(
            public_key,
            profile=profile,
            identity=SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/prod/sa/api"),
            sans=SubjectAltNames.create(
                dns=["api.example.org", "api.svc.cluster.example"], ips=["10.20.30.40", "fd00::40"]
            ),
            authorization=Authorization.create(["frontend"], {"tier": "web"}),
        )
    if profile_name == "client":
        return h.issuing.issue(
            public_key,
            profile=profile,
            identity=SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/prod/sa/batch"),
            authorization=Authorization.create(["reader", "billing-writer"], {"owner": "team-billing"}),
        )
    if profile_name == "mtls":
        return h.issuing.issue(
            public_key,
            profile=profile,
            identity=SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/prod/sa/payments"),
            sans=SubjectAltNames.create(dns=["payments.svc.cluster.example"], ips=["10.1.2.3"]),
            authorization=Authorization.create(["payments", "reader"], {"env": "prod", "tier": "core"}),
        )
    if profile_name == "ocsp-responder":
        return h.issuing.issue(public_key, profile=profile, subject="CN=Lint OCSP Responder,O=Example")
    raise AssertionError(profile_name)


@pytest.mark.parametrize("urls", [False, True], ids=["no-urls", "crl-ocsp-urls"])
@pytest.mark.parametrize("key_type", KEY_TYPES, ids=lambda k: k.value)
@pytest.mark.parametrize("profile_name", PROFILES)
def test_builtin_profile_passes_pkilint(
    validator: object,
    hierarchies: dict[tuple[KeyType, bool], Hierarchy],
    profile_name: str,
    key_type: KeyType,
    urls: bool,
) -> None:
    h = hierarchy(hierarchies, key_type, urls)
    cert = issue(h, profile_name)
    assert_clean(cert, validator, f"{profile_name} / {key_type.value} / urls={urls}")


@pytest.mark.parametrize("key_type", KEY_TYPES, ids=lambda k: k.value)
def test_urls_land_where_configured(
    hierarchies: dict[tuple[KeyType, bool], Hierarchy], key_type: KeyType
) -> None:
    """The 'with URLs' certificates above really carry them (else the lint proves little)."""
    h = hierarchy(hierarchies, key_type, True)
    leaf = issue(h, "mtls")
    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for p in points for n in (p.full_name or [])] == list(URLS["crl_urls"])
    access = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {d.access_location.value for d in access} == {*URLS["ocsp_urls"], *URLS["ca_issuer_urls"]}
    assert h.intermediate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    plain = issue(hierarchy(hierarchies, key_type, False), "mtls")
    with pytest.raises(x509.ExtensionNotFound):
        plain.extensions.get_extension_for_class(x509.CRLDistributionPoints)


def test_spiffe_uri_is_the_only_finding_filtered(
    validator: object, hierarchies: dict[tuple[KeyType, bool], Hierarchy]
) -> None:
    """Negative control: pkilint does report the SPIFFE URI, and real problems still fail."""
    h = hierarchy(hierarchies, KeyType.EC_P256, False)
    findings = lint(issue(h, "mtls"), validator)
    assert any(is_known_spiffe_finding(f) for f in findings), "pkilint no longer flags spiffe:// URIs"
    # The same code on a non-SPIFFE URI is not filtered.
    assert not is_known_spiffe_finding(
        Finding("p", KNOWN_SPIFFE_FINDING, "ERROR", 'Invalid URI syntax: "htp:/x"')
    )
    # A certificate that does break RFC 5280 fails the check.
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    bad = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        # RFC 5280 4.2.1.6: with an empty subject the SAN MUST be critical; it is not here.
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(AssertionError, match="san_extension_not_critical_empty_subject"):
        assert_clean(bad, validator, "deliberately broken certificate")
