"""mTLS for service code: TLS contexts, peer identity, access policy at the edge.

Public names, by module (``docs/mtls.md``, ``docs/mtls-services.md``, ``docs/tunnel.md``):

* :mod:`certwright.mtls.context`: ``TLSFiles``, ``server_context`` (reloads rotated files
  for new handshakes), ``client_context``, ``ClientTLS`` (an up-to-date client context),
  ``TLSFilesError``
* :mod:`certwright.mtls.peer`: ``Peer``, ``PeerVerifier``, ``PeerRefused``
* :mod:`certwright.mtls.crl`: ``CrlSource`` (a CRL file or URL, refreshed),
  ``CertificateRevoked``, ``RevocationUnknown``, ``CrlError``
* :mod:`certwright.mtls.policy_source`: ``PolicySource`` (a policy file that reloads and
  keeps the last good policy)
* :mod:`certwright.mtls.client`: ``connect``, ``httpx_client``, ``async_httpx_client``,
  ``check_peer_identity``, ``IdentityMismatch``
* :mod:`certwright.mtls.asgi`: ``MTLSMiddleware``, ``peer_of``
* :mod:`certwright.mtls.uvicorn`: ``tls_protocol`` (the ASGI TLS extension for uvicorn),
  ``config``, ``MTLSServer``, ``ServerThread``, ``serve``
* :mod:`certwright.mtls.server`: ``start_server`` for plain asyncio servers, ``AccessGate``
* :mod:`certwright.mtls.tunnel`: ``TunnelServer``, ``TunnelClient``

Nothing is imported here: each integration pulls in only what it needs (uvicorn, httpx).
"""
