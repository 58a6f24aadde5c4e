"""certwright.access, property-based: globs stay in their segment, parse and decide never
crash, the line of a semantic error is found wherever the formatting puts it."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certwright.access import Decision, Policy, PolicyError, Request, Subject

TD = "spiffe://example.org"
SEGMENT_CHARS = string.ascii_letters + string.digits + "._-"

segments = st.text(SEGMENT_CHARS, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
# A segment pattern: literal text with '*' anywhere in it (never '**', which spans segments).
segment_patterns = st.lists(st.one_of(segments, st.just("*")), min_size=1, max_size=3).map("".join).filter(
    lambda s: "**" not in s
)


@given(st.lists(segment_patterns, min_size=1, max_size=4), st.lists(segments, min_size=1, max_size=6))
@settings(max_examples=300)
def test_a_star_never_matches_across_a_slash(pattern_segments, value_segments):
    pattern = "/" + "/".join(pattern_segments)
    policy = Policy.parse(
        "version = 1\n[[rule]]\nname = \"r\"\nservices = [\"s\"]\n"
        f"identities = [\"{TD}{pattern}\"]\npaths = [\"{pattern}\"]\n"
    )
    value = "/" + "/".join(value_segments)
    decision = policy.decide(Subject(TD + value), Request("s", "GET", value))
    if decision.allowed:
        # Allowed only when the value has exactly as many segments as the pattern.
        assert len(value_segments) == len(pattern_segments)


@given(st.lists(segments, min_size=1, max_size=3), st.lists(segments, min_size=1, max_size=3))
def test_star_pattern_refuses_any_deeper_identity_or_path(prefix, extra):
    base = "/" + "/".join(prefix)
    policy = Policy.parse(
        "version = 1\n[[rule]]\nname = \"r\"\nservices = [\"s\"]\n"
        f"identities = [\"{TD}{base}/*\"]\npaths = [\"{base}/*\"]\n"
    )
    one_level = base + "/" + extra[0]
    deeper = base + "/" + "/".join(["x", *extra])
    assert policy.decide(Subject(TD + one_level), Request("s", "GET", one_level))  # control
    assert not policy.decide(Subject(TD + deeper), Request("s", "GET", one_level))
    assert not policy.decide(Subject(TD + one_level), Request("s", "GET", deeper))


TOML_FRAGMENTS = [
    "version = 1\n", "version = 2\n", "[[rule]]\n", "[rule]\n", 'name = "a"\n', 'name = "a b"\n',
    'services = ["x"]\n', 'services = ["*", "y"]\n', 'roles = ["r"]\n', "roles = []\n",
    'identities = ["spiffe://example.org/*"]\n', 'identities = ["spiffe://*/x"]\n',
    'methods = ["get"]\n', 'methods = ["GTE"]\n', 'paths = ["/a/**"]\n', 'paths = ["a"]\n',
    'effect = "deny"\n', "effect = 1\n", "x = 1\n", "[x]\n", "# comment\n", "\n", '"""\n', "'''\n",
    "paths = [\n", "]\n", '  "/z",\n', "rule = []\n", "[[rule.sub]]\n", "\ufeff", "=",
]


@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(TOML_FRAGMENTS), max_size=25).map("".join)))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_parse_raises_only_policy_errors(text):
    try:
        policy = Policy.parse(text, source="p.toml")
    except PolicyError as exc:
        assert str(exc).startswith("p.toml")
        if exc.line is not None:
            assert 1 <= exc.line <= text.count("\n") + 1
    else:
        assert isinstance(policy, Policy)


anything = st.one_of(st.none(), st.text(max_size=40), st.integers(), st.binary(max_size=8))
identities = st.one_of(
    anything,
    st.lists(st.one_of(segments, st.sampled_from(["..", ".", "", "*", "%2e%2e"])), max_size=4).map(
        lambda parts: TD + "/" + "/".join(parts)
    ),
)
paths = st.one_of(
    anything,
    st.lists(
        st.one_of(segments, st.sampled_from(["..", ".", "", "%2e", "a;b", "\x00", "\u00e9"])), max_size=5
    ).map(lambda parts: "/" + "/".join(parts)),
)
roles = st.one_of(st.tuples(), st.lists(anything, max_size=3).map(tuple), anything)
subjects = st.builds(Subject, identities, roles)
requests = st.builds(
    Request, st.one_of(st.sampled_from(["payments", "ledger"]), anything),
    st.one_of(st.sampled_from(["GET", "post", "DELETE"]), anything), paths,
)

POLICY = Policy.parse(
    f"""version = 1
[[rule]]
name = "a"
services = ["payments"]
identities = ["{TD}/*", "{TD}/**/x"]
paths = ["/*", "/**/admin"]
[[rule]]
name = "b"
effect = "deny"
services = ["*"]
roles = ["*"]
methods = ["DELETE"]
[[rule]]
name = "c"
services = ["*"]
roles = ["r*", "**"]
"""
)


@given(subjects, requests)
@settings(max_examples=500)
def test_decide_never_raises_and_cache_agrees(subject, request):
    decision = POLICY.decide(subject, request)
    assert isinstance(decision, Decision)
    assert decision.reason.isprintable()
    assert decision == POLICY.evaluate(subject, request)
    assert POLICY.decide(subject, request) == decision  # from the cache this time


# -- the line of a semantic error, wherever the formatting puts it -----------------------------

fillers = st.lists(st.sampled_from(["", "# a comment", "   ", "\t# indented comment"]), max_size=2)


BAD_ITEM = {"methods": '"GTE"', "paths": '"v1"', "identities": '"spiffe://*/x"', "roles": '"-r"'}


@st.composite
def policy_with_one_fault(draw):
    """A policy written with random layout, one bad value in it; returns (text, line of fault)."""
    lines: list[str] = []
    fault_line = None

    def put(text: str, *, filler: bool = True) -> int:
        lines.append(text)
        number = len(lines)
        if filler:
            lines.extend(draw(fillers))
        return number

    put("version = 1")
    rule_count = draw(st.integers(1, 4))
    bad_rule = draw(st.integers(0, rule_count - 1))
    bad_key = draw(st.sampled_from(["methods", "paths", "identities", "roles", "unknown", "name"]))
    for index in range(rule_count):
        put("[[rule]]")
        items_of = {
            "services": ['"svc"'],
            "roles": ['"reader"'],
            "methods": ['"GET"', '"HEAD"'],
            "paths": ['"/v1/**"'],
            "identities": [f'"{TD}/ns/*/web"'],
        }
        for key in draw(st.permutations(["name", *sorted(items_of)])):
            bad = index == bad_rule and key == bad_key
            if key == "name":
                line = put(f'name = "bad name {index}"' if bad else f'name = "rule-{index}"')
                fault_line = line if bad else fault_line
                continue
            items = list(items_of[key])
            if bad:
                items.insert(draw(st.integers(0, len(items))), BAD_ITEM[key])
            if draw(st.booleans()):  # a multi-line array: the fault is on its item's line
                put(f"{key} = [", filler=False)
                for item in items:
                    line = put(f"  {item},  # item", filler=False)
                    if bad and item == BAD_ITEM[key]:
                        fault_line = line
                put("]")
            else:
                line = put(f"{key} = [{', '.join(items)}]")
                fault_line = line if bad else fault_line
        if index == bad_rule and bad_key == "unknown":
            fault_line = put('metods = ["GET"]')
    return "\n".join(lines) + "\n", fault_line


@given(policy_with_one_fault())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_semantic_error_line_is_exact(case):
    text, fault_line = case
    try:
        Policy.parse(text)
    except PolicyError as exc:
        assert exc.line == fault_line, f"{exc}\n{text}"
    else:
        raise AssertionError(f"accepted:\n{text}")
