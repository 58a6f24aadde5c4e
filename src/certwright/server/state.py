"""What the server's apps share: one object per process. INTERFACE (lead, issue 5).

``ServerState`` is built once at start-up by :mod:`certwright.server.run` (helper "serve")
and handed to ``create_api`` (server/api.py) and ``create_public_app`` (server/public.py).
Fields are FIXED; owners may add optional fields at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from certwright.access import Policy
    from certwright.cadir import CADirectory
    from certwright.mtls.peer import PeerVerifier
    from certwright.mtls.policy_source import PolicySource
    from certwright.revocation.ocsp import OCSPResponder
    from certwright.server.config import ServerConfig
    from certwright.server.metrics import Metrics
    from certwright.service import CertificateService, RevocationService
    from certwright.service.enrollment import EnrollmentService
    from certwright.store import Store


@dataclass
class ServerState:
    config: ServerConfig  # listen addresses, URLs, limits (server/config.py, helper "serve")
    ca: CADirectory  # unlocked: ca.require_authority() works
    store: Store
    certificates: CertificateService
    revocation: RevocationService
    enrollment: EnrollmentService
    ocsp: OCSPResponder
    verifier: PeerVerifier  # trusts DIR/bundle.pem; CRL checked against the inventory, not a file
    policy: Policy | PolicySource  # the CA's own access policy (DIR/policy.toml)
    metrics: Metrics  # server/metrics.py (helper "public")
