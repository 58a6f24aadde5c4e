"""certwright.x509.names: RFC 4514 subjects, SAN specs, IDNA, wildcard rules."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certwright.errors import InvalidNameError
from certwright.x509.names import (
    SubjectAltNames,
    normalize_dns,
    normalize_email,
    normalize_uri,
    parse_ip,
    parse_subject,
)

# -- subjects (RFC 4514) --------------------------------------------------------------------


def test_parse_subject_reads_rfc4514():
    name = parse_subject("CN=payments,OU=Platform,O=Example Corp,C=DE")
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "payments"
    assert name.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "DE"
    # RFC 4514 writes the most specific RDN first: round trip through cryptography
    assert name.rfc4514_string() == "CN=payments,OU=Platform,O=Example Corp,C=DE"


def test_parse_subject_handles_escapes_and_unicode():
    name = parse_subject(r"CN=Smith\, John,O=Bücher GmbH")
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Smith, John"
    assert name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Bücher GmbH"


@pytest.mark.parametrize("text", ["", "   "])
def test_blank_subject_is_the_empty_name(text):
    assert parse_subject(text) == x509.Name([])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("payments", "invalid subject 'payments'"),
        ("CN=", "invalid subject 'CN=': .*length"),
        (r"CN=api,O=\20", "empty value for O"),  # an escaped blank is still blank
        ("NOPE=x", "invalid subject 'NOPE=x'"),
    ],
)
def test_bad_subjects_are_refused_naming_the_input(text, fragment):
    with pytest.raises(InvalidNameError, match=fragment):
        parse_subject(text)


# -- DNS names and IDNA ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("api.example.org", "api.example.org"),
        ("API.Example.ORG", "api.example.org"),
        ("api.example.org.", "api.example.org"),  # the root label is dropped
        ("  api.example.org  ", "api.example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("пример.испытание", "xn--e1afmkfd.xn--80akhbyknj4f"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),  # A-labels pass through
        ("ß.de", "xn--zca.de"),  # IDNA 2008 keeps ß (no transitional mapping)
        ("ＡＰＩ.example.org", "api.example.org"),  # UTS 46 maps full-width letters
        ("a-b.example.org", "a-b.example.org"),
        ("1.2.3.example", "1.2.3.example"),
        ("*.example.org", "*.example.org"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
    ],
)
def test_normalize_dns_gives_a_label_form(given_name, expected):
    assert normalize_dns(given_name) == expected


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("", "empty DNS name"),
        (".", "empty DNS name"),
        ("a..example.org", "has an empty label"),
        ("-api.example.org", "label '-api' must be 1-63 letters"),
        ("api-.example.org", "label 'api-' must be 1-63"),
        ("_acme.example.org", "label '_acme'"),
        ("a b.example.org", "label 'a b'"),
        ("a" * 64 + ".example.org", "label 'a{64}'"),
        ("xn--zz.example.org", "bad A-label 'xn--zz'"),
        ("⒈.example.org", "label '⒈' is not valid IDNA"),
        ("a\u200d.example.org", "is not valid IDNA"),  # ZWJ outside its context (RFC 5892)
        (".".join(["a" * 63] * 4), "longer than 253"),
    ],
)
def test_normalize_dns_refuses_naming_the_bad_label(bad, fragment):
    with pytest.raises(InvalidNameError, match=fragment):
        normalize_dns(bad)


def test_dns_name_of_exactly_253_characters_is_accepted():
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert normalize_dns(name) == name
    # negative control: one more character is too long
    with pytest.raises(InvalidNameError, match="longer than 253"):
        normalize_dns("e." + name)


def test_label_of_63_characters_is_accepted():
    assert normalize_dns("a" * 63 + ".example.org") == "a" * 63 + ".example.org"


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("*.org", "a wildcard needs at least two labels after it"),
        ("*", "a wildcard needs at least two labels"),
        ("*.*.example.org", "'\\*' is allowed only as the whole leftmost label"),
        ("a*.example.org", "'\\*' is allowed only as the whole leftmost label"),
        ("api.*.example.org", "'\\*' is allowed only as the whole leftmost label"),
        ("api.example.*", "'\\*' is allowed only"),
    ],
)
def test_wildcard_rules(bad, fragment):
    with pytest.raises(InvalidNameError, match=fragment):
        normalize_dns(bad)


def test_wildcards_can_be_refused():
    with pytest.raises(InvalidNameError, match="wildcards are not allowed here"):
        normalize_dns("*.example.org", allow_wildcard=False)
    # negative control: the same call without a wildcard passes
    assert normalize_dns("www.example.org", allow_wildcard=False) == "www.example.org"


_ASCII_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", fullmatch=True).filter(
    lambda label: not label.lower().startswith("xn--")
)
_UNICODE_LABEL = st.sampled_from(
    ["bücher", "münchen", "пример", "例え", "ελληνικά", "straße", "ＡＢＣ", "日本"]
)
_DNS_NAME = (
    st.lists(st.one_of(_ASCII_LABEL, _UNICODE_LABEL), min_size=1, max_size=6)
    .map(".".join)
    .filter(lambda name: len(name) <= 200)
)


@settings(max_examples=300, deadline=None)
@given(name=_DNS_NAME, wildcard=st.booleans(), trailing_dot=st.booleans())
def test_normalize_dns_is_idempotent_on_valid_names(name, wildcard, trailing_dot):
    if wildcard:
        name = f"*.{name}.example"
    once = normalize_dns(name + ("." if trailing_dot else ""))
    assert normalize_dns(once) == once
    assert once.isascii()
    assert once == once.lower()
    assert not once.endswith(".")


@settings(max_examples=200, deadline=None)
@given(name=st.lists(_ASCII_LABEL, min_size=1, max_size=5).map(".".join))
def test_normalize_dns_ignores_ascii_case(name):
    assert normalize_dns(name.upper()) == normalize_dns(name.lower()) == name.lower()


# -- IPs, emails, URIs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.7", ipaddress.IPv4Address("10.0.0.7")),
        (" 192.168.1.1 ", ipaddress.IPv4Address("192.168.1.1")),
        ("::1", ipaddress.IPv6Address("::1")),
        ("[fd00::1]", ipaddress.IPv6Address("fd00::1")),
        ("2001:DB8:0:0:0:0:0:1", ipaddress.IPv6Address("2001:db8::1")),
    ],
)
def test_parse_ip(text, expected):
    assert parse_ip(text) == expected


@pytest.mark.parametrize("bad", ["10.0.0.256", "10.0.0", "::g", "example.org", "", "10.0.0.0/8"])
def test_parse_ip_refuses_naming_the_input(bad):
    with pytest.raises(InvalidNameError, match=f"{bad!r} is not an IPv4 or IPv6 address"):
        parse_ip(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ops@example.org", "ops@example.org"),
        ("first.last+tag@Example.ORG", "first.last+tag@example.org"),
        ("ops@bücher.example", "ops@xn--bcher-kva.example"),
    ],
)
def test_normalize_email(text, expected):
    assert normalize_email(text) == expected


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("ops", "is not an email address"),
        ("@example.org", "is not an email address"),
        ('"quoted"@example.org', "is not an email address"),
        ("a..b@example.org", "is not an email address"),
        ("ops@*.example.org", "wildcards are not allowed"),
        ("ops@-bad.example.org", "label '-bad'"),
    ],
)
def test_normalize_email_refuses(bad, fragment):
    with pytest.raises(InvalidNameError, match=fragment):
        normalize_email(bad)


@pytest.mark.parametrize(
    "uri", ["spiffe://example.org/web", "https://example.org/a?b=c", "urn:uuid:0e3f", "HTTP://X"]
)
def test_normalize_uri_accepts_absolute_uris(uri):
    assert normalize_uri(uri) == uri


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("example.org/web", "is not an absolute URI"),
        ("1http://x", "is not an absolute URI"),
        ("spiffe:", "is not an absolute URI"),
        ("https://bücher.example/", "must be ASCII without spaces"),
        ("https://example.org/a b", "must be ASCII without spaces"),
    ],
)
def test_normalize_uri_refuses(bad, fragment):
    with pytest.raises(InvalidNameError, match=fragment):
        normalize_uri(bad)


# -- SAN specs ------------------------------------------------------------------------------


def test_parse_san_specs_of_every_kind():
    sans = SubjectAltNames.parse(
        [
            "dns:api.example.org",
            "DNS:Bücher.example",
            "ip:10.0.0.7",
            "ip:fd00::7",
            "uri:spiffe://example.org/web",
            "email:ops@example.org",
        ]
    )
    assert sans.dns == ("api.example.org", "xn--bcher-kva.example")
    assert sans.ips == (ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("fd00::7"))
    assert sans.uris == ("spiffe://example.org/web",)
    assert sans.emails == ("ops@example.org",)
    assert sans.specs() == [
        "uri:spiffe://example.org/web",
        "dns:api.example.org",
        "dns:xn--bcher-kva.example",
        "ip:10.0.0.7",
        "ip:fd00::7",
        "email:ops@example.org",
    ]
    assert SubjectAltNames.parse(sans.specs()) == sans


def test_san_specs_are_deduplicated_after_normalisation_in_order():
    sans = SubjectAltNames.parse(
        ["dns:b.example.org", "dns:A.example.org", "dns:a.example.org.", "ip:::1", "ip:0:0::1"]
    )
    assert sans.dns == ("b.example.org", "a.example.org")
    assert sans.ips == (ipaddress.ip_address("::1"),)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("api.example.org", "SAN 'api.example.org': expected dns:NAME, ip:ADDRESS, uri:URI or email:ADDRESS"),
        ("host:api.example.org", "SAN 'host:api.example.org': expected dns:NAME"),
        ("dns:-bad.example.org", "label '-bad'"),
        ("ip:10.0.0.999", "'10.0.0.999' is not an IPv4 or IPv6 address"),
        ("uri:not a uri", "is not an absolute URI"),
        ("email:nobody", "'nobody' is not an email address"),
    ],
)
def test_bad_san_specs_name_the_bad_part(spec, fragment):
    with pytest.raises(InvalidNameError, match=fragment):
        SubjectAltNames.parse([spec])


def test_empty_sans_are_false():
    assert not SubjectAltNames()
    assert not SubjectAltNames.parse([])
    assert SubjectAltNames.parse(["ip:::1"])


def test_create_accepts_ip_objects_and_strings():
    sans = SubjectAltNames.create(ips=[ipaddress.ip_address("10.1.1.1"), "10.1.1.2"])
    assert sans.ips == (ipaddress.ip_address("10.1.1.1"), ipaddress.ip_address("10.1.1.2"))


def test_merge_keeps_order_and_drops_duplicates():
    first = SubjectAltNames.parse(["dns:a.example.org", "ip:10.0.0.1"])
    second = SubjectAltNames.parse(["dns:b.example.org", "dns:a.example.org", "email:x@example.org"])
    merged = first.merge(second)
    assert merged.dns == ("a.example.org", "b.example.org")
    assert merged.ips == (ipaddress.ip_address("10.0.0.1"),)
    assert merged.emails == ("x@example.org",)


def test_general_names_put_the_uri_first_and_round_trip_through_the_extension():
    sans = SubjectAltNames.parse(
        ["dns:a.example.org", "email:x@example.org", "ip:::1", "uri:spiffe://example.org/a"]
    )
    names = sans.general_names()
    assert isinstance(names[0], x509.UniformResourceIdentifier)
    assert SubjectAltNames.from_extension(x509.SubjectAlternativeName(names)) == sans


def test_from_extension_drops_kinds_certwright_does_not_use():
    ext = x509.SubjectAlternativeName(
        [
            x509.DNSName("a.example.org"),
            x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])),
            x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
        ]
    )
    assert SubjectAltNames.from_extension(ext) == SubjectAltNames(dns=("a.example.org",))


def test_of_a_certificate_without_sans_is_empty(authority):
    assert not SubjectAltNames.of(authority.certificate)
