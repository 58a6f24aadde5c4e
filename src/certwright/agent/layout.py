"""A workload's credentials on disk, replaced as one matching set by one atomic rename.

Layout of ``DIR`` (what services read is on the left)::

    DIR/key.pem     -> ..data/key.pem       private key, 0600
    DIR/cert.pem    -> ..data/cert.pem      the leaf certificate
    DIR/chain.pem   -> ..data/chain.pem     leaf + intermediates (what a TLS server presents)
    DIR/bundle.pem  -> ..data/bundle.pem    trust bundle (roots)
    DIR/..data      -> ..2026_11_28_04_42_07.3fa9c1    the current set
    DIR/..2026_11_28_04_42_07.3fa9c1/       key, cert, chain, bundle, meta.json
    DIR/..lock                              one agent per directory (flock)

Two renames are not atomic together, so the four files are never renamed one by one: a
new set is written and flushed into a fresh version directory, then the ``..data`` symlink
is switched to it with a single ``rename(2)``, which POSIX makes atomic (the name points
to the old or to the new target, never to neither). This is Kubernetes' atomic writer
(``pkg/volume/util/atomic_writer.go``) for secret volumes; ``..`` prefixes keep the
internal names apart from any file an operator might add. A ``SIGKILL`` at any instant
leaves ``..data`` on the old set or on the new one; everything else is garbage collected
by the next write.

The visible names are symlinks created once; before the switch, any visible name that is
missing or a regular file (a directory written by ``certwright enroll``, or an operator's
``mv``) is first turned into a link to the *current* set, so the switch moves every name at
once. A directory with regular files and no ``..data`` yet is migrated by copying them into
a first version directory: every name keeps its content through the migration.

A reader that opens ``key.pem`` and then ``cert.pem`` may still straddle a switch; the mTLS
contexts of :mod:`certwright.mtls.context` check that key and certificate match and retry
when the files change again. The previous version directory is kept after a switch so such
a reader never finds a dangling link.

Example::

    >>> creds_dir = CredentialDir(Path("/var/lib/certwright/web"))     # doctest: +SKIP
    >>> with creds_dir.locked():                                        # doctest: +SKIP
    ...     current = creds_dir.load()
    ...     creds_dir.store(renewed)
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certwright.errors import CertwrightError, InvalidInputError
from certwright.files import parse_certificates
from certwright.mtls.context import TLSFiles
from certwright.verify.identity import identity_of
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import PublicKey, SigningKey, load_private_key, private_key_pem

KEY, CERT, CHAIN, BUNDLE = "key.pem", "cert.pem", "chain.pem", "bundle.pem"
NAMES = (KEY, CERT, CHAIN, BUNDLE)
DATA = "..data"
META = "meta.json"
LOCK = "..lock"
_VERSION_PREFIX = "..20"  # ..YYYY_MM_DD_HH_MM_SS.hex: sorts by time, never clashes with ..data
_TMP_PREFIX = "..tmp."

Checkpoint = Callable[[str], None]
"""Called with a step name between the steps of a write (tests kill the process there)."""


class CredentialsError(CertwrightError):
    """The directory's credentials cannot be used; ``missing`` when there are none at all."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class DirectoryBusy(CertwrightError):
    """Another agent holds the directory's lock."""


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _spki(public: PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Credentials:
    """One matching set: a key, its certificate, the intermediates and the trust bundle.

    ``obtained_at`` is when the agent received the certificate (the renewal schedule counts
    from it, see :mod:`certwright.agent.policy`).
    """

    key: SigningKey
    certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    bundle: tuple[x509.Certificate, ...]
    obtained_at: datetime.datetime

    def __post_init__(self) -> None:
        # The invariant the whole layout exists for: never write a key with another's certificate.
        if _spki(self.key.public_key()) != _spki(self.certificate.public_key()):
            raise InvalidInputError("the private key does not match the certificate")
        if not self.bundle:
            raise InvalidInputError("the trust bundle is empty")

    @property
    def not_before(self) -> datetime.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def start(self) -> datetime.datetime:
        """Where the lifetime counts from: when obtained, within the validity period."""
        return min(max(self.not_before, self.obtained_at), self.not_after)

    @property
    def serial_hex(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def fingerprint(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA256())

    @property
    def identity(self) -> SpiffeId | None:
        return identity_of(self.certificate)

    def files(self) -> dict[str, bytes]:
        """The bytes of each file of the set, by name."""
        return {
            KEY: private_key_pem(self.key),
            CERT: _pem(self.certificate),
            CHAIN: _pem(self.certificate, *self.intermediates),
            BUNDLE: _pem(*self.bundle),
        }


class CredentialDir:
    """The credentials directory of one workload (see the module documentation).

    ``checkpoint`` is called between the steps of :meth:`store` with the step's name: tests
    use it to kill the process at each step; it is a no-op otherwise.
    """

    def __init__(self, directory: Path, *, checkpoint: Checkpoint | None = None) -> None:
        self.directory = directory
        self._checkpoint = checkpoint or (lambda _step: None)

    def path(self, name: str) -> Path:
        return self.directory / name

    def tls_files(self) -> TLSFiles:
        """What a TLS client or server uses: chain.pem (leaf + intermediates), key, bundle."""
        return TLSFiles(cert=self.path(CHAIN), key=self.path(KEY), bundle=self.path(BUNDLE))

    # -- locking -------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock: two agents writing one directory would undo each other."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(self.path(LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise DirectoryBusy(f"another agent is using {self.directory}") from None
                raise
            yield
        finally:
            os.close(fd)  # closing releases the lock (and a SIGKILL releases it too)

    # -- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        """True when any of the visible files (or a link to them) is there."""
        return any(os.path.lexists(self.path(name)) for name in NAMES)

    def load(self) -> Credentials:
        """The set the services see, checked: parseable, key matching the certificate,
        chain.pem starting with cert.pem, a non-empty bundle.

        Raises :class:`CredentialsError` naming what is wrong (``missing=True`` when the
        directory holds none of the files).
        """
        if not self.exists():
            raise CredentialsError(f"{self.directory} holds no credentials", missing=True)
        data = {name: self._read(name) for name in NAMES}
        try:
            key = load_private_key(data[KEY])
            (leaf,) = self._certificates(CERT, data[CERT], single=True)
            chain = self._certificates(CHAIN, data[CHAIN])
            bundle = self._certificates(BUNDLE, data[BUNDLE])
        except InvalidInputError as exc:
            raise CredentialsError(f"{self.directory}: {exc}") from None
        if chain[0] != leaf:
            raise CredentialsError(
                f"{self.path(CHAIN)} does not start with the certificate of {self.path(CERT)}"
            )
        if _spki(key.public_key()) != _spki(leaf.public_key()):
            raise CredentialsError(f"{self.path(KEY)} does not match the certificate {self.path(CERT)}")
        return Credentials(
            key=key,
            certificate=leaf,
            intermediates=tuple(chain[1:]),
            bundle=tuple(bundle),
            obtained_at=self._obtained_at(),
        )

    def load_bundle(self) -> tuple[x509.Certificate, ...]:
        """The trust bundle alone (enough to enrol again when the certificate is lost)."""
        try:
            return tuple(self._certificates(BUNDLE, self._read(BUNDLE)))
        except InvalidInputError as exc:
            raise CredentialsError(str(exc)) from None

    def _read(self, name: str) -> bytes:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            raise CredentialsError(f"{self.path(name)} is missing (deleted?)") from None
        except OSError as exc:
            raise CredentialsError(f"cannot read {self.path(name)}: {exc.strerror}") from None

    def _certificates(self, name: str, data: bytes, *, single: bool = False) -> list[x509.Certificate]:
        certificates = parse_certificates(data, source=str(self.path(name)))
        if single and len(certificates) != 1:
            raise InvalidInputError(f"{self.path(name)} must hold one certificate, not {len(certificates)}")
        return certificates

    def _obtained_at(self) -> datetime.datetime:
        """From the set's meta.json; for files the agent did not write, cert.pem's mtime."""
        cert = self.path(CERT)
        meta = Path(os.path.realpath(cert)).parent / META
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            text = json.loads(meta.read_text())["obtained_at"]
            value = datetime.datetime.fromisoformat(text)
            if value.tzinfo is not None:
                return value.astimezone(datetime.UTC)
        return datetime.datetime.fromtimestamp(cert.stat().st_mtime, datetime.UTC)

    # -- writing -------------------------------------------------------------------------

    def store(self, credentials: Credentials) -> None:
        """Replace the set the services see with ``credentials``, atomically.

        Call it under :meth:`locked`. Before the switch every visible name already points
        through ``..data``; the switch is one ``rename``; the old set is kept until the next
        write, older ones are removed.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        if not os.path.lexists(self.path(DATA)) and self._has_regular_files():
            self._migrate()
        version = self._write_version(credentials)
        previous = self._current_version()
        if previous is not None:
            self._link_names()  # to the current set: same content, so no name changes meaning
        self._switch(version)
        self._link_names()  # a fresh directory gets its links now
        self._collect(keep={version, previous})

    def _has_regular_files(self) -> bool:
        return any(self.path(n).exists() and not self.path(n).is_symlink() for n in NAMES)

    def _migrate(self) -> None:
        """Regular files (no ``..data`` yet) become a first version with the same bytes."""
        files: dict[str, bytes] = {}
        for name in NAMES:
            with contextlib.suppress(FileNotFoundError):
                files[name] = self.path(name).read_bytes()
        obtained: datetime.datetime | None = None
        with contextlib.suppress(OSError):
            obtained = datetime.datetime.fromtimestamp(self.path(CERT).stat().st_mtime, datetime.UTC)
        version = self._write_files(files, obtained_at=obtained, serial=None)
        self._checkpoint("migrate:version-written")
        self._switch(version)
        self._checkpoint("migrate:switched")

    def _write_version(self, credentials: Credentials) -> str:
        return self._write_files(
            credentials.files(), obtained_at=credentials.obtained_at, serial=credentials.serial_hex
        )

    def _write_files(
        self, files: dict[str, bytes], *, obtained_at: datetime.datetime | None, serial: str | None
    ) -> str:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y_%m_%d_%H_%M_%S")
        name = f"..{stamp}.{secrets.token_hex(3)}"
        version = self.path(name)
        os.mkdir(version, 0o755)
        for file_name, data in files.items():
            _write_new(version / file_name, data, mode=0o600 if file_name == KEY else 0o644)
            self._checkpoint(f"write:{file_name}")
        meta = {"obtained_at": obtained_at.isoformat() if obtained_at else None, "serial": serial}
        _write_new(version / META, json.dumps(meta).encode() + b"\n", mode=0o644)
        _fsync_dir(version)
        self._checkpoint("write:done")
        return name

    def _current_version(self) -> str | None:
        try:
            return os.readlink(self.path(DATA))
        except OSError:
            return None

    def _switch(self, version: str) -> None:
        """Point ``..data`` at ``version``: a new link renamed over the old one (atomic)."""
        tmp = self.path(f"{_TMP_PREFIX}data.{secrets.token_hex(3)}")
        os.symlink(version, tmp)
        self._checkpoint("switch:link-made")
        os.replace(tmp, self.path(DATA))
        self._checkpoint("switch:renamed")
        _fsync_dir(self.directory)
        self._checkpoint("switch:synced")

    def _link_names(self) -> None:
        """Make each visible name a link to ``..data/<name>`` (a rename per name that is not)."""
        changed = False
        for name in NAMES:
            target = f"{DATA}/{name}"
            path = self.path(name)
            with contextlib.suppress(OSError):
                if os.readlink(path) == target:
                    continue
            tmp = self.path(f"{_TMP_PREFIX}{name}.{secrets.token_hex(3)}")
            os.symlink(target, tmp)
            os.replace(tmp, path)
            changed = True
            self._checkpoint(f"link:{name}")
        if changed:
            _fsync_dir(self.directory)

    def _collect(self, *, keep: set[str | None]) -> None:
        """Remove version directories other than ``keep`` and leftovers of interrupted writes."""
        for entry in os.scandir(self.directory):
            if entry.name in keep:
                continue
            if entry.name.startswith(_VERSION_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.startswith(_TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        self._checkpoint("collect:done")


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    # O_EXCL with the final mode: a key is 0600 from its first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
