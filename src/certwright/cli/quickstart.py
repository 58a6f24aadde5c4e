"""``certwright quickstart``: a CA, a workload certificate, verified, in one command."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization

from certwright.cadir import CONFIG, INVENTORY, init_ca, open_ca
from certwright.cli.ca_cmds import create_inventory
from certwright.cli.cert_cmds import write_all
from certwright.cli.common import PASSPHRASE_ENV, say
from certwright.cli.inventory import open_inventory
from certwright.files import write_secret
from certwright.verify.chain import Purpose
from certwright.verify.identity import verify_identity
from certwright.x509.authz import DEFAULT_OID, Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key, private_key_pem
from certwright.x509.names import SubjectAltNames

PASSPHRASE_FILE = "passphrase.txt"  # noqa: S105 - a file name


@click.command()
@click.option(
    "--dir",
    "directory",
    default="certwright-quickstart",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--trust-domain", default="example.org", show_default=True)
def quickstart(directory: Path, trust_domain: str) -> None:
    """Create a CA, issue a workload certificate, and verify it (re-runs reuse the CA)."""
    ca_dir = directory / "ca"
    passphrase_path = directory / PASSPHRASE_FILE
    if (ca_dir / CONFIG).exists():
        passphrase = _existing_passphrase(passphrase_path)
        opened = open_ca(ca_dir, passphrase=passphrase)
        click.echo(f"Using the CA in {ca_dir}")
    else:
        directory.mkdir(parents=True, exist_ok=True)
        env = os.environ.get(PASSPHRASE_ENV)
        passphrase = env.encode() if env else secrets.token_urlsafe(24).encode()
        if not env:
            # A demo convenience: a real CA's passphrase lives in a secret store, not beside it.
            write_secret(passphrase_path, passphrase + b"\n", overwrite=True)
        opened = init_ca(
            ca_dir,
            name="Quickstart",
            trust_domain=trust_domain,
            passphrase=passphrase,
            prepare=lambda staging, root, intermediate: create_inventory(
                str(staging / INVENTORY), root, intermediate, DEFAULT_OID
            ),
        )
        click.echo(f"Created a root CA and a name-constrained issuing CA in {ca_dir}")
    authority = opened.require_authority()
    identity = SpiffeId.parse(f"spiffe://{opened.settings.trust_domain}/quickstart/web")
    key = generate_key()
    with open_inventory(None, None, ca=opened) as inventory:
        cert = inventory.certificates().issue(  # recorded in the inventory, with an audit event
            key.public_key(),
            profile=opened.profile("mtls"),
            identity=identity,
            sans=SubjectAltNames.create(
                dns=[f"web.{opened.settings.dns_zones[0]}"] if opened.settings.dns_zones else [],
                ips=["127.0.0.1"],
            ),
            authorization=Authorization.create(["reader"], {"env": "dev"}),
        )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    chain = pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in authority.chain_for_leaf())
    write_all(
        {
            directory / "web.pem": (pem, False),
            directory / "web.key": (private_key_pem(key), True),
            directory / "web.chain.pem": (chain, False),
        },
        force=True,
    )
    result = verify_identity(
        cert,
        trusted=opened.bundle,
        untrusted=authority.chain_for_leaf(),
        purpose=Purpose.CLIENT,
        trust_domain=opened.settings.trust_domain,
        extension_oid=opened.settings.extension_oid,
    )
    say("the chain, identity and roles check out", style="green", label="verified")
    click.echo(f"  identity  {result.identity}")
    click.echo(f"  roles     {', '.join(result.roles)}")
    click.echo(f"  files     {directory}/web.pem, web.key (0600), web.chain.pem")
    click.echo("\nNext:")
    click.echo(f"  certwright inspect {directory}/web.pem")
    click.echo(f"  certwright verify --bundle {ca_dir}/bundle.pem --client {directory}/web.chain.pem")
    click.echo(f"  certwright list --ca {ca_dir}")
    click.echo(f'  export {PASSPHRASE_ENV}="$(cat {passphrase_path})"')
    click.echo(
        f"  certwright issue --ca {ca_dir} --profile mtls --identity "
        f"spiffe://{opened.settings.trust_domain}/ns/prod/api --role writer --out api"
    )


def _existing_passphrase(path: Path) -> bytes:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    if path.exists():
        return path.read_bytes().rstrip(b"\r\n")
    raise click.ClickException(f"set {PASSPHRASE_ENV} to open the existing quickstart CA")
