"""``certwright access``: explain what the access policy decides for a certificate.

Example::

    $ certwright access check --policy policy.toml --cert web.pem --service payments \\
          --method GET --path /v1/payments/42
    ALLOW  spiffe://example.org/ns/prod/web  GET /v1/payments/42 on payments
      allowed by rule 'web-reads-payments' (policy.toml line 3)

``certwright access validate policy.toml`` checks a policy file before it is deployed.

Exit codes of ``check``: 0 allowed, 1 denied (or the policy, certificate or chain is refused, with
the reason on stderr), 2 usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from certwright.access import Decision, Policy, Request, Rule, Subject
from certwright.cli.common import EXIT_REFUSED, CertwrightGroup, emit_json, json_option
from certwright.errors import VerificationError
from certwright.files import read_certificates
from certwright.verify.chain import Purpose
from certwright.verify.identity import authorization_of, identity_of, verify_identity
from certwright.x509.authz import DEFAULT_OID, validate_oid

_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


@click.group(cls=CertwrightGroup)
def access() -> None:
    """Access policy: validate a policy file, check what it decides for a certificate."""


@access.command()
@click.argument("policy_file", metavar="POLICY", type=_FILE)
@json_option
def validate(policy_file: Path, as_json: bool) -> None:
    """Parse a policy file and list its rules (exit 1, naming the line, if it is malformed).

    Run it before deploying a policy: a service refuses a bad new version and keeps the
    old one, so a mistake would otherwise only show in its log.
    """
    policy = Policy.load(policy_file)

    def services(rule: Rule) -> list[str]:
        return sorted(rule.services) if rule.services is not None else ["*"]

    if as_json:
        rules = [
            {"name": r.name, "line": r.line, "effect": r.effect.value, "services": services(r)}
            for r in policy.rules
        ]
        emit_json({"policy": policy.source, "rules": rules})
        return
    for rule in policy.rules:
        targets = ", ".join(services(rule))
        click.echo(f"line {rule.line!s:<5} {rule.effect.value:<5}  {rule.name}  ->  {targets}")
    click.echo(f"{policy.source}: {len(policy.rules)} rules, valid")


@access.command()
@click.option("--policy", "policy_file", required=True, type=_FILE, help="The access policy (TOML).")
@click.option(
    "--cert", "cert_file", required=True, type=_FILE,
    help="The peer's certificate (PEM or DER); intermediates may follow it in a PEM file.",
)
@click.option("--service", required=True, help="The service the peer calls.")
@click.option("--method", help="The request method (GET, POST ...).")
@click.option("--path", "request_path", help="The request path (decoded, without the query).")
@click.option(
    "--bundle", type=_FILE,
    help="Verify the chain first against these trusted roots (PEM), as a TLS server would.",
)
@click.option(
    "--extension-oid", default=DEFAULT_OID, show_default=True,
    help="OID of the authorization extension (your CA's --extension-oid).",
)
@json_option
def check(
    policy_file: Path,
    cert_file: Path,
    service: str,
    method: str | None,
    request_path: str | None,
    bundle: Path | None,
    extension_oid: str,
    as_json: bool,
) -> None:
    """Decide whether the certificate's peer may make a request, and say why.

    The identity is the certificate's one SPIFFE URI SAN, the roles come from the
    certwright authorization extension. Exit 0 when allowed, 1 when denied.
    """
    validate_oid(extension_oid)
    policy = Policy.load(policy_file)
    certificates = read_certificates(cert_file)
    request = Request(service, method, request_path)
    try:
        subject = _subject(certificates, bundle, extension_oid)
    except VerificationError as exc:
        if not as_json:
            raise
        # The certificate speaks for nobody: a denial, reported like one.
        refused = Decision(False, f"denied: {exc.reason}")
        emit_json(_as_json(refused, Subject(None), request, policy, verified=False))
        sys.exit(EXIT_REFUSED)
    decision = policy.decide(subject, request)
    if as_json:
        emit_json(_as_json(decision, subject, request, policy, verified=bundle is not None))
    else:
        _print(decision, subject, request)
    if not decision.allowed:
        sys.exit(EXIT_REFUSED)


def _subject(certificates: list[x509.Certificate], bundle: Path | None, extension_oid: str) -> Subject:
    leaf = certificates[0]
    if bundle is not None:
        verified = verify_identity(
            leaf,
            trusted=read_certificates(bundle),
            untrusted=certificates[1:],
            purpose=Purpose.CLIENT,
            extension_oid=extension_oid,
        )
        identity, roles = verified.identity, verified.roles
    else:
        # identity_of refuses two URI SANs: which one would the peer be?
        identity, roles = identity_of(leaf), authorization_of(leaf, extension_oid).roles
    return Subject(str(identity) if identity is not None else None, roles)


def _print(decision: Decision, subject: Subject, request: Request) -> None:
    who = subject.identity or "(no identity)"
    what = " ".join(p for p in (request.method, request.path) if p)
    target = f"{what} on {request.service}" if what else request.service
    verdict = click.style("ALLOW", fg="green", bold=True) if decision else click.style("DENY", fg="red")
    click.echo(f"{verdict}  {who}  {target}")
    if subject.roles:
        click.echo(f"  roles: {', '.join(subject.roles)}")
    click.echo(f"  {decision.reason}")


def _as_json(
    decision: Decision, subject: Subject, request: Request, policy: Policy, *, verified: bool
) -> dict[str, Any]:
    return {
        "allowed": decision.allowed,
        "reason": decision.reason,
        "rule": decision.rule,
        "identity": subject.identity,
        "roles": list(subject.roles),
        "service": request.service,
        "method": request.method,
        "path": request.path,
        "policy": policy.source,
        "chain_verified": verified,
    }

