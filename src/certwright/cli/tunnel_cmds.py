"""``certwright tunnel server|client``: an mTLS tunnel for services that cannot do mTLS.

The work is in :mod:`certwright.mtls.tunnel`; this module turns options into its objects
and runs it until SIGTERM/SIGINT. Decisions are logged on stderr, one line each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from certwright.cli.common import CertwrightGroup, configure_logging
from certwright.mtls.context import TLSFiles
from certwright.mtls.crl import CrlSource
from certwright.mtls.peer import PeerVerifier
from certwright.mtls.policy_source import PolicySource
from certwright.mtls.tunnel import (
    Address,
    Limits,
    TunnelAccess,
    TunnelClient,
    TunnelServer,
    run_until_signalled,
)
from certwright.x509.identity import SpiffeId

F = TypeVar("F", bound=Callable[..., Any])

_file = click.Path(dir_okay=False, path_type=Path)

_COMMON = (
    click.option(
        "--listen", required=True, help="Address to listen on, HOST:PORT ([::1]:PORT; port 0 picks one)."
    ),
    click.option("--target", required=True, help="Address to forward to, HOST:PORT."),
    click.option("--cert", required=True, type=_file, help="Certificate chain (leaf first), PEM."),
    click.option("--key", required=True, type=_file, help="Private key, PEM."),
    click.option("--bundle", required=True, type=_file, help="Trust bundle (root CAs), PEM."),
    click.option(
        "--max-connections",
        default=1024,
        show_default=True,
        type=click.IntRange(min=1),
        help="Connections handled at once; more are refused.",
    ),
    click.option(
        "--idle-timeout",
        type=click.FloatRange(min=0, min_open=True),
        help="Close a connection after this many seconds without data (default: never).",
    ),
    click.option(
        "--shutdown-grace",
        default=5.0,
        show_default=True,
        type=click.FloatRange(min=0),
        help="Seconds open connections get to finish after SIGTERM/SIGINT.",
    ),
)


def _common_options(f: F) -> F:
    for option in reversed(_COMMON):
        f = option(f)
    return f


@click.group(cls=CertwrightGroup)
def tunnel() -> None:
    """mTLS tunnels (like ghostunnel) for services that do not speak mTLS themselves.

    \b
    server: mTLS in, plain TCP out; peers are verified and authorized (default deny).
    client: plain TCP in, mTLS out; the server must be the identity given by --expect.
    Rotated certificate, key, bundle, CRL and policy files are used by new connections.
    """


@tunnel.command("server")
@_common_options
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="URI",
    help="Allow peers whose SPIFFE ID matches (a '*' stays within a segment, '**' spans them).",
)
@click.option(
    "--allow-role", "allow_roles", multiple=True, metavar="ROLE", help="Allow peers with this role."
)
@click.option("--policy", type=_file, help="Access policy file (TOML), asked about --service.")
@click.option("--service", help="The service name the policy rules name (with --policy).")
@click.option("--crl", metavar="FILE|URL", help="Refuse revoked peers: a CRL file or http(s) URL, refreshed.")
@click.option("--trust-domain", help="Refuse peers whose identity is outside this trust domain.")
@click.option(
    "--recheck-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Check each open connection's peer again this often (seconds): revoked, expired or "
    "no longer allowed, the connection is cut.",
)
def tunnel_server(
    *,
    listen: str,
    target: str,
    cert: Path,
    key: Path,
    bundle: Path,
    allow: tuple[str, ...],
    allow_roles: tuple[str, ...],
    policy: Path | None,
    service: str | None,
    crl: str | None,
    trust_domain: str | None,
    recheck_interval: float,
    **limits: Any,
) -> None:
    """Terminate mTLS on --listen, authorize each peer, forward plain TCP to --target.

    \b
    A peer passes when it matches one --allow pattern or --allow-role role; with
    --policy, the policy must allow it for --service too. Nobody is allowed by default.
    """
    configure_logging()
    listen_at, target_at = Address.parse(listen), Address.parse(target)
    access = TunnelAccess.create(
        allow=allow,
        allow_roles=allow_roles,
        policy=PolicySource(policy) if policy is not None else None,
        service=service,
    )
    revocation = CrlSource(crl, issuers=[cert, bundle]) if crl else None
    try:
        server = TunnelServer(
            listen=listen_at,
            target=target_at,
            files=TLSFiles(cert, key, bundle),
            access=access,
            verifier=PeerVerifier(bundle, crl=revocation, trust_domain=trust_domain),
            limits=Limits(**limits, recheck_interval=recheck_interval),
        )
        asyncio.run(run_until_signalled(server))
    finally:
        if revocation is not None:
            revocation.close()


@tunnel.command("client")
@_common_options
@click.option("--expect", required=True, metavar="URI", help="The SPIFFE ID the server must present.")
@click.option(
    "--crl", metavar="FILE|URL", help="Refuse a revoked server: a CRL file or http(s) URL, refreshed."
)
def tunnel_client(
    *,
    listen: str,
    target: str,
    cert: Path,
    key: Path,
    bundle: Path,
    expect: str,
    crl: str | None,
    **limits: Any,
) -> None:
    """Accept plain TCP on --listen and forward it over mTLS to --target.

    The server's certificate must carry exactly the SPIFFE ID --expect (hostnames and
    CNs are not trusted for this), and with --crl must not be revoked; otherwise the
    connection is refused.
    """
    configure_logging()
    revocation = CrlSource(crl, issuers=[cert, bundle]) if crl else None
    try:
        client = TunnelClient(
            listen=Address.parse(listen),
            target=Address.parse(target),
            files=TLSFiles(cert, key, bundle),
            expect=SpiffeId.parse(expect),
            limits=Limits(**limits),
            crl=revocation,
        )
        asyncio.run(run_until_signalled(client))
    finally:
        if revocation is not None:
            revocation.close()
