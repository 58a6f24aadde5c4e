"""certwright.access: parsing and compiling policies; every refusal names its line."""

from __future__ import annotations

import textwrap

import pytest

from certwright.access import Effect, Policy, PolicyError

GOOD = """\
version = 1

[[rule]]
name = "web-reads-payments"
description = "the web front end reads payments"
services = ["payments"]
identities = ["spiffe://example.org/ns/prod/web", "spiffe://example.org/ns/*/batch"]
roles = ["reader"]
methods = ["GET", "head"]
paths = [
  "/v1/payments/*",   # one level
  "/v1/payments/**",  # any depth
]

[[rule]]
name = "no-admin"
effect = "deny"
services = ["*"]
roles = ["**"]
paths = ["/admin/**"]
"""


def error_of(text: str, source: str = "policy.toml") -> PolicyError:
    with pytest.raises(PolicyError) as info:
        Policy.parse(textwrap.dedent(text), source=source)
    return info.value


def test_parse_compiles_rules_in_file_order():
    policy = Policy.parse(GOOD, source="policy.toml")
    web, admin = policy.rules
    assert (web.name, web.line, web.effect) == ("web-reads-payments", 3, Effect.ALLOW)
    assert web.services == frozenset({"payments"})
    assert web.methods == frozenset({"GET", "HEAD"})  # upper-cased
    assert [str(g) for g in web.paths or ()] == ["/v1/payments/*", "/v1/payments/**"]
    assert web.description == "the web front end reads payments"
    assert web.label == "web-reads-payments (policy.toml line 3)"
    assert (admin.name, admin.line, admin.effect, admin.services) == ("no-admin", 15, Effect.DENY, None)


def test_empty_rule_list_denies_everything():
    assert Policy.parse("version = 1\n").rules == ()
    assert Policy().rules == ()


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    policy = Policy.load(path)
    assert policy.source == str(path)
    assert policy.rules[0].label == f"web-reads-payments ({path} line 3)"


def test_load_refuses_an_unreadable_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "missing.toml")


def test_load_refuses_bytes_that_are_not_utf8_naming_the_line(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_bytes(b"version = 1\n# caf\xe9\n")
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    error = info.value
    assert error.line == 2
    assert "UTF-8" in str(error)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("version = 1\n[[rule]]\nname = \"a\"\nservices = [\"x\"\n", 4, "not valid TOML"),
        ("version = 1\nname = = 2\n", 2, "not valid TOML"),
        ("version = 1\n\n[[rule]]\nname = \"a\"\nname = \"b\"\n", 5, "not valid TOML"),
        ("version = 1\nx = 1\nx = 2\n\n\n", 3, "not valid TOML"),  # "at end of document"
    ],
)
def test_syntax_errors_name_their_line(text, line, words):
    error = error_of(text)
    assert error.line == line, error
    assert words in str(error)
    assert str(error).startswith(f"policy.toml:{line}: ")


def test_missing_version_is_refused_so_an_empty_file_is_not_deny_all():
    # An empty or truncated file during a deploy must not silently replace a policy.
    for text in ("", "\n", "[[rule]]\nname='a'\nservices=['x']\nroles=['r']\n"):
        error = error_of(text)
        assert "missing `version = 1`" in str(error)


@pytest.mark.parametrize("value", ["2", "0", '"1"', "1.0", "true"])
def test_unsupported_version(value):
    error = error_of(f"# a comment\nversion = {value}\n")
    assert error.line == 2
    assert "not supported" in str(error)


# Each case: the policy, the line at fault, words of the message. The faulty line is marked
# with "# <-" so the expected line is visibly right.
CASES = {
    "unknown top-level key": (
        """\
        version = 1
        defaults = "deny"  # <-
        """,
        "unknown top-level key 'defaults'",
    ),
    "unknown top-level table": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]

        [settings]  # <-
        x = 1
        """,
        "unknown top-level key 'settings'",
    ),
    "rule as a single table": (
        """\
        version = 1
        [rule]  # <-
        name = "a"
        """,
        "[[rule]] table",
    ),
    "rules as an inline array": (
        """\
        version = 1
        rule = [  # <-
          { name = "a", services = ["x"], roles = ["r"] },
        ]
        """,
        "[[rule]] table",
    ),
    "unknown key in a rule (typo)": (
        """\
        version = 1

        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        method = ["GET"]  # <-
        """,
        "unknown key 'method'",
    ),
    "sub-table of a rule": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        [rule.extra]  # <-
        x = 1
        """,
        "unknown key 'extra'",
    ),
    "rule without name": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]

        [[rule]]  # <-
        services = ["x"]
        roles = ["r"]
        """,
        "rule 2 has no name",
    ),
    "bad rule name": (
        """\
        version = 1
        [[rule]]
        name = "has space"  # <-
        services = ["x"]
        roles = ["r"]
        """,
        "not a rule name",
    ),
    "duplicate rule name": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        [[rule]]
        services = ["y"]
        name = "a"  # <-
        roles = ["r"]
        """,
        "used twice (first a (policy.toml line 2))",
    ),
    "no services": (
        """\
        version = 1
        [[rule]]  # <-
        name = "a"
        roles = ["r"]
        """,
        "has no services",
    ),
    "neither identities nor roles": (
        """\
        version = 1
        [[rule]]  # <-
        name = "open-door"
        services = ["x"]
        """,
        "neither identities nor roles",
    ),
    "empty list": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = []  # <-
        """,
        "the list is empty",
    ),
    "not a list": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = "payments"  # <-
        roles = ["r"]
        """,
        "expected a list of strings",
    ),
    "star with other services": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = [
          "x",
          "*",  # <-
        ]
        roles = ["r"]
        """,
        "list nothing else with it",
    ),
    "bad service name": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["pay ments"]  # <-
        roles = ["r"]
        """,
        "not a service name",
    ),
    "bad effect": (
        """\
        version = 1
        [[rule]]
        name = "a"
        effect = "permit"  # <-
        services = ["x"]
        roles = ["r"]
        """,
        'expected "allow" or "deny"',
    ),
    "unknown method in a multi-line list": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        methods = [
          "GET",
          # "POST" was here
          "GTE",  # <-
        ]
        """,
        "'GTE' is not an HTTP method",
    ),
    "identity without scheme": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        identities = [
          "spiffe://example.org/web",
          "example.org/api",  # <-
        ]
        """,
        "must start with spiffe://",
    ),
    "identity with a glob trust domain": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        identities = ["spiffe://*/web"]  # <-
        """,
        "trust domain cannot be a pattern",
    ),
    "identity with a bad segment": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        identities = ["spiffe://example.org/ns/../web"]  # <-
        """,
        "'.' or '..' segments",
    ),
    "identity with uppercase trust domain": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        identities = ["spiffe://Example.org/web"]  # <-
        """,
        "not a valid SPIFFE ID pattern",
    ),
    "identity with partial double star": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        identities = ["spiffe://example.org/ns/a**"]  # <-
        """,
        "'**' must be a whole segment",
    ),
    "bad role": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["reader", "-writer"]  # <-
        """,
        "not a role pattern",
    ),
    "path without leading slash": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        paths = ["v1/x"]  # <-
        """,
        "starts with '/'",
    ),
    "path with dot segment": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        paths = ["/v1/../x"]  # <-
        """,
        "never resolved",
    ),
    "path with query": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        paths = ["/v1/x?debug=1"]  # <-
        """,
        "contains '?'",
    ),
    "path with empty segment": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        paths = ["/v1//x"]  # <-
        """,
        "empty segment",
    ),
    "non-string list item": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        paths = ["/a", 2]  # <-
        """,
        "item 2 is not a string",
    ),
    "description not a string": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        description = 3  # <-
        """,
        "expected a string",
    ),
    "key-like text inside a multi-line string is not a key": (
        '''\
        version = 1
        [[rule]]
        name = "a"
        description = """
        name = "fake"
        method = ["GET"]
        """
        services = ["x"]
        roles = ["r"]
        metods = ["GET"]  # <-
        ''',
        "unknown key 'metods'",
    ),
    "quoted keys": (
        """\
        version = 1
        [[ "rule" ]]
        "name" = "a"
        'services' = ["x"]
        roles = ["r"]
        "paths" = ["nope"]  # <-
        """,
        "starts with '/'",
    ),
    "third rule of several": (
        """\
        version = 1
        [[rule]]
        name = "a"
        services = ["x"]
        roles = ["r"]
        [[rule]]
        name = "b"
        services = ["x"]
        roles = ["r"]
        [[rule]]
        name = "c"
        services = ["x"]
        roles = ["r"]
        methods = ["get", "FETCH"]  # <-
        """,
        "'FETCH' is not an HTTP method",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_semantic_errors_name_the_line_at_fault(case):
    text, words = CASES[case]
    text = textwrap.dedent(text)
    expected = next(i for i, line in enumerate(text.splitlines(), 1) if "# <-" in line)
    error = error_of(text)
    assert error.line == expected, f"{case}: {error}"
    assert words in str(error), str(error)
    assert str(error).startswith(f"policy.toml:{expected}: ")


def test_a_bad_rule_refuses_the_whole_policy():
    # Never half-applied: the good rule before the bad one is not returned either.
    text = GOOD + '\n[[rule]]\nname = "late"\nservices = ["x"]\nroles = ["r"]\nmethods = ["GTE"]\n'
    with pytest.raises(PolicyError):
        Policy.parse(text)


def test_oversized_policy_is_refused():
    error = error_of("version = 1\n" + "#" * (1 << 20))
    assert "larger than" in str(error)


def test_deeply_nested_toml_is_a_policy_error():
    error = error_of("version = 1\nx = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "nested too deeply" in str(error) or "not valid TOML" in str(error)


def test_policy_error_is_a_certwright_error():
    from certwright.errors import CertwrightError, InvalidInputError

    error = error_of("version = 2\n")
    assert isinstance(error, InvalidInputError)
    assert isinstance(error, CertwrightError)
    assert (error.source, error.line) == ("policy.toml", 1)
