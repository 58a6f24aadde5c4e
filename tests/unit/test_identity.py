"""certwright.x509.identity: the SPIFFE ID rules (SPIFFE-ID.md 2.1-2.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certwright.errors import InvalidIdentityError
from certwright.x509.identity import (
    MAX_ID_LENGTH,
    MAX_TRUST_DOMAIN_LENGTH,
    SpiffeId,
    validate_trust_domain,
)


@pytest.mark.parametrize(
    ("uri", "trust_domain", "path", "segments"),
    [
        ("spiffe://example.org", "example.org", "", ()),
        ("spiffe://example.org/web", "example.org", "/web", ("web",)),
        (
            "spiffe://example.org/ns/prod/sa/payments",
            "example.org",
            "/ns/prod/sa/payments",
            ("ns", "prod", "sa", "payments"),
        ),
        ("spiffe://my_td-1.internal/Svc.v2/A-b_c", "my_td-1.internal", "/Svc.v2/A-b_c", ("Svc.v2", "A-b_c")),
        ("spiffe://prod/...", "prod", "/...", ("...",)),  # only '.' and '..' are special
        ("spiffe://example.org/.hidden", "example.org", "/.hidden", (".hidden",)),
    ],
)
def test_valid_ids_parse_and_round_trip(uri, trust_domain, path, segments):
    sid = SpiffeId.parse(uri)
    assert (sid.trust_domain, sid.path, sid.segments) == (trust_domain, path, segments)
    assert str(sid) == uri
    assert SpiffeId.parse(str(sid)) == sid


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        # scheme (2.1)
        ("SPIFFE://example.org/web", "the scheme must be lowercase 'spiffe'"),
        ("Spiffe://example.org/web", "the scheme must be lowercase 'spiffe'"),
        ("https://example.org/web", "is not a SPIFFE ID: it must start with spiffe://"),
        ("spiffe:/example.org/web", "it must start with spiffe://"),
        ("example.org/web", "it must start with spiffe://"),
        ("", "it must start with spiffe://"),
        # trust domain (2.1)
        ("spiffe://", "the trust domain is empty"),
        ("spiffe:///web", "the trust domain is empty"),
        ("spiffe://example.org:8443/web", "a SPIFFE ID cannot have a port"),
        ("spiffe://example.org:/web", "a SPIFFE ID cannot have a port"),
        ("spiffe://user@example.org/web", "a SPIFFE ID cannot have user info"),
        ("spiffe://user:secret@example.org/web", "a SPIFFE ID cannot have user info"),
        ("spiffe://Example.org/web", "contains 'E': only lowercase letters"),
        ("spiffe://EXAMPLE.ORG", "contains 'E'.*no uppercase"),
        ("spiffe://exa mple.org/web", "contains ' '"),
        ("spiffe://ex%41mple.org/web", "contains '%'"),
        ("spiffe://bücher.example/web", "contains 'ü'"),
        ("spiffe://[fd00]/web", "not an IP address literal"),
        # query and fragment (2.2)
        ("spiffe://example.org/web?x=1", "a SPIFFE ID cannot have a query"),
        ("spiffe://example.org?x=1", "cannot have a query"),
        ("spiffe://example.org/web#frag", "a SPIFFE ID cannot have a fragment"),
        ("spiffe://example.org#", "cannot have a fragment"),
        # path (2.2)
        ("spiffe://example.org/", "the path cannot be just '/'"),
        ("spiffe://example.org/web/", "the path cannot end with '/'"),
        ("spiffe://example.org//web", "the path has an empty segment"),
        ("spiffe://example.org/a//b", "the path has an empty segment"),
        ("spiffe://example.org/a/./b", "cannot contain '.' or '..' segments"),
        ("spiffe://example.org/a/../b", "cannot contain '.' or '..' segments"),
        ("spiffe://example.org/..", "cannot contain '.' or '..' segments"),
        ("spiffe://example.org/a b", "path segment 'a b' contains ' '"),
        ("spiffe://example.org/a%20b", "path segment 'a%20b' contains '%'"),
        ("spiffe://example.org/caf\u00e9", "contains 'é'"),
        ("spiffe://example.org/a:b", "contains ':'"),
        ("spiffe://example.org/a@b", "contains '@'"),
        ("spiffe://example.org/a+b", "contains '\\+'"),
    ],
)
def test_invalid_ids_are_refused_naming_the_rule(uri, rule):
    with pytest.raises(InvalidIdentityError, match=rule):
        SpiffeId.parse(uri)


def test_error_quotes_the_offending_id():
    with pytest.raises(InvalidIdentityError, match=r"^'spiffe://example\.org/a//b': "):
        SpiffeId.parse("spiffe://example.org/a//b")


def test_length_limit_of_the_whole_id():
    prefix = "spiffe://example.org/"
    longest = prefix + "a" * (MAX_ID_LENGTH - len(prefix))
    assert len(longest) == MAX_ID_LENGTH
    assert str(SpiffeId.parse(longest)) == longest
    with pytest.raises(InvalidIdentityError, match=f"longer than {MAX_ID_LENGTH} bytes"):
        SpiffeId.parse(longest + "a")


def test_length_limit_counts_utf8_bytes():
    # 1,024 two-byte characters: 2,048 characters would fit, 2,048+ bytes do not
    with pytest.raises(InvalidIdentityError, match="longer than 2048 bytes"):
        SpiffeId.parse("spiffe://example.org/" + "é" * 1020)


def test_length_limit_of_the_trust_domain():
    longest = "a" * MAX_TRUST_DOMAIN_LENGTH
    assert SpiffeId.parse(f"spiffe://{longest}/web").trust_domain == longest
    with pytest.raises(InvalidIdentityError, match=f"longer than {MAX_TRUST_DOMAIN_LENGTH} bytes"):
        SpiffeId.parse(f"spiffe://{longest}a/web")


def test_parse_wants_a_string():
    with pytest.raises(TypeError, match="a SPIFFE ID is a string"):
        SpiffeId.parse(b"spiffe://example.org/web")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["example.org", "prod", "my_td", "a-b.c_d.0"])
def test_validate_trust_domain_accepts(name):
    assert validate_trust_domain(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "the trust domain is empty"),
        ("Example.org", "contains 'E'"),
        ("example.org:443", "contains ':'"),
        ("a/b", "contains '/'"),
    ],
)
def test_validate_trust_domain_refuses(name, rule):
    with pytest.raises(InvalidIdentityError, match=rule):
        validate_trust_domain(name)


def test_member_of_compares_trust_domains_exactly():
    sid = SpiffeId.parse("spiffe://example.org/web")
    assert sid.member_of("example.org")
    assert not sid.member_of("sub.example.org")
    assert not sid.member_of("example.org.evil")


def test_ids_are_ordered_and_hashable():
    ids = [SpiffeId.parse(u) for u in ("spiffe://b.org/x", "spiffe://a.org/y", "spiffe://a.org/x")]
    assert [str(i) for i in sorted(ids)] == ["spiffe://a.org/x", "spiffe://a.org/y", "spiffe://b.org/x"]
    assert len({*ids, SpiffeId.parse("spiffe://a.org/x")}) == 3


_SEGMENT = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True).filter(lambda s: s not in (".", ".."))
_TRUST_DOMAIN = st.from_regex(r"[a-z0-9._-]{1,40}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(trust_domain=_TRUST_DOMAIN, segments=st.lists(_SEGMENT, max_size=6))
def test_any_valid_id_round_trips(trust_domain, segments):
    uri = f"spiffe://{trust_domain}" + "".join(f"/{s}" for s in segments)
    sid = SpiffeId.parse(uri)
    assert str(sid) == uri
    assert sid.segments == tuple(segments)
    assert sid.trust_domain == trust_domain


def _checked(uri: str) -> SpiffeId | str:
    try:
        return SpiffeId._parse_checking(uri)
    except InvalidIdentityError:
        return "refused"


def _parsed(uri: str) -> SpiffeId | str:
    try:
        return SpiffeId.parse(uri)
    except InvalidIdentityError:
        return "refused"


# Text near the edges of the rules: the scheme, '.' and '..' segments, '//', case, '@', ':'.
_NEAR_IDS = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["spiffe://", "spiffe://", "SPIFFE://", "spiffe:/", ""]),
    st.text(alphabet="aZ09._-/@:?#%é ", max_size=30),
)


@settings(max_examples=1000, deadline=None)
@given(uri=_NEAR_IDS)
def test_the_one_pattern_accepts_exactly_what_the_rules_accept(uri):
    # parse() tries one regex first; the rule-by-rule checks decide everything else.
    assert _parsed(uri) == _checked(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://" + "a" * 255 + "/x",
        "spiffe://" + "a" * 256 + "/x",
        "spiffe://td/" + "x" * (2048 - len("spiffe://td/")),
        "spiffe://td/" + "x" * (2049 - len("spiffe://td/")),
        "spiffe://td/..a/.b/c..",
        "spiffe://td/a/./b",
        "spiffe://td/a/..",
        "spiffe://td",
        "spiffe://td/",
    ],
)
def test_the_one_pattern_at_the_length_limits_and_dot_segments(uri):
    assert _parsed(uri) == _checked(uri)
