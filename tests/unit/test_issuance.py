"""certwright.issuance: the authority, proven against cryptography's CertificateBuilder.

certwright assembles the TBSCertificate itself from pre-encoded DER. The central tests
here rebuild every certificate it issues with ``x509.CertificateBuilder`` from the
certificate's own content (serial, validity, names, key, extensions in order with their
criticality) and the same CA key, and require the TBSCertificate to be byte-identical;
for RSA PKCS#1 v1.5 and Ed25519, whose signatures are deterministic, the whole DER.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certwright.clock import FixedClock
from certwright.errors import InvalidCSRError, InvalidIdentityError, InvalidInputError, PolicyViolation
from certwright.issuance import (
    SERIAL_BITS,
    Authority,
    VerifiedCSR,
    _key_id,
    _subject_key,
    create_root,
    random_serial,
    verify_csr,
)
from certwright.store.records import certificate_fields, issued_fields
from certwright.x509 import der
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, generate_key, key_type_of
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings, IdentityRule

# RSA-3072/4096 appear only where a test is about every KeyType: they add nothing to the
# encoding but cost generation time.
SIGNING_KEY_TYPES = (KeyType.EC_P256, KeyType.EC_P384, KeyType.ED25519, KeyType.RSA_2048)
DETERMINISTIC = (KeyType.ED25519, KeyType.RSA_2048)  # PKCS#1 v1.5 and Ed25519 signatures
LEAF_PROFILES = ("server", "client", "mtls", "ocsp-responder")
WEB = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


@pytest.fixture(scope="module")
def url_settings() -> CASettings:
    """Settings that exercise every optional extension: URLs, two zones, another OID."""
    return CASettings(
        trust_domain="example.org",
        dns_zones=("example.org", "svc.internal"),
        extension_oid="1.3.6.1.4.1.99999.2.1",
        crl_urls=("http://crl.example.org/root.crl", "http://crl2.example.org/root.crl"),
        ocsp_urls=("http://ocsp.example.org",),
        ca_issuer_urls=("http://pki.example.org/root.der",),
    )


@pytest.fixture(scope="module")
def url_authority_for(key_for, url_settings, start):
    cache: dict[KeyType, Authority] = {}

    def get(key_type: KeyType) -> Authority:
        if key_type not in cache:
            key = key_for(key_type)
            clock = FixedClock(start)
            root = create_root(key, subject="CN=URL Root", settings=url_settings, clock=clock)
            cache[key_type] = Authority(certificate=root, key=key, settings=url_settings, clock=clock)
        return cache[key_type]

    return get


@pytest.fixture
def fresh_authority(key_for, clock):
    """A new root on the test's own clock (which the test may move), and its Authority."""

    def make(
        *,
        settings: CASettings | None = None,
        authority_settings: CASettings | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> Authority:
        settings = settings or CASettings(trust_domain="example.org")
        key = key_for(KeyType.EC_P256)
        root = create_root(key, subject="CN=Fresh Root", settings=settings, lifetime=lifetime, clock=clock)
        return Authority(certificate=root, key=key, settings=authority_settings or settings, clock=clock)

    return make


@pytest.fixture
def csr_for(leaf_keys):
    """Build a CSR with cryptography."""

    def make(
        *,
        key=None,
        subject: str | None = "CN=web",
        sans: list[x509.GeneralName] | None = None,
        basic_constraints: x509.BasicConstraints | None = None,
    ) -> x509.CertificateSigningRequest:
        key = key or leaf_keys(KeyType.EC_P256)
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name.from_rfc4514_string(subject) if subject else x509.Name([])
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if basic_constraints is not None:
            builder = builder.add_extension(basic_constraints, critical=True)
        algorithm = None if KeyType.ED25519 is key_type_of(key) else hashes.SHA256()
        return builder.sign(key, algorithm)

    return make


def _issue_for(authority: Authority, profile_name: str, public_key, **kwargs) -> x509.Certificate:
    profile = BUILTIN_PROFILES[profile_name]
    if profile.identity is not IdentityRule.FORBIDDEN:
        kwargs.setdefault("identity", WEB)
        if profile.ip_ranges:
            kwargs.setdefault(
                "sans", SubjectAltNames.parse(["dns:web.example.org", "ip:10.0.0.7", "ip:fd00::7"])
            )
        else:
            kwargs.setdefault("sans", SubjectAltNames.parse(["dns:web.example.org"]))
        kwargs.setdefault("authorization", Authorization.create(["reader", "writer"], {"env": "prod"}))
    else:
        kwargs.setdefault("subject", f"CN={profile_name} 1,O=Example")
    return authority.issue(public_key, profile=profile, **kwargs)


def _assert_builder_identical(cert, ca_key, ca_type, rebuild):
    rebuilt = rebuild(cert, ca_key)
    assert rebuilt.tbs_certificate_bytes == cert.tbs_certificate_bytes
    if ca_type in DETERMINISTIC:
        assert _der(rebuilt) == _der(cert)


# -- THE KEY TEST: byte-identical to cryptography's builder ---------------------------------


@pytest.mark.parametrize("profile_name", LEAF_PROFILES)
@pytest.mark.parametrize("leaf_type", SIGNING_KEY_TYPES, ids=lambda t: f"leaf-{t.value}")
@pytest.mark.parametrize("ca_type", SIGNING_KEY_TYPES, ids=lambda t: f"ca-{t.value}")
def test_leaf_tbs_is_byte_identical_to_certificate_builder(
    authority_for, leaf_keys, key_for, rebuild, ca_type, leaf_type, profile_name
):
    authority = authority_for(ca_type)
    cert = _issue_for(authority, profile_name, leaf_keys(leaf_type).public_key())
    cert.verify_directly_issued_by(authority.certificate)
    _assert_builder_identical(cert, key_for(ca_type), ca_type, rebuild)


def test_builder_comparison_detects_a_difference(authority, key_for, leaf_keys, rebuild):
    # negative control: the comparison is sensitive to one changed extension flag
    cert = _issue_for(authority, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    builder = (
        x509.CertificateBuilder()
        .serial_number(cert.serial_number)
        .issuer_name(cert.issuer)
        .subject_name(cert.subject)
        .public_key(cert.public_key())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for i, ext in enumerate(cert.extensions):
        builder = builder.add_extension(ext.value, critical=ext.critical if i else not ext.critical)
    flipped = builder.sign(key_for(KeyType.EC_P256), hashes.SHA256())
    assert flipped.tbs_certificate_bytes != cert.tbs_certificate_bytes
    assert rebuild(cert, key_for(KeyType.EC_P256)).tbs_certificate_bytes == cert.tbs_certificate_bytes


@pytest.mark.parametrize("profile_name", ["server", "mtls", "ocsp-responder"])
@pytest.mark.parametrize("ca_type", SIGNING_KEY_TYPES, ids=lambda t: f"ca-{t.value}")
def test_tbs_with_urls_zones_and_custom_oid_is_byte_identical(
    url_authority_for, leaf_keys, key_for, rebuild, ca_type, profile_name
):
    authority = url_authority_for(ca_type)
    cert = _issue_for(
        authority,
        profile_name,
        leaf_keys(KeyType.EC_P256).public_key(),
        **(
            {"sans": SubjectAltNames.parse(["dns:api.svc.internal"])}
            if profile_name != "ocsp-responder"
            else {}
        ),
    )
    _assert_builder_identical(cert, key_for(ca_type), ca_type, rebuild)


@pytest.mark.parametrize("ca_type", SIGNING_KEY_TYPES, ids=lambda t: f"ca-{t.value}")
def test_root_and_intermediate_tbs_are_byte_identical(
    authority_for, url_authority_for, leaf_keys, key_for, rebuild, ca_type
):
    for authority in (authority_for(ca_type), url_authority_for(ca_type)):
        _assert_builder_identical(authority.certificate, key_for(ca_type), ca_type, rebuild)
        intermediate = authority.create_intermediate(
            leaf_keys(KeyType.EC_P384).public_key(), subject="CN=Issuing CA"
        )
        _assert_builder_identical(intermediate, key_for(ca_type), ca_type, rebuild)


_SEGMENT = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(lambda s: s not in (".", ".."))
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda s: not s.startswith("xn--")
)
_DNS = st.lists(_LABEL, max_size=3).map(lambda labels: ".".join([*labels, "example.org"]))
_IP = st.one_of(
    st.ip_addresses(network="10.0.0.0/8"),
    st.ip_addresses(network="192.168.0.0/16"),
    st.ip_addresses(network="127.0.0.0/8"),
    st.ip_addresses(network="fc00::/7"),
    st.just(ipaddress.ip_address("::1")),
)
_ROLE = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,15}", fullmatch=True)
_VALUE = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=40)


@st.composite
def _requests(draw):
    profile = BUILTIN_PROFILES[draw(st.sampled_from(["server", "client", "mtls"]))]
    identity = None
    if profile.identity is IdentityRule.REQUIRED or draw(st.booleans()):
        segments = draw(st.lists(_SEGMENT, min_size=1, max_size=4))
        identity = SpiffeId.parse("spiffe://example.org/" + "/".join(segments))
    ips = draw(st.lists(_IP, max_size=3)) if profile.ip_ranges else []
    dns = draw(st.lists(_DNS, max_size=3))
    subject = draw(st.sampled_from([None, None, "CN=api,O=Example,C=DE", "CN=x", ""]))
    if identity is None and not dns and not ips and not subject:
        subject = "CN=named"  # a certificate must name someone (tested on its own below)
    max_seconds = int(profile.max_lifetime.total_seconds())
    return {
        "ca_type": draw(st.sampled_from(SIGNING_KEY_TYPES)),
        "leaf_type": draw(st.sampled_from(SIGNING_KEY_TYPES)),
        "profile": profile,
        "identity": identity,
        "sans": SubjectAltNames.create(dns=dns, ips=ips),
        "authorization": Authorization.create(
            draw(st.lists(_ROLE, max_size=4)), draw(st.dictionaries(_ROLE, _VALUE, max_size=3))
        ),
        "lifetime": draw(
            st.one_of(st.none(), st.integers(1, max_seconds).map(lambda s: datetime.timedelta(seconds=s)))
        ),
        "subject": subject,
    }


@settings(max_examples=300, deadline=None)
@given(request=_requests())
def test_any_issued_certificate_is_byte_identical_to_certificate_builder(
    authority_for, leaf_keys, key_for, rebuild, request
):
    request = dict(request)
    ca_type = request.pop("ca_type")
    authority = authority_for(ca_type)
    cert = authority.issue(leaf_keys(request.pop("leaf_type")).public_key(), **request)
    _assert_builder_identical(cert, key_for(ca_type), ca_type, rebuild)
    # and the content is what was asked for
    sans = SubjectAltNames.of(cert)
    assert sans.uris == ((str(request["identity"]),) if request["identity"] else ())
    assert sans.dns == request["sans"].dns
    assert sans.ips == request["sans"].ips
    assert Authorization.from_certificate(cert, authority.settings.oid) == request["authorization"]
    lifetime = request["lifetime"] or request["profile"].default_lifetime
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == lifetime + authority.settings.backdate


@settings(max_examples=150, deadline=None)
@given(request=_requests())
def test_issued_facts_are_what_the_certificate_says(authority_for, leaf_keys, request):
    """Batch signing indexes certificates from :class:`Issued` facts, never parsing them back."""
    request = dict(request)
    authority = authority_for(request.pop("ca_type"))
    public_key = leaf_keys(request.pop("leaf_type")).public_key()
    issued = authority._issue(_subject_key(public_key), **request)
    cert = issued.certificate
    assert issued.serial == cert.serial_number
    assert (issued.not_before, issued.not_after) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
    assert issued.spki == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert issued.key_type is key_type_of(cert.public_key())
    assert issued.sans == SubjectAltNames.of(cert)
    assert issued.authorization == Authorization.from_certificate(cert, authority.settings.oid)
    assert issued.fingerprint == cert.fingerprint(hashes.SHA256())
    assert issued.pem() == cert.public_bytes(serialization.Encoding.PEM)
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    assert issued_fields(
        issued,
        issuer=authority.certificate.subject.rfc4514_string(),
        issuer_key_id=authority.key_identifier,
        profile="p",
        requested_by="t",
        created_at=now,
    ) == certificate_fields(
        cert, profile="p", requested_by="t", created_at=now, extension_oid=authority.settings.extension_oid
    )


# -- serial numbers -------------------------------------------------------------------------


def test_serials_are_positive_random_and_at_most_20_octets(authority, leaf_keys):
    public_key = leaf_keys(KeyType.EC_P256).public_key()
    serials = [
        authority.issue(public_key, profile=BUILTIN_PROFILES["mtls"], identity=WEB).serial_number
        for _ in range(200)
    ]
    assert len(set(serials)) == len(serials)
    assert all(0 < s < 2**SERIAL_BITS for s in serials)
    assert all(len(der.integer(s)) - 2 <= 20 for s in serials)  # RFC 5280 4.1.2.2
    lengths = [s.bit_length() for s in serials]
    # >= 64 bits of CSPRNG output: a 127-bit uniform serial is below 2^64 with odds 2^-63
    assert min(lengths) >= 64
    assert max(lengths) == SERIAL_BITS  # odds of failing: 2^-200
    assert len(set(lengths)) > 1  # spread, not a fixed top bit


def test_random_serial_never_repeats_in_practice():
    serials = {random_serial() for _ in range(5000)}
    assert len(serials) == 5000
    assert SERIAL_BITS >= 64


# -- key identifiers ------------------------------------------------------------------------


@pytest.mark.parametrize("leaf_type", SIGNING_KEY_TYPES)
def test_ski_is_sha1_of_the_subject_public_key(authority, leaf_keys, leaf_type):
    public_key = leaf_keys(leaf_type).public_key()
    cert = _issue_for(authority, "mtls", public_key)
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    assert ski.critical is False
    assert ski.value.digest == x509.SubjectKeyIdentifier.from_public_key(public_key).digest
    # negative control: it is not the hash of the whole SubjectPublicKeyInfo
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ski.value.digest != hashlib.sha1(spki).digest()


def test_key_id_of_an_unusual_spki_is_read_from_its_der(leaf_keys):
    # A P-256 key with a compressed point (a valid SPKI a CSR may carry) is not the usual
    # 91-byte shape the fast path knows: its key id is the SHA-1 of the bits it holds.
    public_key = leaf_keys(KeyType.EC_P256).public_key()
    point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    algorithm = der.sequence(der.oid("1.2.840.10045.2.1"), der.oid("1.2.840.10045.3.1.7"))
    compressed = der.sequence(algorithm, der.bit_string(point))
    assert serialization.load_der_public_key(compressed) == public_key
    assert _key_id(compressed) == hashlib.sha1(point).digest()
    # Same length as a usual SPKI of some type, another header: not taken for it.
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    usual = public_key.public_bytes(serialization.Encoding.DER, spki)
    assert _key_id(usual) == hashlib.sha1(usual[26:]).digest()  # the point, after the header
    forged = b"\x30\x59\x30\x13" + bytes(22) + usual[26:]
    assert len(forged) == len(usual)
    assert _key_id(forged) != _key_id(usual)


def test_leaves_issued_on_the_system_clock_start_at_the_current_second(authority, leaf_keys):
    root = create_root(authority.key, subject="CN=System Clock Root", settings=authority.settings)
    system = Authority(certificate=root, key=authority.key, settings=authority.settings)
    public_key = leaf_keys(KeyType.EC_P256).public_key()
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    first, second = (_issue_for(system, "mtls", public_key) for _ in range(2))
    after = datetime.datetime.now(datetime.UTC)
    for cert in (first, second):
        start = cert.not_valid_before_utc + system.settings.backdate
        assert before <= start <= after
        assert cert.not_valid_after_utc - start == BUILTIN_PROFILES["mtls"].default_lifetime
    # Switching to a fixed clock is honoured at once (the memo of the second is per clock).
    moment = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=3)
    system.clock = FixedClock(moment)
    fixed = _issue_for(system, "mtls", public_key)
    assert fixed.not_valid_before_utc == moment - system.settings.backdate


def test_aki_is_the_issuer_ski(authority, leaf_keys):
    intermediate_key = leaf_keys(KeyType.EC_P384)
    intermediate = authority.create_intermediate(intermediate_key.public_key(), subject="CN=Issuing")
    sub = Authority(
        certificate=intermediate,
        key=intermediate_key,
        settings=authority.settings,
        chain=(authority.certificate,),
        clock=authority.clock,
    )
    leaf = _issue_for(sub, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    root_ski = _ext(authority.certificate, x509.SubjectKeyIdentifier).value.digest
    inter_ski = _ext(intermediate, x509.SubjectKeyIdentifier).value.digest
    assert _ext(intermediate, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski
    assert _ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == inter_ski
    assert _ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier != root_ski
    aki = _ext(leaf, x509.AuthorityKeyIdentifier)
    assert aki.critical is False
    assert aki.value.authority_cert_issuer is None and aki.value.authority_cert_serial_number is None
    leaf.verify_directly_issued_by(intermediate)


# -- validity -------------------------------------------------------------------------------


def test_not_before_is_backdated(fresh_authority, clock, leaf_keys):
    ca = fresh_authority()
    clock.advance(datetime.timedelta(hours=1))
    cert = _issue_for(ca, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    assert cert.not_valid_before_utc == clock.now() - ca.settings.backdate
    assert cert.not_valid_after_utc == clock.now() + BUILTIN_PROFILES["mtls"].default_lifetime


def test_backdate_never_reaches_before_the_issuer(fresh_authority, clock, leaf_keys):
    no_backdate = CASettings(trust_domain="example.org", backdate=datetime.timedelta(0))
    backdating = CASettings(trust_domain="example.org", backdate=datetime.timedelta(minutes=5))
    ca = fresh_authority(settings=no_backdate, authority_settings=backdating)
    issuer_start = ca.certificate.not_valid_before_utc
    assert issuer_start == clock.now()
    clock.advance(datetime.timedelta(seconds=30))
    cert = _issue_for(ca, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    assert cert.not_valid_before_utc == issuer_start  # not now - 5 min
    # negative control: later on, the full backdate applies
    clock.advance(datetime.timedelta(hours=1))
    later = _issue_for(ca, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    assert later.not_valid_before_utc == clock.now() - datetime.timedelta(minutes=5)


def test_a_leaf_never_outlives_its_issuer(fresh_authority, clock, leaf_keys):
    ca = fresh_authority(lifetime=datetime.timedelta(days=10))
    issuer_end = ca.certificate.not_valid_after_utc
    clock.advance(datetime.timedelta(days=9))
    clamped = ca.issue(
        leaf_keys(KeyType.EC_P256).public_key(),
        profile=BUILTIN_PROFILES["server"],
        sans=SubjectAltNames.parse(["dns:example.org"]),
        lifetime=datetime.timedelta(days=30),
    )
    assert clamped.not_valid_after_utc == issuer_end
    # negative control: a lifetime inside the issuer's is kept
    short = ca.issue(
        leaf_keys(KeyType.EC_P256).public_key(),
        profile=BUILTIN_PROFILES["server"],
        sans=SubjectAltNames.parse(["dns:example.org"]),
        lifetime=datetime.timedelta(hours=12),
    )
    assert short.not_valid_after_utc == clock.now() + datetime.timedelta(hours=12)


def test_an_expired_issuer_refuses(fresh_authority, clock, leaf_keys):
    ca = fresh_authority(lifetime=datetime.timedelta(days=1))
    clock.current = ca.certificate.not_valid_after_utc - datetime.timedelta(seconds=1)
    last = _issue_for(ca, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    assert last.not_valid_after_utc == ca.certificate.not_valid_after_utc
    clock.advance(datetime.timedelta(seconds=1))
    with pytest.raises(PolicyViolation, match="the issuing CA expired at") as info:
        _issue_for(ca, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    assert info.value.field == "issuer"


def test_an_issuer_not_valid_yet_never_gives_an_inverted_validity(fresh_authority, clock, leaf_keys):
    ca = fresh_authority()
    issuer_start = ca.certificate.not_valid_before_utc
    clock.current = issuer_start - datetime.timedelta(days=3)  # the CA's clock went back
    with pytest.raises(PolicyViolation, match="the issuing CA is not valid before") as info:
        _issue_for(ca, "mtls", leaf_keys(KeyType.EC_P256).public_key())  # 1-day lifetime
    assert info.value.field == "issuer"
    # negative control: a lifetime that reaches past the issuer's start keeps notBefore clamped
    cert = _issue_for(ca, "server", leaf_keys(KeyType.EC_P256).public_key())
    assert cert.not_valid_before_utc == issuer_start < cert.not_valid_after_utc


def test_times_are_whole_seconds(fresh_authority, clock, leaf_keys):
    ca = fresh_authority()
    clock.current = clock.current.replace(microsecond=654321)
    cert = _issue_for(ca, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    assert cert.not_valid_before_utc.microsecond == 0
    assert cert.not_valid_after_utc.microsecond == 0


# -- subject and SAN ------------------------------------------------------------------------


def test_default_subject_is_a_cn_label_from_the_identity(authority, leaf_keys):
    cert = _issue_for(authority, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    assert _ext(cert, x509.SubjectAlternativeName).critical is False
    # the identity is the first and only URI SAN
    assert _ext(cert, x509.SubjectAlternativeName).value[0] == x509.UniformResourceIdentifier(str(WEB))


def test_cn_label_is_cut_to_64_characters(authority, leaf_keys):
    identity = SpiffeId.parse("spiffe://example.org/" + "w" * 100)
    cert = authority.issue(
        leaf_keys(KeyType.EC_P256).public_key(), profile=BUILTIN_PROFILES["mtls"], identity=identity
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "w" * 64


def test_without_identity_the_cn_is_the_first_dns_name(authority, leaf_keys):
    cert = authority.issue(
        leaf_keys(KeyType.EC_P256).public_key(),
        profile=BUILTIN_PROFILES["server"],
        sans=SubjectAltNames.parse(["dns:api.example.org", "dns:example.org"]),
    )
    assert cert.subject.rfc4514_string() == "CN=api.example.org"


def test_empty_subject_makes_the_san_critical(authority, leaf_keys):
    # RFC 5280 4.2.1.6: with an empty subject the SAN extension MUST be critical
    only_ip = authority.issue(
        leaf_keys(KeyType.EC_P256).public_key(),
        profile=BUILTIN_PROFILES["server"],
        sans=SubjectAltNames.parse(["ip:10.0.0.1"]),
    )
    assert len(only_ip.subject) == 0
    assert _ext(only_ip, x509.SubjectAlternativeName).critical is True
    explicit = _issue_for(authority, "mtls", leaf_keys(KeyType.EC_P256).public_key(), subject="")
    assert len(explicit.subject) == 0
    assert _ext(explicit, x509.SubjectAlternativeName).critical is True
    # negative control: any subject at all leaves it non-critical
    named = _issue_for(authority, "mtls", leaf_keys(KeyType.EC_P256).public_key(), subject="CN=x")
    assert _ext(named, x509.SubjectAlternativeName).critical is False


def test_a_certificate_that_names_nobody_is_refused(authority, leaf_keys):
    # RFC 5280 4.1.2.6: an empty subject needs a SAN
    public_key = leaf_keys(KeyType.EC_P256).public_key()
    with pytest.raises(PolicyViolation, match="the certificate would name nobody") as info:
        authority.issue(public_key, profile=BUILTIN_PROFILES["server"])
    assert info.value.field == "subject"
    with pytest.raises(PolicyViolation, match="would name nobody"):
        authority.issue(public_key, profile=BUILTIN_PROFILES["ocsp-responder"], subject="")
    # negative control: a subject, or any SAN, is enough
    assert authority.issue(public_key, profile=BUILTIN_PROFILES["ocsp-responder"], subject="CN=OCSP")
    assert authority.issue(
        public_key, profile=BUILTIN_PROFILES["server"], sans=SubjectAltNames.parse(["ip:::1"])
    )


def test_explicit_subject_is_kept_whole(authority, leaf_keys):
    cert = _issue_for(
        authority,
        "mtls",
        leaf_keys(KeyType.EC_P256).public_key(),
        subject="CN=api,OU=Platform,O=Example,C=DE",
    )
    assert cert.subject.rfc4514_string() == "CN=api,OU=Platform,O=Example,C=DE"


def test_profile_extensions_are_in_the_certificate(authority, leaf_keys):
    cert = _issue_for(authority, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert [e.oid for e in cert.extensions][:4] == [
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ]
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.NameConstraints)


def test_ocsp_responder_carries_ocsp_nocheck(authority, leaf_keys):
    cert = _issue_for(authority, "ocsp-responder", leaf_keys(KeyType.EC_P256).public_key())
    assert _ext(cert, x509.OCSPNoCheck).critical is False
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
    # negative control: other leaves do not
    with pytest.raises(x509.ExtensionNotFound):
        _ext(_issue_for(authority, "server", leaf_keys(KeyType.EC_P256).public_key()), x509.OCSPNoCheck)


def test_ca_urls_go_into_leaves_not_into_ca_certificates(url_authority_for, url_settings, leaf_keys):
    authority = url_authority_for(KeyType.EC_P256)
    leaf = _issue_for(authority, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    points = _ext(leaf, x509.CRLDistributionPoints).value
    assert [p.full_name[0].value for p in points] == list(url_settings.crl_urls)
    access = {
        (a.access_method, a.access_location.value) for a in _ext(leaf, x509.AuthorityInformationAccess).value
    }
    assert access == {
        (x509.oid.AuthorityInformationAccessOID.OCSP, "http://ocsp.example.org"),
        (x509.oid.AuthorityInformationAccessOID.CA_ISSUERS, "http://pki.example.org/root.der"),
    }
    intermediate = authority.create_intermediate(leaf_keys(KeyType.EC_P384).public_key(), subject="CN=I")
    for cls in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
        with pytest.raises(x509.ExtensionNotFound):
            _ext(intermediate, cls)


def test_authorization_goes_under_the_configured_oid(url_authority_for, leaf_keys):
    authority = url_authority_for(KeyType.EC_P256)
    cert = _issue_for(authority, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.99999.2.1"))
    assert ext.critical is False
    assert Authorization.from_certificate(cert, "1.3.6.1.4.1.99999.2.1").roles == ("reader", "writer")
    assert Authorization.from_certificate(cert) == Authorization()  # not under the default OID


def test_policy_violations_stop_issuance(authority, leaf_keys):
    public_key = leaf_keys(KeyType.EC_P256).public_key()
    with pytest.raises(PolicyViolation) as info:
        authority.issue(public_key, profile=BUILTIN_PROFILES["mtls"])
    assert info.value.field == "identity"
    with pytest.raises(PolicyViolation) as info:
        authority.issue(
            public_key, profile=BUILTIN_PROFILES["server"], sans=SubjectAltNames.parse(["dns:evil.com"])
        )
    assert info.value.field == "dns"


# -- the CSR path ---------------------------------------------------------------------------


@pytest.mark.parametrize("leaf_type", SIGNING_KEY_TYPES)
def test_sign_csr_issues_for_the_csr_key(authority, csr_for, leaf_keys, leaf_type):
    key = leaf_keys(leaf_type)
    csr = csr_for(key=key, sans=[x509.UniformResourceIdentifier(str(WEB)), x509.DNSName("web.example.org")])
    cert = authority.sign_csr(csr, profile=BUILTIN_PROFILES["mtls"])
    assert cert.public_key() == key.public_key()
    sans = SubjectAltNames.of(cert)
    assert sans.uris == (str(WEB),)
    assert sans.dns == ("web.example.org",)


@pytest.mark.parametrize("leaf_type", SIGNING_KEY_TYPES)
def test_sign_csr_verifies_the_csr_signature(authority, csr_for, leaf_keys, leaf_type):
    good = csr_for(key=leaf_keys(leaf_type), subject="CN=web")
    data = good.public_bytes(serialization.Encoding.DER)
    assert data.count(b"web") == 1
    tampered = x509.load_der_x509_csr(data.replace(b"web", b"wex"))  # still parses
    with pytest.raises(InvalidCSRError, match="the CSR signature does not verify"):
        authority.sign_csr(tampered, profile=BUILTIN_PROFILES["mtls"], identity=WEB)
    # negative control: the untouched CSR is accepted
    assert authority.sign_csr(good, profile=BUILTIN_PROFILES["mtls"], identity=WEB)


def test_sign_csr_refuses_a_corrupted_signature(authority, csr_for):
    data = bytearray(csr_for().public_bytes(serialization.Encoding.DER))
    data[-1] ^= 0x01
    with pytest.raises(InvalidCSRError, match="does not verify"):
        authority.sign_csr(
            x509.load_der_x509_csr(bytes(data)), profile=BUILTIN_PROFILES["mtls"], identity=WEB
        )


@pytest.mark.parametrize("value", [b"garbage", b"\x30\x03\x82\x01\xff"], ids=["not-der", "bad-dns-name"])
def test_csr_with_a_malformed_san_extension_is_refused(authority, leaf_keys, value):
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, value), critical=False
        )
        .sign(leaf_keys(KeyType.EC_P256), hashes.SHA256())
    )
    assert csr.is_signature_valid  # well signed, badly formed
    with pytest.raises(InvalidCSRError, match="the CSR has a malformed extension"):
        authority.sign_csr(csr, profile=BUILTIN_PROFILES["mtls"], identity=WEB)


def test_csr_asking_for_ca_is_refused(authority, csr_for):
    csr = csr_for(basic_constraints=x509.BasicConstraints(ca=True, path_length=None))
    with pytest.raises(
        PolicyViolation, match="the CSR asks for CA:true, which profile 'mtls' does not issue"
    ) as info:
        authority.sign_csr(csr, profile=BUILTIN_PROFILES["mtls"], identity=WEB)
    assert info.value.field == "basic_constraints"
    # negative control: CA:false in the CSR is fine (and the profile decides anyway)
    fine = csr_for(basic_constraints=x509.BasicConstraints(ca=False, path_length=None))
    cert = authority.sign_csr(fine, profile=BUILTIN_PROFILES["mtls"], identity=WEB)
    assert _ext(cert, x509.BasicConstraints).value.ca is False


def test_csr_with_two_uri_sans_is_refused(authority, csr_for):
    csr = csr_for(
        sans=[
            x509.UniformResourceIdentifier(str(WEB)),
            x509.UniformResourceIdentifier("spiffe://example.org/other"),
        ]
    )
    with pytest.raises(PolicyViolation, match="more than one URI SAN") as info:
        authority.sign_csr(csr, profile=BUILTIN_PROFILES["mtls"])
    assert info.value.field == "uri"


def test_csr_identity_conflicting_with_the_request_is_refused(authority, csr_for):
    csr = csr_for(sans=[x509.UniformResourceIdentifier("spiffe://example.org/other")])
    with pytest.raises(
        PolicyViolation, match=f"asks for identity spiffe://example.org/other, but the request is for {WEB}"
    ) as info:
        authority.sign_csr(csr, profile=BUILTIN_PROFILES["mtls"], identity=WEB)
    assert info.value.field == "identity"
    # negative control: the same identity on both sides is fine
    same = csr_for(sans=[x509.UniformResourceIdentifier(str(WEB))])
    assert SubjectAltNames.of(
        authority.sign_csr(same, profile=BUILTIN_PROFILES["mtls"], identity=WEB)
    ).uris == (str(WEB),)


def test_csr_uri_that_is_no_spiffe_id_is_refused(authority, csr_for):
    csr = csr_for(sans=[x509.UniformResourceIdentifier("https://example.org/web")])
    with pytest.raises(InvalidIdentityError, match="must start with spiffe://"):
        authority.sign_csr(csr, profile=BUILTIN_PROFILES["mtls"])


def test_csr_sans_pass_the_profile_checks(authority, csr_for):
    csr = csr_for(sans=[x509.UniformResourceIdentifier(str(WEB)), x509.DNSName("evil.com")])
    with pytest.raises(PolicyViolation) as info:
        authority.sign_csr(csr, profile=BUILTIN_PROFILES["mtls"])
    assert info.value.field == "dns"


def test_csr_subject_keeps_only_the_cn(authority, csr_for):
    csr = csr_for(subject="CN=web,OU=Admins,O=Evil Corp,C=US")
    cert = authority.sign_csr(csr, profile=BUILTIN_PROFILES["mtls"], identity=WEB)
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    # an explicit subject from the caller wins over the CSR's
    explicit = authority.sign_csr(
        csr, profile=BUILTIN_PROFILES["mtls"], identity=WEB, subject="CN=chosen,O=Example"
    )
    assert explicit.subject.rfc4514_string() == "CN=chosen,O=Example"


def test_csr_without_cn_gets_the_identity_label(authority, csr_for):
    csr = csr_for(subject="O=Evil Corp")
    cert = authority.sign_csr(csr, profile=BUILTIN_PROFILES["mtls"], identity=WEB)
    assert cert.subject.rfc4514_string() == "CN=web"


def test_csr_sans_merge_with_requested_sans(authority, csr_for):
    csr = csr_for(sans=[x509.DNSName("a.example.org")])
    cert = authority.sign_csr(
        csr,
        profile=BUILTIN_PROFILES["mtls"],
        identity=WEB,
        sans=SubjectAltNames.parse(["dns:b.example.org", "dns:a.example.org"]),
    )
    assert SubjectAltNames.of(cert).dns == ("a.example.org", "b.example.org")


def test_csr_key_usage_requests_are_ignored(authority, csr_for, leaf_keys):
    key = leaf_keys(KeyType.EC_P256)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert = authority.sign_csr(csr, profile=BUILTIN_PROFILES["client"], identity=WEB)
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]


# -- roots and intermediates ----------------------------------------------------------------


def _expected_hash(key_type: KeyType):
    return {KeyType.EC_P384: hashes.SHA384, KeyType.ED25519: type(None)}.get(key_type, hashes.SHA256)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_create_root_for_every_key_type(key_for, rebuild, clock, start, key_type):
    key = key_for(key_type)
    settings = CASettings(trust_domain="example.org")
    root = create_root(key, subject="CN=Root,O=Example", settings=settings, clock=clock)
    root.verify_directly_issued_by(root)
    assert root.subject == root.issuer
    assert root.subject.rfc4514_string() == "CN=Root,O=Example"
    constraints = _ext(root, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length is None
    usage = _ext(root, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ski = _ext(root, x509.SubjectKeyIdentifier).value.digest
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    assert _ext(root, x509.AuthorityKeyIdentifier).value.key_identifier == ski
    assert root.not_valid_before_utc == start - settings.backdate
    assert root.not_valid_after_utc == start + BUILTIN_PROFILES["root-ca"].default_lifetime
    assert isinstance(root.signature_hash_algorithm, _expected_hash(key_type))
    with pytest.raises(x509.ExtensionNotFound):
        _ext(root, x509.NameConstraints)
    _assert_builder_identical(root, key, key_type, rebuild)


def test_create_root_refusals(key_for, settings, clock):
    key = key_for(KeyType.EC_P256)
    with pytest.raises(InvalidInputError, match="a root CA needs a subject name"):
        create_root(key, subject="", settings=settings, clock=clock)
    with pytest.raises(PolicyViolation, match="profile 'server' is not a CA profile") as info:
        create_root(key, subject="CN=R", settings=settings, profile=BUILTIN_PROFILES["server"], clock=clock)
    assert info.value.field == "profile"
    with pytest.raises(PolicyViolation) as info:
        create_root(
            key, subject="CN=R", settings=settings, lifetime=datetime.timedelta(days=30 * 365), clock=clock
        )
    assert info.value.field == "lifetime"


@pytest.mark.parametrize("key_type", list(KeyType))
def test_create_intermediate_for_every_key_type(authority, key_for, leaf_keys, rebuild, key_type):
    inter_key = leaf_keys(key_type)
    intermediate = authority.create_intermediate(inter_key.public_key(), subject="CN=Issuing CA,O=Example")
    intermediate.verify_directly_issued_by(authority.certificate)
    assert intermediate.issuer == authority.certificate.subject
    constraints = _ext(intermediate, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    name_constraints = _ext(intermediate, x509.NameConstraints)
    assert name_constraints.critical is True  # RFC 5280 4.2.1.10
    assert name_constraints.value.permitted_subtrees == [
        x509.UniformResourceIdentifier("example.org"),
        x509.DNSName("example.org"),
    ]
    assert name_constraints.value.excluded_subtrees is None
    _assert_builder_identical(intermediate, key_for(KeyType.EC_P256), KeyType.EC_P256, rebuild)
    # the intermediate issues in turn, and presents itself (not the root) as chain
    sub = Authority(
        certificate=intermediate,
        key=inter_key,
        settings=authority.settings,
        chain=(authority.certificate,),
        clock=authority.clock,
    )
    leaf = _issue_for(sub, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    leaf.verify_directly_issued_by(intermediate)
    assert sub.chain_for_leaf() == (intermediate,)
    assert authority.chain_for_leaf() == ()


def test_intermediate_name_constraints_list_every_zone(url_authority_for, leaf_keys):
    intermediate = url_authority_for(KeyType.EC_P256).create_intermediate(
        leaf_keys(KeyType.EC_P256).public_key(), subject="CN=Issuing"
    )
    assert _ext(intermediate, x509.NameConstraints).value.permitted_subtrees == [
        x509.UniformResourceIdentifier("example.org"),
        x509.DNSName("example.org"),
        x509.DNSName("svc.internal"),
    ]


def test_create_intermediate_refuses_a_leaf_profile(authority, leaf_keys):
    with pytest.raises(PolicyViolation, match="profile 'server' is not a CA profile") as info:
        authority.create_intermediate(
            leaf_keys(KeyType.EC_P256).public_key(), subject="CN=I", profile=BUILTIN_PROFILES["server"]
        )
    assert info.value.field == "profile"


def test_intermediate_lifetime_is_capped_by_the_profile(authority, leaf_keys):
    with pytest.raises(PolicyViolation) as info:
        authority.create_intermediate(
            leaf_keys(KeyType.EC_P256).public_key(),
            subject="CN=I",
            lifetime=datetime.timedelta(days=11 * 365),
        )
    assert info.value.field == "lifetime"


# -- the Authority's own checks -------------------------------------------------------------


def test_authority_refuses_a_key_that_does_not_match(authority, leaf_keys):
    with pytest.raises(InvalidInputError, match="the CA key does not match the CA certificate"):
        Authority(
            certificate=authority.certificate, key=leaf_keys(KeyType.EC_P256), settings=authority.settings
        )
    # negative control: the right key is accepted
    assert Authority(certificate=authority.certificate, key=authority.key, settings=authority.settings)


def test_authority_refuses_a_non_ca_certificate(authority, leaf_keys):
    key = leaf_keys(KeyType.ED25519)
    leaf = _issue_for(authority, "mtls", key.public_key())
    with pytest.raises(InvalidInputError, match="not a CA certificate"):
        Authority(certificate=leaf, key=key, settings=authority.settings)


def test_authority_refuses_a_certificate_without_basic_constraints(settings, start):
    key = generate_key(KeyType.ED25519)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no bc")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, None)
    )
    with pytest.raises(InvalidInputError, match="not a CA certificate"):
        Authority(certificate=cert, key=key, settings=settings)


def test_templates_follow_a_replaced_profile(authority, leaf_keys):
    # a profile replaced by one with the same name must not reuse the old template
    mtls = BUILTIN_PROFILES["mtls"]
    first = _issue_for(authority, "mtls", leaf_keys(KeyType.EC_P256).public_key())
    server_only = dataclasses.replace(mtls, extended_key_usage=(mtls.extended_key_usage[0],))
    second = authority.issue(leaf_keys(KeyType.EC_P256).public_key(), profile=server_only, identity=WEB)
    assert len(_ext(first, x509.ExtendedKeyUsage).value) == 2
    assert len(_ext(second, x509.ExtendedKeyUsage).value) == 1


def test_verified_csr_cannot_be_forged_around_verify_csr() -> None:
    csr = _csr_for_forgery()
    with pytest.raises(TypeError, match="made by verify_csr"):
        VerifiedCSR(csr, object())


def test_verify_csr_refuses_a_tampered_request() -> None:
    csr = _csr_for_forgery()
    assert verify_csr(csr).csr is csr
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    with pytest.raises(InvalidCSRError, match="signature does not verify"):
        verify_csr(x509.load_der_x509_csr(bytes(der)))


def _csr_for_forgery() -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())


def _csr_with_spki(key: ec.EllipticCurvePrivateKey, spki: bytes) -> x509.CertificateSigningRequest:
    """A CSR (RFC 2986) carrying ``spki`` as it is, signed by ``key``: builders always
    write the uncompressed point, a requester need not."""
    info = der.sequence(der.integer(0), der.sequence(), spki, der.tlv(0xA0, b""))
    algorithm = der.sequence(der.oid("1.2.840.10045.4.3.2"))  # ecdsa-with-SHA256
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    return x509.load_der_x509_csr(der.sequence(info, algorithm, der.bit_string(signature)))


@pytest.mark.parametrize("form", ["compressed", "hybrid"])
def test_a_csr_key_with_an_unusual_point_form_is_certified_uncompressed(
    authority: Authority, leaf_keys: Any, form: str
) -> None:
    key = leaf_keys(KeyType.EC_P256)
    public_key = key.public_key()
    uncompressed = public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    if form == "compressed":
        point = public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
    else:  # X9.62 hybrid: 0x06 or 0x07 (the parity of y), then x and y, as long as an uncompressed point
        point = bytes([6 | (uncompressed[-1] & 1)]) + uncompressed[1:]
    algorithm = der.sequence(der.oid("1.2.840.10045.2.1"), der.oid("1.2.840.10045.3.1.7"))
    csr = _csr_with_spki(key, der.sequence(algorithm, der.bit_string(point)))
    verified = verify_csr(csr)
    assert csr.public_key() == public_key
    expected = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    identity = SpiffeId.parse("spiffe://example.org/ns/points")
    profile = BUILTIN_PROFILES["mtls"]
    for issued in (
        authority.issue_for_csr_key(verified, profile=profile, identity=identity),
        authority.sign_csr_issued(verified, profile=profile, identity=identity),
    ):
        certificate = issued.certificate
        assert issued.spki == expected
        assert (
            certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == expected
        )


def test_issue_for_csr_key_takes_the_key_and_nothing_else_of_the_csr(
    authority: Authority, leaf_keys: Any
) -> None:
    key = leaf_keys(KeyType.EC_P256)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin.example.org")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("admin.example.org")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    identity = SpiffeId.parse("spiffe://example.org/ns/web")
    issued = authority.issue_for_csr_key(verify_csr(csr), profile=BUILTIN_PROFILES["mtls"], identity=identity)
    certificate = issued.certificate
    assert certificate.public_key() == key.public_key()
    assert SubjectAltNames.of(certificate).specs() == ["uri:spiffe://example.org/ns/web"]
    assert certificate.subject.rfc4514_string() == "CN=web"
