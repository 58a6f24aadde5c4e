"""Real ``certwright serve`` processes for the replica tests, and a client of their API.

:class:`ServeProcess` starts the console script (``--listen``/``--http-listen`` on port 0),
reads the two URLs it prints, and is stopped by PID (SIGTERM, then SIGKILL); its output is
kept for the failure message. :class:`Operator` holds the admin credentials the first start
wrote, creates tokens, enrols with a fresh key and CSR, revokes.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.cli import PASSPHRASE, PASSPHRASE_ENV, certwright_exe

START_TIMEOUT = 90.0
_LISTENING = re.compile(r"listening on (https?://\S+)")


class ServeProcess:
    """One ``certwright serve --dir DIR --db URL`` process; ``api`` and ``public`` are its URLs."""

    def __init__(self, directory: Path, db_url: str, *, name: str) -> None:
        self.name = name
        env = {**os.environ, PASSPHRASE_ENV: PASSPHRASE, "PYTHONUNBUFFERED": "1"}
        env.pop("CERTWRIGHT_DB", None)
        command = [
            str(certwright_exe()), "serve", "--dir", str(directory), "--db", db_url,
            "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        ]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._urls: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"serve-{name}-output", daemon=True)
        self._reader.start()
        self.api, self.public = self._wait_for_urls()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = _LISTENING.search(line)
            if found:
                self._urls.put(found.group(1))

    def _wait_for_urls(self) -> tuple[str, str]:
        urls: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT
        while len(urls) < 2:
            if self.proc.poll() is not None and self._urls.empty():
                self._reader.join(5)
                raise RuntimeError(f"serve {self.name} exited {self.proc.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve {self.name} did not start in {START_TIMEOUT} s:\n{self.output}")
            try:
                urls.append(self._urls.get(timeout=0.1))
            except queue.Empty:
                continue
        api = next(u for u in urls if u.startswith("https://"))
        public = next(u for u in urls if u.startswith("http://"))
        return api, public

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL: no shutdown, requests in flight are cut."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL if it does not exit within 30 s; idempotent."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._reader.join(5)


@dataclass(frozen=True)
class Enrolment:
    certificate: x509.Certificate
    identity: str


class Operator:
    """The admin's side: tokens and revocations over mTLS, enrolments over TLS."""

    def __init__(self, directory: Path) -> None:
        self.bundle = directory / "bundle.pem"
        self.admin = ssl.create_default_context(cafile=str(self.bundle))
        self.admin.load_cert_chain(str(directory / "admin.pem"), str(directory / "admin.key"))
        self.anonymous = ssl.create_default_context(cafile=str(self.bundle))

    def admin_client(self, api: str) -> httpx.Client:
        return httpx.Client(base_url=api, verify=self.admin, timeout=30)

    def client(self, api: str) -> httpx.Client:
        return httpx.Client(base_url=api, verify=self.anonymous, timeout=30)

    @staticmethod
    def create_token(admin: httpx.Client, identity: str) -> str:
        response = admin.post("/v1/tokens", json={"identity": identity, "ttl": "1h"})
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    @staticmethod
    def enroll(client: httpx.Client, token: str, identity: str) -> httpx.Response:
        return client.post("/v1/enroll", json={"token": token, "csr": csr_for(identity)})

    @staticmethod
    def revoke(admin: httpx.Client, serial: int, reason: str = "keyCompromise") -> None:
        response = admin.post("/v1/revoke", json={"serial": format(serial, "x"), "reason": reason})
        assert response.status_code == 200, response.text


def csr_for(identity: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def certificate_of(response: httpx.Response) -> x509.Certificate:
    body: dict[str, Any] = response.json()
    return x509.load_pem_x509_certificate(body["certificate"].encode())
