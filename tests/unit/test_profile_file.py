"""certwright.x509.profile_file: user profiles in TOML."""

from __future__ import annotations

import datetime

import pytest

from certwright.errors import ProfileError
from certwright.x509.keys import KeyType
from certwright.x509.profile_file import parse_profiles
from certwright.x509.profiles import (
    BUILTIN_PROFILES,
    ExtendedKeyUsage,
    IdentityRule,
    KeyUsageFlag,
)

WEB = """
[profile.web]
base = "server"
description = "public web tier"
max_lifetime = "30d"
default_lifetime = "7d"
dns = ["web.{zone}", "*.web.{zone}"]
allow_wildcard_dns = true
key_types = ["ec-p256", "ED25519"]
"""


def test_inheritance_from_a_builtin_profile():
    profiles = parse_profiles(WEB)
    web, server = profiles["web"], BUILTIN_PROFILES["server"]
    assert web.name == "web"
    assert web.description == "public web tier"
    assert web.max_lifetime == datetime.timedelta(days=30)
    assert web.default_lifetime == datetime.timedelta(days=7)
    assert web.dns_patterns == ("web.{zone}", "*.web.{zone}")
    assert web.allow_wildcard_dns is True
    assert web.key_types == frozenset({KeyType.EC_P256, KeyType.ED25519})
    # untouched fields come from the base
    assert web.extended_key_usage == server.extended_key_usage
    assert web.ip_ranges == server.ip_ranges
    assert web.key_usage == server.key_usage
    # the built-ins are still there, unchanged
    assert profiles["server"] is server
    assert set(BUILTIN_PROFILES) <= set(profiles)


def test_a_profile_may_build_on_one_defined_above_it():
    profiles = parse_profiles(WEB + '\n[profile.web-short]\nbase = "web"\nmax_lifetime = "7d"\n')
    assert profiles["web-short"].dns_patterns == profiles["web"].dns_patterns
    assert profiles["web-short"].max_lifetime == datetime.timedelta(days=7)


def test_base_must_be_defined_above():
    text = '[profile.a]\nbase = "b"\n[profile.b]\nbase = "server"\n'
    with pytest.raises(ProfileError, match="profile 'a': base profile 'b' is not defined \\(above\\)"):
        parse_profiles(text)


def test_base_must_be_a_name():
    with pytest.raises(ProfileError, match="profile 'a': base: expected the name of a profile"):
        parse_profiles("[profile.a]\nbase = []\n")


def test_a_builtin_can_be_overridden_by_name():
    profiles = parse_profiles('[profile.mtls]\nbase = "mtls"\nmax_lifetime = "2d"\n')
    assert profiles["mtls"].max_lifetime == datetime.timedelta(days=2)
    assert BUILTIN_PROFILES["mtls"].max_lifetime == datetime.timedelta(days=30)  # not mutated


def test_a_profile_from_scratch():
    text = """
[profile.signer]
key_usage = ["digitalSignature"]
extended_key_usage = ["codeSigning", "timeStamping"]
default_lifetime = "1d"
max_lifetime = "1w"
identity = "forbidden"
dns = []
"""
    signer = parse_profiles(text)["signer"]
    assert signer.key_usage == frozenset({KeyUsageFlag.DIGITAL_SIGNATURE})
    assert signer.extended_key_usage == (ExtendedKeyUsage.CODE_SIGNING, ExtendedKeyUsage.TIME_STAMPING)
    assert signer.identity is IdentityRule.FORBIDDEN
    assert signer.max_lifetime == datetime.timedelta(weeks=1)


def test_a_ca_profile_from_toml():
    text = """
[profile.team-ca]
base = "intermediate-ca"
path_length = 1
crl_urls = ["http://crl.example.org/team.crl"]
"""
    team = parse_profiles(text)["team-ca"]
    assert team.ca and team.path_length == 1 and team.name_constraints
    assert team.crl_urls == ("http://crl.example.org/team.crl",)


def test_without_base_the_essentials_are_required():
    with pytest.raises(
        ProfileError, match="profile 'x': without 'base' it needs key_usage, default_lifetime"
    ):
        parse_profiles('[profile.x]\nkey_usage = ["digitalSignature"]\n')


def test_unknown_keys_are_refused_listing_the_known_ones():
    with pytest.raises(ProfileError, match="profile 'web': unknown key 'max_life'") as info:
        parse_profiles('[profile.web]\nbase = "server"\nmax_life = "1d"\n')
    assert "max_lifetime" in str(info.value)
    assert "allow_wildcard_dns" in str(info.value)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('ca = "yes"', "ca: expected true or false"),
        ("max_lifetime = 30", "max_lifetime: expected a string"),
        ('max_lifetime = "forever"', "max_lifetime: invalid duration 'forever'"),
        ('default_lifetime = "0s"', "default_lifetime: invalid duration '0s': it must be positive"),
        ('key_types = ["ec-p521"]', "key_types: unknown key type 'ec-p521'; choose one of: ec-p256"),
        ('key_types = "ec-p256"', "key_types: expected a list of strings"),
        ('extended_key_usage = ["serverauth"]', "extended_key_usage: expected values among: serverAuth"),
        ('key_usage = ["sign"]', "key_usage: expected values among: digitalSignature"),
        ('identity = "maybe"', "identity: expected required, optional or forbidden"),
        ("path_length = -1", "path_length: expected a non-negative integer"),
        ("path_length = true", "path_length: expected a non-negative integer"),
        ('dns = "web.{zone}"', "dns: expected a list of strings"),
        ("roles = [1, 2]", "roles: expected a list of strings"),
        ("description = 3", "description: expected a string"),
    ],
)
def test_bad_values_name_the_profile_and_key(line, fragment):
    with pytest.raises(ProfileError, match=f"^profiles.toml: profile 'web': {fragment}"):
        parse_profiles(f'[profile.web]\nbase = "server"\n{line}\n')


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ('max_lifetime = "1d"', "default_lifetime is longer than max_lifetime"),
        ('ip_ranges = ["10.0.0.1/8"]', "bad IP range: 10.0.0.1/8 has host bits set"),
        ("ca = true", "a CA profile needs keyCertSign"),
        ("name_constraints = true", "name_constraints apply to CA profiles only"),
        ('identities = ["spiffe://{trust_domain}/a//*"]', "identity pattern .* is invalid"),
    ],
)
def test_inconsistent_results_name_the_profile(lines, fragment):
    with pytest.raises(ProfileError, match=f"^profiles.toml: profile 'web': {fragment}"):
        parse_profiles(f'[profile.web]\nbase = "server"\n{lines}\n')


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[profile.web\nbase = 'server'\n", "line 1"),
        ('[profile.web]\nbase = "server\n', "line 2"),
        ('[profile.web]\nbase = "server"\nbase = "client"\n', "line 3"),
        ("= 1", "line 1"),
    ],
)
def test_toml_syntax_errors_name_the_source_and_line(text, fragment):
    with pytest.raises(ProfileError, match=f"^/etc/certwright/profiles.toml: .*{fragment}"):
        parse_profiles(text, source="/etc/certwright/profiles.toml")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[profiles.web]\nbase = "server"\n', "unknown top-level key\\(s\\) \\['profiles'\\]"),
        ("ca = true\n", "unknown top-level key"),
        ("profile = 3\n", "'profile' must be a table"),
        ("[profile]\nweb = 3\n", "profile 'web': must be a table"),
    ],
)
def test_document_shape_errors(text, fragment):
    with pytest.raises(ProfileError, match=fragment):
        parse_profiles(text)


def test_empty_document_gives_the_builtins():
    assert parse_profiles("") == BUILTIN_PROFILES
