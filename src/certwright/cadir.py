"""A CA on disk: the directory that ``certwright ca init`` writes and other commands open.

Layout::

    DIR/ca.toml            settings: name, trust domain, DNS zones, extension OID, key type
    DIR/root.pem           self-signed root certificate
    DIR/root.key           root key, PKCS#8 encrypted (scrypt), mode 0600
    DIR/intermediate.pem   issuing intermediate, name-constrained to the trust domain
    DIR/intermediate.key   its key, encrypted, mode 0600
    DIR/bundle.pem         the trust bundle relying parties install (the root)
    DIR/profiles.toml      optional user profiles, read when present
    DIR/inventory.db       the SQLite inventory (unless ca.toml names another database)

Example::

    >>> import tempfile, pathlib
    >>> from certwright.cadir import init_ca, open_ca
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "ca"
    >>> ca = init_ca(d, name="Example", trust_domain="example.org", passphrase=b"s3cret pass")
    >>> open_ca(d, passphrase=b"s3cret pass").settings.trust_domain
    'example.org'
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import secrets
import shutil
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certwright.clock import Clock
from certwright.errors import CADirectoryError, CertwrightError
from certwright.files import read_certificate, read_private_key, write_file, write_secret
from certwright.issuance import Authority, create_root
from certwright.x509.authz import DEFAULT_OID
from certwright.x509.keys import KeyType, SigningKey, generate_key, private_key_pem
from certwright.x509.profile_file import parse_profiles
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings, Profile

CONFIG = "ca.toml"
ROOT_CERT, ROOT_KEY = "root.pem", "root.key"
INTERMEDIATE_CERT, INTERMEDIATE_KEY = "intermediate.pem", "intermediate.key"
BUNDLE = "bundle.pem"
PROFILES = "profiles.toml"
INVENTORY = "inventory.db"


def without_password(url: str) -> str:
    """``url`` with any password removed from its user part (``user:secret@`` -> ``user@``).

    Example::

        >>> without_password("postgresql+psycopg://ca:s3cret@db.internal/certwright")
        'postgresql+psycopg://ca@db.internal/certwright'
    """
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    user_part, _, host_part = parts.netloc.rpartition("@")
    user = user_part.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host_part}" if user else host_part))


@dataclass(frozen=True)
class CAConfig:
    """What ``ca.toml`` holds."""

    name: str
    settings: CASettings
    key_type: KeyType
    inventory_url: str | None = None  # None: the directory's own SQLite file

    def to_toml(self) -> str:
        s = self.settings
        # json.dumps of a str is a valid TOML basic string (same escapes, \\uXXXX included).
        lines = [
            "# certwright CA settings (written by `certwright ca init`)",
            f"name = {json.dumps(self.name)}",
            f"trust_domain = {json.dumps(s.trust_domain)}",
            f"dns_zones = {json.dumps(list(s.dns_zones))}",
            f"extension_oid = {json.dumps(s.extension_oid)}",
            f"key_type = {json.dumps(self.key_type.value)}",
            f"backdate_seconds = {int(s.backdate.total_seconds())}",
            f"crl_urls = {json.dumps(list(s.crl_urls))}",
            f"ocsp_urls = {json.dumps(list(s.ocsp_urls))}",
            f"ca_issuer_urls = {json.dumps(list(s.ca_issuer_urls))}",
        ]
        if self.inventory_url:
            # Never the password: ca.toml is copied to replicas and read by every command.
            # Later connections find it where database clients look (PGPASSWORD, ~/.pgpass)
            # or in a URL given again (--db, CERTWRIGHT_DB).
            lines.append(f"inventory_url = {json.dumps(without_password(self.inventory_url))}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str, *, source: str) -> CAConfig:
        try:
            data = tomllib.loads(text)
            settings = CASettings(
                trust_domain=data["trust_domain"],
                dns_zones=tuple(data.get("dns_zones", ())),
                extension_oid=data.get("extension_oid", DEFAULT_OID),
                backdate=datetime.timedelta(seconds=int(data.get("backdate_seconds", 60))),
                crl_urls=tuple(data.get("crl_urls", ())),
                ocsp_urls=tuple(data.get("ocsp_urls", ())),
                ca_issuer_urls=tuple(data.get("ca_issuer_urls", ())),
            )
            return cls(
                name=data["name"],
                settings=settings,
                key_type=KeyType(data["key_type"]),
                inventory_url=data.get("inventory_url"),
            )
        except (tomllib.TOMLDecodeError, KeyError, ValueError, TypeError) as exc:
            raise CADirectoryError(f"{source}: invalid CA settings: {exc}") from None


@dataclass(frozen=True)
class CADirectory:
    """An opened CA directory. ``authority`` (the intermediate) needs the passphrase."""

    path: Path
    config: CAConfig
    root: x509.Certificate
    intermediate: x509.Certificate
    profiles: dict[str, Profile]
    authority: Authority | None = None

    @property
    def settings(self) -> CASettings:
        return self.config.settings

    @property
    def inventory(self) -> str:
        """Where the inventory lives: ``inventory_url`` of ca.toml, else DIR/inventory.db."""
        return self.config.inventory_url or str(self.path / INVENTORY)

    @property
    def bundle(self) -> list[x509.Certificate]:
        return [self.root]

    def require_authority(self) -> Authority:
        if self.authority is None:
            raise CADirectoryError("this operation needs the CA passphrase to open its key")
        return self.authority

    def unlock(self, passphrase: bytes, *, clock: Clock | None = None) -> CADirectory:
        """This CA with its issuing key opened (wrong passphrase: :class:`InvalidKeyError`)."""
        return self.with_key(read_private_key(self.key_path, passphrase), clock=clock)

    @property
    def key_path(self) -> Path:
        """The issuing key's file (encrypted at rest)."""
        return self.path / INTERMEDIATE_KEY

    def with_key(self, key: SigningKey, *, clock: Clock | None = None) -> CADirectory:
        """This CA with ``key``, already opened, as its issuing key (it must match the certificate)."""
        authority = Authority(
            certificate=self.intermediate, key=key, settings=self.settings, chain=(self.root,), clock=clock
        )
        return dataclasses.replace(self, authority=authority)

    def profile(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles))
            raise CertwrightError(f"unknown profile {name!r}; known profiles: {known}") from None


def init_ca(
    directory: Path,
    *,
    name: str,
    trust_domain: str,
    passphrase: bytes,
    key_type: KeyType = KeyType.EC_P256,
    dns_zones: tuple[str, ...] = (),
    extension_oid: str = DEFAULT_OID,
    root_lifetime: datetime.timedelta | None = None,
    intermediate_lifetime: datetime.timedelta | None = None,
    clock: Clock | None = None,
    crl_urls: tuple[str, ...] = (),
    ocsp_urls: tuple[str, ...] = (),
    inventory_url: str | None = None,
    prepare: Callable[[Path, x509.Certificate, x509.Certificate], None] | None = None,
) -> CADirectory:
    """Create a root and a name-constrained issuing intermediate in ``directory``.

    Everything is written to a temporary sibling directory first and renamed into place at
    the end, so a failure leaves nothing behind. ``directory`` must not exist or be empty.
    ``prepare(staging, root, intermediate)`` runs in the staging directory before that
    rename (the CLI creates and fills the inventory there). ``inventory_url`` records a
    database other than the directory's own SQLite file in ``ca.toml``.
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise CADirectoryError(f"{directory} already exists and is not empty; choose a new directory")
    if len(passphrase) < 8:
        raise CADirectoryError("the CA passphrase must be at least 8 bytes long")
    settings = CASettings(
        trust_domain=trust_domain,
        dns_zones=dns_zones,
        extension_oid=extension_oid,
        crl_urls=crl_urls,
        ocsp_urls=ocsp_urls,
    )
    config = CAConfig(name=name, settings=settings, key_type=key_type, inventory_url=inventory_url)
    root_key = generate_key(key_type)
    root = create_root(
        root_key, subject=_subject(f"{name} Root CA"), settings=settings, lifetime=root_lifetime, clock=clock
    )
    root_authority = Authority(certificate=root, key=root_key, settings=settings, clock=clock)
    issuing_key = generate_key(key_type)
    intermediate = root_authority.create_intermediate(
        issuing_key.public_key(),
        subject=_subject(f"{name} Issuing CA"),
        lifetime=intermediate_lifetime,
    )
    parent = directory.absolute().parent
    made_parents = [p for p in (parent, *parent.parents) if not p.exists()]  # deepest first
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{directory.name}.{secrets.token_hex(4)}.partial"
    staging.mkdir(mode=0o700)
    try:
        write_file(staging / CONFIG, config.to_toml().encode())
        write_file(staging / ROOT_CERT, _pem(root))
        write_file(staging / INTERMEDIATE_CERT, _pem(intermediate))
        write_file(staging / BUNDLE, _pem(root))
        write_secret(staging / ROOT_KEY, private_key_pem(root_key, passphrase))
        write_secret(staging / INTERMEDIATE_KEY, private_key_pem(issuing_key, passphrase))
        if prepare is not None:
            prepare(staging, root, intermediate)
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for made in made_parents:  # the parents created above, when still empty
            with contextlib.suppress(OSError):
                made.rmdir()
        raise
    authority = Authority(
        certificate=intermediate, key=issuing_key, settings=settings, chain=(root,), clock=clock
    )
    return CADirectory(directory, config, root, intermediate, dict(BUILTIN_PROFILES), authority)


def open_ca(directory: Path, *, passphrase: bytes | None = None, clock: Clock | None = None) -> CADirectory:
    """Open a CA directory; with ``passphrase`` the issuing key is opened too."""
    if not (directory / CONFIG).is_file():
        raise CADirectoryError(
            f"{directory} is not a certwright CA directory (no {CONFIG}); create one with "
            "`certwright ca init`"
        )
    config = CAConfig.from_toml((directory / CONFIG).read_text(), source=str(directory / CONFIG))
    root = read_certificate(directory / ROOT_CERT)
    intermediate = read_certificate(directory / INTERMEDIATE_CERT)
    profiles = dict(BUILTIN_PROFILES)
    if (directory / PROFILES).is_file():
        profiles = parse_profiles((directory / PROFILES).read_text(), source=str(directory / PROFILES))
    authority = None
    if passphrase is not None:
        key = read_private_key(directory / INTERMEDIATE_KEY, passphrase)
        authority = Authority(
            certificate=intermediate, key=key, settings=config.settings, chain=(root,), clock=clock
        )
    return CADirectory(directory, config, root, intermediate, profiles, authority)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _subject(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
