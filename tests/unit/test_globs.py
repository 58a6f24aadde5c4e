"""certwright.globs: segment-aware patterns for identities, DNS names and roles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certwright.globs import Glob, alternation

TD = "spiffe://example.org"


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        (f"{TD}/ns/*", f"{TD}/ns/web", True),
        (f"{TD}/ns/*", f"{TD}/ns/a/b", False),  # '*' never crosses '/'
        # "any run" includes the empty one: inputs are validated first (SPIFFE IDs and DNS
        # names have no empty segments), so this only shows with raw strings
        (f"{TD}/ns/*", f"{TD}/ns/", True),
        (f"{TD}/ns/*", f"{TD}/ns", False),
        (f"{TD}/ns/*/sa/*", f"{TD}/ns/prod/sa/payments", True),
        (f"{TD}/ns/*/sa/*", f"{TD}/ns/prod/x/sa/payments", False),
        (f"{TD}/ns/web-*", f"{TD}/ns/web-1", True),
        (f"{TD}/ns/web-*", f"{TD}/ns/web-", True),  # '*' may match nothing
        (f"{TD}/ns/web-*", f"{TD}/ns/api-1", False),
        (f"{TD}/**", f"{TD}/a", True),
        (f"{TD}/**", f"{TD}/a/b/c", True),  # '**' spans one or more segments
        (f"{TD}/**", TD, False),  # ... not zero
        (f"{TD}/**", f"{TD}/", False),
        (f"{TD}/**/admin", f"{TD}/x/y/admin", True),
        (f"{TD}/**/admin", f"{TD}/admin", False),
        (f"{TD}/a**", f"{TD}/a/b", False),  # '**' is special only as a whole segment
        (f"{TD}/a**", f"{TD}/abc", True),
    ],
)
def test_identity_globs(pattern, value, expected):
    assert Glob.compile(pattern, sep="/").matches(value) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*.example.org", "api.example.org", True),
        ("*.example.org", "a.b.example.org", False),
        ("*.example.org", "example.org", False),
        ("**.example.org", "a.b.example.org", True),
        ("**.example.org", "example.org", False),
        ("**.example.org", "badexample.org", False),
        ("API.Example.ORG", "api.example.org", True),  # case-insensitive in DNS mode
        ("*.EXAMPLE.org", "Web.example.ORG", True),
    ],
)
def test_dns_globs_are_case_insensitive(pattern, value, expected):
    assert Glob.compile(pattern, sep=".", case_sensitive=False).matches(value) is expected


def test_case_sensitive_by_default():
    assert Glob.compile(f"{TD}/Web", sep="/").matches(f"{TD}/Web")
    assert not Glob.compile(f"{TD}/Web", sep="/").matches(f"{TD}/web")
    assert Glob.compile("API.example.org", sep=".", case_sensitive=False).matches("api.example.org")


@pytest.mark.parametrize("special", ["+", "?", "[a]", "(x)", "a|b", "^$", "\\d"])
def test_regex_characters_are_literal(special):
    glob = Glob.compile(f"role{special}", sep="/")
    assert glob.matches(f"role{special}")
    assert not glob.matches("roleX")


def test_compile_is_cached_and_str_is_the_pattern():
    first = Glob.compile("a/*", sep="/")
    assert Glob.compile("a/*", sep="/") is first
    assert Glob.compile("a/*", sep=".") is not first
    assert str(first) == "a/*"


_SEGMENT = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(prefix=st.lists(_SEGMENT, min_size=1, max_size=3), tail=st.lists(_SEGMENT, min_size=1, max_size=4))
def test_star_matches_exactly_one_segment_and_double_star_one_or_more(prefix, tail):
    base = "/".join(prefix)
    value = base + "/" + "/".join(tail)
    assert Glob.compile(base + "/*", sep="/").matches(value) is (len(tail) == 1)
    assert Glob.compile(base + "/**", sep="/").matches(value)
    assert not Glob.compile(base + "/**", sep="/").matches(base)


def test_alternation_keeps_each_globs_case_rule():
    web = Glob.compile("spiffe://example.org/Web/*", sep="/")
    zone = Glob.compile("*.Example.ORG", sep=".", case_sensitive=False)
    either = alternation((web, zone))
    assert either is not None
    assert either.fullmatch("spiffe://example.org/Web/a")
    assert not either.fullmatch("spiffe://example.org/web/a")  # case-sensitive stays so
    assert either.fullmatch("API.example.org")
    assert not either.fullmatch("a.b.example.org")  # '*' within one label
    assert alternation((web,)) is web.regex
    assert alternation(()) is None
