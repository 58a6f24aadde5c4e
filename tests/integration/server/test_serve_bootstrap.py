"""The data directory in-process (bootstrap.prepare): renewal at two thirds, reuse, refusals."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from certwright.cli.serve_cmds import HOOKS
from certwright.clock import FixedClock
from certwright.files import read_certificates
from certwright.server.bootstrap import BootstrapError, Prepared, prepare
from certwright.server.config import ServerConfig
from certwright.service import CertificateService
from support.cli import PASSPHRASE, tree

PASS = PASSPHRASE.encode()
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _prepare(config: ServerConfig, at: datetime.datetime) -> Prepared:
    return prepare(config, PASS, HOOKS, clock=FixedClock(at))


def _serials(directory: Path) -> dict[str, int]:
    names = ("tls/server.pem", "admin.pem", "ca/ocsp.pem")
    return {name: read_certificates(directory / name)[0].serial_number for name in names}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> ServerConfig:
    directory = tmp_path_factory.mktemp("boot") / "data"
    config = ServerConfig(directory=directory, http_listen=("127.0.0.1", 18080))
    prepared = _prepare(config, NOW)
    prepared.store.close()
    assert prepared.first_start
    return config


def test_a_later_start_before_two_thirds_issues_nothing(made: ServerConfig) -> None:
    before = _serials(made.directory)
    prepared = _prepare(made, NOW + datetime.timedelta(days=1))
    prepared.store.close()
    assert not prepared.first_start and prepared.issued == []
    assert _serials(made.directory) == before


def test_past_two_thirds_the_server_and_admin_certificates_are_renewed(made: ServerConfig) -> None:
    before = _serials(made.directory)
    later = NOW + datetime.timedelta(days=21)  # 30-day certificates: 2/3 is day 20
    prepared = _prepare(made, later)
    try:
        assert set(prepared.issued) == {"server", "admin", "ocsp-responder"}
        after = _serials(made.directory)
        assert all(after[name] != before[name] for name in before)
        # Each new certificate is in the inventory.
        service = CertificateService(store=prepared.store)
        for serial in after.values():
            assert service.get(serial) is not None
        server = read_certificates(made.directory / "tls" / "server.pem")[0]
        assert server.not_valid_before_utc <= later < server.not_valid_after_utc
    finally:
        prepared.store.close()


def test_changed_server_names_reissue_the_server_certificate(made: ServerConfig) -> None:
    changed = ServerConfig(
        directory=made.directory,
        http_listen=made.http_listen,
        server_dns=("localhost",),
        server_ips=("127.0.0.1",),
    )
    prepared = _prepare(changed, NOW + datetime.timedelta(days=22))
    prepared.store.close()
    assert prepared.issued == ["server"]
    server = read_certificates(made.directory / "tls" / "server.pem")[0]
    assert "::1" not in str(server.extensions)
    prepared = _prepare(made, NOW + datetime.timedelta(days=22))  # and back, for the next tests
    prepared.store.close()
    assert prepared.issued == ["server"]


def test_a_deleted_admin_key_is_replaced(made: ServerConfig) -> None:
    (made.directory / "admin.key").unlink()
    prepared = _prepare(made, NOW + datetime.timedelta(days=22))
    prepared.store.close()
    assert prepared.issued == ["admin"]
    assert (made.directory / "admin.key").stat().st_mode & 0o777 == 0o600


def test_an_existing_directory_keeps_the_operators_settings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text('log_level = "warning"\n')
    prepared = _prepare(ServerConfig(directory=data), NOW)
    prepared.store.close()
    assert (data / "server.toml").read_text() == 'log_level = "warning"\n'
    assert {"ca", "tls", "bundle.pem", "admin.pem", "admin.key", "policy.toml"} <= tree(data)
    assert not [p for p in tree(data) if "partial" in p]


def test_files_of_unknown_origin_are_not_adopted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.pem").write_text("someone else's\n")
    with pytest.raises(BootstrapError, match=r"admin\.pem"):
        _prepare(ServerConfig(directory=data), NOW)
    assert tree(data) == {"admin.pem"}
