"""The three services of the mesh example: web, payments and ledger, one per process.

Each is a small Starlette app served by uvicorn through :mod:`certwright.mtls.uvicorn`,
wrapped in certwright's :class:`~certwright.mtls.asgi.MTLSMiddleware`: the middleware reads
the client certificate of every request, turns it into a verified ``Peer`` (SPIFFE
identity and roles) and asks the access policy (``policy.toml``, reloaded when it changes)
whether that peer may call this service with this method and path. Refused requests never
reach the app; allowed ones find ``request.state.peer`` and ``request.state.access_decision``.

Calls between services go through certwright's httpx client, which presents the calling
service's certificate and checks that the server answering is the service it meant to
reach (its SPIFFE ID), before a single request byte is sent.

Run one service (``run.py`` does this for all three)::

    python examples/mesh/services.py payments --certs DIR --policy examples/mesh/policy.toml \\
        --peer ledger=https://127.0.0.1:PORT

It reads ``DIR/payments.chain.pem`` (leaf + intermediate), ``DIR/payments.key`` and
``DIR/bundle.pem`` (the root), binds 127.0.0.1 on ``--port`` (default 0: any free port),
prints ``listening NAME https://127.0.0.1:PORT`` once bound, and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from certwright.mtls import uvicorn as mtls_uvicorn
from certwright.mtls.asgi import peer_of
from certwright.mtls.client import async_httpx_client
from certwright.mtls.context import TLSFiles
from certwright.mtls.peer import PeerVerifier
from certwright.mtls.policy_source import PolicySource

TRUST_DOMAIN = "mesh.example"
SERVICES = ("web", "payments", "ledger")


def identity(name: str) -> str:
    """The SPIFFE ID of a workload of the example."""
    return f"spiffe://{TRUST_DOMAIN}/{name}"


def workload_files(certs: Path, name: str) -> TLSFiles:
    """The files ``certwright issue --out certs/NAME`` wrote, plus the CA's trust bundle."""
    return TLSFiles(cert=certs / f"{name}.chain.pem", key=certs / f"{name}.key", bundle=certs / "bundle.pem")


def answer(request: Request, status: int = 200, **data: Any) -> JSONResponse:
    """A JSON answer that says who served it, who called, and which policy rule let them in."""
    decision = request.state.access_decision
    body = {"service": request.app.state.name, "caller": str(peer_of(request).identity),
            "rule": decision.rule, **data}
    return JSONResponse(body, status_code=status)


async def call(request: Request, target: str, method: str, path: str, body: Any) -> dict[str, Any]:
    """Call another service of the mesh as this one; the hop's answer (or refusal) is returned."""
    client: httpx.AsyncClient = request.app.state.clients[target]
    response = await client.request(method, path, json=body)
    return {"status": response.status_code, **response.json()}


# --- ledger: books entries ------------------------------------------------------------------------


async def ledger_add(request: Request) -> JSONResponse:
    entries: list[dict[str, Any]] = request.app.state.entries
    entry = {"id": len(entries) + 1, **(await request.json()), "booked_by": str(peer_of(request).identity)}
    entries.append(entry)
    return answer(request, 201, entry=entry)


async def ledger_list(request: Request) -> JSONResponse:
    return answer(request, entries=request.app.state.entries)


async def ledger_one(request: Request) -> JSONResponse:
    entries: list[dict[str, Any]] = request.app.state.entries
    number = int(request.path_params["id"])
    if not 1 <= number <= len(entries):
        return answer(request, 404, error="no such entry")
    return answer(request, entry=entries[number - 1])


# --- payments: charges, each booked in the ledger -------------------------------------------------


async def payments_charge(request: Request) -> JSONResponse:
    charges: dict[int, dict[str, Any]] = request.app.state.charges
    order = await request.json()
    charge = {"id": len(charges) + 1, "order": order.get("order"), "amount": order.get("amount")}
    booked = await call(request, "ledger", "POST", "/v1/entries",
                        {"charge": charge["id"], "amount": charge["amount"]})
    if booked["status"] != 201:
        return answer(request, 502, error="the ledger refused the entry", ledger=booked)
    charges[charge["id"]] = charge
    return answer(request, 201, charge=charge, ledger=booked)


async def payments_get(request: Request) -> JSONResponse:
    charge = request.app.state.charges.get(int(request.path_params["id"]))
    if charge is None:
        return answer(request, 404, error="no such charge")
    return answer(request, charge=charge)


async def payments_refund(request: Request) -> JSONResponse:
    # Reachable only if the policy allowed DELETE, which it does not for anyone.
    charge = request.app.state.charges.pop(int(request.path_params["id"]), None)
    return answer(request, refunded=charge)


async def payments_settings(request: Request) -> JSONResponse:
    return answer(request, settings={"currency": "EUR", "fraud_threshold": 10_000})


# --- web: the storefront's backend ----------------------------------------------------------------


async def web_checkout(request: Request) -> JSONResponse:
    order = await request.json()
    charged = await call(request, "payments", "POST", "/v1/payments/charges", order)
    status = 201 if charged["status"] == 201 else 502
    return answer(request, status, order=order, payments=charged)


ROUTES: Mapping[str, list[Route]] = {
    "ledger": [
        Route("/v1/entries", ledger_add, methods=["POST"]),
        Route("/v1/entries", ledger_list, methods=["GET"]),
        Route("/v1/entries/{id:int}", ledger_one, methods=["GET"]),
    ],
    "payments": [
        Route("/v1/payments/charges", payments_charge, methods=["POST"]),
        Route("/v1/payments/charges/{id:int}", payments_get, methods=["GET"]),
        Route("/v1/payments/charges/{id:int}", payments_refund, methods=["DELETE"]),
        Route("/v1/admin/settings", payments_settings, methods=["GET"]),
    ],
    "web": [Route("/checkout", web_checkout, methods=["POST"])],
}


def make_app(name: str, files: TLSFiles, peers: Mapping[str, str]) -> Starlette:
    """The Starlette app of service ``name``; ``peers`` maps the services it calls to URLs."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One client per downstream service, each expecting that service's identity.
        async with contextlib.AsyncExitStack() as stack:
            app.state.clients = {
                target: await stack.enter_async_context(
                    async_httpx_client(files, expect=identity(target), base_url=url, timeout=10.0)
                )
                for target, url in peers.items()
            }
            yield

    app = Starlette(routes=ROUTES[name], lifespan=lifespan)
    app.state.name = name
    app.state.entries = []
    app.state.charges = {}
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one service of the mesh example.")
    parser.add_argument("name", choices=SERVICES)
    parser.add_argument("--certs", type=Path, required=True, help="directory of the issued files")
    parser.add_argument("--policy", type=Path, required=True, help="access policy (TOML)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=URL",
                        help="a service this one calls (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(name)s %(levelname)s %(message)s")
    peers = dict(item.split("=", 1) for item in args.peer)
    files = workload_files(args.certs, args.name)
    config = mtls_uvicorn.config(
        make_app(args.name, files, peers),
        files=files,
        host="127.0.0.1",
        port=args.port,
        verifier=PeerVerifier(files.bundle, trust_domain=TRUST_DOMAIN),
        policy=PolicySource(args.policy),
        service=args.name,
        log_level="warning",
    )
    server = mtls_uvicorn.MTLSServer(config)  # bound now: the port is known before serving
    print(f"listening {args.name} {server.url}", flush=True)
    server.run()  # until SIGTERM / SIGINT, then a graceful shutdown
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
