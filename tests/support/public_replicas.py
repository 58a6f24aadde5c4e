"""A client of real ``certwright serve`` replicas (started with :mod:`support.serve_process`).

:class:`Operator` holds the admin credentials the first start wrote, creates tokens,
enrols with a fresh key and CSR, revokes.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

START_TIMEOUT = 90.0
_LISTENING = re.compile(r"listening on (https?://\S+)")


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
