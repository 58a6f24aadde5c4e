"""``certwright ca init`` and ``certwright ca show``."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509

from certwright.cadir import INVENTORY, CADirectory, init_ca, open_ca
from certwright.cli.common import (
    CertwrightGroup,
    actor,
    emit_json,
    json_option,
    key_type_option,
    passphrase_option,
    read_passphrase,
)
from certwright.cli.render import print_certificate
from certwright.durations import parse_duration
from certwright.inspect import describe_certificate
from certwright.service import CertificateService
from certwright.store import open_store
from certwright.x509.authz import DEFAULT_OID, validate_oid
from certwright.x509.keys import KeyType


@click.group(cls=CertwrightGroup)
def ca() -> None:
    """Create and show certificate authorities."""


@ca.command("init")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to create (must not exist or be empty).",
)
@click.option("--name", required=True, help="Organisation or CA name, used in the CA subjects.")
@click.option("--trust-domain", required=True, help="SPIFFE trust domain, e.g. example.org.")
@key_type_option("--key-type")
@click.option(
    "--dns-zone",
    "dns_zones",
    multiple=True,
    help="DNS zone leaves may name (repeatable; default: the trust domain).",
)
@click.option(
    "--extension-oid",
    default=DEFAULT_OID,
    show_default=True,
    help="OID of the authorization extension: use an arc under your own IANA PEN.",
)
@click.option("--root-ttl", default="10y", show_default=True, help="Root lifetime.")
@click.option("--intermediate-ttl", default="5y", show_default=True, help="Intermediate lifetime.")
@click.option(
    "--crl-url", "crl_urls", multiple=True, help="CRL distribution point put in leaves (repeatable)."
)
@click.option("--ocsp-url", "ocsp_urls", multiple=True, help="OCSP responder URL put in leaves (repeatable).")
@click.option(
    "--db",
    "db_url",
    envvar="CERTWRIGHT_DB",
    help="Keep the inventory in this database (e.g. PostgreSQL) instead of DIR/inventory.db.",
)
@passphrase_option
@json_option
def ca_init(
    directory: Path,
    name: str,
    trust_domain: str,
    key_type: KeyType,
    dns_zones: tuple[str, ...],
    extension_oid: str,
    root_ttl: str,
    intermediate_ttl: str,
    crl_urls: tuple[str, ...],
    ocsp_urls: tuple[str, ...],
    db_url: str | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Create a root CA and a name-constrained issuing intermediate in DIR.

    Writes root.pem, intermediate.pem, bundle.pem, ca.toml and the two keys, encrypted
    with the passphrase (PBES2/scrypt) and readable only by you (0600).
    """
    validate_oid(extension_oid)
    passphrase = read_passphrase(passphrase_file, confirm=True)
    created = init_ca(
        directory,
        name=name,
        trust_domain=trust_domain,
        passphrase=passphrase,
        key_type=key_type,
        dns_zones=dns_zones,
        extension_oid=extension_oid,
        root_lifetime=parse_duration(root_ttl),
        intermediate_lifetime=parse_duration(intermediate_ttl),
        crl_urls=crl_urls,
        ocsp_urls=ocsp_urls,
        inventory_url=db_url,
        prepare=lambda staging, root, intermediate: create_inventory(
            db_url or str(staging / INVENTORY), root, intermediate, extension_oid
        ),
    )
    if as_json:
        emit_json(_summary(created))
        return
    click.echo(f"Created CA {name!r} in {directory}")
    _print_summary(created)
    if extension_oid == DEFAULT_OID:
        click.echo(
            "note: the authorization extension uses the documentation OID "
            f"{DEFAULT_OID}; pass --extension-oid with an arc under your organisation's IANA "
            "Private Enterprise Number for production.",
            err=True,
        )


@ca.command("show")
@click.option(
    "--dir",
    "--ca",
    "directory",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="CA directory.",
)
@json_option
def ca_show(directory: Path, as_json: bool) -> None:
    """Show a CA directory: settings, root and intermediate, profiles."""
    opened = open_ca(directory)
    if as_json:
        emit_json(_summary(opened))
        return
    _print_summary(opened)
    click.echo()
    print_certificate(describe_certificate(opened.root, extension_oid=opened.settings.extension_oid))
    click.echo()
    print_certificate(describe_certificate(opened.intermediate, extension_oid=opened.settings.extension_oid))


def create_inventory(
    target: str, root: x509.Certificate, intermediate: x509.Certificate, extension_oid: str
) -> None:
    """Create (or migrate) the inventory and record the CA's own two certificates in it."""
    store = open_store(target, upgrade=True)
    try:
        service = CertificateService(store=store, extension_oid=extension_oid, actor=actor())
        service.record_issued([root], profile="root-ca")
        service.record_issued([intermediate], profile="intermediate-ca")
    finally:
        store.close()


def _summary(opened: CADirectory) -> dict[str, object]:
    s = opened.settings
    oid = s.extension_oid
    return {
        "directory": str(opened.path),
        "name": opened.config.name,
        "trust_domain": s.trust_domain,
        "dns_zones": list(s.dns_zones),
        "extension_oid": oid,
        "key_type": opened.config.key_type.value,
        "inventory": opened.inventory,
        "root": describe_certificate(opened.root, extension_oid=oid).to_json(),
        "intermediate": describe_certificate(opened.intermediate, extension_oid=oid).to_json(),
        "profiles": {
            name: {
                "description": p.description,
                "ca": p.ca,
                "max_lifetime_seconds": int(p.max_lifetime.total_seconds()),
            }
            for name, p in sorted(opened.profiles.items())
        },
    }


def _print_summary(opened: CADirectory) -> None:
    s = opened.settings
    click.echo(f"  trust domain   {s.trust_domain}")
    click.echo(f"  DNS zones      {', '.join(s.dns_zones) or '(none)'}")
    click.echo(f"  extension OID  {s.extension_oid}")
    click.echo(f"  key type       {opened.config.key_type.value}")
    click.echo(
        f"  root           {opened.root.subject.rfc4514_string()}  (until "
        f"{opened.root.not_valid_after_utc:%Y-%m-%d})"
    )
    click.echo(
        f"  intermediate   {opened.intermediate.subject.rfc4514_string()}  (until "
        f"{opened.intermediate.not_valid_after_utc:%Y-%m-%d})"
    )
    click.echo(f"  bundle         {opened.path / 'bundle.pem'}")
    click.echo(f"  inventory      {opened.inventory}")
    click.echo(f"  profiles       {', '.join(sorted(opened.profiles))}")
