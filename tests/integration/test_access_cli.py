"""``certwright access check``: a certificate and a request against a policy file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from support.cli import run_cli, run_exe
from support.pki import TestPKI

TD = "spiffe://example.org"
WEB = f"{TD}/ns/prod/web"

POLICY = f"""\
version = 1

[[rule]]
name = "web-reads-payments"
services = ["payments"]
identities = ["{WEB}"]
roles = ["reader"]
methods = ["GET", "HEAD"]
paths = ["/v1/payments/*"]

[[rule]]
name = "no-admin"
effect = "deny"
services = ["*"]
roles = ["**"]
paths = ["/admin/**"]
"""


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


@pytest.fixture(scope="module")
def files(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("access")
    policy = root / "policy.toml"
    policy.write_text(POLICY)
    web = pki.leaf(WEB, roles=("reader",)).write(root / "web", pki.bundle_pem)
    writer = pki.leaf(WEB, roles=("writer",)).write(root / "writer", pki.bundle_pem)
    # No roles: forged_leaf(roles=...) trips on Authorization.extension() returning an Extension.
    two_uris = pki.forged_leaf([WEB, f"{TD}/ns/prod/admin"]).write(root / "two", pki.bundle_pem)
    one_uri = pki.forged_leaf([WEB]).write(root / "one", pki.bundle_pem)
    by_identity = root / "by-identity.toml"
    by_identity.write_text(
        f'version = 1\n[[rule]]\nname = "web"\nservices = ["payments"]\nidentities = ["{WEB}"]\n'
    )
    expired = pki.expired_leaf(WEB, roles=("reader",)).write(root / "expired", pki.bundle_pem)
    stranger_pki = TestPKI.create(name="Stranger")
    stranger = stranger_pki.leaf(WEB, roles=("reader",)).write(root / "stranger", stranger_pki.bundle_pem)
    der = root / "web.der"
    der.write_bytes(pki.leaf(WEB, roles=("reader",)).certificate.public_bytes(serialization.Encoding.DER))
    return {
        "policy": policy,
        "web": web.cert,
        "bundle": web.bundle,
        "writer": writer.cert,
        "two_uris": two_uris.cert,
        "one_uri": one_uri.cert,
        "by_identity": by_identity,
        "expired": expired.cert,
        "stranger": stranger.cert,
        "der": der,
        "root": root,
    }


def check(files: dict[str, Path], cert: str, *extra: str | Path):
    return run_cli("access", "check", "--policy", files["policy"], "--cert", files[cert], *extra)


def test_allowed_request_exits_0_and_names_the_rule(files):
    outcome = check(files, "web", "--service", "payments", "--method", "GET", "--path", "/v1/payments/42")
    assert outcome.code == 0, outcome
    assert outcome.stdout.startswith("ALLOW")
    assert WEB in outcome.stdout
    assert f"allowed by rule 'web-reads-payments' ({files['policy']} line 3)" in outcome.stdout


def test_denied_request_exits_1_with_the_reason(files):
    outcome = check(files, "web", "--service", "payments", "--method", "POST", "--path", "/v1/payments/42")
    assert outcome.code == 1, outcome
    assert outcome.stdout.startswith("DENY")
    reason = f"denied: no rule allows {WEB} (roles: reader) to POST /v1/payments/42 on payments"
    assert reason in outcome.stdout


def test_roles_come_from_the_certificate(files):
    # Same identity, role writer instead of reader: the rule needs both.
    outcome = check(files, "writer", "--service", "payments", "--method", "GET", "--path", "/v1/payments/42")
    assert outcome.code == 1, outcome
    assert "roles: writer" in outcome.stdout


def test_extension_oid_option_reads_roles_under_another_oid(files):
    # Under another OID the certificate has no roles, so the reader rule no longer applies.
    outcome = check(
        files, "web", "--service", "payments", "--method", "GET", "--path", "/v1/payments/42",
        "--extension-oid", "1.3.6.1.4.1.32473.9.9",
    )
    assert outcome.code == 1, outcome
    assert "(default deny)" in outcome.stdout


def test_deny_rule_and_path_attack(files):
    outcome = check(files, "web", "--service", "payments", "--method", "GET", "--path", "/admin/users")
    assert outcome.code == 1 and "denied by rule 'no-admin'" in outcome.stdout, outcome
    outcome = check(files, "web", "--service", "payments", "--method", "GET", "--path", "/v1/payments/../x")
    assert outcome.code == 1 and "'..' segment" in outcome.stdout, outcome


def test_json_output(files):
    outcome = check(
        files, "web", "--service", "payments", "--method", "get", "--path", "/v1/payments/1", "--json"
    )
    assert outcome.code == 0, outcome
    data = json.loads(outcome.stdout)
    assert data == {
        "allowed": True,
        "reason": f"allowed by rule 'web-reads-payments' ({files['policy']} line 3)",
        "rule": f"web-reads-payments ({files['policy']} line 3)",
        "identity": WEB,
        "roles": ["reader"],
        "service": "payments",
        "method": "get",
        "path": "/v1/payments/1",
        "policy": str(files["policy"]),
        "chain_verified": False,
    }
    denied = check(files, "web", "--service", "ledger", "--json")
    assert denied.code == 1
    assert json.loads(denied.stdout)["allowed"] is False


def test_der_certificate(files):
    outcome = check(files, "der", "--service", "payments", "--method", "HEAD", "--path", "/v1/payments/1")
    assert outcome.code == 0, outcome


def test_malformed_policy_exits_1_naming_the_line(files):
    bad = files["root"] / "bad.toml"
    bad.write_text(POLICY.replace('methods = ["GET", "HEAD"]', 'methods = ["GET", "HAED"]'))
    outcome = run_cli("access", "check", "--policy", bad, "--cert", files["web"], "--service", "payments")
    assert outcome.code == 1, outcome
    assert f"{bad}:8:" in outcome.stderr
    assert "'HAED' is not an HTTP method" in outcome.stderr


def test_two_uri_sans_are_refused(files):
    # A policy allowing the first URI by identity alone must not be consulted: which one
    # is the peer? Control: the same forged certificate with only that URI is allowed.
    def run(cert: str, *extra: str):
        return run_cli(
            "access", "check", "--policy", files["by_identity"], "--cert", files[cert],
            "--service", "payments", *extra,
        )

    assert run("one_uri").code == 0
    outcome = run("two_uris")
    assert outcome.code == 1, outcome
    assert "2 URI SANs" in outcome.stderr
    as_json = run("two_uris", "--json")
    assert as_json.code == 1
    assert "2 URI SANs" in json.loads(as_json.stdout)["reason"]


def test_bundle_verifies_the_chain_first(files):
    request = ("--service", "payments", "--method", "GET", "--path", "/v1/payments/1")
    verified = check(files, "web", *request, "--bundle", files["bundle"], "--json")
    assert verified.code == 0, verified
    assert json.loads(verified.stdout)["chain_verified"] is True
    # A certificate from another CA carries the same identity and roles: without --bundle
    # the policy alone allows it (control) ...
    assert check(files, "stranger", *request).code == 0
    # ... with --bundle its chain is refused.
    refused = check(files, "stranger", *request, "--bundle", files["bundle"])
    assert refused.code == 1, refused
    assert "error:" in refused.stderr
    expired = check(files, "expired", *request, "--bundle", files["bundle"])
    assert expired.code == 1, expired


def test_real_program_exit_codes(files):
    allowed = run_exe(
        "access", "check", "--policy", files["policy"], "--cert", files["web"],
        "--service", "payments", "--method", "GET", "--path", "/v1/payments/1",
    )
    assert allowed.code == 0, allowed
    denied = run_exe("access", "check", "--policy", files["policy"], "--cert", files["web"], "--service", "x")
    assert denied.code == 1, denied
    usage = run_exe("access", "check", "--policy", files["policy"], "--cert", files["web"])
    assert usage.code == 2, usage  # --service is required


def test_validate_lists_rules_or_names_the_bad_line(files):
    outcome = run_cli("access", "validate", files["policy"])
    assert outcome.code == 0, outcome
    assert "line 3     allow  web-reads-payments  ->  payments" in outcome.stdout
    assert "line 11    deny   no-admin  ->  *" in outcome.stdout
    assert outcome.stdout.rstrip().endswith("2 rules, valid")
    data = json.loads(run_cli("access", "validate", files["policy"], "--json").stdout)
    assert [(r["name"], r["line"]) for r in data["rules"]] == [("web-reads-payments", 3), ("no-admin", 11)]
    bad = files["root"] / "typo.toml"
    bad.write_text(POLICY.replace("paths = [\"/admin/**\"]", "path = [\"/admin/**\"]"))
    refused = run_cli("access", "validate", bad)
    assert refused.code == 1, refused
    assert f"{bad}:16: unknown key 'path'" in refused.stderr
