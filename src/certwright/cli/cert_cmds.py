"""``key``, ``csr``, ``issue``, ``sign`` and ``pkcs12``."""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certwright.batch import BatchRequest, SigningRun, check_ahead, start_signing
from certwright.batch import stem as batch_stem
from certwright.cadir import CADirectory, open_ca
from certwright.cli import prefetch
from certwright.cli.common import (
    CertwrightGroup,
    F,
    Refused,
    actor,
    emit_json,
    json_option,
    key_type_option,
    parse_attributes,
    passphrase_option,
    read_passphrase,
    say,
)
from certwright.durations import parse_duration
from certwright.files import read_certificates, read_csr, read_private_key, sync, write_file, write_secret
from certwright.inspect import describe_certificate
from certwright.issuance import Authority
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import (
    KeyType,
    generate_key,
    key_type_of,
    pkcs12_bytes,
    private_key_pem,
    signature_hash,
)
from certwright.x509.names import SubjectAltNames, parse_subject

if TYPE_CHECKING:
    from certwright.service import BatchOutcome

# The inventory (SQLAlchemy, Alembic: ~0.4 s to import) is imported where it is used, so
# that batch signing can start opening the CA key (scrypt, which frees the GIL) first.


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_all(files: dict[Path, tuple[bytes, bool]], *, force: bool, durable: bool = True) -> None:
    """Write several files or none: refuse if any exists (unless ``force``), and undo
    partial writes on failure: a file written is removed again, or, with ``force``, given
    back the content it had (a failed ``enroll --force`` must not leave a workload with
    half a new set of files, or none)."""
    previous: dict[Path, bytes | None] = {}
    for path in files:
        if not force and path.exists():
            raise FileExistsError(f"{path} already exists")
        if force:
            previous[path] = path.read_bytes() if path.is_file() else None
    written: list[Path] = []
    try:
        for path, (data, secret) in files.items():
            _write_one(path, data, secret=secret, overwrite=force, durable=durable)
            written.append(path)
    except BaseException:
        for path in written:
            old = previous.get(path)
            if old is None:
                path.unlink(missing_ok=True)
            else:
                _write_one(path, old, secret=files[path][1], overwrite=True, durable=durable)
        raise


def _write_one(path: Path, data: bytes, *, secret: bool, overwrite: bool, durable: bool) -> None:
    if secret:
        write_secret(path, data, overwrite=overwrite)
    else:
        write_file(path, data, overwrite=overwrite, durable=durable)


def _open_authority(ca_dir: Path, passphrase_file: Path | None) -> tuple[CADirectory, Authority]:
    opened = open_ca(ca_dir)  # fails fast, before a passphrase prompt, on a wrong directory
    opened = _unlock(opened, read_passphrase(passphrase_file))
    return opened, opened.require_authority()


def _unlock(opened: CADirectory, passphrase: bytes) -> CADirectory:
    """The CA with its key open: the key prefetch.start() began opening, if it is this one."""
    early = prefetch.claim(opened.key_path, passphrase)
    return opened.unlock(passphrase) if early is None else opened.with_key(early)


@dataclass(frozen=True)
class _Wanted:
    identity: SpiffeId | None
    sans: SubjectAltNames
    authorization: Authorization


def _wanted(
    identity: str | None,
    dns: Iterable[str],
    ips: Iterable[str],
    emails: Iterable[str],
    roles: Iterable[str],
    attrs: tuple[str, ...],
) -> _Wanted:
    return _Wanted(
        identity=SpiffeId.parse(identity) if identity else None,
        sans=SubjectAltNames.create(dns=dns, ips=ips, emails=emails),
        authorization=Authorization.create(roles, parse_attributes(attrs)),
    )


def _ca_option(f: F) -> F:
    return click.option(
        "--ca",
        "ca_dir",
        required=True,
        type=click.Path(file_okay=False, exists=True, path_type=Path),
        help="CA directory (from `ca init`).",
    )(f)


EXISTING_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)

name_options = [
    click.option("--role", "roles", multiple=True, help="Role for the authorization extension (repeatable)."),
    click.option("--attr", "attrs", multiple=True, help="KEY=VALUE attribute (repeatable)."),
    click.option("--dns", multiple=True, help="DNS SAN (repeatable)."),
    click.option("--ip", "ips", multiple=True, help="IP SAN, v4 or v6 (repeatable)."),
    click.option("--email", "emails", multiple=True, help="Email SAN (repeatable)."),
    click.option("--ttl", help="Lifetime, e.g. 24h or 30d (default: the profile's)."),
    click.option("--subject", help="Subject DN (default: a CN label from the identity)."),
]


def with_name_options(f: F) -> F:
    for option in reversed(name_options):
        f = option(f)
    return f


@click.command()
@key_type_option("--type")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Encrypt the key with the passphrase in this file.",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
def key(key_type: KeyType, out: Path, passphrase_file: Path | None, force: bool) -> None:
    """Generate a private key (PKCS#8 PEM, mode 0600)."""
    passphrase = read_passphrase(passphrase_file, env="-", what="key") if passphrase_file else None
    private = generate_key(key_type)
    write_all({out: (private_key_pem(private, passphrase), True)}, force=force)
    click.echo(f"wrote {out} ({key_type}{', encrypted' if passphrase else ''})")


@click.command()
@click.option("--key", "key_file", required=True, type=EXISTING_FILE)
@click.option("--key-passphrase-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--identity", help="SPIFFE ID to request, e.g. spiffe://example.org/web.")
@click.option("--dns", multiple=True)
@click.option("--ip", "ips", multiple=True)
@click.option("--email", "emails", multiple=True)
@click.option("--subject", default="", help="Subject DN (RFC 4514), e.g. CN=web.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True)
def csr(
    key_file: Path,
    key_passphrase_file: Path | None,
    identity: str | None,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    emails: tuple[str, ...],
    subject: str,
    out: Path,
    force: bool,
) -> None:
    """Create a certificate signing request (PKCS#10) for an existing key."""
    passphrase = read_passphrase(key_passphrase_file, what="key") if key_passphrase_file else None
    private = read_private_key(key_file, passphrase)
    wanted = _wanted(identity, dns, ips, emails, (), ())
    sans = wanted.sans
    if wanted.identity is not None:
        sans = SubjectAltNames(uris=(str(wanted.identity),)).merge(sans)
    builder = x509.CertificateSigningRequestBuilder().subject_name(parse_subject(subject))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans.general_names()), critical=False)
    request = builder.sign(private, signature_hash(private))  # type: ignore[arg-type]
    write_all({out: (request.public_bytes(serialization.Encoding.PEM), False)}, force=force)
    click.echo(f"wrote {out}")


@click.command()
@_ca_option
@click.option("--profile", required=True, help="Profile name, e.g. mtls, server, client.")
@click.option("--identity", help="SPIFFE ID, e.g. spiffe://example.org/ns/prod/web.")
@with_name_options
@key_type_option("--key-type")
@click.option("--out", "prefix", required=True, help="Writes PREFIX.pem, PREFIX.key, PREFIX.chain.pem.")
@click.option("--force", is_flag=True, help="Replace existing files.")
@passphrase_option
@json_option
def issue(
    ca_dir: Path,
    profile: str,
    identity: str | None,
    roles: tuple[str, ...],
    attrs: tuple[str, ...],
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    emails: tuple[str, ...],
    ttl: str | None,
    subject: str | None,
    key_type: KeyType,
    prefix: str,
    force: bool,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Generate a key and issue its certificate in one step."""
    wanted = _wanted(identity, dns, ips, emails, roles, attrs)
    lifetime = parse_duration(ttl) if ttl else None
    opened, authority = _open_authority(ca_dir, passphrase_file)
    chosen = opened.profile(profile)
    private = generate_key(key_type)
    from certwright.cli.inventory import open_inventory

    with open_inventory(None, None, ca=opened) as inventory:
        # Stored and audited in the transaction that returns it (the inventory issue).
        cert = inventory.certificates().issue(
            private.public_key(),
            profile=chosen,
            identity=wanted.identity,
            sans=wanted.sans,
            authorization=wanted.authorization,
            subject=subject,
            lifetime=lifetime,
        )
    chain = b"".join(_pem(c) for c in (cert, *authority.chain_for_leaf()))
    paths = {
        Path(f"{prefix}.pem"): (_pem(cert), False),
        Path(f"{prefix}.key"): (private_key_pem(private), True),
        Path(f"{prefix}.chain.pem"): (chain, False),
    }
    write_all(paths, force=force)
    _report(cert, opened, paths, as_json)


def _report(cert: x509.Certificate, opened: CADirectory, paths: Iterable[Path], as_json: bool) -> None:
    info = describe_certificate(cert, extension_oid=opened.settings.extension_oid)
    if as_json:
        emit_json({**info.to_json(), "files": [str(p) for p in paths]})
        return
    click.echo(
        f"issued {info.identity or info.subject} serial {info.serial} until "
        f"{info.not_after:%Y-%m-%dT%H:%M:%SZ}"
    )
    for path in paths:
        click.echo(f"  wrote {path}")


@click.command()
@_ca_option
@click.option("--profile", required=True)
@click.option("--csr", "csr_file", type=EXISTING_FILE)
@click.option("--identity", help="SPIFFE ID (default: the CSR's URI SAN).")
@with_name_options
@click.option("--out", "prefix", help="With --csr: writes PREFIX.pem and PREFIX.chain.pem.")
@click.option(
    "--csr-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Sign every *.csr, *.pem or *.der request in this directory.",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --csr-dir: where NAME.pem certificates go.",
)
@click.option("--keep-going", is_flag=True, help="With --csr-dir: write what succeeded even if some fail.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="With --csr-dir: worker processes (default: one per core for large batches).",
)
@click.option("--force", is_flag=True)
@passphrase_option
@json_option
def sign(
    ca_dir: Path,
    profile: str,
    csr_file: Path | None,
    identity: str | None,
    roles: tuple[str, ...],
    attrs: tuple[str, ...],
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    emails: tuple[str, ...],
    ttl: str | None,
    subject: str | None,
    prefix: str | None,
    csr_dir: Path | None,
    out_dir: Path | None,
    keep_going: bool,
    jobs: int | None,
    force: bool,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Sign a CSR (or a directory of CSRs) under a profile.

    The CSR's signature is verified; of its requested extensions only the SANs are read
    (and checked against the profile); CA:true is refused.
    """
    if (csr_file is None) == (csr_dir is None):
        raise click.UsageError("give exactly one of --csr or --csr-dir")
    if csr_file is not None and not prefix:
        raise click.UsageError("--csr needs --out PREFIX")
    if csr_dir is not None and (out_dir is None or prefix or identity):
        raise click.UsageError("--csr-dir needs --out-dir, and takes no --out or --identity")
    wanted = _wanted(identity, dns, ips, emails, roles, attrs)
    lifetime = parse_duration(ttl) if ttl else None
    if csr_file is not None:
        request = read_csr(csr_file)
        opened, authority = _open_authority(ca_dir, passphrase_file)
        from certwright.cli.inventory import open_inventory

        with open_inventory(None, None, ca=opened) as inventory:
            cert = inventory.certificates().sign_csr(
                request,
                profile=opened.profile(profile),
                identity=wanted.identity,
                sans=wanted.sans or None,
                authorization=wanted.authorization,
                subject=subject,
                lifetime=lifetime,
            )
        chain = b"".join(_pem(c) for c in (cert, *authority.chain_for_leaf()))
        paths = {Path(f"{prefix}.pem"): (_pem(cert), False), Path(f"{prefix}.chain.pem"): (chain, False)}
        write_all(paths, force=force)
        _report(cert, opened, paths, as_json)
        return
    assert csr_dir is not None and out_dir is not None
    _sign_batch(
        ca_dir,
        passphrase_file,
        profile,
        csr_dir,
        out_dir,
        wanted,
        subject,
        lifetime,
        jobs=jobs,
        keep_going=keep_going,
        force=force,
        as_json=as_json,
    )


def _record_batch(
    opened: CADirectory,
    run: SigningRun,
    request: BatchRequest,
    *,
    total: int,
    keep_going: bool,
    quiet: bool,
) -> BatchOutcome:
    """Record the batch as it is signed, with a progress bar for a person.

    The CA's own SQLite file is written directly (``store.sqlite_batch``): the batch then
    never imports SQLAlchemy, ~0.3-0.5 s of CPU its workers can use. A shared database,
    or a file that must be created or migrated first, goes through the inventory service.
    """
    from certwright.service.batches import batch_shared_fields, record_chunks

    if opened.config.inventory_url is None:
        from certwright.store.sqlite_batch import SQLiteBatch

        now = datetime.datetime.now(datetime.UTC)
        shared = batch_shared_fields(opened.require_authority(), request, actor(), now)
        batch = SQLiteBatch.open(opened.inventory, shared=shared)
        if batch is not None:
            with batch:
                return _with_progress(
                    lambda progress: record_chunks(run, batch, keep_going=keep_going, progress=progress),
                    total=total,
                    quiet=quiet,
                )
    from certwright.cli.inventory import open_inventory

    with open_inventory(None, None, ca=opened) as inventory:
        service = inventory.certificates()
        return _with_progress(
            lambda progress: service.record_batch(run, request, keep_going=keep_going, progress=progress),
            total=total,
            quiet=quiet,
        )


def _with_progress(
    record: Callable[[Callable[[int], None] | None], BatchOutcome], *, total: int, quiet: bool
) -> BatchOutcome:
    """``record(progress)``, with a bar on a terminal (rich costs ~50 ms to import: only then)."""
    if quiet or not sys.stderr.isatty():
        return record(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("signing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("sign", total=total)
        return record(lambda done: progress.advance(task, done))


def _sign_batch(
    ca_dir: Path,
    passphrase_file: Path | None,
    profile_name: str,
    csr_dir: Path,
    out_dir: Path,
    wanted: _Wanted,
    subject: str | None,
    lifetime: datetime.timedelta | None,
    *,
    jobs: int | None,
    keep_going: bool,
    force: bool,
    as_json: bool,
) -> None:
    if out_dir.exists() and out_dir.resolve() == csr_dir.resolve():
        raise Refused("--out-dir must differ from --csr-dir (certificates would replace *.pem requests)")
    opened = open_ca(ca_dir)  # fails fast, before a passphrase prompt, on a wrong directory
    passphrase = read_passphrase(passphrase_file)
    # The scrypt derivation (~150-250 ms, GIL free; begun by prefetch.start() during the
    # imports when it could be) finishes in a thread while this one lists the requests
    # and verifies as many as it can ahead (the workers inherit the verdicts).
    with ThreadPoolExecutor(max_workers=1) as background:
        unlocking = background.submit(_unlock, opened, passphrase)
        names = _requests_in(csr_dir)
        if not names:
            raise Refused(f"no *.csr, *.pem or *.der files in {csr_dir}")
        stems = {batch_stem(n) for n in names}
        if len(stems) != len(names):
            raise Refused(f"{csr_dir} holds requests with the same name stem (e.g. a.csr and a.pem)")
        if not force and out_dir.is_dir():
            # One listing rather than a stat per target: batches run to hundreds of thousands.
            clash = sorted(stems & {batch_stem(n) for n in os.listdir(out_dir) if n.endswith(".pem")})
            if clash:
                raise FileExistsError(f"{out_dir / (clash[0] + '.pem')} already exists")
        checked = check_ahead(csr_dir, names, stop=unlocking.done)
        opened = unlocking.result()
    request = BatchRequest(
        profile=opened.profile(profile_name),
        identity=wanted.identity,
        sans=wanted.sans or None,
        authorization=wanted.authorization,
        subject=subject,
        lifetime=lifetime,
    )
    target = _Target.prepare(out_dir)
    try:
        authority = opened.require_authority()
        with start_signing(
            authority, csr_dir, names, request, staging=target.staging, jobs=jobs, checked=checked
        ) as run:
            # The workers are signing already; this process imports and opens the inventory
            # (SQLAlchemy: ~0.3 s of the run) meanwhile, then records what they send back.
            from certwright.service import BatchRefusedError

            try:
                outcome = _record_batch(
                    opened, run, request, total=len(names), keep_going=keep_going, quiet=as_json
                )
            except BatchRefusedError as refused:
                _say_refused(csr_dir, refused.failures)
                if as_json:
                    _emit_batch(csr_dir, out_dir, [], refused.failures)
                raise
        signed, failures = outcome.signed, outcome.failures
        _say_refused(csr_dir, failures)
        target.publish(signed)  # recorded (committed) before any certificate becomes visible
    except BaseException:
        target.discard()
        raise
    if as_json:
        _emit_batch(csr_dir, out_dir, signed, failures)
    else:
        click.echo(f"signed {len(signed)} of {len(names)} requests into {out_dir}")
    if failures:
        raise SystemExit(1)


@dataclass
class _Target:
    """Where a batch stages its certificates, and how they are moved into ``--out-dir``.

    A new ``--out-dir`` is staged as a hidden sibling and renamed into place in one step
    (one rename instead of one per certificate, and the certificates appear all at once).
    An existing one gets a staging directory inside it, and a rename per certificate.
    """

    out_dir: Path
    staging: Path
    created: list[Path]  # directories made for the batch, deepest first
    whole: bool  # rename the staging directory itself into place

    @classmethod
    def prepare(cls, out_dir: Path) -> _Target:
        whole = not out_dir.exists()
        parent = out_dir.parent if whole else out_dir
        created = _make_dirs(parent)
        # Private (0700) until published: nobody reads a certificate before its row is committed.
        staging = Path(tempfile.mkdtemp(prefix=".certwright-batch-", dir=parent))
        return cls(out_dir, staging, created, whole)

    def publish(self, signed: list[str]) -> None:
        """Move the staged certificates of ``signed`` into place (the batch is recorded)."""
        if not signed:
            self.discard()
            return
        sync(self.staging)
        if self.whole and self._rename_whole():
            return
        self.out_dir.mkdir(exist_ok=True)
        staged, final = str(self.staging), str(self.out_dir)
        for name in signed:
            pem = batch_stem(name) + ".pem"
            os.replace(os.path.join(staged, pem), os.path.join(final, pem))
        sync(self.out_dir)
        self.staging.rmdir()

    def _rename_whole(self) -> bool:
        umask = os.umask(0o022)  # read it (there is no other way) and put it back
        os.umask(umask)
        os.chmod(self.staging, 0o777 & ~umask)  # what mkdir would have given out_dir
        try:
            os.rename(self.staging, self.out_dir)
        except OSError:  # out_dir appeared meanwhile (and is not empty): one file at a time
            os.chmod(self.staging, 0o700)
            return False
        sync(self.out_dir.parent)
        return True

    def discard(self) -> None:
        """Throw the staged files away, and the directories made for the batch."""
        shutil.rmtree(self.staging, ignore_errors=True)
        _remove_empty(self.created)


def _say_refused(csr_dir: Path, failures: list[tuple[str, str]]) -> None:
    for name, reason in failures:
        say(f"{csr_dir / name}: {reason}", style="red", label="refused")


def _requests_in(directory: Path) -> list[str]:
    """The request file names of a directory, sorted (scandir: no stat per entry, mostly)."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.name.endswith((".csr", ".pem", ".der")) and e.is_file())


def _emit_batch(csr_dir: Path, out_dir: Path, signed: list[str], failures: list[tuple[str, str]]) -> None:
    emit_json(
        {
            "issued": [str(out_dir / (batch_stem(n) + ".pem")) for n in sorted(signed)],
            "refused": [{"csr": str(csr_dir / n), "reason": r} for n, r in failures],
        }
    )


def _make_dirs(directory: Path) -> list[Path]:
    """``mkdir -p``; returns the directories it created, deepest first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(created: list[Path]) -> None:
    """Undo :func:`_make_dirs` where the directories are still empty."""
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return


@click.command()
@click.option("--cert", "cert_file", required=True, type=EXISTING_FILE)
@click.option("--key", "key_file", required=True, type=EXISTING_FILE)
@click.option(
    "--chain",
    "chain_file",
    type=EXISTING_FILE,
    help="PEM chain; certificates equal to --cert are skipped.",
)
@click.option("--key-passphrase-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--passphrase-file",
    "out_passphrase_file",
    required=True,
    type=EXISTING_FILE,
    help="Passphrase protecting the PKCS#12 file.",
)
@click.option("--name", help="Friendly name stored in the file.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True)
def pkcs12(
    cert_file: Path,
    key_file: Path,
    chain_file: Path | None,
    key_passphrase_file: Path | None,
    out_passphrase_file: Path,
    name: str | None,
    out: Path,
    force: bool,
) -> None:
    """Export key + certificate + chain as one PKCS#12 file (AES-256, PBKDF2-SHA256)."""
    key_pass = read_passphrase(key_passphrase_file, what="key") if key_passphrase_file else None
    private = read_private_key(key_file, key_pass)
    cert = read_certificates(cert_file)[0]
    if key_type_of(private) != key_type_of(cert.public_key()) or private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise Refused(f"{key_file} is not the key of {cert_file}")
    chain = [c for c in read_certificates(chain_file) if c != cert] if chain_file else []
    data = pkcs12_bytes(private, cert, chain, read_passphrase(out_passphrase_file, what="PKCS#12"), name=name)
    write_all({out: (data, True)}, force=force)
    click.echo(f"wrote {out}")


__all__ = ["CertwrightGroup", "csr", "issue", "key", "pkcs12", "sign"]
