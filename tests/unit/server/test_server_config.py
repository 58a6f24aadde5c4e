"""ServerConfig: defaults < server.toml < CERTWRIGHT_* < flags, and refusals that name their source."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from certwright.server.config import (
    ConfigError,
    ServerConfig,
    env_name,
    load_config,
    parse_address,
    template,
)
from certwright.x509.keys import KeyType


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={})
    assert cfg.listen == ("127.0.0.1", 8443)
    assert cfg.http_listen == ("127.0.0.1", 8080)
    assert cfg.public_base_url == "http://127.0.0.1:8080"
    assert cfg.db_url is None and cfg.trust_domain == "example.org" and cfg.max_body == 65536
    assert cfg.crl_url == "http://127.0.0.1:8080/crl/{issuer}.crl"
    assert cfg.ocsp_url == "http://127.0.0.1:8080/ocsp"
    assert cfg.server_identity() == "spiffe://example.org/certwright/server"
    assert cfg.explicit == frozenset()


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    (tmp_path / "server.toml").write_text(
        'listen = "127.0.0.1:1001"\nhttp_listen = "127.0.0.1:1002"\n'
        'max_body = 2048\ntrust_domain = "file.example"\n'
    )
    env = {
        "CERTWRIGHT_HTTP_LISTEN": "127.0.0.1:2002",
        "CERTWRIGHT_MAX_BODY": "4096",
        "CERTWRIGHT_DB": "sqlite:///x.db",
    }
    cfg = load_config(tmp_path, env=env, flags={"max_body": 8192, "listen": None})
    assert cfg.listen == ("127.0.0.1", 1001)  # file (the flag was not given)
    assert cfg.http_listen == ("127.0.0.1", 2002)  # env over file
    assert cfg.max_body == 8192  # flag over env and file
    assert cfg.db_url == "sqlite:///x.db"
    assert cfg.trust_domain == "file.example"
    assert cfg.public_base_url == "http://127.0.0.1:2002"
    assert {"listen", "http_listen", "max_body", "db_url", "trust_domain"} <= cfg.explicit


def test_an_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, config_file=tmp_path / "missing.toml", env={})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('listne = "127.0.0.1:1"\n', "unknown setting 'listne'"),
        ('listen = "localhost"\n', "listen: 'localhost' is not HOST:PORT"),
        ("max_body = 10\n", "max_body"),
        ('ocsp_validity = "soon"\n', "ocsp_validity"),
        ("listen = [", "not valid TOML"),
        ('token_retention = "-1h"\n', "token_retention"),
    ],
)
def test_bad_files_are_refused_with_the_setting_named(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "server.toml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path, env={})


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CERTWRIGHT_LISTEN"):
        load_config(tmp_path, env={"CERTWRIGHT_LISTEN": "nonsense"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8443", ("127.0.0.1", 8443)), ("[::1]:0", ("::1", 0)), ("0.0.0.0:80", ("0.0.0.0", 80))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["::1:8443", "host", ":80", "h:99999", "h:-1"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(text)


def test_with_bound_follows_the_real_port_unless_the_url_was_set(tmp_path: Path) -> None:
    derived = ServerConfig(directory=tmp_path, http_listen=("127.0.0.1", 0))
    assert derived.with_bound(("127.0.0.1", 1), ("127.0.0.1", 4321)).public_base_url == "http://127.0.0.1:4321"
    fixed = ServerConfig(directory=tmp_path, public_base_url="http://ca.internal:8080/")
    assert fixed.public_base_url == "http://ca.internal:8080"
    assert fixed.with_bound(("127.0.0.1", 1), ("127.0.0.1", 4321)).public_base_url == "http://ca.internal:8080"


def test_typed_values(tmp_path: Path) -> None:
    cfg = load_config(
        tmp_path,
        env={
            "CERTWRIGHT_KEY_TYPE": "ed25519",
            "CERTWRIGHT_DNS_ZONES": "a.example, b.example",
            "CERTWRIGHT_ACCESS_LOG": "off",
            "CERTWRIGHT_CRL_VALIDITY": "12h",
            "CERTWRIGHT_TOKEN_RETENTION": "30d",
        },
    )
    assert cfg.token_retention == datetime.timedelta(days=30)
    assert cfg.key_type is KeyType.ED25519
    assert cfg.dns_zones == ("a.example", "b.example")
    assert cfg.access_log is False
    assert cfg.crl_validity == datetime.timedelta(hours=12)


def test_env_names() -> None:
    assert env_name("db_url") == "CERTWRIGHT_DB"
    assert env_name("http_listen") == "CERTWRIGHT_HTTP_LISTEN"


def test_the_template_is_valid_toml_with_every_line_commented(tmp_path: Path) -> None:
    import tomllib

    text = template(ServerConfig(directory=tmp_path))
    assert tomllib.loads(text) == {}
    # Uncommenting every setting gives a file load_config accepts.
    uncommented = "\n".join(
        line[2:].split("  #")[0] for line in text.splitlines() if line.startswith("# ") and " = " in line
    )
    (tmp_path / "server.toml").write_text(uncommented)
    cfg = load_config(tmp_path, env={})
    assert cfg.listen == ("127.0.0.1", 8443)
