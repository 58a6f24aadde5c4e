"""Context builders without sockets: settings, startup errors, reloading (sockets: integration)."""

from __future__ import annotations

import logging
import os
import re
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certwright.errors import InvalidInputError
from certwright.mtls.context import ClientTLS, TLSFiles, TLSFilesError, client_context, server_context
from support.pki import TestPKI, Workload

WEB = "spiffe://example.org/web"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


@pytest.fixture
def files(pki: TestPKI, tmp_path: Path) -> TLSFiles:
    written = pki.leaf(WEB).write(tmp_path / "web", pki.bundle_pem)
    return TLSFiles(written.cert, written.key, written.bundle)


def replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rotate(files: TLSFiles, workload: Workload) -> None:
    replace(files.key, workload.key_pem())
    replace(files.cert, b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (workload.certificate, *workload.chain)
    ))


def test_server_contexts_require_client_certificates_and_tls12(files: TLSFiles) -> None:
    ctx = server_context(files)
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.sni_callback is not None  # the reload hook
    assert server_context(files, require_client_cert=False).verify_mode == ssl.CERT_OPTIONAL
    assert server_context(files, reload=False).sni_callback is None


def test_client_contexts_verify_the_server_but_not_its_hostname_by_default(files: TLSFiles) -> None:
    ctx = client_context(files)
    assert ctx.protocol == ssl.PROTOCOL_TLS_CLIENT
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.check_hostname
    assert client_context(files, check_hostname=True).check_hostname


def test_an_encrypted_key_is_opened_with_its_passphrase(pki: TestPKI, files: TLSFiles) -> None:
    key = pki.leaf(WEB)
    rotate(files, key)
    files.key.write_bytes(key.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    ))
    server_context(TLSFiles(files.cert, files.key, files.bundle, key_passphrase=b"s3cret"))
    with pytest.raises(TLSFilesError, match=re.escape(str(files.key))):
        server_context(TLSFiles(files.cert, files.key, files.bundle, key_passphrase=b"wrong"))


@pytest.mark.parametrize("which", ["cert", "key", "bundle"])
def test_a_missing_file_is_named(files: TLSFiles, which: str) -> None:
    path: Path = getattr(files, which)
    path.unlink()
    with pytest.raises(TLSFilesError, match=re.escape(str(path))) as caught:
        server_context(files)
    assert isinstance(caught.value, InvalidInputError)
    with pytest.raises(TLSFilesError, match=re.escape(str(path))):
        client_context(files)


@pytest.mark.parametrize("which", ["cert", "key", "bundle"])
def test_a_corrupt_file_is_named(files: TLSFiles, which: str) -> None:
    path: Path = getattr(files, which)
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    with pytest.raises(TLSFilesError, match=re.escape(str(path))):
        server_context(files)


def test_a_key_of_another_certificate_is_refused(pki: TestPKI, files: TLSFiles) -> None:
    replace(files.key, pki.leaf(WEB).key_pem())
    with pytest.raises(TLSFilesError, match="does not match the certificate"):
        server_context(files)


class FakeConnection:
    """What the SNI callback receives: something with a settable ``context``."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context


def test_the_server_hook_moves_new_handshakes_to_a_reloaded_context(
    pki: TestPKI, files: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    base = server_context(files, check_interval=0)
    assert base.sni_callback is not None
    conn = FakeConnection(base)
    base.sni_callback(conn, None, base)  # type: ignore[arg-type]
    assert conn.context is base  # nothing changed: the handshake stays put
    rotate(files, pki.leaf(WEB))
    base.sni_callback(conn, None, base)  # type: ignore[arg-type]
    fresh = conn.context
    assert fresh is not base and fresh.verify_mode == ssl.CERT_REQUIRED
    # A bad rotation: the next handshake still gets the last good context, and a warning.
    caplog.set_level(logging.WARNING, logger="certwright.mtls")
    replace(files.key, pki.leaf(WEB).key_pem())
    conn = FakeConnection(base)
    base.sni_callback(conn, None, base)  # type: ignore[arg-type]
    assert conn.context is fresh
    assert any("keeping the previous ones" in r.getMessage() for r in caplog.records)


def test_the_client_holder_rebuilds_only_on_change(pki: TestPKI, files: TLSFiles) -> None:
    tls = ClientTLS(files, check_interval=0)
    first = tls.context()
    assert tls.context() is first
    rotate(files, pki.leaf(WEB))
    second = tls.context()
    assert second is not first
    files.cert.write_bytes(b"")  # a truncated file: keep the last good context
    assert tls.context() is second


def test_the_client_holder_looks_at_the_files_rarely(pki: TestPKI, files: TLSFiles) -> None:
    tls = ClientTLS(files, check_interval=3600)
    first = tls.context()
    rotate(files, pki.leaf(WEB))
    assert tls.context() is first
