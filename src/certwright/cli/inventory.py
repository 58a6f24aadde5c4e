"""Opening the inventory and the use cases from CLI options (``--ca DIR`` / ``--db URL``)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from certwright.cadir import CADirectory, open_ca
from certwright.cli.common import F, Refused, actor
from certwright.inspect import describe_certificate
from certwright.service import CertificateService, RevocationService
from certwright.store import CertificateRecord, Store, open_store

DB_ENV = "CERTWRIGHT_DB"


def inventory_options(f: F) -> F:
    """``--ca DIR`` and ``--db URL`` (either; ``--db`` wins for where the rows are)."""
    f = click.option(
        "--db",
        "db_url",
        envvar=DB_ENV,
        help=f"Inventory database URL (sqlite:///PATH or postgresql+psycopg://...; ${DB_ENV}).",
    )(f)
    return click.option(
        "--ca",
        "ca_dir",
        type=click.Path(file_okay=False, exists=True, path_type=Path),
        help="CA directory (its inventory is DIR/inventory.db unless ca.toml names another).",
    )(f)


@dataclass
class Inventory:
    """An open store, and the CA directory when one was given."""

    store: Store
    ca: CADirectory | None

    def certificates(self) -> CertificateService:
        oid = self.ca.settings.extension_oid if self.ca else CertificateService.extension_oid
        authority = self.ca.authority if self.ca else None
        return CertificateService(store=self.store, authority=authority, extension_oid=oid, actor=actor())

    def revocations(self) -> RevocationService:
        """Scoped to the CA's issuing certificate with --ca; across the inventory with --db alone."""
        issuer = self.ca.intermediate if self.ca is not None else None
        return RevocationService(store=self.store, issuer=issuer, actor=actor())

    def require_ca(self) -> CADirectory:
        if self.ca is None:
            raise Refused("this command needs --ca DIR")
        return self.ca


@contextlib.contextmanager
def open_inventory(
    ca_dir: Path | None, db_url: str | None, *, ca: CADirectory | None = None
) -> Iterator[Inventory]:
    """Open the inventory named by the options; the CA's own SQLite file is created on first use."""
    if ca is None and ca_dir is not None:
        ca = open_ca(ca_dir)
    if db_url:
        target, own_file = db_url, False
    elif ca is not None:
        target, own_file = ca.inventory, ca.config.inventory_url is None
    else:
        raise click.UsageError(f"give --ca DIR or --db URL (or set ${DB_ENV})")
    # The CA's embedded SQLite file is migrated on first use; a shared database is
    # upgraded on purpose, with `certwright db upgrade`, so replicas never race to migrate it.
    store = open_store(target, upgrade=own_file)
    try:
        yield Inventory(store, ca)
    finally:
        store.close()


def record_json(record: CertificateRecord, *, extension_oid: str) -> dict[str, Any]:
    """A row for ``list`` / ``show`` JSON: ``inspect --json``'s keys plus the inventory's."""
    from cryptography import x509

    info = describe_certificate(x509.load_der_x509_certificate(record.der), extension_oid=extension_oid)
    return {
        **info.to_json(),
        "status": status_of(record),
        "revoked_at": _iso(record.revoked_at),
        "revocation_reason": record.revocation_reason.value if record.revocation_reason else None,
        "profile": record.profile,
        "requested_by": record.requested_by,
    }


def status_of(record: CertificateRecord, now: datetime.datetime | None = None) -> str:
    """good / revoked / on_hold, or expired for a good certificate past its notAfter."""
    now = now or datetime.datetime.now(datetime.UTC)
    if record.status.value == "good" and record.not_after <= now:
        return "expired"
    return record.status.value


def _iso(value: datetime.datetime | None) -> str | None:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def parse_serial(text: str) -> int:
    """A serial as printed by ``inspect`` (hex), with or without ``0x`` or colons."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise Refused(
            f"{text!r} is not a serial number (hexadecimal, as `certwright inspect` prints it)"
        ) from None
    if value <= 0:
        raise Refused(f"serial {text!r} must be positive")
    return value
