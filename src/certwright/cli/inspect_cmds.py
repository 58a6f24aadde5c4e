"""``certwright inspect`` and ``certwright verify``."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import click
from cryptography import x509

from certwright.cli.common import Refused, emit_json, json_option, say
from certwright.cli.render import print_certificate, print_csr
from certwright.errors import InvalidCertificateError, VerificationError
from certwright.files import parse_certificates, parse_csr, read_certificates
from certwright.inspect import describe_certificate, describe_csr
from certwright.verify.chain import Purpose
from certwright.verify.identity import verify_identity
from certwright.x509.authz import DEFAULT_OID, validate_oid

OID_OPTION = click.option(
    "--extension-oid",
    default=DEFAULT_OID,
    show_default=True,
    help="OID of the authorization extension (your CA's --extension-oid).",
)


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@OID_OPTION
@json_option
def inspect_cmd(file: Path, extension_oid: str, as_json: bool) -> None:
    """Show a certificate, a chain of them, or a CSR, readably (or as JSON)."""
    validate_oid(extension_oid)
    data = file.read_bytes()
    request = parse_csr(data, source=str(file)) if b"CERTIFICATE REQUEST" in data else _der_csr(data)
    if request is not None:
        csr_info = describe_csr(request)
        emit_json(csr_info.to_json()) if as_json else print_csr(csr_info)
        return
    certs = parse_certificates(data, source=str(file))
    infos = [describe_certificate(c, extension_oid=extension_oid) for c in certs]
    if as_json:
        emit_json(infos[0].to_json() if len(infos) == 1 else [i.to_json() for i in infos])
        return
    for index, info in enumerate(infos):
        if index:
            click.echo()
        print_certificate(info, title=f"[{index}] " if len(infos) > 1 else None)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--bundle",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Trusted roots (PEM).",
)
@click.option(
    "--untrusted",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Intermediates (PEM); certificates after the first in FILE count too.",
)
@click.option("--dns", "dns_name", help="Require this DNS name (server verification).")
@click.option("--ip", "ip_text", help="Require this IP address (server verification).")
@click.option("--client", is_flag=True, help="Verify for TLS client authentication (default: server).")
@click.option(
    "--crl",
    "crl_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="CRL (PEM or DER) to check revocation against (repeatable).",
)
@click.option("--at", "at_text", help="Verify at this time (ISO 8601) instead of now.")
@click.option("--trust-domain", help="Require the identity to be in this trust domain.")
@OID_OPTION
@json_option
def verify(
    file: Path,
    bundle: Path,
    untrusted: Path | None,
    dns_name: str | None,
    ip_text: str | None,
    client: bool,
    crl_files: tuple[Path, ...],
    at_text: str | None,
    trust_domain: str | None,
    extension_oid: str,
    as_json: bool,
) -> None:
    """Verify a certificate chain; print the identity and roles of the leaf.

    Exit 0 when the chain verifies, 1 with the reason when it does not.
    """
    validate_oid(extension_oid)
    certs = read_certificates(file)
    leaf, extra = certs[0], certs[1:]
    intermediates = extra + (read_certificates(untrusted) if untrusted else [])
    try:
        ip = ipaddress.ip_address(ip_text) if ip_text else None
    except ValueError:
        raise Refused(f"--ip {ip_text!r} is not an IP address") from None
    try:
        result = verify_identity(
            leaf,
            trusted=read_certificates(bundle),
            untrusted=intermediates,
            purpose=Purpose.CLIENT if client else Purpose.SERVER,
            dns_name=dns_name,
            ip_address=ip,
            at=_parse_time(at_text),
            crls=[_read_crl(p) for p in crl_files],
            trust_domain=trust_domain,
            extension_oid=extension_oid,
        )
    except VerificationError as exc:
        if as_json:
            emit_json({"valid": False, "reason": exc.reason, "file": str(file)})
            raise SystemExit(1) from None
        raise
    chain = [describe_certificate(c, extension_oid=extension_oid) for c in result.chain.chain]
    if as_json:
        emit_json(
            {
                "valid": True,
                "identity": str(result.identity) if result.identity else None,
                "roles": list(result.roles),
                "attributes": result.attributes,
                "purpose": result.chain.purpose.value,
                "engine": result.chain.engine,
                "chain": [
                    {"subject": c.subject, "serial": c.serial, "not_after": c.to_json()["not_after"]}
                    for c in chain
                ],
            }
        )
        return
    say("chain verifies", style="green", label="OK")
    click.echo(f"identity  {result.identity or '-'}")
    click.echo(f"roles     {', '.join(result.roles) or '-'}")
    if result.attributes:
        click.echo("attrs     " + ", ".join(f"{k}={v}" for k, v in result.attributes.items()))
    click.echo("chain     " + " <- ".join(c.subject or "(empty subject)" for c in chain))


def _der_csr(data: bytes) -> x509.CertificateSigningRequest | None:
    """A DER-encoded CSR (as `sign` accepts), or None for anything else."""
    if b"-----BEGIN" in data:
        return None
    try:
        return x509.load_der_x509_csr(data)
    except ValueError:
        return None


def _parse_time(text: str | None) -> datetime.datetime | None:
    if text is None:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(f"--at {text!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def _read_crl(path: Path) -> x509.CertificateRevocationList:
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise InvalidCertificateError(f"{path}: not a valid CRL: {exc}") from None
