"""Who may call what on the CA's own API: its access policy and the per-endpoint checks.

The API is the service ``certwright-ca`` of the access policy (docs/access.md). The
policy decides on the peer's verified certificate (identity and roles) and the request's
method and path, like any certwright service; ``certwright serve`` writes the default
below to ``DIR/policy.toml`` on first start and the operator may edit it.

What needs what:

==========================  =============  ===========================================
endpoint                    certificate    decided by
==========================  =============  ===========================================
POST /v1/enroll             none           the token (the service checks it)
GET  /v1/bundle             none           public (it is the trust bundle)
GET  /openapi.json          none           public
POST /v1/renew              required       policy on ``POST /v1/renew``; the service then
                                           renews only the identity of that certificate
POST /v1/revoke             required       policy on ``POST /v1/revoke``; then holder or
                                           admin (below)
POST /v1/tokens             required       policy (default: role ``certwright.admin``)
GET  /v1/certificates[/*]   required       policy (default: role ``certwright.admin``)
==========================  =============  ===========================================

A call without a certificate to an endpoint that needs one is answered 401
(``client-certificate-required``); a certificate the verifier refuses (revoked, expired,
no identity, outside the trust domain) 403 ``peer-refused``; a policy denial 403
``access-denied``, with the decision's reason.

**Revoking.** A *holder* may revoke exactly the certificate it presents on the connection
(same serial and same SHA-256 fingerprint as the inventory row), and no other, not even
another certificate of its own identity: proving possession of one key entitles to kill
that certificate only, so a thief of an old, superseded key cannot revoke its victim's
current certificate (a denial of service), while a holder who lost a key still can revoke
it while the key works. Revoking any *other* certificate is asked of the policy as the
resource path ``POST /v1/certificates/<serial hex>/revoke`` (:func:`revoke_any_path`):
the default policy allows it to the admin role only; an operator may grant it to another
role with a rule on ``/v1/certificates/*/revoke``.

Example::

    >>> text = default_policy_text("example.org")
    >>> from certwright.access import Policy, Request, Subject
    >>> policy = Policy.parse(text, source="policy.toml")
    >>> admin = Subject("spiffe://example.org/certwright/admin", (ADMIN_ROLE,))
    >>> policy.decide(admin, Request(SERVICE, "POST", "/v1/tokens")).allowed
    True
    >>> web = Subject("spiffe://example.org/web")
    >>> policy.decide(web, Request(SERVICE, "POST", "/v1/tokens")).allowed
    False
    >>> policy.decide(web, Request(SERVICE, "POST", revoke_any_path(0x1f))).allowed
    False
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

from certwright.access.policy import Decision
from certwright.mtls.asgi import ambiguous_path
from certwright.mtls.peer import Peer, PeerRefused, PeerVerifier
from certwright.mtls.server import AccessGate, PolicyLike
from certwright.server.config import ADMIN_ROLE, POLICY_SERVICE
from certwright.server.problems import Problem
from certwright.x509.identity import validate_trust_domain

SERVICE = POLICY_SERVICE  # "certwright-ca"
__all__ = ["ADMIN_ROLE", "SERVICE", "CAAccess", "default_policy_text", "revoke_any_path"]

_DEFAULT_POLICY = """\
# The access policy of certwright's own API (service "certwright-ca").
# Written by `certwright serve` on first start; edit it to change who may do what.
# Format and semantics: docs/access.md (default deny; deny rules win over allow rules).
version = 1

[[rule]]
name = "operators"
description = "role certwright.admin: every endpoint (tokens, revoke any, list and show)"
services = ["certwright-ca"]
roles = [{admin}]

[[rule]]
name = "holders-renew-and-revoke"
description = "workloads of the trust domain renew, and revoke the certificate they present"
services = ["certwright-ca"]
identities = [{workloads}]
methods = ["POST"]
paths = ["/v1/renew", "/v1/revoke"]
"""


def default_policy_text(trust_domain: str) -> str:
    """The policy ``serve`` writes on first start for ``trust_domain`` (valid TOML, checked)."""
    domain = validate_trust_domain(trust_domain)
    return _DEFAULT_POLICY.format(admin=json.dumps(ADMIN_ROLE), workloads=json.dumps(f"spiffe://{domain}/**"))


def revoke_any_path(serial: int) -> str:
    """The resource path the policy is asked about to revoke a certificate one does not hold."""
    return f"/v1/certificates/{serial:x}/revoke"


class CAAccess:
    """The checks of the API's endpoints: the peer from the TLS extension, then the policy.

    Every outcome is logged by the shared :class:`~certwright.mtls.server.AccessGate`
    (logger ``certwright.mtls.access``) with identity, method, path and reason.

    Example::

        access = CAAccess(verifier=state.verifier, policy=state.policy)
        peer = access.authorize(request.scope)        # Problem 401/403 when refused
    """

    def __init__(self, *, verifier: PeerVerifier, policy: PolicyLike) -> None:
        self.gate = AccessGate(verifier=verifier, policy=policy, service=SERVICE)

    def peer(self, scope: Mapping[str, Any]) -> Peer:
        """The verified client certificate of the request's connection, or a Problem."""
        where = _where(scope)
        tls = (scope.get("extensions") or {}).get("tls")
        if not isinstance(tls, Mapping):
            # Fail closed: served without the TLS extension, nobody can tell who the peer is.
            self.gate.refused("server misconfigured: no ASGI TLS extension", **where)
            raise Problem(
                500,
                "tls-unavailable",
                "TLS information unavailable",
                "the server does not pass the TLS connection details to the application",
            )
        chain = list(tls.get("client_cert_chain") or ())
        if not chain:
            self.gate.refused("no client certificate", **where)
            raise Problem(
                401,
                "client-certificate-required",
                "Client certificate required",
                "this endpoint requires a TLS client certificate issued by this CA",
            )
        if tls.get("client_cert_error"):
            # The server let an unverified certificate through: never an identity (ASGI TLS spec).
            self.gate.refused(f"unverified client certificate: {tls['client_cert_error']}", **where)
            raise Problem(
                403, "peer-refused", "Client certificate refused", "the certificate was not verified"
            )
        try:
            der = ssl.PEM_cert_to_DER_cert(chain[0])
            return self.gate.peer(der)
        except PeerRefused as exc:
            self.gate.refused(f"peer refused: {exc.reason}", **where)
            raise Problem(403, "peer-refused", "Client certificate refused", exc.reason) from exc
        except ValueError as exc:
            self.gate.refused("unreadable client certificate", **where)
            raise Problem(
                403, "peer-refused", "Client certificate refused", "unreadable client certificate"
            ) from exc

    def authorize(self, scope: Mapping[str, Any]) -> Peer:
        """The peer, once the policy allows it the request's own method and path."""
        peer = self.peer(scope)
        problem = ambiguous_path(scope)
        if problem is not None:
            # A path two readers could route differently is never decided on (docs/access.md).
            raise Problem(400, "ambiguous-path", "Ambiguous path", problem)
        self.require(scope, peer, method=str(scope.get("method", "")), path=str(scope.get("path", "")))
        return peer

    def require(self, scope: Mapping[str, Any], peer: Peer, *, method: str, path: str) -> Decision:
        """The policy's allowing decision for ``peer`` on ``method path``, or a 403 Problem."""
        decision = self.decide(scope, peer, method=method, path=path)
        if not decision.allowed:
            raise Problem(403, "access-denied", "Access denied", decision.reason)
        return decision

    def decide(self, scope: Mapping[str, Any], peer: Peer, *, method: str, path: str) -> Decision:
        """The policy's decision (logged) for ``peer`` on ``method path``."""
        return self.gate.decide(peer, method=method, path=path, client=_where(scope)["client"])


def _where(scope: Mapping[str, Any]) -> dict[str, Any]:
    client = scope.get("client")
    shown = f"{client[0]}:{client[1]}" if isinstance(client, list | tuple) and len(client) == 2 else None
    return {"method": scope.get("method"), "path": scope.get("path"), "client": shown}
