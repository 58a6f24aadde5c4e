"""ssl.SSLContext builders for mTLS. INTERFACE STUB: signatures fixed, bodies to fill."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    """A workload's credentials on disk: certificate (leaf, then intermediates), key, bundle.

    ``bundle`` holds the trust anchors (roots). ``key_passphrase`` opens an encrypted key.
    """

    cert: Path
    key: Path
    bundle: Path
    key_passphrase: bytes | None = None


def server_context(
    files: TLSFiles, *, require_client_cert: bool = True, reload: bool = True
) -> ssl.SSLContext:
    """A server context: TLS 1.2 minimum, client certificates required (CERT_REQUIRED).

    With ``reload`` the files are re-read when they change on disk and new handshakes use
    them (no restart); connections already open keep what they negotiated.
    """
    raise NotImplementedError


def client_context(files: TLSFiles, *, check_hostname: bool = False) -> ssl.SSLContext:
    """A client context presenting ``files.cert`` and trusting ``files.bundle``.

    Workloads are named by their SPIFFE URI, not a hostname: by default hostname checking
    is off and callers check the peer identity after the handshake
    (:func:`certwright.mtls.client.check_peer_identity`, or ``connect(expect=...)``).
    """
    raise NotImplementedError
