"""``certwright serve``: the CA as a service (docs/server.md)."""

from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path

import click
from cryptography import x509

from certwright.cadir import CADirectory
from certwright.cli.ca_cmds import create_inventory
from certwright.cli.common import (
    PASSPHRASE_ENV,
    Refused,
    configure_logging,
    passphrase_option,
    read_passphrase,
)
from certwright.cli.inventory import Inventory
from certwright.cli.responder import load_responder
from certwright.server.bootstrap import (
    ADMIN_CERT,
    ADMIN_KEY,
    BUNDLE,
    POLICY,
    Hooks,
    Prepared,
    is_initialised,
    prepare,
)
from certwright.server.config import Address, format_address, load_config
from certwright.server.run import bind, bound_address, run
from certwright.server.workers import serve_workers
from certwright.store import Store
from certwright.x509.keys import SigningKey


def _load_responder(ca: CADirectory, store: Store, passphrase: bytes) -> tuple[x509.Certificate, SigningKey]:
    return load_responder(ca, Inventory(store, ca), passphrase)


HOOKS = Hooks(create_inventory=create_inventory, load_responder=_load_responder)


@click.command("serve")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory: created with a new CA on first start, reused afterwards.",
)
@click.option("--listen", help="HTTPS API HOST:PORT (default 127.0.0.1:8443; port 0: any free port).")
@click.option(
    "--http-listen",
    "http_listen",
    help="Plain HTTP (CRL, OCSP, health, metrics) HOST:PORT (default 127.0.0.1:8080).",
)
@click.option(
    "--db", "db_url", help="Inventory URL, e.g. postgresql+psycopg://... (default: DIR/ca/inventory.db)."
)
@click.option("--trust-domain", help="Trust domain of a new CA (first start only; default example.org).")
@click.option(
    "--workers",
    help="Worker processes serving both listeners: a number, or auto (default: one per CPU, up to 8).",
)
@passphrase_option
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Settings file (default: DIR/server.toml when it exists).",
)
def serve(
    directory: Path,
    listen: str | None,
    http_listen: str | None,
    db_url: str | None,
    trust_domain: str | None,
    workers: str | None,
    passphrase_file: Path | None,
    config_file: Path | None,
) -> None:
    """Run the CA: HTTPS API (mTLS) on --listen, CRL/OCSP/health/metrics over HTTP on --http-listen.

    The first start creates DIR: a root and an issuing CA (keys encrypted with the
    passphrase from $CERTWRIGHT_CA_PASSPHRASE or --passphrase-file), the inventory, the
    server's TLS certificate, DIR/bundle.pem, and DIR/admin.pem + DIR/admin.key (0600), the
    operator's credentials for `certwright token create`. SIGTERM or Ctrl-C stops it
    gracefully (exit 0). With several --workers this process supervises them.
    """
    flags = {
        "listen": listen,
        "http_listen": http_listen,
        "db_url": db_url,
        "trust_domain": trust_domain,
        "workers": workers,
    }
    config = load_config(directory, config_file=config_file, env=os.environ, flags=flags)
    configure_logging(config.log_level)
    first = not is_initialised(config)
    passphrase = _passphrase(passphrase_file, first=first)
    # Bound before the data directory is made: the HTTP port goes into the CA's URLs.
    bound = [_bind(config.listen, "--listen")]
    try:
        bound.append(_bind(config.http_listen, "--http-listen"))
        config = config.with_bound(bound_address(bound[0]), bound_address(bound[1]))
        prepared = prepare(config, passphrase, HOOKS)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    count = config.worker_count
    try:
        _report_setup(prepared)
        if count == 1:
            run(prepared, bound, on_ready=lambda servers: _report_ready(prepared, [s.url for s in servers]))
        else:
            serve_workers(prepared, bound, count=count, on_ready=lambda urls: _report_ready(prepared, urls))
    finally:
        for sock in bound:
            sock.close()
        prepared.store.close()
    click.echo("certwright: stopped")


def _passphrase(passphrase_file: Path | None, *, first: bool) -> bytes:
    """The CA passphrase; refused before anything is created when none is given."""
    if passphrase_file is None and not os.environ.get(PASSPHRASE_ENV) and not sys.stdin.isatty():
        what = "encrypts the new CA's keys: choose a long one and keep it" if first else "opens the CA's key"
        raise Refused(
            f"no CA passphrase: set {PASSPHRASE_ENV} or give --passphrase-file F (the passphrase {what})"
        )
    return read_passphrase(passphrase_file, confirm=first)


def _bind(address: Address, option: str) -> socket.socket:
    try:
        return bind(address)
    except OSError as exc:
        where = format_address(address)
        raise Refused(f"cannot listen on {where} ({option}): {exc.strerror or exc}") from None


def _report_setup(prepared: Prepared) -> None:
    config, d = prepared.config, prepared.directory
    if prepared.first_start:
        click.echo(
            f"certwright: created {d} (CA {prepared.ca.config.name!r}, trust domain {config.trust_domain})"
        )
    elif prepared.issued:
        click.echo(f"certwright: using {d}; issued anew: {', '.join(prepared.issued)}")
    else:
        click.echo(f"certwright: using {d}")
    click.echo(f"  inventory  {prepared.store.url}")
    count = config.worker_count
    click.echo(f"  processes  {count} worker processes" if count > 1 else "  processes  1 (no workers)")


def _report_ready(prepared: Prepared, urls: list[str]) -> None:
    api, public = urls
    click.echo(f"certwright: listening on {api} (API, mTLS)")
    click.echo(f"certwright: listening on {public} (CRL, OCSP, /healthz, /metrics)")
    if not prepared.first_start:
        return
    d = prepared.directory
    td = prepared.config.trust_domain
    q = shlex.quote
    click.echo(
        "\nNext steps:\n"
        f"  trust bundle     {d / BUNDLE}\n"
        f"  admin (0600 key) {d / ADMIN_CERT}, {d / ADMIN_KEY}\n"
        f"  access policy    {d / POLICY}\n"
        "  create a one-time enrolment token, then enroll a workload with it:\n"
        f"    TOKEN=$(certwright token create --server {api} --bundle {q(str(d / BUNDLE))} "
        f"--admin-cert {q(str(d / ADMIN_CERT))} --admin-key {q(str(d / ADMIN_KEY))} "
        f"--identity spiffe://{td}/web --dns web.{td})\n"
        f'    certwright enroll --server {api} --bundle {q(str(d / BUNDLE))} --token "$TOKEN" '
        "--dns web.{td} --out web\n".replace("{td}", td)
        + f"  the API: curl --cacert {q(str(d / BUNDLE))} {api}/v1/bundle ; {api}/openapi.json\n"
        f"  settings: {d / 'server.toml'} (see docs/server.md)"
    )
