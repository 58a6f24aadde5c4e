"""certwright.access: decisions, their reasons, the attacks they refuse, and their caches."""

from __future__ import annotations

import pytest

from certwright.access import Decision, Policy, Request, Subject

TD = "spiffe://example.org"
WEB = f"{TD}/ns/prod/web"

POLICY = f"""\
version = 1

[[rule]]
name = "web-reads-payments"
services = ["payments"]
identities = ["{WEB}", "{TD}/ns/*/batch"]
methods = ["GET", "HEAD"]
paths = ["/v1/payments/*"]

[[rule]]
name = "auditors-read-everything"
services = ["*"]
roles = ["auditor"]
methods = ["GET"]

[[rule]]
name = "ops-in-prod"
services = ["ledger"]
identities = ["{TD}/ns/prod/**"]
roles = ["ops"]

[[rule]]
name = "no-admin-for-anyone"
effect = "deny"
services = ["*"]
roles = ["**"]
paths = ["/admin", "/admin/**"]

[[rule]]
name = "batch-all-of-ledger"
services = ["ledger"]
identities = ["{TD}/ns/*/batch"]
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.parse(POLICY, source="policy.toml")


def decide(policy: Policy, identity: str | None, service: str, method=None, path=None, roles=()):
    return policy.decide(Subject(identity, tuple(roles)), Request(service, method, path))


def test_exact_identity_allowed_with_rule_and_line(policy):
    decision = decide(policy, WEB, "payments", "GET", "/v1/payments/42")
    assert decision == Decision(
        True,
        "allowed by rule 'web-reads-payments' (policy.toml line 3)",
        "web-reads-payments (policy.toml line 3)",
    )
    assert decision  # __bool__


def test_default_deny_says_who_wanted_what(policy):
    decision = decide(policy, WEB, "payments", "POST", "/v1/payments/42", roles=("reader",))
    assert not decision
    assert decision.rule is None
    assert decision.reason == (
        f"denied: no rule allows {WEB} (roles: reader) to POST /v1/payments/42 on payments (default deny)"
    )


def test_default_deny_without_identity_method_or_path(policy):
    decision = decide(policy, None, "payments")
    expected = "denied: no rule allows a peer without identity to reach payments (default deny)"
    assert decision.reason == expected


def test_empty_policy_denies_everything():
    for policy in (Policy(), Policy.parse("version = 1\n")):
        decision = decide(policy, WEB, "payments", "GET", "/v1/payments/1", roles=("admin",))
        assert not decision and decision.rule is None
        assert "(default deny)" in decision.reason


def test_other_service_method_or_identity_is_denied(policy):
    assert decide(policy, WEB, "payments", "GET", "/v1/payments/1")
    assert not decide(policy, WEB, "ledger", "GET", "/v1/payments/1")
    assert not decide(policy, WEB, "payments", "DELETE", "/v1/payments/1")
    assert not decide(policy, f"{TD}/ns/prod/web2", "payments", "GET", "/v1/payments/1")
    assert not decide(policy, "spiffe://other.org/ns/prod/web", "payments", "GET", "/v1/payments/1")


def test_identity_glob_star_stays_in_its_segment(policy):
    assert decide(policy, f"{TD}/ns/dev/batch", "payments", "GET", "/v1/payments/1")
    # '*' must not cross '/': ns/a/b/batch is not ns/*/batch. (Attack from the issue.)
    decision = decide(policy, f"{TD}/ns/dev/evil/batch", "payments", "GET", "/v1/payments/1")
    assert not decision
    assert "(default deny)" in decision.reason


def test_path_glob_star_stays_in_its_segment(policy):
    assert decide(policy, WEB, "payments", "GET", "/v1/payments/42")
    assert not decide(policy, WEB, "payments", "GET", "/v1/payments/42/refunds")
    assert not decide(policy, WEB, "payments", "GET", "/v1/payments")


def test_double_star_spans_segments_but_not_zero(policy):
    ops = f"{TD}/ns/prod/team/ops-bot"
    assert decide(policy, ops, "ledger", "GET", "/v1/entries", roles=("ops",))
    decision = decide(policy, f"{TD}/ns/prod", "ledger", "GET", "/v1/entries", roles=("ops",))
    assert decision.reason.endswith("(default deny)")


def test_identities_and_roles_must_both_match(policy):
    ops = f"{TD}/ns/prod/ops-bot"
    assert decide(policy, ops, "ledger", "POST", "/v1/entries", roles=("ops",))
    for identity, roles in (
        (ops, ("reader",)),  # role missing
        (f"{TD}/ns/dev/ops-bot", ("ops",)),  # identity outside
        (None, ("ops",)),  # no identity at all
    ):
        decision = decide(policy, identity, "ledger", "POST", "/v1/entries", roles=roles)
        assert decision.reason.endswith("(default deny)"), (identity, roles)


def test_role_only_rule_and_all_services(policy):
    for service in ("payments", "ledger", "anything"):
        decision = decide(policy, None, service, "GET", "/v1/x", roles=("auditor",))
        assert decision.rule == "auditors-read-everything (policy.toml line 10)"
    assert not decide(policy, None, "payments", "POST", "/v1/x", roles=("auditor",))


def test_deny_rule_wins_over_an_earlier_allow(policy):
    # auditors-read-everything (line 10) would allow this; no-admin-for-anyone (line 22) wins.
    decision = decide(policy, None, "payments", "GET", "/admin/users", roles=("auditor",))
    assert decision == Decision(
        False,
        "denied by rule 'no-admin-for-anyone' (policy.toml line 22)",
        "no-admin-for-anyone (policy.toml line 22)",
    )
    assert not decide(policy, None, "payments", "GET", "/admin", roles=("auditor",))
    assert decide(policy, None, "payments", "GET", "/administrators", roles=("auditor",))  # control


def test_deny_rule_applies_when_the_request_cannot_tell_its_path(policy):
    # A TCP tunnel knows no path: the deny on /admin must still hold (fail closed) ...
    decision = decide(policy, f"{TD}/ns/dev/batch", "ledger", roles=("worker",))
    assert decision.reason.startswith("denied by rule 'no-admin-for-anyone'")
    # ... while a peer without roles is not concerned by a roles rule, and batch may use ledger.
    assert decide(policy, f"{TD}/ns/dev/batch", "ledger")


def test_allow_rule_with_methods_or_paths_does_not_allow_an_unknown_request(policy):
    assert not decide(policy, WEB, "payments")  # the rule names methods and paths
    assert not decide(policy, WEB, "payments", "GET")  # ... and paths
    assert not decide(policy, WEB, "payments", None, "/v1/payments/1")  # ... and methods


def test_methods_compare_in_upper_case(policy):
    assert decide(policy, WEB, "payments", "get", "/v1/payments/1")
    # So a deny of some method cannot be dodged by writing it in lower case.
    deny = Policy.parse(
        'version = 1\n[[rule]]\nname = "all"\nservices = ["x"]\nroles = ["r"]\n'
        '[[rule]]\nname = "no-delete"\neffect = "deny"\nservices = ["x"]\nroles = ["r"]\n'
        'methods = ["DELETE"]\n'
    )
    assert decide(deny, None, "x", "GET", roles=("r",))
    assert decide(deny, None, "x", "delete", roles=("r",)).reason.startswith("denied by rule 'no-delete'")


@pytest.mark.parametrize("method", ["GET /", "", "G\u00c9T", "GET\r\n", "GE:T"])
def test_malformed_methods_are_denied(policy, method):
    decision = decide(policy, None, "payments", method, "/v1/x", roles=("auditor",))
    assert not decision
    assert "not an HTTP method token" in decision.reason
    assert "\n" not in decision.reason and "\r" not in decision.reason


ATTACK_PATHS = {
    "/v1/payments/../admin": "'..' segment",
    "/v1/payments/..": "'..' segment",
    "/v1/payments/.": "'.' segment",
    "/v1/payments/%2e%2e": "percent-encoded '..'",
    "/v1/payments/%2E%2e": "percent-encoded '..'",
    "/v1/payments/%252e%252e": "percent-encoded '..'",  # decoded twice by some servers
    "/v1/payments/.%2e": "percent-encoded '..'",
    "/v1/payments/a%2fb": "percent-encoded separator",
    "/v1/payments/a%5Cb": "percent-encoded separator",
    "/v1/payments/..;": "contains ';'",  # Tomcat: '..;' is '..'
    "/v1/payments/x;jsessionid=1": "contains ';'",
    "/v1/payments/a\\b": "backslash",
    "/v1/payments/x\r\nX-Injected: 1": "control character",
    "/v1/payments/x\x00": "control character",
    "/v1/payments/\udcff": "control character",
    "v1/payments/1": "does not start with '/'",
    "": "is empty",
    "/v1//payments/1": "empty segment",
    "/v1/payments/" + "a" * 9000: "longer than",
}


@pytest.mark.parametrize("path", sorted(ATTACK_PATHS))
def test_non_canonical_paths_are_denied_not_resolved(path):
    # Every path above would match one of these patterns if it were matched as a string
    # (or resolved): the refusal must come from the canonical-form check.
    permissive = Policy.parse(
        'version = 1\n[[rule]]\nname = "payments"\nservices = ["payments"]\n'
        f'identities = ["{WEB}"]\npaths = ["/v1/payments/*", "/v1/payments/**", "/**"]\n'
    )
    decision = decide(permissive, WEB, "payments", "GET", path)
    assert not decision
    assert ATTACK_PATHS[path] in decision.reason
    assert "never resolved" in decision.reason
    assert decision.rule is None
    # Reasons go to logs: no raw control characters, bounded length.
    assert decision.reason.isprintable()
    assert len(decision.reason) < 400


def test_canonical_paths_with_unusual_characters_are_decided(policy):
    assert decide(policy, WEB, "payments", "GET", "/v1/payments/caf\u00e9")
    assert decide(policy, WEB, "payments", "GET", "/v1/payments/a%20b")  # a literal '%', not a dot
    assert decide(policy, WEB, "payments", "GET", "/v1/payments/")  # '*' matches the empty last segment
    assert decide(policy, None, "payments", "GET", "/", roles=("auditor",))


@pytest.mark.parametrize(
    "identity",
    [
        f"{TD}/ns/../batch",  # '*' in ns/*/batch would match '..'
        f"{TD}/ns//batch",  # ... or an empty segment
        "spiffe://EXAMPLE.org/ns/dev/batch",
        f"{TD}/ns/dev/batch?x=1",
        f"{TD}/ns/dev/batch/",
        "https://example.org/ns/dev/batch",
    ],
)
def test_invalid_identities_are_denied(policy, identity):
    decision = decide(policy, identity, "ledger")
    assert not decision
    assert "is not a valid SPIFFE ID" in decision.reason


@pytest.mark.parametrize(
    ("subject", "request_"),
    [
        (Subject(123), Request("ledger")),  # type: ignore[arg-type]
        (Subject(WEB, "auditor"), Request("ledger")),  # type: ignore[arg-type]
        (Subject(WEB, (1, 2)), Request("ledger")),  # type: ignore[arg-type]
        (Subject(["x"]), Request("ledger")),  # type: ignore[arg-type]
        (Subject(WEB), Request(None)),  # type: ignore[arg-type]
        (Subject(WEB), Request("")),
        (Subject(WEB), Request("ledger", 5)),  # type: ignore[arg-type]
        (Subject(WEB), Request("ledger", "GET", b"/x")),  # type: ignore[arg-type]
        (None, None),
        ("spiffe://example.org/web", "ledger"),
    ],
)
def test_decide_never_raises_on_malformed_input(policy, subject, request_):
    for call in (policy.decide, policy.evaluate):
        decision = call(subject, request_)
        assert isinstance(decision, Decision)
        assert not decision
        assert decision.reason.startswith("denied")


def test_unhashable_roles_are_decided_without_the_cache(policy):
    subject = Subject(None, ["auditor"])  # type: ignore[arg-type]
    assert policy.decide(subject, Request("payments", "GET", "/v1/x"))
    assert not policy.decide(subject, Request("payments", "POST", "/v1/x"))


def test_cached_decisions_match_uncached_ones(policy):
    subjects = [Subject(WEB), Subject(f"{TD}/ns/dev/batch", ("ops",)), Subject(None, ("auditor",))]
    requests = [
        Request("payments", "GET", "/v1/payments/1"),
        Request("ledger"),
        Request("ledger", "GET", "/admin"),
        Request("payments", "POST", "/v1/payments/1"),
    ]
    for _ in range(2):  # second round: from the caches
        for subject in subjects:
            for request in requests:
                assert policy.decide(subject, request) == policy.evaluate(subject, request)


def test_caches_are_bounded():
    policy = Policy.parse(POLICY, cache_size=32)
    for index in range(500):
        policy.decide(Subject(f"{TD}/ns/prod/w{index}"), Request("payments", "GET", f"/v1/payments/{index}"))
    info = policy.cache_info()
    assert 0 < info["decisions"] <= 32
    assert 0 < info["subjects"] <= 32


def test_rules_for_lists_deny_rules_first(policy):
    names = [r.name for r in policy.rules_for(Subject(f"{TD}/ns/dev/batch", ("ops",)))]
    assert names == ["no-admin-for-anyone", "web-reads-payments", "batch-all-of-ledger"]
    assert policy.rules_for(Subject("not a spiffe id")) == ()


def test_policy_refuses_rules_that_are_not_compiled():
    with pytest.raises(TypeError):
        Policy(rules=("not a rule",))  # type: ignore[arg-type]


def test_measure_reports_cold_warm_and_cached_costs():
    from certwright.access.measure import decision_cost

    cost = decision_cost(rule_count=10, number=50)
    assert cost.allowed
    assert cost.rules == 10
    assert min(cost.cold_us, cost.warm_us, cost.cached_us) > 0
    assert "cached" in str(cost)


def test_long_paths_are_decided_but_not_cached():
    policy = Policy.parse(POLICY)
    long_path = "/v1/payments/" + "a" * 600
    decision = policy.decide(Subject(None, ("auditor",)), Request("payments", "GET", long_path))
    assert decision.rule is not None and decision.rule.startswith("auditors-read-everything")
    assert policy.cache_info()["decisions"] == 0


def test_hand_built_rule_with_empty_paths_matches_no_path():
    from certwright.access import Effect, Rule
    from certwright.globs import Glob

    rule = Rule(name="r", effect=Effect.ALLOW, services=None, roles=(Glob.compile("r", sep="/"),), paths=())
    policy = Policy(rules=(rule,))
    assert not policy.decide(Subject(None, ("r",)), Request("x", "GET", "/a"))
    assert not policy.decide(Subject(None, ("r",)), Request("x"))
    unrestricted = Policy(rules=(Rule(name="r", effect=Effect.ALLOW, services=None, roles=rule.roles),))
    assert unrestricted.decide(Subject(None, ("r",)), Request("x", "GET", "/a"))  # control
