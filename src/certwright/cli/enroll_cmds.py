"""``certwright enroll``: redeem a one-time token for a certificate; the key never leaves.

The key is generated here, the CSR sent with the token to ``POST /v1/enroll``, and the
answer written to ``--out DIR``: ``key.pem`` (0600), ``cert.pem`` (the leaf),
``chain.pem`` (leaf + intermediates, what a TLS server or client presents) and
``bundle.pem`` (the trust bundle from ``GET /v1/bundle``). The four files are written
only once everything was received and checked, and either all of them are or none.

The server is verified as any HTTPS server: its chain against ``--bundle`` and its name
against the URL (the server certificate names ``localhost``, ``127.0.0.1`` and ``::1``,
plus the ``server_dns``/``server_ips`` settings); ``--server-identity`` also checks its
SPIFFE ID. The renewal agent (a later issue) builds on this.

Example::

    certwright enroll --server https://127.0.0.1:8443 --bundle data/bundle.pem \\
        --token "$TOKEN" --dns web.example.org --out web
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certwright.cli.cert_cmds import write_all
from certwright.cli.common import Refused, emit_json, json_option, key_type_option
from certwright.cli.token_cmds import TIMEOUT, request, request_json
from certwright.errors import CertwrightError
from certwright.files import parse_certificates
from certwright.mtls.client import connect, httpx_client
from certwright.verify.identity import identity_of
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, SigningKey, generate_key, private_key_pem, signature_hash
from certwright.x509.names import SubjectAltNames

CA_SERVER_PATH = "/certwright/server"  # what `certwright serve` issues itself

KEY, CERT, CHAIN, BUNDLE = "key.pem", "cert.pem", "chain.pem", "bundle.pem"
TOKEN_ENV = "CERTWRIGHT_TOKEN"  # noqa: S105 - a variable name, not a secret


def build_csr(
    key: SigningKey, *, dns: tuple[str, ...], ips: tuple[str, ...]
) -> x509.CertificateSigningRequest:
    """A CSR for ``key`` asking for these names; the identity comes from the token."""
    sans = SubjectAltNames.create(dns=dns, ips=ips)
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans.general_names()), critical=False)
    return builder.sign(key, signature_hash(key))  # type: ignore[arg-type]


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _discover_server(server: str, context: ssl.SSLContext) -> SpiffeId:
    """The CA server's SPIFFE ID, read from its verified certificate; its path must be the
    one `certwright serve` gives itself (tokens cannot grant it)."""
    url = urlsplit(server)
    if url.scheme != "https" or not url.hostname:
        raise Refused(f"--server {server!r}: give the CA's https:// URL (the token must not travel in clear)")
    try:
        with connect(url.hostname, url.port or 443, tls=context, expect=None, timeout=TIMEOUT) as sock:
            der = sock.getpeercert(True)
    except (OSError, ssl.SSLError) as exc:
        raise Refused(f"cannot reach a verified CA at {server}: {exc}") from exc
    found = identity_of(x509.load_der_x509_certificate(der)) if der else None
    if found is None or found.path != CA_SERVER_PATH:
        raise Refused(
            f"{server} presents identity {found}, not a certwright CA server (…{CA_SERVER_PATH}); "
            "give --server-identity if yours differs"
        )
    return found


def _certificates(value: Any, what: str) -> list[x509.Certificate]:
    if not isinstance(value, str) or not value.strip():
        raise Refused(f"the server's answer has no {what}")
    try:
        return parse_certificates(value.encode(), source=f"the server's {what}")
    except CertwrightError as exc:
        raise Refused(str(exc)) from None


@click.command("enroll")
@click.option("--server", required=True, help="The CA's API URL, e.g. https://127.0.0.1:8443.")
@click.option(
    "--bundle",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Trust bundle to verify the server with (the CA's bundle.pem).",
)
@click.option(
    "--token",
    "token",
    required=True,
    envvar=TOKEN_ENV,
    help=f"The one-time enrolment token (or ${TOKEN_ENV}, which keeps it out of the process list).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for key.pem, cert.pem, chain.pem, bundle.pem (created if missing).",
)
@key_type_option("--key-type")
@click.option("--dns", "dns", multiple=True, help="DNS name to ask for (must be granted by the token).")
@click.option("--ip", "ips", multiple=True, help="IP address to ask for (must be granted by the token).")
@click.option("--server-identity", help="Also require this SPIFFE ID of the server.")
@click.option("--force", is_flag=True, help="Replace existing files in --out.")
@json_option
def enroll(
    server: str,
    bundle: Path,
    token: str,
    out: Path,
    key_type: KeyType,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    server_identity: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Enroll this workload: new key, CSR + token to the CA, certificate and chain to --out."""
    paths = {name: out / name for name in (KEY, CERT, CHAIN, BUNDLE)}
    if not force:
        for path in paths.values():
            if path.exists():
                raise FileExistsError(f"{path} already exists")
    if out.exists() and not out.is_dir():
        raise Refused(f"{out} is not a directory")
    key = generate_key(key_type)
    csr = build_csr(key, dns=dns, ips=ips)
    # This workload has no certificate yet: the server is verified against the bundle, by
    # hostname, and by its SPIFFE ID (--server-identity, or any ID with the CA server's path:
    # every workload of the trust domain chains to the same root, so the chain alone would
    # let one of them collect the token).
    context = ssl.create_default_context(cafile=str(bundle))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    expect = server_identity or str(_discover_server(server, context))
    with httpx_client(tls=context, expect=expect, base_url=server, timeout=TIMEOUT) as client:
        # The bundle first: when the server cannot be reached the token is still unspent.
        anchors = _certificates(request(client, "GET", "/v1/bundle").text, "bundle")
        pem_csr = csr.public_bytes(serialization.Encoding.PEM).decode()
        issued = request_json(client, "POST", "/v1/enroll", {"token": token, "csr": pem_csr})
    if not isinstance(issued, dict):
        raise Refused("POST /v1/enroll: unexpected answer")
    leaf = _certificates(issued.get("certificate"), "certificate")[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise Refused("the certificate the server sent is not for the key generated here")
    chain = issued.get("chain")
    intermediates = [c for c in _certificates(chain, "chain") if c != leaf] if chain else []
    pem = serialization.Encoding.PEM
    files = {
        paths[KEY]: (private_key_pem(key), True),
        paths[CERT]: (leaf.public_bytes(pem), False),
        paths[CHAIN]: (b"".join(c.public_bytes(pem) for c in (leaf, *intermediates)), False),
        paths[BUNDLE]: (b"".join(c.public_bytes(pem) for c in anchors), False),
    }
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_all(files, force=force)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    summary = {
        "identity": issued.get("identity"),
        "serial": issued.get("serial"),
        "not_after": issued.get("not_after"),
        "files": {name: str(path) for name, path in paths.items()},
    }
    if as_json:
        emit_json(summary)
        return
    click.echo(
        f"enrolled {summary['identity']} (serial {summary['serial']}, until {summary['not_after']}); "
        f"wrote {out}/{{{KEY},{CERT},{CHAIN},{BUNDLE}}}"
    )
