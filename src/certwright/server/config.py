"""The server's configuration: defaults < ``DIR/server.toml`` < ``CERTWRIGHT_*`` variables < flags.

Every setting has one name, used in all three places: the TOML key ``http_listen``, the
variable ``CERTWRIGHT_HTTP_LISTEN`` and, for the few that have one, the flag
``--http-listen``. The inventory URL is the exception that keeps the name the other
commands already use: ``db_url`` in the file, ``CERTWRIGHT_DB`` in the environment, ``--db``.
Unknown keys in the file are refused (a typo must not silently fall back to a default).

Settings read on first start only (they shape the CA): ``trust_domain``, ``ca_name``,
``key_type``, ``dns_zones``, ``extension_oid``. Later starts take them from ``DIR/ca``.

Example::

    >>> from pathlib import Path
    >>> cfg = load_config(Path("/srv/ca"), env={"CERTWRIGHT_HTTP_LISTEN": "127.0.0.1:9080"},
    ...                   flags={"listen": "127.0.0.1:0"})
    >>> cfg.listen, cfg.http_listen, cfg.public_base_url
    (('127.0.0.1', 0), ('127.0.0.1', 9080), 'http://127.0.0.1:9080')
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certwright.durations import format_duration, parse_duration
from certwright.errors import InvalidInputError
from certwright.x509.authz import DEFAULT_OID
from certwright.x509.keys import KeyType

CONFIG_FILE = "server.toml"
ENV_PREFIX = "CERTWRIGHT_"
DB_ENV = "CERTWRIGHT_DB"  # the name the inventory commands already read

# Who is who on the CA's own listener (paths under the trust domain, and the admin role).
SERVER_IDENTITY_PATH = "certwright/server"
ADMIN_IDENTITY_PATH = "certwright/admin"
ADMIN_ROLE = "certwright.admin"
POLICY_SERVICE = "certwright-ca"  # the service name the CA's own access policy speaks of
MAX_WORKERS = 64
MAX_AUTO_WORKERS = 8  # auto: one per CPU, up to this many (SQLite has one writer anyway)

Address = tuple[str, int]


class ConfigError(InvalidInputError):
    """A setting is malformed, unknown, or out of range; the message names where it came from."""


def parse_address(text: str, *, source: str = "") -> Address:
    """``HOST:PORT`` (``[::1]:8443`` for IPv6) to ``(host, port)``; port 0 picks a free port.

    Example::

        >>> parse_address("[::1]:8443")
        ('::1', 8443)
    """
    where = f"{source}: " if source else ""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{where}{text!r} is not HOST:PORT (e.g. 127.0.0.1:8443, [::1]:8443)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{where}write an IPv6 address in brackets, e.g. [::1]:8443")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{where}port {port} is out of range (0-65535)")
    return host, port


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(scheme: str, address: Address) -> str:
    host, port = address
    if _unspecified(host):
        # Relying parties elsewhere cannot use 0.0.0.0: name the machine (set public_url to choose).
        host = socket.getfqdn()
    return f"{scheme}://{format_address((host, port))}"


def _unspecified(host: str) -> bool:
    try:
        return host == "" or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``certwright serve`` needs to know; build it with :func:`load_config`.

    ``public_base_url`` is the plain-HTTP listener as relying parties reach it (CRL
    distribution points and the OCSP URL in every certificate point there); left empty it
    is ``http://`` + ``http_listen``.
    """

    directory: Path
    listen: Address = ("127.0.0.1", 8443)
    http_listen: Address = ("127.0.0.1", 8080)
    db_url: str | None = None
    trust_domain: str = "example.org"
    max_body: int = 65536
    public_base_url: str = ""
    ca_name: str = "certwright"
    key_type: KeyType = KeyType.EC_P256
    dns_zones: tuple[str, ...] = ()
    extension_oid: str = DEFAULT_OID
    server_dns: tuple[str, ...] = ("localhost",)
    server_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    ocsp_validity: datetime.timedelta = datetime.timedelta(hours=1)
    ocsp_refresh_before: datetime.timedelta = datetime.timedelta(minutes=15)
    crl_validity: datetime.timedelta = datetime.timedelta(days=1)
    token_ttl: datetime.timedelta = datetime.timedelta(minutes=15)
    max_token_ttl: datetime.timedelta = datetime.timedelta(days=7)
    # Tokens never redeemed are deleted this long after they expired (hourly, by the server).
    token_retention: datetime.timedelta = datetime.timedelta(days=7)
    renew_check: datetime.timedelta = datetime.timedelta(hours=1)  # how often a running server looks
    shutdown_timeout: float = 30.0
    workers: int = 0  # processes serving both listeners; 0: one per CPU this process may use
    request_timeout: float = 10.0  # seconds for a request's headers, and again for its body
    max_connections: int = 1000  # per worker process, both listeners each; past it: 503
    access_log: bool = True
    log_level: str = "info"
    public_url_explicit: bool = field(default=False, compare=False)
    explicit: frozenset[str] = field(default=frozenset(), compare=False)  # keys set by file/env/flags

    def __post_init__(self) -> None:
        if self.max_body < 1024:
            raise ConfigError(f"max_body: {self.max_body} is too small (at least 1024 bytes)")
        if not datetime.timedelta(0) < self.ocsp_refresh_before < self.ocsp_validity:
            raise ConfigError("ocsp_refresh_before must be positive and shorter than ocsp_validity")
        if self.shutdown_timeout < 0:
            raise ConfigError("shutdown_timeout must not be negative")
        if self.token_retention < datetime.timedelta(0):
            raise ConfigError("token_retention must not be negative")
        if not 0 < self.request_timeout <= 3600:
            raise ConfigError("request_timeout must be more than 0 and at most 3600 seconds")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be 1 to {MAX_WORKERS}, or auto (one per CPU)")
        if self.public_base_url:
            if not self.public_base_url.startswith(("http://", "https://")):
                raise ConfigError(f"public_url: {self.public_base_url!r} must start with http://")
            object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
            object.__setattr__(self, "public_url_explicit", True)
        else:
            object.__setattr__(self, "public_base_url", _url("http", self.http_listen))

    # Paths of the data directory (docs/server.md, "Files").
    @property
    def ca_dir(self) -> Path:
        return self.directory / "ca"

    @property
    def api_url(self) -> str:
        """The HTTPS listener's URL (the API)."""
        return _url("https", self.listen)

    @property
    def crl_url(self) -> str:
        """The CRL URL template; ``{issuer}`` is the issuing CA's key id in hex."""
        return self.public_base_url + "/crl/{issuer}.crl"

    @property
    def ocsp_url(self) -> str:
        return self.public_base_url + "/ocsp"

    @property
    def worker_count(self) -> int:
        """How many worker processes to run: ``workers``, or one per usable CPU (``auto``)."""
        if self.workers:
            return self.workers
        return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))

    def server_identity(self) -> str:
        return f"spiffe://{self.trust_domain}/{SERVER_IDENTITY_PATH}"

    def admin_identity(self) -> str:
        return f"spiffe://{self.trust_domain}/{ADMIN_IDENTITY_PATH}"

    def with_bound(self, listen: Address, http_listen: Address) -> ServerConfig:
        """This configuration with the addresses actually bound (port 0 resolved).

        A derived ``public_base_url`` follows the real HTTP port; an explicit one stays.
        """
        url = self.public_base_url if self.public_url_explicit else ""
        return dataclasses.replace(self, listen=listen, http_listen=http_listen, public_base_url=url)


# name -> (parser of a text value (env, flags), parser of a TOML value)
def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    return float(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # environment and flags: comma-separated
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _workers(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    count = _int(value)
    if count < 1:
        raise ValueError(f"{count} worker processes: give 1 or more, or auto")
    return count


def _duration(value: Any) -> datetime.timedelta:
    if not isinstance(value, str):
        raise ValueError('expected a duration such as "15m" or "1d"')
    return parse_duration(value)


_SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    # key: (ServerConfig field, parser)
    "listen": ("listen", lambda v: parse_address(_text(v))),
    "http_listen": ("http_listen", lambda v: parse_address(_text(v))),
    "db_url": ("db_url", _text),
    "trust_domain": ("trust_domain", _text),
    "max_body": ("max_body", _int),
    "public_url": ("public_base_url", _text),
    "ca_name": ("ca_name", _text),
    "key_type": ("key_type", lambda v: KeyType.parse(_text(v))),
    "dns_zones": ("dns_zones", _strings),
    "extension_oid": ("extension_oid", _text),
    "server_dns": ("server_dns", _strings),
    "server_ips": ("server_ips", _strings),
    "ocsp_validity": ("ocsp_validity", _duration),
    "ocsp_refresh_before": ("ocsp_refresh_before", _duration),
    "crl_validity": ("crl_validity", _duration),
    "token_ttl": ("token_ttl", _duration),
    "max_token_ttl": ("max_token_ttl", _duration),
    "token_retention": ("token_retention", _duration),
    "renew_check": ("renew_check", _duration),
    "shutdown_timeout": ("shutdown_timeout", _float),
    "workers": ("workers", lambda v: _workers(v)),
    "request_timeout": ("request_timeout", _float),
    "max_connections": ("max_connections", _int),
    "access_log": ("access_log", _bool),
    "log_level": ("log_level", _text),
}


def env_name(key: str) -> str:
    """The environment variable of a setting (``CERTWRIGHT_DB`` for ``db_url``)."""
    return DB_ENV if key == "db_url" else ENV_PREFIX + key.upper()


def load_config(
    directory: Path,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Merge defaults, the TOML file, the environment and ``flags`` (highest wins).

    ``config_file`` defaults to ``directory/server.toml`` (optional there; a file named
    explicitly must exist). ``flags`` maps setting keys to values, None meaning "not given".
    Raises :class:`ConfigError` naming the source of a bad value.
    """
    values: dict[str, Any] = {}
    path = config_file if config_file is not None else directory / CONFIG_FILE
    if config_file is not None or path.is_file():
        for key, raw in _read_toml(path).items():
            values[key] = _parse(key, raw, source=f"{path}: {key}")
    for key in _SETTINGS:
        name = env_name(key)
        if env is not None and env.get(name):
            values[key] = _parse(key, env[name], source=name)
    for key, raw in (flags or {}).items():
        if raw is not None:
            values[key] = _parse(key, raw, source=f"--{key.replace('_', '-')}")
    fields = {_SETTINGS[key][0]: value for key, value in values.items()}
    try:
        return ServerConfig(directory=directory, explicit=frozenset(values), **fields)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid server configuration: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_SETTINGS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}; known: {', '.join(_SETTINGS)}")
    return data


def _parse(key: str, raw: Any, *, source: str) -> Any:
    if key not in _SETTINGS:
        raise ConfigError(f"{source}: unknown setting")
    try:
        return _SETTINGS[key][1](raw)
    except (InvalidInputError, ValueError, TypeError) as exc:  # ConfigError included
        raise ConfigError(f"{source}: {exc}") from None


def template(config: ServerConfig) -> str:
    """The commented ``server.toml`` written on first start: every setting, at its value."""
    c = config
    lines = [
        "# certwright serve settings. Precedence: command-line flags > CERTWRIGHT_* environment",
        "# variables (CERTWRIGHT_<KEY>, CERTWRIGHT_DB for db_url) > this file > built-in defaults.",
        "# Uncomment to change. See docs/server.md.",
        "",
        f"# listen = {json.dumps(format_address(c.listen))}            # HTTPS API (mTLS)",
        f"# http_listen = {json.dumps(format_address(c.http_listen))}       # CRL, OCSP, health, metrics",
        f"# public_url = {json.dumps(c.public_base_url)}   # how relying parties reach http_listen",
        '# db_url = "postgresql+psycopg://certwright@db.internal/certwright"  # default: ca/inventory.db',
        f"# max_body = {c.max_body}",
        f"# ocsp_validity = {json.dumps(format_duration(c.ocsp_validity))}",
        f"# ocsp_refresh_before = {json.dumps(format_duration(c.ocsp_refresh_before))}",
        f"# crl_validity = {json.dumps(format_duration(c.crl_validity))}",
        f"# token_ttl = {json.dumps(format_duration(c.token_ttl))}",
        f"# max_token_ttl = {json.dumps(format_duration(c.max_token_ttl))}",
        f"# token_retention = {json.dumps(format_duration(c.token_retention))}  # unused, past expiry",
        f"# server_dns = {json.dumps(list(c.server_dns))}     # SANs of the server's own TLS certificate",
        f"# server_ips = {json.dumps(list(c.server_ips))}",
        f"# renew_check = {json.dumps(format_duration(c.renew_check))}  # own certificates checked",
        f"# shutdown_timeout = {c.shutdown_timeout}",
        f"# workers = {c.workers or json.dumps('auto')}       # processes; auto: one per CPU",
        f"# request_timeout = {c.request_timeout}   # seconds for a request's headers, then its body",
        f"# max_connections = {c.max_connections}   # per worker and listener; beyond: 503",
        f"# access_log = {'true' if c.access_log else 'false'}",
        f"# log_level = {json.dumps(c.log_level)}",
        "",
        "# Read on first start only (they shape the CA in ca/):",
        f"# trust_domain = {json.dumps(c.trust_domain)}",
        f"# ca_name = {json.dumps(c.ca_name)}",
        f"# key_type = {json.dumps(c.key_type.value)}",
        f"# dns_zones = {json.dumps(list(c.dns_zones))}",
        f"# extension_oid = {json.dumps(c.extension_oid)}",
    ]
    return "\n".join(lines) + "\n"
