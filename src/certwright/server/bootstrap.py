"""The data directory of ``certwright serve``: made on first start, checked and reused on later ones.

Layout (docs/server.md, "Files")::

    DIR/server.toml        settings (a commented template on first start; yours to edit)
    DIR/ca/                the CA directory (cadir.init_ca): keys encrypted with the passphrase,
                           ca/inventory.db unless --db, ca/ocsp.pem + ca/ocsp.key (the
                           delegated OCSP responder, cli/responder.py)
    DIR/tls/server.pem     the server's own TLS certificate (leaf + intermediate), profile server
    DIR/tls/server.key     its key, 0600
    DIR/bundle.pem         the trust bundle (root) clients verify the server with
    DIR/admin.pem          the operator's client certificate (leaf + intermediate), role certwright.admin
    DIR/admin.key          its key, 0600
    DIR/policy.toml        the CA's own access policy (who may call which endpoint)

**First start** builds all of it in a staging directory and renames it into place at the
end, like ``init_ca``: a failure (a wrong setting, a full disk, an unreachable database)
leaves no directory behind, and an existing ``DIR`` (holding only the operator's
``server.toml``) gets nothing. Rows written to a shared PostgreSQL inventory before such a
failure stay: they describe certificates of a CA that was thrown away, never used.

**Later starts** open ``DIR/ca`` with the passphrase and only fill in what is missing or
due: the server certificate and the admin certificate are issued again once two thirds of
their lifetime have passed (or when they no longer chain to the CA, or the server names
changed), the OCSP responder by its own rule. Every certificate is recorded in the
inventory before its files are written. A second replica is a ``DIR`` holding a copy of
``DIR/ca`` (and the same ``--db``): it gets its own server and admin certificates.

The CLI layer supplies two pieces this layer may not import (``cli`` sits above ``server``):
creating the inventory (``cli/ca_cmds.create_inventory``) and the responder
(``cli/responder.load_responder``), as :class:`Hooks`.

Example::

    prepared = prepare(config, passphrase, hooks)      # DIR made or reused
    prepared.ca.require_authority()                    # unlocked
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certwright.cadir import BUNDLE as CA_BUNDLE
from certwright.cadir import CONFIG as CA_CONFIG
from certwright.cadir import INVENTORY, CAConfig, CADirectory, init_ca, open_ca
from certwright.clock import Clock, SystemClock
from certwright.errors import CertwrightError
from certwright.files import read_certificates, read_private_key, write_file, write_secret
from certwright.issuance import Authority
from certwright.mtls.context import TLSFiles
from certwright.revocation.responder import responder_needs_rotation
from certwright.server.ca_policy import default_policy_text
from certwright.server.config import ADMIN_ROLE, CONFIG_FILE, ServerConfig, template
from certwright.service import CertificateService
from certwright.service.certificates import ca_key_id
from certwright.store import Store, open_store
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import SigningKey, generate_key, private_key_pem
from certwright.x509.names import SubjectAltNames, normalize_dns

CA_DIR = "ca"
TLS_DIR = "tls"
SERVER_CERT = "tls/server.pem"
SERVER_KEY = "tls/server.key"
BUNDLE = "bundle.pem"
ADMIN_CERT = "admin.pem"
ADMIN_KEY = "admin.key"
POLICY = "policy.toml"
ACTOR = "certwright-serve"
# What first start writes; finding one of these without DIR/ca means someone else's files.
_OWNED = (CA_DIR, TLS_DIR, BUNDLE, ADMIN_CERT, ADMIN_KEY, POLICY)

CreateInventory = Callable[[str, x509.Certificate, x509.Certificate, str], None]
LoadResponder = Callable[[CADirectory, Store, bytes], tuple[x509.Certificate, SigningKey]]


class BootstrapError(CertwrightError):
    """The data directory cannot be created or used as it is; the message says what to do."""


@dataclass(frozen=True)
class Hooks:
    """What the CLI layer lends: ``create_inventory(target, root, intermediate, oid)`` and
    ``load_responder(ca, store, passphrase) -> (certificate, key)``."""

    create_inventory: CreateInventory
    load_responder: LoadResponder


@dataclass
class Prepared:
    """A data directory ready to serve: the CA unlocked, the inventory open (close it)."""

    config: ServerConfig  # trust domain as the CA has it
    ca: CADirectory
    store: Store
    responder: tuple[x509.Certificate, SigningKey]
    first_start: bool
    issued: list[str] = field(default_factory=list)  # what this start (re)issued, for the log
    # The responder pair, issued anew (and recorded) when due: a running server rotates it.
    # It holds the CA passphrase (the responder key is stored encrypted with it); the CA's
    # own key is unlocked in this process's memory for its whole life anyway.
    load_responder: Callable[[], tuple[x509.Certificate, SigningKey]] | None = field(default=None, repr=False)

    @property
    def directory(self) -> Path:
        return self.config.directory

    @property
    def tls(self) -> TLSFiles:
        d = self.directory
        return TLSFiles(d / SERVER_CERT, d / SERVER_KEY, d / BUNDLE)

    @property
    def bundle(self) -> Path:
        return self.directory / BUNDLE

    @property
    def policy(self) -> Path:
        return self.directory / POLICY

    @property
    def admin(self) -> tuple[Path, Path]:
        return self.directory / ADMIN_CERT, self.directory / ADMIN_KEY


def is_initialised(config: ServerConfig) -> bool:
    """Whether ``DIR/ca`` holds a CA (later start) or not (first start)."""
    return (config.ca_dir / CA_CONFIG).is_file()


def prepare(config: ServerConfig, passphrase: bytes, hooks: Hooks, *, clock: Clock | None = None) -> Prepared:
    """Create the data directory on first start, or open and refresh it; see the module docstring."""
    clock = clock or SystemClock()
    if is_initialised(config):
        return _reuse(config, passphrase, hooks, clock)
    return _first_start(config, passphrase, hooks, clock)


# --- first start -------------------------------------------------------------------------------


def _first_start(config: ServerConfig, passphrase: bytes, hooks: Hooks, clock: Clock) -> Prepared:
    directory = config.directory
    if directory.exists() and not directory.is_dir():
        raise BootstrapError(f"{directory} exists and is not a directory")
    if directory.is_dir():
        foreign = [name for name in _OWNED if (directory / name).exists()]
        if foreign:
            raise BootstrapError(
                f"{directory} holds {foreign[0]} but no CA (no {CA_DIR}/{CA_CONFIG}): not a certwright "
                "data directory this server made; choose an empty directory or move those files away"
            )
    fresh = not directory.exists()
    parent = directory.absolute().parent
    made_parents = [p for p in (parent, *parent.parents) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    # Staged beside DIR (a new DIR) or inside it (an existing DIR, e.g. with the operator's
    # server.toml): either way on the same file system, so the final moves are renames.
    staging = parent / f".{directory.name}.{secrets.token_hex(4)}.partial"
    if not fresh:
        staging = directory / f".bootstrap.{secrets.token_hex(4)}.partial"
    staging.mkdir(mode=0o700)
    moved: list[Path] = []
    try:
        ca, responder, issued = _build(staging, config, passphrase, hooks, clock)
        if fresh:
            os.replace(staging, directory)
        else:
            # Files first, ca/ last: until ca/ is in place a later start treats DIR as new.
            for name in sorted(os.listdir(staging), key=lambda n: n == CA_DIR):
                os.replace(staging / name, directory / name)
                moved.append(directory / name)
            staging.rmdir()
    except BaseException:
        for path in moved:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        for made in made_parents:  # deepest first: only the parents made above, still empty
            with contextlib.suppress(OSError):
                made.rmdir()
        raise
    ca = dataclasses.replace(ca, path=config.ca_dir)
    store = open_store(_inventory_target(config, ca), upgrade=True)
    return Prepared(
        config,
        ca,
        store,
        responder,
        first_start=True,
        issued=issued,
        load_responder=_responder_loader(ca, store, passphrase, hooks),
    )


def _build(
    staging: Path, config: ServerConfig, passphrase: bytes, hooks: Hooks, clock: Clock
) -> tuple[CADirectory, tuple[x509.Certificate, SigningKey], list[str]]:
    """Everything of a first start, written under ``staging`` (its layout is DIR's)."""
    ca = _create_ca(staging / CA_DIR, config, passphrase, hooks, clock)
    store = open_store(_inventory_target(config, ca), upgrade=True)
    try:
        responder = hooks.load_responder(ca, store, passphrase)
        service = _service(store, ca, clock)
        (staging / TLS_DIR).mkdir(mode=0o700)
        _issue_server(staging, config, ca, service)
        _issue_admin(staging, config, ca, service)
    finally:
        store.close()
    write_file(staging / BUNDLE, (ca.path / CA_BUNDLE).read_bytes())
    write_file(staging / POLICY, default_policy(config.trust_domain).encode())
    if not (config.directory / CONFIG_FILE).exists():
        write_file(staging / CONFIG_FILE, template(config).encode())
    return ca, responder, ["root", "intermediate", "ocsp-responder", "server", "admin"]


def _create_ca(
    target: Path, config: ServerConfig, passphrase: bytes, hooks: Hooks, clock: Clock
) -> CADirectory:
    """``init_ca`` with the plain-HTTP listener's CRL and OCSP URLs in every leaf.

    The CRL URL names the issuing CA's key id, known only once the intermediate exists:
    ``prepare`` (run by init_ca in its staging directory) rewrites ca.toml with it.
    """
    settings_holder: dict[str, CAConfig] = {}

    def prepare_ca(stage: Path, root: x509.Certificate, intermediate: x509.Certificate) -> None:
        written = CAConfig.from_toml((stage / CA_CONFIG).read_text(), source=str(stage / CA_CONFIG))
        crl = config.crl_url.format(issuer=ca_key_id(intermediate).hex())
        final = dataclasses.replace(written, settings=dataclasses.replace(written.settings, crl_urls=(crl,)))
        write_file(stage / CA_CONFIG, final.to_toml().encode(), overwrite=True)
        settings_holder["config"] = final
        inventory = config.db_url or str(stage / INVENTORY)
        hooks.create_inventory(inventory, root, intermediate, config.extension_oid)

    created = init_ca(
        target,
        name=config.ca_name,
        trust_domain=config.trust_domain,
        passphrase=passphrase,
        key_type=config.key_type,
        dns_zones=_zones(config),
        extension_oid=config.extension_oid,
        clock=clock,
        ocsp_urls=(config.ocsp_url,),
        inventory_url=config.db_url,
        prepare=prepare_ca,
    )
    final = settings_holder["config"]
    # The key is in memory already: rebuild the authority with the final settings rather
    # than decrypting the key again (scrypt, deliberately slow).
    old = created.require_authority()
    authority = Authority(
        certificate=created.intermediate,
        key=old.key,
        settings=final.settings,
        chain=(created.root,),
        clock=clock,
    )
    return dataclasses.replace(created, config=final, authority=authority)


def _zones(config: ServerConfig) -> tuple[str, ...]:
    """The CA's DNS zones: the configured ones (default: the trust domain), plus the server's
    own names, which the intermediate's name constraints must permit."""
    zones = list(config.dns_zones)
    if not zones:
        with contextlib.suppress(ValueError):
            zones.append(normalize_dns(config.trust_domain, allow_wildcard=False))
    for name in config.server_dns:
        name = normalize_dns(name, allow_wildcard=False)
        if not any(name == z or name.endswith("." + z) for z in zones):
            zones.append(name)
    return tuple(zones)


def default_policy(trust_domain: str) -> str:
    """The CA's own access policy written on first start (the API's default, ca_policy.py)."""
    return default_policy_text(trust_domain)


# --- later starts ------------------------------------------------------------------------------


def _reuse(config: ServerConfig, passphrase: bytes, hooks: Hooks, clock: Clock) -> Prepared:
    ca = open_ca(config.ca_dir, passphrase=passphrase, clock=clock)
    td = ca.settings.trust_domain
    if "trust_domain" in config.explicit and config.trust_domain != td:
        raise BootstrapError(
            f"the CA in {config.ca_dir} serves trust domain {td}, not {config.trust_domain}: the trust "
            "domain is chosen on first start (drop --trust-domain / CERTWRIGHT_TRUST_DOMAIN)"
        )
    config = dataclasses.replace(config, trust_domain=td)
    # The embedded SQLite file follows this certwright's schema on start; a shared database
    # is migrated on purpose (`certwright db upgrade`), so replicas never race to migrate it.
    own_file = config.db_url is None and ca.config.inventory_url is None
    store = open_store(_inventory_target(config, ca), upgrade=own_file)
    try:
        issued: list[str] = []
        responder_path = ca.path / "ocsp.pem"
        before = responder_path.stat().st_mtime_ns if responder_path.exists() else None
        responder = hooks.load_responder(ca, store, passphrase)
        if not responder_path.exists() or responder_path.stat().st_mtime_ns != before:
            issued.append("ocsp-responder")
        directory = config.directory
        (directory / TLS_DIR).mkdir(mode=0o700, exist_ok=True)
        issued += _renew_due(config, ca, store, clock)
        bundle = (ca.path / CA_BUNDLE).read_bytes()
        if not (directory / BUNDLE).exists() or (directory / BUNDLE).read_bytes() != bundle:
            write_file(directory / BUNDLE, bundle, overwrite=True)
        if not (directory / POLICY).exists():
            write_file(directory / POLICY, default_policy(config.trust_domain).encode())
    except BaseException:
        store.close()
        raise
    return Prepared(
        config,
        ca,
        store,
        responder,
        first_start=False,
        issued=issued,
        load_responder=_responder_loader(ca, store, passphrase, hooks),
    )


def _responder_loader(
    ca: CADirectory, store: Store, passphrase: bytes, hooks: Hooks
) -> Callable[[], tuple[x509.Certificate, SigningKey]]:
    def load() -> tuple[x509.Certificate, SigningKey]:
        return hooks.load_responder(ca, store, passphrase)

    return load


def renew_due(prepared: Prepared, *, clock: Clock | None = None) -> list[str]:
    """Issue the server's and the admin's certificates again when due (see :func:`prepare`).

    For a running server (``run`` calls it periodically): the TLS context picks the new
    server files up by itself. Returns what was issued.
    """
    return _renew_due(prepared.config, prepared.ca, prepared.store, clock or SystemClock())


def _renew_due(config: ServerConfig, ca: CADirectory, store: Store, clock: Clock) -> list[str]:
    directory, now, issued = config.directory, clock.now(), []
    service = _service(store, ca, clock)
    if _due(directory / SERVER_CERT, directory / SERVER_KEY, ca, now, _server_sans(config)):
        _issue_server(directory, config, ca, service, overwrite=True)
        issued.append("server")
    if _due(directory / ADMIN_CERT, directory / ADMIN_KEY, ca, now, None):
        _issue_admin(directory, config, ca, service, overwrite=True)
        issued.append("admin")
    return issued


def _due(
    cert_path: Path, key_path: Path, ca: CADirectory, now: datetime.datetime, sans: SubjectAltNames | None
) -> bool:
    """Whether to issue again: missing or unreadable files, another CA, names changed,
    or two thirds of the lifetime gone (the rule the responder and the agent follow)."""
    try:
        chain = read_certificates(cert_path)
        key = read_private_key(key_path)
    except CertwrightError:
        return True
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        return True
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return True
    if aki != ca_key_id(ca.intermediate) or leaf.issuer != ca.intermediate.subject:
        return True
    if sans is not None and _sans_of(leaf) != (set(sans.dns), {str(ip) for ip in sans.ips}):
        return True
    return responder_needs_rotation(leaf, now)


def _sans_of(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(san.get_values_for_type(x509.DNSName)), ips


# --- issuing the server's and the operator's certificates ---------------------------------------


def _service(store: Store, ca: CADirectory, clock: Clock) -> CertificateService:
    return CertificateService(
        store=store,
        authority=ca.require_authority(),
        extension_oid=ca.settings.extension_oid,
        clock=clock,
        actor=ACTOR,
    )


def _server_sans(config: ServerConfig) -> SubjectAltNames:
    return SubjectAltNames.create(dns=config.server_dns, ips=config.server_ips)


def _issue_server(
    directory: Path,
    config: ServerConfig,
    ca: CADirectory,
    service: CertificateService,
    *,
    overwrite: bool = False,
) -> None:
    key = generate_key(ca.config.key_type)
    profile = ca.profile("server")
    certificate = service.issue(
        key.public_key(),
        profile=profile,
        identity=SpiffeId.parse(config.server_identity()),
        sans=_server_sans(config),
    )
    _write_pair(directory / SERVER_CERT, directory / SERVER_KEY, certificate, key, ca, overwrite=overwrite)


def _issue_admin(
    directory: Path,
    config: ServerConfig,
    ca: CADirectory,
    service: CertificateService,
    *,
    overwrite: bool = False,
) -> None:
    key = generate_key(ca.config.key_type)
    profile = ca.profile("client")
    certificate = service.issue(
        key.public_key(),
        profile=profile,
        identity=SpiffeId.parse(config.admin_identity()),
        authorization=Authorization.create(roles=[ADMIN_ROLE]),
        # The profile's longest: the operator's credential, renewed on a start after 2/3 of it.
        lifetime=profile.max_lifetime,
    )
    _write_pair(directory / ADMIN_CERT, directory / ADMIN_KEY, certificate, key, ca, overwrite=overwrite)


def _write_pair(
    cert_path: Path,
    key_path: Path,
    certificate: x509.Certificate,
    key: SigningKey,
    ca: CADirectory,
    *,
    overwrite: bool,
) -> None:
    """Key first, then certificate (leaf + intermediates): each file atomic, the key 0600.

    The TLS context reloads when the files change and refuses a key that does not match
    its certificate, keeping the previous pair until both are written.
    """
    chain = (certificate, *ca.require_authority().chain_for_leaf())
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    write_secret(key_path, private_key_pem(key), overwrite=overwrite)
    write_file(cert_path, pem, overwrite=overwrite)


def _inventory_target(config: ServerConfig, ca: CADirectory) -> str:
    """``--db`` wins; else what ca.toml names; else the CA directory's own SQLite file."""
    return config.db_url or ca.inventory
