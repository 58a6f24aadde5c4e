"""``certwright serve`` as operators and scripts use it: the real program, as a subprocess.

First start (files, modes, URLs), second start (reuse), token + enroll with the CLI, curl
against the API with the bundle, SIGTERM, and the refusals that must create nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certwright.access import Policy, Request, Subject
from certwright.files import read_certificates
from certwright.verify.identity import authorization_of, identity_of
from support.cli import PASSPHRASE_ENV, mode, run_exe, tree
from support.env import require_tool
from support.postgres import postgres_database
from support.serve_process import ServeProcess

TD = "example.org"
OWNED = (
    "admin.key", "admin.pem", "bundle.pem", "policy.toml", "server.toml", "tls/server.key", "tls/server.pem",
)  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data directory made by a first start (stopped again)."""
    directory = tmp_path_factory.mktemp("serve") / "data"
    server = ServeProcess(directory)
    try:
        server.start()
        assert "certwright: created" in "".join(server.stdout), server.output
    finally:
        code = server.stop()
    assert code == 0, server.output
    yield directory


@pytest.fixture(scope="module")
def running(data_dir: Path) -> Iterator[ServeProcess]:
    """A server running on ``data_dir`` for the whole module (a later start)."""
    with ServeProcess(data_dir) as server:
        yield server


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return set(san.get_values_for_type(x509.DNSName)), ips


def token_args(server: ServeProcess, *extra: str) -> list[str | Path]:
    d = server.directory
    return [
        "token", "create", "--server", server.api_url, "--bundle", d / "bundle.pem",
        "--admin-cert", d / "admin.pem", "--admin-key", d / "admin.key", *extra,
    ]  # fmt: skip


# --- first and second start ----------------------------------------------------------------------


def test_first_start_writes_the_files_with_their_modes(data_dir: Path) -> None:
    for name in OWNED:
        assert (data_dir / name).is_file(), name
    for secret in ("admin.key", "tls/server.key", "ca/root.key", "ca/intermediate.key", "ca/ocsp.key"):
        assert mode(data_dir / secret) == 0o600, secret
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert not [p for p in tree(data_dir.parent) if ".partial" in p or ".tmp" in p]

    root = read_certificates(data_dir / "ca" / "root.pem")[0]
    intermediate = read_certificates(data_dir / "ca" / "intermediate.pem")[0]
    assert read_certificates(data_dir / "bundle.pem") == [root]

    admin = read_certificates(data_dir / "admin.pem")
    assert admin[1:] == [intermediate]  # presented with its chain
    assert str(identity_of(admin[0])) == f"spiffe://{TD}/certwright/admin"
    assert authorization_of(admin[0]).roles == ("certwright.admin",)

    server = read_certificates(data_dir / "tls" / "server.pem")
    assert server[1:] == [intermediate]
    assert str(identity_of(server[0])) == f"spiffe://{TD}/certwright/server"
    assert _sans(server[0]) == ({"localhost"}, {"127.0.0.1", "::1"})

    policy = Policy.load(data_dir / "policy.toml")
    admin_subject = Subject(f"spiffe://{TD}/certwright/admin", ("certwright.admin",))
    assert policy.decide(admin_subject, Request("certwright-ca", "POST", "/v1/tokens")).allowed
    workload = Subject(f"spiffe://{TD}/web")
    assert not policy.decide(workload, Request("certwright-ca", "POST", "/v1/tokens")).allowed
    # The template is all comments: nothing it says overrides flags given later.
    assert tomllib.loads((data_dir / "server.toml").read_text()) == {}


def test_first_start_points_leaves_at_the_plain_http_listener(data_dir: Path) -> None:
    ca = tomllib.loads((data_dir / "ca" / "ca.toml").read_text())
    intermediate = read_certificates(data_dir / "ca" / "intermediate.pem")[0]
    ski = intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    (crl,) = ca["crl_urls"]
    (ocsp,) = ca["ocsp_urls"]
    assert crl.startswith("http://127.0.0.1:") and crl.endswith(f"/crl/{ski.hex()}.crl")
    assert ocsp.startswith("http://127.0.0.1:") and ocsp.endswith("/ocsp")
    assert ":0/" not in crl  # port 0 was resolved to the bound port before the CA was made


def test_a_later_start_reuses_everything(data_dir: Path, running: ServeProcess) -> None:
    assert "certwright: using" in "".join(running.stdout), running.output
    assert "created" not in "".join(running.stdout)
    before = {name: (data_dir / name).read_bytes() for name in OWNED}
    with ServeProcess(data_dir) as again:
        assert "issued anew" not in "".join(again.stdout), again.output
    assert again.returncode == 0
    assert {name: (data_dir / name).read_bytes() for name in OWNED} == before


# --- token and enrol, end to end with the CLI ------------------------------------------------------


def test_token_create_and_enroll(running: ServeProcess, tmp_path: Path) -> None:
    d = running.directory
    made = run_exe(*token_args(running, "--identity", f"spiffe://{TD}/web", "--dns", f"web.{TD}"))
    assert made.code == 0, made
    token = made.stdout.strip()
    assert token and "\n" not in token

    out = tmp_path / "web"
    enrolled = run_exe(
        "enroll", "--server", running.api_url, "--bundle", d / "bundle.pem", "--token", token,
        "--dns", f"web.{TD}", "--out", out,
    )  # fmt: skip
    assert enrolled.code == 0, enrolled
    assert mode(out / "key.pem") == 0o600
    leaf = read_certificates(out / "cert.pem")
    chain = read_certificates(out / "chain.pem")
    assert len(leaf) == 1 and chain[0] == leaf[0] and len(chain) == 2
    assert str(identity_of(leaf[0])) == f"spiffe://{TD}/web"
    assert _sans(leaf[0])[0] == {f"web.{TD}"}
    assert read_certificates(out / "bundle.pem") == read_certificates(d / "bundle.pem")
    verified = run_exe("verify", "--bundle", out / "bundle.pem", "--dns", f"web.{TD}", out / "chain.pem")
    assert verified.code == 0, verified

    # The token was spent: a second enrolment is refused, and writes nothing.
    again = run_exe(
        "enroll", "--server", running.api_url, "--bundle", d / "bundle.pem", "--token", token,
        "--out", tmp_path / "again",
    )  # fmt: skip
    assert again.code == 1, again
    assert "token" in again.stderr
    assert not (tmp_path / "again").exists()


def test_token_lifetime_caps_the_enrolled_certificate(running: ServeProcess, tmp_path: Path) -> None:
    d = running.directory
    made = run_exe(*token_args(running, "--identity", f"spiffe://{TD}/short", "--lifetime", "10m"))
    assert made.code == 0, made
    out = tmp_path / "short"
    enrolled = run_exe(
        "enroll", "--server", running.api_url, "--bundle", d / "bundle.pem", "--token", made.stdout.strip(),
        "--out", out,
    )  # fmt: skip
    assert enrolled.code == 0, enrolled
    leaf = read_certificates(out / "cert.pem")[0]
    # 10 minutes from now, plus the CA's 60 s back-dating of notBefore.
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(minutes=11)
    bad = run_exe(*token_args(running, "--identity", f"spiffe://{TD}/short", "--lifetime", "soon"))
    assert bad.code == 1, bad


def test_token_create_refuses_a_server_with_another_identity(running: ServeProcess) -> None:
    # Negative control of the identity check: the real server, but not the identity expected.
    refused = run_exe(
        *token_args(running, "--identity", f"spiffe://{TD}/x", "--server-identity", f"spiffe://{TD}/not-the-ca")
    )
    assert refused.code == 1, refused
    assert "not-the-ca" in refused.stderr


def test_token_create_needs_the_admin_role(running: ServeProcess, tmp_path: Path) -> None:
    d = running.directory
    made = run_exe(*token_args(running, "--identity", f"spiffe://{TD}/plain"))
    out = tmp_path / "plain"
    assert run_exe(
        "enroll", "--server", running.api_url, "--bundle", d / "bundle.pem", "--token", made.stdout.strip(),
        "--out", out,
    ).code == 0  # fmt: skip
    refused = run_exe(
        "token", "create", "--server", running.api_url, "--bundle", d / "bundle.pem",
        "--admin-cert", out / "chain.pem", "--admin-key", out / "key.pem", "--identity", f"spiffe://{TD}/evil",
    )  # fmt: skip
    assert refused.code == 1, refused
    assert "403" in refused.stderr


def test_enroll_refuses_a_server_it_cannot_verify_and_keeps_the_token(
    running: ServeProcess, other_ca_dir: Path, tmp_path: Path
) -> None:
    d = running.directory
    token = run_exe(*token_args(running, "--identity", f"spiffe://{TD}/db")).stdout.strip()
    out = tmp_path / "db"
    wrong = run_exe(
        "enroll", "--server", running.api_url, "--bundle", other_ca_dir / "bundle.pem", "--token", token,
        "--out", out,
    )  # fmt: skip
    assert wrong.code == 1, wrong
    assert "cannot reach" in wrong.stderr and not out.exists()
    # Nothing was sent: the token still works with the right bundle.
    right = run_exe(
        "enroll", "--server", running.api_url, "--bundle", d / "bundle.pem", "--token", token, "--out", out
    )
    assert right.code == 0, right


def test_curl_gets_the_bundle(running: ServeProcess) -> None:
    curl = require_tool("curl")
    bundle = running.directory / "bundle.pem"
    got = subprocess.run(
        [curl, "-sS", "--fail", "--cacert", str(bundle), running.api_url + "/v1/bundle"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert read_certificates_text(got.stdout) == read_certificates(bundle)
    # Negative control: without the bundle, curl does not trust the server.
    untrusted = subprocess.run(
        [curl, "-sS", "--fail", running.api_url + "/v1/bundle"],
        capture_output=True, text=True, timeout=30, check=False, env={"CURL_CA_BUNDLE": "/dev/null"},
    )  # fmt: skip
    assert untrusted.returncode != 0


def read_certificates_text(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def test_plain_http_listener_serves_health(running: ServeProcess) -> None:
    curl = require_tool("curl")
    got = subprocess.run(
        [curl, "-sS", "--fail", running.http_url + "/healthz"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert '"ok"' in got.stdout


# --- stopping ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_with_exit_0(data_dir: Path, signum: int) -> None:
    server = ServeProcess(data_dir)
    try:
        server.start()
        server.signal(signum)
        assert server.wait() == 0, server.output
    finally:
        server.stop()
    assert "certwright: stopped" in "".join(server.stdout), server.output
    # Both ports are free again.
    for url in (server.api_url, server.http_url):
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


# --- refusals that create nothing ------------------------------------------------------------------


def test_missing_passphrase_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", passphrase=None)
    assert server.run_to_exit() == 1, server.output
    assert PASSPHRASE_ENV in "".join(server.stderr)
    assert "--passphrase-file" in "".join(server.stderr)
    assert list(tmp_path.iterdir()) == []


def test_wrong_passphrase_on_a_later_start_is_refused(data_dir: Path) -> None:
    before = sorted(tree(data_dir))
    server = ServeProcess(data_dir, passphrase="not the passphrase at all")
    assert server.run_to_exit() == 1, server.output
    assert "Traceback" not in "".join(server.stderr)
    assert sorted(tree(data_dir)) == before


def test_a_busy_port_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ServeProcess(tmp_path / "data", http_listen=f"127.0.0.1:{port}")
        assert server.run_to_exit() == 1, server.output
    assert "cannot listen on" in "".join(server.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_first_start_leaves_nothing_half_made(tmp_path: Path) -> None:
    # The operator's settings file is there; the database cannot be reached.
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text('log_level = "warning"\n')
    server = ServeProcess(data, "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert server.run_to_exit() == 1, server.output
    assert "Traceback" not in "".join(server.stderr)
    assert tree(data) == {"server.toml"}
    fresh = ServeProcess(tmp_path / "fresh", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert fresh.run_to_exit() == 1, fresh.output
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_a_trust_domain_that_differs_from_the_ca_is_refused(data_dir: Path) -> None:
    server = ServeProcess(data_dir, "--trust-domain", "other.example")
    assert server.run_to_exit() == 1, server.output
    assert "trust domain" in "".join(server.stderr)


# --- replicas on PostgreSQL ------------------------------------------------------------------------


def test_a_second_replica_shares_the_database_and_a_copy_of_the_ca(tmp_path: Path) -> None:
    with postgres_database("certwright_serve") as url:
        first_dir, second_dir = tmp_path / "one", tmp_path / "two"
        with ServeProcess(first_dir, "--db", url) as first:
            assert not (first_dir / "ca" / "inventory.db").exists()
            second_dir.mkdir()
            shutil.copytree(first_dir / "ca", second_dir / "ca")  # what docs/server.md says to copy
            with ServeProcess(second_dir, "--db", url) as second:
                assert "certwright: using" in "".join(second.stdout), second.output
                shared_bundle = read_certificates(first_dir / "bundle.pem")
                assert read_certificates(second_dir / "bundle.pem") == shared_bundle
                # A token made on one replica is redeemed on the other: tokens live in the database.
                made = run_exe(*token_args(first, "--identity", f"spiffe://{TD}/shared"))
                assert made.code == 0, made
                out = tmp_path / "shared"
                enrolled = run_exe(
                    "enroll", "--server", second.api_url, "--bundle", second_dir / "bundle.pem",
                    "--token", made.stdout.strip(), "--out", out,
                )  # fmt: skip
                assert enrolled.code == 0, enrolled
                # ... and only once, whichever replica is asked.
                again = run_exe(
                    "enroll", "--server", first.api_url, "--bundle", first_dir / "bundle.pem",
                    "--token", made.stdout.strip(), "--out", tmp_path / "again",
                )  # fmt: skip
                assert again.code == 1, again
            assert second.returncode == 0, second.output
        assert first.returncode == 0, first.output


def test_a_running_server_replaces_its_own_certificates_when_due(tmp_path: Path) -> None:
    # "Due" includes "gone": removing the files is how a test makes them due without waiting 20 days.
    data = tmp_path / "data"
    with ServeProcess(data, env={"CERTWRIGHT_RENEW_CHECK": "1s"}) as server:
        host, port = server.api_url.removeprefix("https://").rsplit(":", 1)
        before = _served_serial(host, int(port), data / "bundle.pem")
        old_admin = (data / "admin.pem").read_bytes()
        (data / "tls" / "server.key").unlink()
        (data / "admin.key").unlink()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            served = _served_serial(host, int(port), data / "bundle.pem")
            if (data / "admin.key").exists() and served != before:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the certificates were not replaced\n{server.output}")
        assert mode(data / "admin.key") == 0o600 and mode(data / "tls" / "server.key") == 0o600
        assert (data / "admin.pem").read_bytes() != old_admin
        # The new admin credentials work at once.
        made = run_exe(*token_args(server, "--identity", f"spiffe://{TD}/after"))
        assert made.code == 0, made
    assert server.returncode == 0, server.output


def _served_serial(host: str, port: int, bundle: Path) -> int:
    context = ssl.create_default_context(cafile=str(bundle))
    with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(
        raw, server_hostname=host
    ) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# --- enrol: never send a token to a server that is not the CA -----------------------------------


class _Recorder:
    """A plain TCP listener on 127.0.0.1 that records whatever a client sends it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(30)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    self.received += chunk

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def test_attack_enroll_refuses_plain_http_and_sends_nothing(running: ServeProcess, tmp_path: Path) -> None:
    token = run_exe(*token_args(running, "--identity", f"spiffe://{TD}/clear")).stdout.strip()
    recorder = _Recorder()
    try:
        sent = run_exe(
            "enroll", "--server", f"http://127.0.0.1:{recorder.port}", "--bundle",
            running.directory / "bundle.pem", "--token", token, "--out", tmp_path / "clear",
            "--server-identity", f"spiffe://{TD}/certwright/server",
        )  # fmt: skip
        assert sent.code == 1, sent
        assert "https" in sent.stderr
    finally:
        recorder.close()
    assert token.encode() not in recorder.received and recorder.received == b""


def test_attack_enroll_refuses_a_workload_posing_as_the_ca(running: ServeProcess, tmp_path: Path) -> None:
    """A certificate of the same CA, valid for the CA's address, but not the CA server's identity."""
    openssl = require_tool("openssl")
    d = running.directory
    evil_token = run_exe(
        *token_args(running, "--identity", f"spiffe://{TD}/evil", "--ip", "127.0.0.1")
    ).stdout.strip()
    evil = tmp_path / "evil"
    made = run_exe(
        "enroll", "--server", running.api_url, "--bundle", d / "bundle.pem", "--token", evil_token,
        "--ip", "127.0.0.1", "--out", evil,
    )  # fmt: skip
    assert made.code == 0, made
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    impostor = subprocess.Popen(
        [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(evil / "cert.pem"),
         "-cert_chain", str(evil / "chain.pem"), "-key", str(evil / "key.pem"), "-www", "-quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "openssl s_server did not start"
            time.sleep(0.05)
        victim = run_exe(*token_args(running, "--identity", f"spiffe://{TD}/victim")).stdout.strip()
        refused = run_exe(
            "enroll", "--server", f"https://127.0.0.1:{port}", "--bundle", d / "bundle.pem",
            "--token", victim, "--out", tmp_path / "victim",
        )  # fmt: skip
        assert refused.code == 1, refused
        assert "not a certwright CA server" in refused.stderr
        assert not (tmp_path / "victim").exists()
    finally:
        impostor.terminate()
        impostor.wait(10)
    # The victim's token was never sent: it still enrols against the real CA.
    ok = run_exe(
        "enroll", "--server", running.api_url, "--bundle", d / "bundle.pem", "--token", victim,
        "--out", tmp_path / "victim",
    )  # fmt: skip
    assert ok.code == 0, ok
