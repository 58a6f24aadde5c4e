"""``certwright token create``: a one-time enrolment token from a running ``certwright serve``.

The call is made over mTLS with the operator's admin certificate (``DIR/admin.pem``). The
server is authenticated by its SPIFFE identity, ``spiffe://<trust domain>/certwright/server``,
the trust domain taken from the admin certificate (the same CA issued both): a workload
certificate from the same bundle answering on the server's address is refused before a
byte of the request leaves (``--server-identity`` names another identity).

Example::

    TOKEN=$(certwright token create --server https://127.0.0.1:8443 --bundle data/bundle.pem \\
        --admin-cert data/admin.pem --admin-key data/admin.key \\
        --identity spiffe://example.org/web --dns web.example.org)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import httpx

from certwright.cli.common import CertwrightGroup, Refused, emit_json, json_option
from certwright.errors import CertwrightError
from certwright.files import read_certificate
from certwright.mtls.client import httpx_client
from certwright.mtls.context import TLSFiles
from certwright.server.config import SERVER_IDENTITY_PATH
from certwright.verify.identity import identity_of

PROBLEM_JSON = "application/problem+json"
TIMEOUT = 30.0


def request(client: httpx.Client, method: str, path: str, body: Any | None = None) -> httpx.Response:
    """Call the CA's API; a problem document or a transport failure becomes :class:`Refused`."""
    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise Refused(f"cannot reach {client.base_url}: {exc}") from None
    if response.status_code >= 400:
        raise Refused(problem_message(response))
    return response


def request_json(client: httpx.Client, method: str, path: str, body: Any | None = None) -> Any:
    """:func:`request`, the answer's JSON body."""
    response = request(client, method, path, body)
    try:
        return response.json()
    except ValueError:
        raise Refused(f"{method} {path}: the server answered {response.status_code} without JSON") from None


def problem_message(response: httpx.Response) -> str:
    """One line from an RFC 9457 problem document (or whatever the server sent instead)."""
    where = f"{response.request.method} {response.request.url.path}"
    if response.headers.get("content-type", "").startswith(("application/problem+json", "application/json")):
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if isinstance(problem, dict):
            title = problem.get("title") or "refused"
            detail = problem.get("detail") or ""
            return f"{where}: {title} ({response.status_code}){': ' + str(detail) if detail else ''}"
    text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    return f"{where}: HTTP {response.status_code} {text}".rstrip()


def server_identity_for(admin_cert: Path, given: str | None) -> str:
    """The identity the server must present: ``given``, else derived from the admin certificate."""
    if given:
        return given
    try:
        identity = identity_of(read_certificate(admin_cert))
    except CertwrightError as exc:
        raise Refused(f"{admin_cert}: {exc}") from None
    if identity is None:
        raise Refused(f"{admin_cert} names no SPIFFE identity: give --server-identity")
    return f"spiffe://{identity.trust_domain}/{SERVER_IDENTITY_PATH}"


@click.group(cls=CertwrightGroup)
def token() -> None:
    """One-time enrolment tokens of a running `certwright serve`."""


@token.command("create")
@click.option("--server", required=True, help="The CA's API URL, e.g. https://127.0.0.1:8443.")
@click.option(
    "--bundle",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Trust bundle (DIR/bundle.pem).",
)
@click.option(
    "--admin-cert",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Admin certificate (DIR/admin.pem).",
)
@click.option(
    "--admin-key",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Admin key (DIR/admin.key).",
)
@click.option("--identity", required=True, help="SPIFFE ID the token is bound to.")
@click.option("--profile", help="Profile of the certificate (server default: mtls).")
@click.option("--dns", "dns", multiple=True, help="DNS name the workload may ask for (repeatable).")
@click.option("--ip", "ips", multiple=True, help="IP address the workload may ask for (repeatable).")
@click.option("--role", "roles", multiple=True, help="Role put in the certificate (repeatable).")
@click.option("--ttl", default="15m", show_default=True, help="How long the token stays valid.")
@click.option(
    "--lifetime",
    help="Cap on the enrolled certificate's lifetime, e.g. 1h (default: the profile's default).",
)
@click.option(
    "--server-identity",
    help="SPIFFE ID the server must present (default: spiffe://<admin's trust domain>/certwright/server).",
)
@json_option
def create(
    server: str,
    bundle: Path,
    admin_cert: Path,
    admin_key: Path,
    identity: str,
    profile: str | None,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    roles: tuple[str, ...],
    ttl: str,
    lifetime: str | None,
    server_identity: str | None,
    as_json: bool,
) -> None:
    """Create a one-time enrolment token and print it (the secret is shown only once)."""
    expect = server_identity_for(admin_cert, server_identity)
    body: dict[str, Any] = {"identity": identity, "dns": list(dns), "ips": list(ips), "roles": list(roles)}
    body["ttl"] = ttl
    if lifetime:
        body["lifetime"] = lifetime
    if profile:
        body["profile"] = profile
    files = TLSFiles(admin_cert, admin_key, bundle)
    with httpx_client(files, expect=expect, base_url=server, timeout=TIMEOUT) as client:
        created = request_json(client, "POST", "/v1/tokens", body)
    if not isinstance(created, dict) or not isinstance(created.get("token"), str):
        raise Refused("POST /v1/tokens: the server's answer holds no token")
    if as_json:
        emit_json(created)
        return
    click.echo(created["token"])
    click.echo(
        f"token {created.get('token_id', '?')} for {identity}, valid until {created.get('expires_at', '?')}",
        err=True,
    )
