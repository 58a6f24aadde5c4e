"""The plain-HTTP app's tests: a ServerState from real parts, and the app on a real socket.

:func:`build_state` makes what ``certwright serve`` would (a CA directory by ``init_ca``
with the inventory created by ``create_inventory``, an OCSP responder issued by
``issue_responder`` and recorded, the services) without the serve command, so the public
app is tested on its own. :func:`replica_state` opens a second process-like state on the
same CA directory and database: its own store connection pool, OCSP cache, metrics.
:class:`PlainServer` runs an ASGI app with uvicorn on 127.0.0.1 in a thread, port 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from cryptography import x509

from certwright.access import Policy
from certwright.cadir import CONFIG as CA_CONFIG
from certwright.cadir import INVENTORY, CAConfig, CADirectory, init_ca, open_ca
from certwright.cli.ca_cmds import create_inventory
from certwright.clock import Clock, SystemClock
from certwright.files import write_file
from certwright.mtls.peer import PeerVerifier
from certwright.revocation.ocsp import OCSPResponder
from certwright.revocation.responder import issue_responder
from certwright.server.ca_policy import default_policy_text
from certwright.server.config import ServerConfig
from certwright.server.metrics import Metrics
from certwright.server.state import ServerState
from certwright.service import CertificateService, RevocationService, StoreStatusSource
from certwright.service.certificates import ca_key_id
from certwright.service.enrollment import EnrollmentService
from certwright.store import open_store
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import SigningKey, generate_key

PASSPHRASE = b"public app test passphrase"
TRUST_DOMAIN = "example.org"


def free_socket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a free port (not listening yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def make_ca(directory: Path, *, base_url: str, db_url: str | None = None) -> CADirectory:
    """A CA whose leaves carry ``base_url``'s CRL (named by the issuer's key id) and OCSP URLs."""

    def prepare(stage: Path, root: x509.Certificate, intermediate: x509.Certificate) -> None:
        written = CAConfig.from_toml((stage / CA_CONFIG).read_text(), source="ca.toml")
        crl = f"{base_url}/crl/{ca_key_id(intermediate).hex()}.crl"
        final = dataclasses.replace(written, settings=dataclasses.replace(written.settings, crl_urls=(crl,)))
        write_file(stage / CA_CONFIG, final.to_toml().encode(), overwrite=True)
        create_inventory(db_url or str(stage / INVENTORY), root, intermediate, final.settings.extension_oid)

    init_ca(
        directory,
        name="Public Test",
        trust_domain=TRUST_DOMAIN,
        passphrase=PASSPHRASE,
        ocsp_urls=(f"{base_url}/ocsp",),
        inventory_url=db_url,
        prepare=prepare,
    )
    return open_ca(directory, passphrase=PASSPHRASE)


def build_state(
    ca: CADirectory,
    *,
    base_url: str,
    clock: Clock | None = None,
    responder: tuple[x509.Certificate, SigningKey] | None = None,
) -> ServerState:
    """A ServerState over ``ca`` (opened with its key) and its inventory.

    Without ``responder`` a new delegated OCSP responder is issued and recorded (replicas
    share one: pass the first state's ``responder_of(state)``).
    """
    clock = clock or SystemClock()
    authority = ca.require_authority()
    store = open_store(ca.inventory, upgrade=True)
    oid = ca.settings.extension_oid
    certificates = CertificateService(store=store, authority=authority, extension_oid=oid, clock=clock)
    if responder is None:
        key = generate_key()
        responder_cert = issue_responder(authority, key)
        certificates.record_issued([responder_cert], profile="ocsp-responder")
        responder = (responder_cert, key)
    ocsp = OCSPResponder(
        issuer=ca.intermediate,
        responder=responder[0],
        responder_key=responder[1],
        source=StoreStatusSource(store, ca_key_id(ca.intermediate)),
        clock=clock,
    )
    _RESPONDERS[id(ocsp)] = responder
    host, _, port = base_url.removeprefix("http://").rpartition(":")
    return ServerState(
        config=ServerConfig(
            directory=ca.path.parent, http_listen=(host, int(port)), public_base_url=base_url
        ),
        ca=ca,
        store=store,
        certificates=certificates,
        revocation=RevocationService(store=store, issuer=ca.intermediate, clock=clock, actor="test"),
        enrollment=EnrollmentService(store, authority, ca.profiles, extension_oid=oid, clock=clock),
        ocsp=ocsp,
        verifier=PeerVerifier(ca.bundle, trust_domain=TRUST_DOMAIN),
        policy=Policy.parse(default_policy_text(TRUST_DOMAIN)),
        metrics=Metrics(profiles=ca.profiles, process=False),
    )


_RESPONDERS: dict[int, tuple[x509.Certificate, SigningKey]] = {}


def responder_of(state: ServerState) -> tuple[x509.Certificate, SigningKey]:
    return _RESPONDERS[id(state.ocsp)]


def replica_state(state: ServerState) -> ServerState:
    """A second replica's state on the same CA and database (same responder key pair)."""
    return build_state(state.ca, base_url=state.config.public_base_url, responder=responder_of(state))


def issue_leaf(state: ServerState, name: str) -> x509.Certificate:
    """An mtls leaf for spiffe://example.org/workload/NAME, recorded in the inventory."""
    return state.certificates.issue(
        generate_key().public_key(),
        profile=state.ca.profile("mtls"),
        identity=SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/workload/{name}"),
    )


class PlainServer:
    """An ASGI app served by uvicorn over plain HTTP on 127.0.0.1 (port 0), in a thread.

    Example::

        with PlainServer(app) as server:
            httpx.get(server.url + "/healthz")
    """

    def __init__(self, app: Any, *, sock: socket.socket | None = None) -> None:
        self.socket = sock or free_socket()
        self.port: int = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"public-app-{self.port}", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.socket]))
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self, timeout: float = 30.0) -> PlainServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.01)
        if not self.server.started:
            self.stop()
            raise RuntimeError(f"the app did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(30)
        self.socket.close()

    def __enter__(self) -> PlainServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
