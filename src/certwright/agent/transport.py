"""How the agent talks to ``certwright serve``: enrol, renew and fetch the trust bundle.

:class:`Transport` is the interface the renewal loop uses (a test or an embedding can give
another); :class:`HTTPTransport` is the real one, over HTTPS:

* ``POST /v1/enroll`` {token, csr}: no client certificate yet, the server is verified
  against the trust bundle the operator gave;
* ``POST /v1/renew`` {csr}: mTLS with the current key and chain;
* ``GET /v1/bundle``: the trust anchors, fetched on the same connection after each
  issuance so a CA rotation reaches every workload.

The server is checked by its SPIFFE ID after the handshake, before a byte of the request
(the token!) is sent: a chain to the bundle is not enough, since every workload of the
trust domain chains to the same root. Without a configured ID the agent expects
``spiffe://<its trust domain>/certwright/server``; before its first certificate it knows no
trust domain, and accepts a server whose ID path is ``/certwright/server`` (discovered by a
first handshake, then required of the connection that carries the token).

Errors: :class:`Unreachable` (connection, TLS, timeout) and :class:`ServerRefused` (an RFC
9457 problem document, or any other non-2xx answer); ``transient`` says whether trying
again later can help (network trouble, 5xx, 429).

Example::

    >>> transport = HTTPTransport("https://ca.internal:8443")             # doctest: +SKIP
    >>> issued = transport.renew(csr, files=creds_dir.tls_files(), expect=None)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certwright.errors import CertwrightError, InvalidCertificateError
from certwright.files import parse_certificates
from certwright.mtls.client import connect, httpx_client
from certwright.mtls.context import TLSFiles, client_context
from certwright.mtls.peer import PeerRefused
from certwright.verify.identity import identity_of
from certwright.x509.identity import SpiffeId

# The CA server's identity path (certwright.server.config.SERVER_IDENTITY_PATH; the agent is
# a client and does not import the server).
SERVER_PATH = "/certwright/server"
PEM_CHAIN = "application/pem-certificate-chain"
DEFAULT_TIMEOUT = 30.0


class TransportError(CertwrightError):
    """The server could not be asked, or refused; ``transient``: worth trying again later."""

    transient = True


class Unreachable(TransportError):
    """No answer: connection refused or reset, TLS failure, timeout, wrong server identity."""


class ServerRefused(TransportError):
    """The server answered with an error (an RFC 9457 problem document when it could)."""

    def __init__(self, status: int, title: str, detail: str, *, problem_type: str = "about:blank") -> None:
        super().__init__(f"the CA refused ({status} {title}): {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem_type = problem_type
        # 5xx and 429 are the server's trouble; a 4xx is about this request and will not change.
        self.transient = status >= 500 or status in (408, 429)


@dataclass(frozen=True)
class Issued:
    """What enrolment or renewal returned: the leaf, its intermediates, and the bundle
    (None when it could not be fetched: the caller keeps the one it has)."""

    certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    bundle: tuple[x509.Certificate, ...] | None


class Transport(Protocol):
    """The three calls the renewal loop makes; ``expect`` is the server's SPIFFE ID
    (None: any ID whose path is ``/certwright/server``)."""

    def enroll(
        self,
        token: str,
        csr: x509.CertificateSigningRequest,
        *,
        trust: Sequence[x509.Certificate],
        expect: SpiffeId | None,
    ) -> Issued: ...

    def renew(
        self, csr: x509.CertificateSigningRequest, *, files: TLSFiles, expect: SpiffeId | None
    ) -> Issued: ...


def _csr_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class HTTPTransport:
    """The real transport (see the module documentation). ``server`` is the API's base URL."""

    def __init__(self, server: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        url = httpx.URL(server)
        if url.scheme != "https" or not url.host:
            raise CertwrightError(f"the CA server URL must be https://HOST:PORT, not {server!r}")
        self.server = str(url).rstrip("/")
        self._host = url.host
        self._port = url.port or 443
        self.timeout = timeout

    def enroll(
        self,
        token: str,
        csr: x509.CertificateSigningRequest,
        *,
        trust: Sequence[x509.Certificate],
        expect: SpiffeId | None,
    ) -> Issued:
        """Redeem ``token`` for a certificate; the server is verified against ``trust``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # the SPIFFE ID is checked instead (see the module doc)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(
            cadata=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in trust).decode()
        )
        return self._issue("/v1/enroll", {"token": token, "csr": _csr_pem(csr)}, context, expect)

    def renew(
        self, csr: x509.CertificateSigningRequest, *, files: TLSFiles, expect: SpiffeId | None
    ) -> Issued:
        """A successor for the certificate of ``files``, presented over mTLS."""
        try:
            context = client_context(files)
        except CertwrightError as exc:
            raise TransportError(f"cannot use the current credentials for mTLS: {exc}") from exc
        return self._issue("/v1/renew", {"csr": _csr_pem(csr)}, context, expect)

    # -- one exchange: issue, then the bundle on the same connection --------------------------

    def _issue(
        self, path: str, body: dict[str, str], context: ssl.SSLContext, expect: SpiffeId | None
    ) -> Issued:
        wanted = expect if expect is not None else self._discover(context)
        try:
            client = httpx_client(tls=context, expect=wanted, base_url=self.server, timeout=self.timeout)
            with client:
                response = client.post(path, json=body)
                issued = _parse_issued(response)
                bundle = self._bundle(client)
        except PeerRefused as exc:
            raise Unreachable(f"{self.server} is not the CA: {exc}") from exc
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the CA at {self.server}: {_describe(exc)}") from exc
        return Issued(issued[0], issued[1], bundle)

    def _bundle(self, client: httpx.Client) -> tuple[x509.Certificate, ...] | None:
        # Best effort: the new certificate is already ours (the inventory holds it); a
        # missing bundle is retried after the next renewal, with the current one kept meanwhile.
        try:
            response = client.get("/v1/bundle")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return tuple(parse_certificates(response.content, source="the CA's /v1/bundle"))
        except InvalidCertificateError:
            return None

    def _discover(self, context: ssl.SSLContext) -> SpiffeId:
        """The server's ID, required to have the CA server's path (first enrolment)."""
        try:
            with connect(self._host, self._port, tls=context, expect=None, timeout=self.timeout) as sock:
                der = sock.getpeercert(True)
        except (OSError, ssl.SSLError) as exc:
            raise Unreachable(f"cannot reach the CA at {self.server}: {exc}") from exc
        try:
            found = identity_of(x509.load_der_x509_certificate(der)) if der else None
        except (ValueError, CertwrightError):
            found = None
        if found is None or found.path != SERVER_PATH:
            raise Unreachable(f"{self.server} is not a certwright CA server (its identity is {found})")
        return found


def _parse_issued(response: httpx.Response) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    if response.status_code not in (200, 201):
        raise _refusal(response)
    try:
        data = response.json()
        leaf = parse_certificates(data["certificate"].encode(), source="the CA's certificate")
        chain = parse_certificates(data["chain"].encode(), source="the CA's chain") if data["chain"] else []
    except (ValueError, KeyError, TypeError, AttributeError, InvalidCertificateError) as exc:
        detail = f"cannot read the certificate: {exc}"
        raise ServerRefused(response.status_code, "Malformed answer", detail) from exc
    if len(leaf) != 1:
        raise ServerRefused(response.status_code, "Malformed answer", "expected one certificate")
    # Some servers put the leaf at the head of the chain too: keep intermediates only.
    return leaf[0], tuple(c for c in chain if c != leaf[0])


def _refusal(response: httpx.Response) -> ServerRefused:
    title, detail, kind = response.reason_phrase or "error", response.text[:500], "about:blank"
    try:
        document: Any = response.json()
    except (ValueError, json.JSONDecodeError):
        document = None
    if isinstance(document, dict):
        title = str(document.get("title", title))
        detail = str(document.get("detail", detail))
        kind = str(document.get("type", kind))
    return ServerRefused(response.status_code, title, detail, problem_type=kind)


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text
