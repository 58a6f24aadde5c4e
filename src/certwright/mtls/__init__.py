"""mTLS for service code: TLS contexts, peer identity, access policy at the edge.

INTERFACE STUB package written by the lead. Public names per module:

* :mod:`certwright.mtls.context`: ``TLSFiles``, ``server_context``, ``client_context``
* :mod:`certwright.mtls.peer`: ``Peer``, ``PeerVerifier``, ``PeerRefused``
* :mod:`certwright.mtls.crl`: ``CrlSource``
* :mod:`certwright.mtls.policy_source`: ``PolicySource`` (a reloading policy file)
* :mod:`certwright.mtls.client`: ``connect``, ``httpx_client``, ``check_peer_identity``
* :mod:`certwright.mtls.asgi`: ``MTLSMiddleware``; :mod:`certwright.mtls.uvicorn`: ``serve``
* :mod:`certwright.mtls.server`: a helper for plain asyncio servers
* :mod:`certwright.mtls.tunnel`: ``TunnelServer``, ``TunnelClient``
"""
