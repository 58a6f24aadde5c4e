"""Inventory commands: list, show, expiring, revoke, unrevoke, crl, ocsp, import, audit, db."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from certwright.cli.common import (
    CertwrightGroup,
    Refused,
    emit_json,
    json_option,
    passphrase_option,
    read_passphrase,
    say,
)
from certwright.cli.inventory import inventory_options, open_inventory, parse_serial, record_json, status_of
from certwright.cli.responder import load_responder
from certwright.durations import parse_duration
from certwright.files import read_certificates, write_file
from certwright.revocation.ocsp import MALFORMED, OCSPResponder
from certwright.service import StoreStatusSource
from certwright.service.certificates import ca_key_id
from certwright.store import (
    ByIdentity,
    ByPublicKey,
    BySerial,
    CertificateFilter,
    CertificateStatus,
    Cursor,
    Page,
    open_store,
    parse_san_query,
    public_key_id,
    verify_chain,
)
from certwright.x509.identity import SpiffeId
from certwright.x509.revocation_reason import parse_reason

_T = TypeVar("_T")
STATUSES = ("good", "revoked", "on_hold", "expired")


def _filter(
    identity: str | None,
    san: str | None,
    status: str | None,
    profile: str | None,
    issuer: str | None,
    within: str | None,
) -> CertificateFilter:
    stored = None if status in (None, "expired") else CertificateStatus(status)
    expired = True if status == "expired" else (False if status == "good" else None)
    try:
        issuer_key_id = bytes.fromhex(issuer.replace(":", "")) if issuer else None
    except ValueError:
        raise Refused(
            f"--issuer {issuer!r}: give the issuer's key id in hex (its subjectKeyIdentifier)"
        ) from None
    return CertificateFilter(
        status=stored,
        expired=expired,
        profile=profile,
        issuer_key_id=issuer_key_id,
        identity_glob=identity,
        san=parse_san_query(san) if san else None,
        expiring_within=parse_duration(within) if within else None,
    )


def _pages(fetch: Any, first: Cursor | None, every: bool) -> Iterator[Page]:
    page: Page = fetch(first)
    yield page
    while every and page.next_cursor is not None:
        page = fetch(page.next_cursor)
        yield page


def _print_rows(pages: Iterator[Page], oid: str, as_json: bool) -> None:
    if as_json:
        items: list[dict[str, Any]] = []
        cursor = None
        for page in pages:
            items += [record_json(r, extension_oid=oid) for r in page.items]
            cursor = page.next_cursor
        emit_json({"items": items, "next_cursor": cursor.encode() if cursor else None})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    table = Table(box=None)
    # Serials and identities are what people copy: wrap them, never cut them with an ellipsis.
    table.add_column("serial", overflow="fold")
    table.add_column("identity / subject", overflow="fold")
    for title in ("status", "not after (UTC)", "profile"):
        table.add_column(title, no_wrap=True)
    cursor = None
    count = 0
    for page in pages:
        for record in page.items:
            table.add_row(
                record.serial_hex,
                record.identity or record.subject,
                status_of(record),
                record.not_after.strftime("%Y-%m-%d %H:%M"),
                record.profile or "-",
            )
            count += 1
        cursor = page.next_cursor
    console.print(table)
    if cursor is not None:
        say(f"more: add --cursor {cursor.encode()} (or --all)", label=f"{count} shown;")


def _listing(f: Any) -> Any:
    for option in reversed(
        [
            inventory_options,
            click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000)),
            click.option("--cursor", help="Continue after the page that printed this cursor."),
            click.option("--all", "every", is_flag=True, help="Every page, not just the first."),
            json_option,
        ]
    ):
        f = option(f)
    return f


@click.command("list")
@click.option("--identity", help="Identity glob, e.g. 'spiffe://example.org/ns/prod/*'.")
@click.option("--san", help="A SAN the certificate carries, e.g. dns:api.example.org.")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--profile")
@click.option("--issuer", help="Issuer key id (hex).")
@click.option("--expiring-within", "within", help="Only those expiring within, e.g. 7d.")
@_listing
def list_cmd(
    identity: str | None,
    san: str | None,
    status: str | None,
    profile: str | None,
    issuer: str | None,
    within: str | None,
    ca_dir: Path | None,
    db_url: str | None,
    limit: int,
    cursor: str | None,
    every: bool,
    as_json: bool,
) -> None:
    """List the inventory (newest expiry last), filtered, a page at a time."""
    where = _filter(identity, san, status, profile, issuer, within)
    _show_listing(where, ca_dir, db_url, limit=limit, cursor=cursor, every=every, as_json=as_json)


@click.command("expiring")
@click.option("--within", required=True, help="Window, e.g. 7d or 12h.")
@_listing
def expiring_cmd(
    within: str,
    ca_dir: Path | None,
    db_url: str | None,
    limit: int,
    cursor: str | None,
    every: bool,
    as_json: bool,
) -> None:
    """Certificates still valid that expire within the window, soonest first (revoked ones left out)."""
    where = _filter(None, None, None, None, None, within)
    _show_listing(where, ca_dir, db_url, limit=limit, cursor=cursor, every=every, as_json=as_json)


def _show_listing(
    where: CertificateFilter,
    ca_dir: Path | None,
    db_url: str | None,
    *,
    limit: int,
    cursor: str | None,
    every: bool,
    as_json: bool,
) -> None:
    """Print the pages of certificates matching ``where`` (``list`` and ``expiring``)."""
    with open_inventory(ca_dir, db_url) as inventory:
        service = inventory.certificates()
        start = Cursor.decode(cursor) if cursor else None
        pages = _pages(lambda after: service.list(where, limit=limit, after=after), start, every)
        _print_rows(pages, service.extension_oid, as_json)


@click.command("show")
@click.argument("serial")
@inventory_options
@json_option
def show_cmd(serial: str, ca_dir: Path | None, db_url: str | None, as_json: bool) -> None:
    """Show one certificate of the inventory by serial (hex)."""
    number = parse_serial(serial)
    with open_inventory(ca_dir, db_url) as inventory:
        service = inventory.certificates()
        record = service.get(number)
    if record is None:
        raise Refused(f"no certificate with serial {number:x} in the inventory")
    row = record_json(record, extension_oid=service.extension_oid)
    if as_json:
        emit_json(row)
        return
    from certwright.cli.render import print_certificate
    from certwright.inspect import describe_certificate

    print_certificate(
        describe_certificate(x509.load_der_x509_certificate(record.der), extension_oid=service.extension_oid)
    )
    click.echo(f"status         {row['status']}")
    if record.revoked_at is not None:
        click.echo(f"revoked        {row['revoked_at']} ({row['revocation_reason']})")
    click.echo(f"profile        {record.profile or '-'}   requested by {record.requested_by}")


@click.command("revoke")
@click.argument("serial", required=False)
@click.option("--identity", help="Revoke every live certificate of this SPIFFE ID.")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Revoke every live certificate of the key in this certificate or public key file.",
)
@click.option(
    "--reason", required=True, help="RFC 5280 reason, e.g. keyCompromise, superseded, certificateHold."
)
@inventory_options
@json_option
def revoke_cmd(
    serial: str | None,
    identity: str | None,
    key_file: Path | None,
    reason: str,
    ca_dir: Path | None,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Revoke by serial, by identity, or by key (exactly one), with an RFC 5280 reason.

    Every reason but unspecified, superseded and certificateHold also revokes the
    renewals of what it names (they were obtained with its key); they are listed too.
    """
    if sum(x is not None for x in (serial, identity, key_file)) != 1:
        raise click.UsageError("give exactly one of SERIAL, --identity or --key")
    chosen = parse_reason(reason)
    if serial is not None:
        selector: BySerial | ByIdentity | ByPublicKey = BySerial(parse_serial(serial))
    elif identity is not None:
        selector = ByIdentity(str(SpiffeId.parse(identity)))
    else:
        assert key_file is not None
        selector = ByPublicKey(public_key_id(_spki(key_file)))
    with open_inventory(ca_dir, db_url) as inventory:
        changed = inventory.revocations().revoke(selector, chosen)
    serials = [format(ref.serial, "x") for ref in changed]
    if as_json:
        emit_json({"revoked": serials, "reason": chosen.value})
    else:
        click.echo(f"revoked {len(serials)} certificate(s) ({chosen.value}): {', '.join(serials)}")


@click.command("unrevoke")
@click.argument("serial")
@inventory_options
def unrevoke_cmd(serial: str, ca_dir: Path | None, db_url: str | None) -> None:
    """Lift a certificateHold (the only revocation that can be undone, RFC 5280 5.3.1)."""
    number = parse_serial(serial)
    with open_inventory(ca_dir, db_url) as inventory:
        inventory.revocations().unrevoke(number)
    click.echo(f"certificate {number:x} is good again")


@click.command("crl")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--pem", is_flag=True, help="Write PEM instead of DER.")
@click.option("--validity", default="7d", show_default=True, help="thisUpdate to nextUpdate.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@inventory_options
@passphrase_option
@json_option
def crl_cmd(
    out: Path,
    pem: bool,
    validity: str,
    force: bool,
    ca_dir: Path | None,
    db_url: str | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Publish the issuing CA's full CRL (streamed from the inventory) to a file."""
    lifetime = parse_duration(validity)
    _refuse_existing(out, force)  # before a CRL number is taken and audited
    with open_inventory(ca_dir, db_url) as inventory:
        ca = inventory.require_ca().unlock(read_passphrase(passphrase_file))
        inventory.ca = ca
        urls = ca.settings.crl_urls
        published = inventory.revocations().publish_crl(
            ca.require_authority().key, validity=lifetime, distribution_point=urls[0] if urls else None
        )
    data = published.der
    if pem:
        data = x509.load_der_x509_crl(data).public_bytes(serialization.Encoding.PEM)
    write_file(out, data, overwrite=force)
    summary = {
        "file": str(out),
        "crl_number": published.number,
        "entries": published.entries,
        "next_update": published.next_update.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if as_json:
        emit_json(summary)
    else:
        click.echo(
            f"CRL number {published.number} with {published.entries} entries written to {out} "
            f"(next update {summary['next_update']})"
        )


@click.command("ocsp")
@click.option(
    "--request",
    "request_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="DER OCSP request.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="DER response.")
@click.option("--force", is_flag=True)
@inventory_options
@passphrase_option
def ocsp_cmd(
    request_file: Path,
    out: Path,
    force: bool,
    ca_dir: Path | None,
    db_url: str | None,
    passphrase_file: Path | None,
) -> None:
    """Answer one OCSP request from the inventory (air-gapped use, tests)."""
    _refuse_existing(out, force)  # before a responder certificate may be issued and recorded
    request = request_file.read_bytes()
    if not _parses_as_ocsp_request(request):
        # Answered before the responder is loaded: a corrupt request must not issue (and
        # record) a responder certificate. malformedRequest responses are unsigned anyway.
        write_file(out, MALFORMED.der, overwrite=force)
        click.echo(f"wrote {out}: malformed_request")
        raise SystemExit(1)
    with open_inventory(ca_dir, db_url) as inventory:
        passphrase = read_passphrase(passphrase_file)
        ca = inventory.require_ca().unlock(passphrase)
        inventory.ca = ca
        responder_cert, responder_key = load_responder(ca, inventory, passphrase)
        responder = OCSPResponder(
            issuer=ca.intermediate,
            responder=responder_cert,
            responder_key=responder_key,
            source=StoreStatusSource(inventory.store, ca_key_id(ca.intermediate)),
            clock=inventory.certificates().clock,
        )
        answer = responder.answer(request)
    write_file(out, answer.der, overwrite=force)
    status = answer.cert_status.name.lower() if answer.cert_status else answer.response_status.name.lower()
    click.echo(f"wrote {out}: {status}")
    if answer.response_status.name != "SUCCESSFUL":
        raise SystemExit(1)


@click.command("import")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@inventory_options
@json_option
def import_cmd(files: tuple[Path, ...], ca_dir: Path | None, db_url: str | None, as_json: bool) -> None:
    """Bring existing PEM certificates into the inventory (all or nothing; duplicates skipped)."""
    certificates = [cert for path in files for cert in read_certificates(path)]
    with (
        open_inventory(ca_dir, db_url) as inventory,
        _progress("importing", len(certificates), as_json) as tick,
    ):
        report = inventory.certificates().import_certificates(tick(c) for c in certificates)
    if as_json:
        emit_json(
            {
                "imported": [format(c.serial_number, "x") for c in report.imported],
                "already_present": [format(c.serial_number, "x") for c in report.already_present],
            }
        )
    else:
        click.echo(f"imported {len(report.imported)}, already present {len(report.already_present)}")


@contextlib.contextmanager
def _progress(label: str, total: int, quiet: bool) -> Iterator[Callable[[_T], _T]]:
    """A progress bar on stderr for a person at a terminal; ``tick(item)`` counts one item."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=quiet or not console.is_terminal) as bar:
        task = bar.add_task(label, total=total)

        def tick(item: _T) -> _T:
            bar.advance(task)
            return item

        yield tick


@click.group("audit", cls=CertwrightGroup)
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@inventory_options
@json_option
def audit_verify(ca_dir: Path | None, db_url: str | None, as_json: bool) -> None:
    """Re-hash the audit log; exit 1 naming the first edited, deleted or inserted event."""
    with open_inventory(ca_dir, db_url) as inventory, inventory.store.read() as session:
        report = verify_chain(session)
    if as_json:
        emit_json(
            {
                "ok": report.ok,
                "events": report.events,
                "head": report.head_seq,
                "first_bad_event": report.first_bad_seq,
                "problem": report.problem,
            }
        )
    else:
        click.echo(str(report))
    if not report.ok:
        raise SystemExit(1)


@click.group("db", cls=CertwrightGroup)
def db() -> None:
    """The inventory database."""


@db.command("upgrade")
@inventory_options
def db_upgrade(ca_dir: Path | None, db_url: str | None) -> None:
    """Create or migrate the inventory schema to this certwright's version."""
    from certwright.cadir import open_ca

    target = db_url or (open_ca(ca_dir).inventory if ca_dir else None)
    if target is None:
        raise click.UsageError("give --ca DIR or --db URL")
    store = open_store(target, upgrade=True)
    try:
        click.echo(f"{store.url} is at revision {store.revision()}")
    finally:
        store.close()


def _refuse_existing(out: Path, force: bool) -> None:
    if not force and out.exists():
        raise FileExistsError(f"{out} already exists; refusing to overwrite it")


def _parses_as_ocsp_request(data: bytes) -> bool:
    try:
        ocsp.load_der_ocsp_request(data)
    except (ValueError, TypeError, NotImplementedError, x509.DuplicateExtension):
        return False  # NotImplementedError: several requests in one (the responder refuses those too)
    return True


def _spki(path: Path) -> bytes:
    data = path.read_bytes()
    if b"PUBLIC KEY" in data:
        key = serialization.load_pem_public_key(data)
    else:
        key = read_certificates(path)[0].public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
