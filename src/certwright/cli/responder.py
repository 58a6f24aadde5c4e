"""The CA directory's delegated OCSP responder: DIR/ocsp.pem and DIR/ocsp.key.

Issued under the ``ocsp-responder`` profile on first use and again when less than a third
of its lifetime is left (RFC 6960 4.2.2.2: a delegated responder, id-kp-OCSPSigning,
ocsp-nocheck); its key is encrypted with the CA passphrase, like the CA's keys.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certwright.cadir import CADirectory
from certwright.cli.inventory import Inventory
from certwright.errors import CertwrightError
from certwright.files import read_certificate, read_private_key, write_file, write_secret
from certwright.revocation.responder import issue_responder, responder_needs_rotation
from certwright.x509.keys import SigningKey, generate_key, private_key_pem

RESPONDER_CERT = "ocsp.pem"
RESPONDER_KEY = "ocsp.key"


def load_responder(
    ca: CADirectory, inventory: Inventory, passphrase: bytes
) -> tuple[x509.Certificate, SigningKey]:
    """The current responder certificate and key, issuing a new pair when due."""
    cert_path, key_path = ca.path / RESPONDER_CERT, ca.path / RESPONDER_KEY
    authority = ca.require_authority()
    if cert_path.exists() and key_path.exists():
        certificate = read_certificate(cert_path)
        fresh = certificate.issuer == ca.intermediate.subject and not responder_needs_rotation(
            certificate, authority.clock.now()
        )
        if fresh:
            return certificate, read_private_key(key_path, passphrase)
    key = generate_key(ca.config.key_type)
    certificate = issue_responder(authority, key)
    # Recorded before it is used: the inventory holds every certificate the CA signs.
    inventory.certificates().record_issued([certificate], profile="ocsp-responder")
    try:
        write_secret(key_path, private_key_pem(key, passphrase), overwrite=True)
        write_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), overwrite=True)
    except OSError as exc:
        raise CertwrightError(f"cannot write the OCSP responder files in {ca.path}: {exc.strerror}") from exc
    return certificate, key
