"""A running server rotates its OCSP responder before the responder certificate expires."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from certwright.cli.serve_cmds import HOOKS
from certwright.clock import FixedClock
from certwright.files import read_certificates
from certwright.revocation.ocsp import OCSPResponder
from certwright.server.bootstrap import prepare
from certwright.server.config import ServerConfig
from certwright.server.run import build_state, rotate_responder_if_due
from certwright.service import CertificateService
from support.cli import PASSPHRASE

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _ask(responder: OCSPResponder, leaf: x509.Certificate, issuer: x509.Certificate) -> ocsp.OCSPResponse:
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    return ocsp.load_der_ocsp_response(responder.respond(request.public_bytes(Encoding.DER)))


def test_the_responder_is_rotated_in_process_when_due(tmp_path: Path) -> None:
    clock = FixedClock(NOW)
    config = ServerConfig(directory=tmp_path / "data", http_listen=("127.0.0.1", 18080))
    prepared = prepare(config, PASSPHRASE.encode(), HOOKS, clock=clock)
    try:
        state = build_state(prepared, clock=clock)
        issuer = prepared.ca.intermediate
        leaf = read_certificates(config.directory / "admin.pem")[0]
        first = prepared.responder[0]
        assert _ask(state.ocsp, leaf, issuer).certificates == [first]

        assert not rotate_responder_if_due(prepared, state.ocsp, clock)  # not due yet
        clock.advance(first.not_valid_after_utc - NOW - datetime.timedelta(days=1))
        assert rotate_responder_if_due(prepared, state.ocsp, clock)

        second = prepared.responder[0]
        assert second.serial_number != first.serial_number
        assert second.not_valid_after_utc > first.not_valid_after_utc
        answer = _ask(state.ocsp, leaf, issuer)
        assert answer.certificates == [second]
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        # Recorded like every certificate the CA signs, and written for the next start.
        assert CertificateService(store=prepared.store).get(second.serial_number) is not None
        assert read_certificates(prepared.ca.path / "ocsp.pem")[0] == second
        assert not rotate_responder_if_due(prepared, state.ocsp, clock)  # done: not due again
    finally:
        prepared.store.close()
