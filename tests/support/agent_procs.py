"""The agent's integration helpers: a CA with 20-second certificates, tokens, the agent as a
subprocess, and a TLS service that serves the agent's files and reports what it presents.

``certwright serve`` issues at enrolment the profile's default lifetime (or the token's cap)
and at renewal the profile's default: the CA directory gets a profile ``short`` whose
default lifetime is 20 seconds (``DIR/ca/profiles.toml``, read at every start).

Example::

    data = make_short_ca(tmp_path / "data")
    with ServeProcess(data) as server:
        token = make_token(server, data, "spiffe://example.org/web")
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from cryptography import x509

from certwright.agent.layout import CredentialDir
from certwright.mtls.client import httpx_client
from certwright.mtls.context import TLSFiles, server_context
from support.cli import PASSPHRASE_ENV, certwright_exe
from support.serve_process import ServeProcess

LIFETIME = 20  # seconds: the certificates of profile "short"
SHORT_PROFILE = f"""
[profile.short]
base = "mtls"
default_lifetime = "{LIFETIME}s"
max_lifetime = "{LIFETIME}s"
"""
SERVER_ID = "spiffe://example.org/certwright/server"
WEB = "spiffe://example.org/web"


def enroll(server: ServeProcess, data: Path, workdir: Path, identity: str = WEB) -> None:
    """Enrol ``workdir`` with ``certwright agent --once --token-file`` (a fresh token)."""
    token = workdir.parent / f"{workdir.name}.token"
    token.write_text(make_token(server, data, identity))
    done = run_agent(
        workdir, server.api_url, "--once", "--token-file", token, "--bundle", data / "bundle.pem"
    )
    assert done.returncode == 0, done.stderr
    assert str(CredentialDir(workdir).load().identity) == identity


def make_short_ca(directory: Path) -> Path:
    """A data directory made by a first ``serve`` start, with the ``short`` profile added."""
    server = ServeProcess(directory)
    try:
        server.start()
    finally:
        code = server.stop()
    assert code == 0, server.output
    (directory / "ca" / "profiles.toml").write_text(SHORT_PROFILE)
    return directory


def make_token(server: ServeProcess, data: Path, identity: str, *, profile: str = "short") -> str:
    """A one-time token from the admin credentials of ``data`` (POST /v1/tokens)."""
    files = TLSFiles(data / "admin.pem", data / "admin.key", data / "bundle.pem")
    with httpx_client(files, expect=SERVER_ID, base_url=server.api_url, timeout=30) as client:
        response = client.post("/v1/tokens", json={"identity": identity, "profile": profile, "ttl": "15m"})
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    assert isinstance(token, str)
    return token


def agent_command(directory: Path, server_url: str, *args: str | Path) -> list[str]:
    return [str(certwright_exe()), "agent", "--dir", str(directory), "--server", server_url, *map(str, args)]


def agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTWRIGHT_")}
    env.pop(PASSPHRASE_ENV, None)
    return env


def run_agent(
    directory: Path, server_url: str, *args: str | Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``certwright agent ... --once`` style: run to exit, output captured."""
    return subprocess.run(
        agent_command(directory, server_url, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=agent_env(),
        check=False,
        stdin=subprocess.DEVNULL,
    )


class AgentProcess:
    """A long-running ``certwright agent``; stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, directory: Path, server_url: str, *args: str | Path, log: Path) -> None:
        self.command = agent_command(directory, server_url, *args)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> AgentProcess:
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                self.command, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, env=agent_env()
            )
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Service:
    """A TLS server on 127.0.0.1:0 serving the agent's files (reloaded on change, as the
    mTLS helpers do), and a prober that records the certificate it presents over time."""

    def __init__(self, directory: Path, bundle: Path) -> None:
        files = TLSFiles(directory / "chain.pem", directory / "key.pem", directory / "bundle.pem")
        self.context = server_context(files, require_client_cert=False, check_interval=0.1)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client.check_hostname = False
        self.client.load_verify_locations(cafile=str(bundle))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.observed: list[tuple[datetime.datetime, x509.Certificate]] = []
        self.failures: list[tuple[datetime.datetime, str]] = []
        self._threads = [threading.Thread(target=self._serve, daemon=True)]

    def __enter__(self) -> Service:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(10)

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def probe(self) -> x509.Certificate | None:
        """Handshake once; record (now, certificate presented) or the failure."""
        now = datetime.datetime.now(datetime.UTC)
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            with raw, self.client.wrap_socket(raw) as tls:
                der = tls.getpeercert(True)
        except (OSError, ssl.SSLError) as exc:
            # An expired certificate fails here: the client verifies validity.
            self.failures.append((now, str(exc)))
            return None
        assert der is not None
        certificate = x509.load_der_x509_certificate(der)
        self.observed.append((now, certificate))
        return certificate

    def serials(self) -> list[int]:
        seen: list[int] = []
        for _, certificate in self.observed:
            if not seen or seen[-1] != certificate.serial_number:
                seen.append(certificate.serial_number)
        return seen

    def expired_observations(self) -> Sequence[tuple[datetime.datetime, x509.Certificate]]:
        return [(at, c) for at, c in self.observed if at >= c.not_valid_after_utc]


def wait_until(condition: object, *, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll ``condition()`` until true or raise TimeoutError after ``timeout`` seconds."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
