"""A PKI per key type, written by the certwright CLI, for the interop peers to read.

Everything is produced the way an operator would produce it (``ca init``, ``issue``,
``key``, ``csr``, ``pkcs12`` through the CLI, in-process via ``CliRunner``), so the peers
see exactly the files certwright writes.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.certs import mint_outside_constraints
from support.cli import DEFAULT_OID, TRUST_DOMAIN, ZONE, run_cli

PASSPHRASE = "interop test passphrase"
P12_PASSPHRASE = "pkcs12 passphrase"
EXTENSION_OID = DEFAULT_OID  # build_pki keeps certwright's default authorization extension OID
WEB = f"spiffe://{TRUST_DOMAIN}/ns/prod/web"


def cli(*args: str | Path) -> str:
    """Run ``certwright ARGS`` in-process with the CA passphrase set; assert success."""
    outcome = run_cli(*args, passphrase=PASSPHRASE)
    assert outcome.code == 0, f"certwright {' '.join(map(str, args))}: {outcome.stderr}"
    return outcome.stdout


def run(
    program: str, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an external program (never raising on its exit code); output as text."""
    return subprocess.run(
        [program, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@dataclass(frozen=True)
class PKI:
    """A CA directory and what was issued from it, all as files."""

    key_type: str
    ca: Path
    mtls: Path  # PREFIX: leaf with identity, roles, DNS and IP SANs
    server: Path  # PREFIX: server-only leaf
    client: Path  # PREFIX: client-only leaf
    ocsp: Path  # PREFIX: OCSP responder
    csr: Path  # a CSR made by `certwright csr`
    p12: Path  # `certwright pkcs12` of the mtls leaf
    p12_passphrase_file: Path
    evil: Path  # a leaf outside the intermediate's name constraints (minted around the profile)

    @property
    def bundle(self) -> Path:
        return self.ca / "bundle.pem"

    @property
    def intermediate(self) -> Path:
        return self.ca / "intermediate.pem"


def build_pki(base: Path, key_type: str) -> PKI:
    """A CA of ``key_type`` in ``base/ca`` and everything the peers read, issued from it."""
    ca = base / "ca"
    cli(
        "ca",
        "init",
        "--dir",
        ca,
        "--name",
        f"Interop {key_type}",
        "--trust-domain",
        TRUST_DOMAIN,
        "--dns-zone",
        ZONE,
        "--key-type",
        key_type,
    )
    kt = ("--key-type", key_type)
    cli(
        "issue",
        "--ca",
        ca,
        "--profile",
        "mtls",
        "--identity",
        WEB,
        "--role",
        "reader",
        "--attr",
        "env=prod",
        "--dns",
        f"web.{ZONE}",
        "--ip",
        "10.0.0.7",
        *kt,
        "--out",
        base / "web",
    )
    cli(
        "issue",
        "--ca",
        ca,
        "--profile",
        "server",
        "--dns",
        f"api.{ZONE}",
        "--ip",
        "127.0.0.1",
        *kt,
        "--out",
        base / "api",
    )
    cli(
        "issue",
        "--ca",
        ca,
        "--profile",
        "client",
        "--identity",
        f"spiffe://{TRUST_DOMAIN}/ns/prod/batch",
        "--role",
        "writer",
        *kt,
        "--out",
        base / "batch",
    )
    cli(
        "issue",
        "--ca",
        ca,
        "--profile",
        "ocsp-responder",
        "--subject",
        "CN=Interop OCSP",
        *kt,
        "--out",
        base / "ocsp",
    )
    cli("key", "--type", key_type, "--out", base / "req.key")
    cli(
        "csr",
        "--key",
        base / "req.key",
        "--identity",
        WEB,
        "--dns",
        f"web.{ZONE}",
        "--subject",
        "CN=web",
        "--out",
        base / "req.csr",
    )
    (base / "p12pw").write_text(P12_PASSPHRASE + "\n")
    cli(
        "pkcs12",
        "--cert",
        base / "web.pem",
        "--key",
        base / "web.key",
        "--chain",
        base / "web.chain.pem",
        "--passphrase-file",
        base / "p12pw",
        "--name",
        "web",
        "--out",
        base / "web.p12",
    )
    return PKI(
        key_type=key_type,
        ca=ca,
        mtls=base / "web",
        server=base / "api",
        client=base / "batch",
        ocsp=base / "ocsp",
        csr=base / "req.csr",
        p12=base / "web.p12",
        p12_passphrase_file=base / "p12pw",
        evil=mint_outside_constraints(ca, base / "evil.pem", passphrase=PASSPHRASE),
    )
