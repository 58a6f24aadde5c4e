"""certwright.x509.profiles: what each profile refuses, and why (PolicyViolation.field)."""

from __future__ import annotations

import dataclasses
import datetime

import pytest

from certwright.errors import InvalidExtensionError, InvalidIdentityError, PolicyViolation, ProfileError
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import (
    BUILTIN_PROFILES,
    DAY,
    CASettings,
    ExtendedKeyUsage,
    IdentityRule,
    KeyUsageFlag,
    Profile,
    Request,
)

LEAVES = ("server", "client", "mtls", "ocsp-responder")
CAS = ("root-ca", "intermediate-ca")


@pytest.fixture
def make_request():
    """A request that every leaf profile that takes an identity accepts, with overrides."""

    def make(
        *,
        key_type=KeyType.EC_P256,
        identity="spiffe://example.org/web",
        sans=(),
        roles=(),
        lifetime=None,
        wants_ca=False,
    ) -> Request:
        return Request(
            key_type=key_type,
            identity=SpiffeId.parse(identity) if identity else None,
            sans=SubjectAltNames.parse(sans),
            authorization=Authorization.create(roles),
            lifetime=lifetime,
            wants_ca=wants_ca,
        )

    return make


@pytest.fixture
def profile():
    def get(name: str, **changes) -> Profile:
        base = BUILTIN_PROFILES[name]
        return dataclasses.replace(base, name=f"{name}-custom", **changes) if changes else base

    return get


def _violation(profile: Profile, request: Request, settings: CASettings) -> PolicyViolation:
    with pytest.raises(PolicyViolation) as info:
        profile.check(request, settings)
    return info.value


# -- built-in profiles: what they are -------------------------------------------------------


def test_builtin_profiles_are_the_documented_set():
    assert set(BUILTIN_PROFILES) == {*LEAVES, *CAS}
    assert BUILTIN_PROFILES["mtls"].extended_key_usage == (
        ExtendedKeyUsage.SERVER_AUTH,
        ExtendedKeyUsage.CLIENT_AUTH,
    )
    assert BUILTIN_PROFILES["intermediate-ca"].name_constraints
    assert BUILTIN_PROFILES["intermediate-ca"].path_length == 0
    assert BUILTIN_PROFILES["ocsp-responder"].ocsp_no_check
    for name in LEAVES:
        assert not BUILTIN_PROFILES[name].ca
        assert KeyUsageFlag.KEY_CERT_SIGN not in BUILTIN_PROFILES[name].key_usage
    for name in CAS:
        assert BUILTIN_PROFILES[name].ca


@pytest.mark.parametrize(
    ("name", "identity", "sans"),
    [
        ("server", None, ("dns:api.example.org", "ip:10.0.0.7")),
        ("server", "spiffe://example.org/api", ("dns:example.org",)),
        ("client", "spiffe://example.org/ns/prod/sa/billing", ()),
        ("mtls", "spiffe://example.org/web", ("dns:web.example.org", "ip:fd00::1", "ip:127.0.0.1")),
        ("ocsp-responder", None, ()),
        ("root-ca", None, ()),
        ("intermediate-ca", None, ()),
    ],
)
def test_each_builtin_profile_accepts_a_typical_request(make_request, settings, name, identity, sans):
    BUILTIN_PROFILES[name].check(make_request(identity=identity, sans=sans), settings)


# -- identity -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["client", "mtls"])
def test_identity_required(make_request, settings, name):
    error = _violation(BUILTIN_PROFILES[name], make_request(identity=None), settings)
    assert error.field == "identity"
    assert f"profile {name!r} requires a SPIFFE identity" in str(error)
    assert "spiffe://example.org/..." in str(error)


@pytest.mark.parametrize("name", ["ocsp-responder", "root-ca", "intermediate-ca"])
def test_identity_forbidden(make_request, settings, name):
    error = _violation(BUILTIN_PROFILES[name], make_request(), settings)
    assert error.field == "identity"
    assert f"profile {name!r} does not carry an identity" in str(error)
    # negative control: without the identity the same request passes
    BUILTIN_PROFILES[name].check(make_request(identity=None), settings)


@pytest.mark.parametrize("name", ["server", "client", "mtls"])
def test_identity_outside_the_trust_domain(make_request, settings, name):
    error = _violation(BUILTIN_PROFILES[name], make_request(identity="spiffe://other.org/web"), settings)
    assert error.field == "identity"
    assert "identity spiffe://other.org/web is outside this CA's trust domain example.org" in str(error)


def test_identity_of_a_sub_trust_domain_is_outside(make_request, settings):
    error = _violation(
        BUILTIN_PROFILES["mtls"], make_request(identity="spiffe://sub.example.org/web"), settings
    )
    assert error.field == "identity"


def test_identity_naming_only_the_trust_domain(make_request, settings):
    error = _violation(BUILTIN_PROFILES["mtls"], make_request(identity="spiffe://example.org"), settings)
    assert error.field == "identity"
    assert "names the trust domain, not a workload" in str(error)


def test_identity_not_matching_the_pattern(make_request, settings, profile):
    strict = profile("mtls", identity_patterns=("spiffe://{trust_domain}/ns/*/sa/*",))
    strict.check(make_request(identity="spiffe://example.org/ns/prod/sa/web"), settings)
    error = _violation(strict, make_request(identity="spiffe://example.org/ns/prod/x/sa/web"), settings)
    assert error.field == "identity"
    assert "does not match profile 'mtls-custom'" in str(error)
    assert "allowed: spiffe://example.org/ns/*/sa/*" in str(error)


def test_extra_uri_san_is_refused(make_request, settings):
    request = make_request(sans=("uri:https://example.org/other",))
    error = _violation(BUILTIN_PROFILES["mtls"], request, settings)
    assert error.field == "uri"
    assert "URI SAN 'https://example.org/other' is not allowed" in str(error)


def test_uri_san_without_identity_is_refused(make_request, settings):
    request = make_request(identity=None, sans=("uri:spiffe://example.org/web",))
    assert _violation(BUILTIN_PROFILES["server"], request, settings).field == "uri"


def test_uri_san_equal_to_the_identity_is_fine(make_request, settings):
    BUILTIN_PROFILES["mtls"].check(make_request(sans=("uri:spiffe://example.org/web",)), settings)


# -- DNS, IP, email -------------------------------------------------------------------------


@pytest.mark.parametrize("dns", ["api.example.com", "example.org.evil.com", "notexample.org", "org"])
def test_dns_outside_the_zones(make_request, settings, dns):
    error = _violation(BUILTIN_PROFILES["server"], make_request(sans=(f"dns:{dns}",)), settings)
    assert error.field == "dns"
    assert f"DNS name {dns} is not allowed by profile 'server'" in str(error)
    assert "allowed: example.org, **.example.org" in str(error)


@pytest.mark.parametrize("dns", ["example.org", "api.example.org", "a.b.c.example.org", "API.Example.Org"])
def test_dns_inside_the_zones(make_request, settings, dns):
    BUILTIN_PROFILES["server"].check(make_request(sans=(f"dns:{dns}",)), settings)


@pytest.mark.parametrize("name", ["ocsp-responder"])
def test_profiles_without_dns_patterns_allow_no_dns(make_request, settings, name):
    error = _violation(
        BUILTIN_PROFILES[name], make_request(identity=None, sans=("dns:example.org",)), settings
    )
    assert error.field == "dns"
    assert "allowed: no DNS names" in str(error)


def test_wildcard_dns_is_refused_unless_allowed(make_request, settings, profile):
    request = make_request(sans=("dns:*.example.org",))
    error = _violation(BUILTIN_PROFILES["server"], request, settings)
    assert error.field == "dns"
    assert "wildcard DNS name *.example.org is not allowed" in str(error)
    # negative control: a profile that allows wildcards accepts it
    profile("server", allow_wildcard_dns=True).check(request, settings)


@pytest.mark.parametrize("ip", ["8.8.8.8", "2001:db8::1", "172.32.0.1", "192.169.0.1"])
def test_ip_outside_the_ranges(make_request, settings, ip):
    error = _violation(BUILTIN_PROFILES["server"], make_request(sans=(f"ip:{ip}",)), settings)
    assert error.field == "ip"
    assert f"IP address {ip} is not allowed by profile 'server'" in str(error)


@pytest.mark.parametrize(
    "ip", ["10.1.2.3", "172.31.255.255", "192.168.0.1", "127.0.0.1", "::1", "fd12:3456::1"]
)
def test_ip_inside_the_internal_ranges(make_request, settings, ip):
    BUILTIN_PROFILES["server"].check(make_request(sans=(f"ip:{ip}",)), settings)


def test_ipv4_mapped_ipv6_is_not_an_ipv4_range_member(make_request, settings):
    error = _violation(BUILTIN_PROFILES["server"], make_request(sans=("ip:::ffff:10.0.0.1",)), settings)
    assert error.field == "ip"


def test_client_profile_allows_no_ips(make_request, settings):
    error = _violation(BUILTIN_PROFILES["client"], make_request(sans=("ip:10.0.0.1",)), settings)
    assert error.field == "ip"
    assert "allowed: no IP addresses" in str(error)


def test_email_not_allowed(make_request, settings, profile):
    request = make_request(sans=("email:ops@example.org",))
    error = _violation(BUILTIN_PROFILES["server"], request, settings)
    assert error.field == "email"
    assert "email address ops@example.org is not allowed by profile 'server'" in str(error)
    # negative control: a profile with an email pattern accepts it (and only in its zones)
    with_email = profile("server", email_patterns=("*@{zone}",))
    with_email.check(request, settings)
    assert _violation(with_email, make_request(sans=("email:ops@example.com",)), settings).field == "email"


# -- lifetime, key type, CA -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "maximum"), [("client", "30d"), ("mtls", "30d"), ("server", "397d")])
def test_lifetime_over_the_maximum(make_request, settings, name, maximum):
    too_long = BUILTIN_PROFILES[name].max_lifetime + datetime.timedelta(seconds=1)
    error = _violation(BUILTIN_PROFILES[name], make_request(lifetime=too_long), settings)
    assert error.field == "lifetime"
    assert f"exceeds the maximum of profile {name!r} ({maximum})" in str(error)
    # negative control: exactly the maximum is fine
    BUILTIN_PROFILES[name].check(make_request(lifetime=BUILTIN_PROFILES[name].max_lifetime), settings)


@pytest.mark.parametrize("lifetime", [datetime.timedelta(0), datetime.timedelta(seconds=-1)])
def test_lifetime_must_be_positive(make_request, settings, lifetime):
    error = _violation(BUILTIN_PROFILES["mtls"], make_request(lifetime=lifetime), settings)
    assert error.field == "lifetime"
    assert "must be positive" in str(error)


def test_lifetime_for_defaults_and_passes_through():
    mtls = BUILTIN_PROFILES["mtls"]
    assert mtls.lifetime_for(None) == mtls.default_lifetime == DAY
    assert mtls.lifetime_for(datetime.timedelta(hours=3)) == datetime.timedelta(hours=3)


def test_key_type_not_allowed(make_request, settings, profile):
    ec_only = profile("mtls", key_types=frozenset({KeyType.EC_P256, KeyType.EC_P384}))
    error = _violation(ec_only, make_request(key_type=KeyType.RSA_2048), settings)
    assert error.field == "key_type"
    assert "key type rsa-2048 is not allowed by profile 'mtls-custom' (allowed: ec-p256, ec-p384)" in str(
        error
    )
    ec_only.check(make_request(key_type=KeyType.EC_P384), settings)


@pytest.mark.parametrize("name", LEAVES)
def test_ca_true_on_a_leaf_profile(make_request, settings, name):
    identity = (
        None if BUILTIN_PROFILES[name].identity is IdentityRule.FORBIDDEN else "spiffe://example.org/web"
    )
    error = _violation(BUILTIN_PROFILES[name], make_request(identity=identity, wants_ca=True), settings)
    assert error.field == "basic_constraints"
    assert f"asks for CA:true, which profile {name!r} does not issue" in str(error)


def test_ca_true_on_a_ca_profile_is_fine(make_request, settings):
    BUILTIN_PROFILES["intermediate-ca"].check(make_request(identity=None, wants_ca=True), settings)


def test_roles_must_match_the_role_patterns(make_request, settings, profile):
    readers = profile("mtls", role_patterns=("reader", "team/*"))
    readers.check(make_request(roles=("reader", "team/payments")), settings)
    error = _violation(readers, make_request(roles=("admin",)), settings)
    assert error.field == "role"
    assert "role 'admin' is not allowed by profile 'mtls-custom'" in str(error)
    assert _violation(readers, make_request(roles=("team/a/b",)), settings).field == "role"


def test_default_role_pattern_allows_any_role_including_hierarchical(make_request, settings):
    # role_patterns defaults to ("**",): any role, flat or hierarchical
    BUILTIN_PROFILES["mtls"].check(make_request(roles=("reader", "team/payments")), settings)


def test_single_star_role_pattern_does_not_span_slashes(make_request, settings, profile):
    flat_only = profile("mtls", role_patterns=("*",))
    flat_only.check(make_request(roles=("reader",)), settings)
    assert _violation(flat_only, make_request(roles=("team/payments",)), settings).field == "role"


def test_ca_certificates_carry_no_roles(make_request, settings):
    error = _violation(
        BUILTIN_PROFILES["intermediate-ca"], make_request(identity=None, roles=("x",)), settings
    )
    assert error.field == "role"
    assert "CA certificates carry no roles" in str(error)


def test_checks_run_in_a_stable_order(make_request, settings):
    # key type is reported before anything else, so a user fixes one thing at a time
    request = make_request(key_type=KeyType.RSA_4096, identity=None, sans=("dns:evil.com",))
    ec_only = dataclasses.replace(BUILTIN_PROFILES["mtls"], key_types=frozenset({KeyType.EC_P256}))
    assert _violation(ec_only, request, settings).field == "key_type"


# -- CASettings -----------------------------------------------------------------------------


def test_settings_default_zone_is_the_trust_domain():
    assert CASettings(trust_domain="example.org").dns_zones == ("example.org",)
    assert CASettings(trust_domain="prod").dns_zones == ("prod",)


def test_trust_domain_that_is_no_dns_name_has_no_default_zone():
    assert CASettings(trust_domain="my_td").dns_zones == ()


def test_explicit_zones_are_normalised_and_used(make_request):
    settings = CASettings(trust_domain="example.org", dns_zones=("Svc.Internal.", "bücher.example"))
    assert settings.dns_zones == ("svc.internal", "xn--bcher-kva.example")
    server = BUILTIN_PROFILES["server"]
    server.check(make_request(sans=("dns:api.svc.internal", "dns:xn--bcher-kva.example")), settings)
    # explicit zones replace the default: the trust domain is no longer a zone
    assert _violation(server, make_request(sans=("dns:api.example.org",)), settings).field == "dns"


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"trust_domain": "Example.org"}, InvalidIdentityError, "contains 'E'"),
        ({"trust_domain": ""}, InvalidIdentityError, "the trust domain is empty"),
        ({"trust_domain": "example.org", "extension_oid": "2.25.1"}, InvalidExtensionError, "2.25 UUID"),
        (
            {"trust_domain": "example.org", "dns_zones": ("*.example.org",)},
            ValueError,
            "wildcards are not allowed",
        ),
        (
            {"trust_domain": "example.org", "backdate": datetime.timedelta(seconds=-1)},
            ProfileError,
            "backdate must be between 0 and 1 hour",
        ),
        (
            {"trust_domain": "example.org", "backdate": datetime.timedelta(hours=1, seconds=1)},
            ProfileError,
            "backdate must be between",
        ),
    ],
)
def test_bad_settings_are_refused(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        CASettings(**kwargs)


def test_settings_oid_property():
    settings = CASettings(trust_domain="example.org", extension_oid="1.3.6.1.4.1.99999.1")
    assert settings.oid.dotted_string == "1.3.6.1.4.1.99999.1"


# -- profile definitions --------------------------------------------------------------------

_LEAF = {
    "name": "custom",
    "key_usage": frozenset({KeyUsageFlag.DIGITAL_SIGNATURE}),
    "default_lifetime": DAY,
    "max_lifetime": 2 * DAY,
}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"key_usage": frozenset()}, "key_usage is empty"),
        ({"default_lifetime": 3 * DAY}, "default_lifetime is longer than max_lifetime"),
        ({"default_lifetime": datetime.timedelta(0)}, "lifetimes must be positive"),
        ({"key_types": frozenset()}, "key_types is empty"),
        ({"ca": True}, "a CA profile needs keyCertSign"),
        (
            {"key_usage": frozenset({KeyUsageFlag.KEY_CERT_SIGN})},
            "a CA profile needs keyCertSign, and only a CA may have it",
        ),
        ({"path_length": 0}, "path_length needs ca = true"),
        ({"name_constraints": True}, "name_constraints apply to CA profiles only"),
        ({"identity_patterns": ("spiffe://{trust_domain}/a//b",)}, "identity pattern .* is invalid"),
        ({"identity_patterns": ("https://x/*",)}, "identity pattern 'https://x/\\*' is invalid"),
        ({"ip_ranges": ("10.0.0.1/8",)}, "bad IP range: 10.0.0.1/8 has host bits set"),
        ({"ip_ranges": ("not-a-net",)}, "bad IP range"),
    ],
)
def test_inconsistent_profiles_are_refused_naming_the_profile(changes, fragment):
    with pytest.raises(ProfileError, match=f"profile 'custom': {fragment}"):
        Profile(**{**_LEAF, **changes})


def test_consistent_custom_profile_is_accepted():
    assert Profile(**_LEAF).name == "custom"
    ca = Profile(
        **{
            **_LEAF,
            "ca": True,
            "path_length": 1,
            "key_usage": frozenset({KeyUsageFlag.KEY_CERT_SIGN, KeyUsageFlag.CRL_SIGN}),
        }
    )
    assert ca.ca
