"""The shortcuts of batch signing's issuance path, each held equal to the general way.

Batch signing reads a CSR's CN from its DER, writes the subject's RFC 4514 text itself,
remembers the validity of the current second, and sends each certificate's facts back
from a worker as plain values. Each shortcut must give exactly what ``cryptography`` (or
the object it replaces) gives, for any input it accepts, and step aside for the rest.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pickle
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from certwright.clock import FixedClock
from certwright.issuance import (
    Authority,
    _csr_label,
    _csr_subject_and_key,
    _only_cn,
    create_root,
    rfc4514_value,
)
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, SigningKey, generate_key
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings

MTLS = BUILTIN_PROFILES["mtls"]
CSR_KEY = ec.generate_private_key(ec.SECP256R1())  # signing CSRs is not what is tested here
# Text a CN may hold (ub-common-name: 64; cryptography counts UTF-8 octets), no surrogates.
CN_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=16)


def _cn(value: str, tag: x509.name._ASN1Type | None = None) -> x509.NameAttribute[str]:
    if tag is None:
        return x509.NameAttribute(NameOID.COMMON_NAME, value)
    return x509.NameAttribute(NameOID.COMMON_NAME, value, _type=tag)


def _csr(subject: x509.Name) -> x509.CertificateSigningRequest:
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(CSR_KEY, hashes.SHA256())


# --- RFC 4514 text of a one-CN subject --------------------------------------------------------


@given(CN_TEXT)
def test_rfc4514_value_escapes_as_cryptography_does(value: str) -> None:
    assert "CN=" + rfc4514_value(value) == x509.Name([_cn(value)]).rfc4514_string()


@pytest.mark.parametrize(
    "value", ["#x", " lead", "trail ", " ", "a,b+c", 'q"', "back\\slash", "<>;", "nul\0"]
)
def test_rfc4514_value_on_each_special_case(value: str) -> None:
    assert "CN=" + rfc4514_value(value) == x509.Name([_cn(value)]).rfc4514_string()


# --- the CSR's CN read from its DER ---------------------------------------------------------------


@given(CN_TEXT)
def test_only_cn_reads_a_utf8_cn_as_cryptography_does(value: str) -> None:
    name = x509.Name([_cn(value)])
    assert _only_cn(name.public_bytes()) == name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest.mark.parametrize(
    "name",
    [
        x509.Name([]),
        x509.Name([_cn("svc", x509.name._ASN1Type.PrintableString)]),
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]),
        x509.Name([_cn("svc"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]),
        x509.Name(
            [x509.RelativeDistinguishedName([_cn("svc"), x509.NameAttribute(NameOID.SERIAL_NUMBER, "1")])]
        ),
    ],
    ids=["empty", "printable-string", "no-cn", "two-rdns", "multi-valued-rdn"],
)
def test_only_cn_steps_aside_for_any_other_subject(name: x509.Name) -> None:
    assert _only_cn(name.public_bytes()) is None


@pytest.mark.parametrize(
    "name",
    [
        x509.Name([_cn("svc-1")]),
        x509.Name([_cn("svc", x509.name._ASN1Type.PrintableString)]),
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"), _cn("web")]),
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]),
        x509.Name([]),
    ],
    ids=["utf8-cn", "printable-cn", "o-and-cn", "no-cn", "empty"],
)
def test_csr_label_is_the_csrs_first_cn_either_way(name: x509.Name) -> None:
    csr = _csr(name)
    subject, _ = _csr_subject_and_key(csr)
    assert subject == csr.subject.public_bytes()
    label = _csr_label(csr, subject)
    common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common_names:
        assert label is None
        return
    assert label is not None and not isinstance(label, x509.Name)
    assert label.value == common_names[0].value
    assert label.der == x509.Name([_cn(str(common_names[0].value))]).public_bytes()


# --- Issued: the subject text, and plain-value pickling -------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"identity": SpiffeId.parse("spiffe://example.org/ns/a/web")},
        {"identity": SpiffeId.parse("spiffe://example.org/ns/a/web"), "subject": "CN=a\\,b\\+c,O=Example"},
    ],
    ids=["default-label", "explicit-name"],
)
def test_issued_subject_is_the_certificates_rfc4514_subject(
    authority: Authority, leaf_keys: Callable[[KeyType], SigningKey], options: dict[str, object]
) -> None:
    key = leaf_keys(KeyType.EC_P256).public_key()
    issued = authority.issue_issued(key, profile=MTLS, **options)  # type: ignore[arg-type]
    assert issued.subject == issued.certificate.subject.rfc4514_string()


@pytest.fixture(scope="module")
def zone_ca() -> Authority:
    """A root with a DNS zone, so that server certificates (a DNS SAN) can take any CN."""
    settings = CASettings(trust_domain="example.org", dns_zones=("example.org",))
    key = generate_key()
    clock = FixedClock(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    root = create_root(key, subject="CN=Batch Test Root", settings=settings, clock=clock)
    return Authority(certificate=root, key=key, settings=settings, clock=clock)


@given(value=CN_TEXT)
def test_issued_subject_of_any_csr_cn(zone_ca: Authority, value: str) -> None:
    csr = _csr(x509.Name([_cn(value)]))
    issued = zone_ca.sign_csr_issued(
        csr, profile=BUILTIN_PROFILES["server"], sans=SubjectAltNames.create(dns=["a.example.org"])
    )
    assert issued.subject == issued.certificate.subject.rfc4514_string()


def test_issued_subject_of_a_dns_label(zone_ca: Authority) -> None:
    sans = SubjectAltNames.create(dns=["api.example.org"])
    issued = zone_ca.issue_issued(CSR_KEY.public_key(), profile=BUILTIN_PROFILES["server"], sans=sans)
    assert issued.subject == issued.certificate.subject.rfc4514_string() == "CN=api.example.org"


def test_issued_pickles_to_an_equal_value_through_plain_values(
    authority: Authority, leaf_keys: Callable[[KeyType], SigningKey]
) -> None:
    profile = dataclasses.replace(
        MTLS, name="wide", dns_patterns=("**",), ip_ranges=("0.0.0.0/0", "::/0"), email_patterns=("*@*",)
    )
    issued = authority.issue_issued(
        leaf_keys(KeyType.EC_P256).public_key(),
        profile=profile,
        identity=SpiffeId.parse("spiffe://example.org/web"),
        sans=SubjectAltNames.create(
            dns=["web.example.org"], ips=["192.0.2.7", "2001:db8::1"], emails=["ops@example.org"]
        ),
        authorization=Authorization.create(("reader",), {"env": "prod"}),
    )
    back = pickle.loads(pickle.dumps(issued, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == issued
    assert back.sans.ips == (ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::1"))
    assert back.not_before.tzinfo is datetime.UTC and back.key_type is KeyType.EC_P256


# --- the validity remembered for the current second -----------------------------------------------


def test_validity_follows_the_clock_and_the_lifetime(
    authority_for: Callable[[KeyType], Authority], key_for: Callable[[KeyType], SigningKey]
) -> None:
    base = authority_for(KeyType.EC_P256)
    clock = FixedClock(base.clock.now() + datetime.timedelta(hours=1))
    ca = Authority(
        certificate=base.certificate, key=key_for(KeyType.EC_P256), settings=base.settings, clock=clock
    )
    web = SpiffeId.parse("spiffe://example.org/web")
    key = CSR_KEY.public_key()
    first = ca.issue(key, profile=MTLS, identity=web)
    again = ca.issue(key, profile=MTLS, identity=web)
    assert (first.not_valid_before_utc, first.not_valid_after_utc) == (
        again.not_valid_before_utc,
        again.not_valid_after_utc,
    )
    shorter = ca.issue(key, profile=MTLS, identity=web, lifetime=datetime.timedelta(hours=1))
    assert shorter.not_valid_after_utc < first.not_valid_after_utc
    clock.advance(datetime.timedelta(seconds=90))
    later = ca.issue(key, profile=MTLS, identity=web)
    assert later.not_valid_before_utc - first.not_valid_before_utc == datetime.timedelta(seconds=90)
    assert later.not_valid_after_utc - first.not_valid_after_utc == datetime.timedelta(seconds=90)
