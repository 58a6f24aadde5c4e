"""``certwright tunnel`` as real processes on 127.0.0.1, in front of ``python3 -m http.server``.

curl is the mTLS client (as an operator would test a tunnel): an allowed certificate gets
the page; another identity, no certificate, a revoked certificate and a certificate from
another CA do not. The tunnel client is tested end to end (curl over plain HTTP to it),
against the real server and against an impostor with the right CN and the wrong URI.
Every process is stopped by PID when its test ends.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.cli import run_cli
from support.env import require_tool
from support.pki import TestPKI, WorkloadFiles
from support.tunnel_procs import DEADLINE, http_server, tunnel

TUNNEL_ID = "spiffe://example.org/tunnel"
WEB_ID = "spiffe://example.org/web"
BATCH_ID = "spiffe://example.org/batch"
PAGE = "certwright tunnel test page 7f3a"
HOST = "tunnel.example.org"


@dataclass(frozen=True)
class Setup:
    pki: TestPKI
    base: Path
    server: WorkloadFiles  # the tunnel server: TUNNEL_ID, DNS tunnel.example.org
    impostor: WorkloadFiles  # CN=tunnel and the same DNS name, but another URI
    web: WorkloadFiles  # allowed, role "reader"
    batch: WorkloadFiles  # another identity, no role
    revoked: WorkloadFiles  # WEB_ID, but revoked
    foreign: WorkloadFiles  # WEB_ID from another CA
    crl: Path
    http_port: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("tunnel")
    pki = TestPKI.create()
    bundle = pki.bundle_pem
    revoked = pki.leaf(WEB_ID, roles=("reader",))
    pki.revoke(revoked.serial)
    crl = base / "ca.crl"
    crl.write_bytes(pki.crl_pem())
    site = base / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE)
    with http_server(site, base / "http.log") as port:
        yield Setup(
            pki=pki,
            base=base,
            server=pki.leaf(TUNNEL_ID, subject="CN=tunnel", dns=(HOST,)).write(base / "server", bundle),
            impostor=pki.leaf("spiffe://example.org/impostor", subject="CN=tunnel", dns=(HOST,)).write(
                base / "impostor", bundle
            ),
            web=pki.leaf(WEB_ID, roles=("reader",)).write(base / "web", bundle),
            batch=pki.leaf(BATCH_ID).write(base / "batch", bundle),
            revoked=revoked.write(base / "revoked", bundle),
            foreign=TestPKI.create(name="Foreign").leaf(WEB_ID).write(base / "foreign", bundle),
            crl=crl,
            http_port=port,
        )


def tls_args(files: WorkloadFiles) -> list[str | Path]:
    return ["--cert", files.cert, "--key", files.key, "--bundle", files.bundle]


def curl(url: str, port: int, files: WorkloadFiles | None, bundle: Path) -> subprocess.CompletedProcess[str]:
    args = [require_tool("curl"), "-sS", "--max-time", "15", "--cacert", str(bundle)]
    args += ["--resolve", f"{HOST}:{port}:127.0.0.1"]
    if files is not None:
        args += ["--cert", str(files.cert), "--key", str(files.key)]
    return subprocess.run([*args, url], capture_output=True, text=True, timeout=60, check=False)


def test_tunnel_server_lets_only_allowed_unrevoked_peers_reach_http_server(setup: Setup) -> None:
    args = [*tls_args(setup.server), "--target", f"127.0.0.1:{setup.http_port}", "--allow", WEB_ID]
    with tunnel("server", *args, "--crl", setup.crl, log=setup.base / "server1.log") as (proc, port):
        url = f"https://{HOST}:{port}/index.html"
        allowed = curl(url, port, setup.web, setup.server.bundle)
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout == PAGE
        for who in (setup.batch, None, setup.revoked, setup.foreign):
            refused = curl(url, port, who, setup.server.bundle)
            assert refused.returncode != 0, who
            assert PAGE not in refused.stdout
        log = proc.wait_count(r"denied ", 4)
    assert re.search(
        rf"allowed 127\.0\.0\.1:\d+ {WEB_ID} serial=0x[0-9a-f]+ roles=reader: --allow {WEB_ID}", log
    )
    assert re.search(rf"denied 127\.0\.0\.1:\d+ {BATCH_ID} serial=.*no --allow pattern", log)
    assert re.search(r"denied 127\.0\.0\.1:\d+: certificate revoked", log)
    assert len(re.findall(r"denied 127\.0\.0\.1:\d+: TLS handshake failed", log)) == 2  # none; other CA
    assert proc.stop() == 0  # SIGTERM: a clean exit
    assert "tunnel server stopped" in proc.output()


def test_tunnel_server_with_a_policy_file(setup: Setup) -> None:
    policy = setup.base / "policy.toml"
    policy.write_text(
        f'version = 1\n\n[[rule]]\nname = "web-to-site"\nservices = ["site"]\nidentities = ["{WEB_ID}"]\n'
    )
    args = [*tls_args(setup.server), "--target", f"127.0.0.1:{setup.http_port}"]
    with tunnel("server", *args, "--policy", policy, "--service", "site", log=setup.base / "s2.log") as (
        proc,
        port,
    ):
        url = f"https://{HOST}:{port}/"
        assert PAGE in curl(url, port, setup.web, setup.server.bundle).stdout
        assert curl(url, port, setup.batch, setup.server.bundle).returncode != 0
        proc.wait_for(r"denied .*no rule allows")
        assert "allowed by rule 'web-to-site'" in proc.output()


def test_tunnel_client_end_to_end_and_refuses_an_impostor(setup: Setup) -> None:
    target = ["--target", f"127.0.0.1:{setup.http_port}", "--allow", WEB_ID]
    with (
        tunnel("server", *tls_args(setup.server), *target, log=setup.base / "s3.log") as (_s, sport),
        tunnel("server", *tls_args(setup.impostor), *target, log=setup.base / "imp.log") as (_i, iport),
    ):
        client_args = [*tls_args(setup.web), "--expect", TUNNEL_ID]
        with tunnel("client", *client_args, "--target", f"127.0.0.1:{sport}", log=setup.base / "c1.log") as (
            _c,
            cport,
        ):
            page = subprocess.run(
                [require_tool("curl"), "-sS", "--max-time", "15", f"http://127.0.0.1:{cport}/"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert page.stdout == PAGE, page.stderr
        with tunnel("client", *client_args, "--target", f"127.0.0.1:{iport}", log=setup.base / "c2.log") as (
            client,
            cport,
        ):
            refused = subprocess.run(
                [require_tool("curl"), "-sS", "--max-time", "15", f"http://127.0.0.1:{cport}/"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert refused.returncode != 0
            assert PAGE not in refused.stdout
            client.wait_for(r"denied .*spiffe://example\.org/impostor, not the expected " + TUNNEL_ID)


def test_tunnel_client_presents_a_rotated_certificate_on_new_connections(
    setup: Setup, tmp_path: Path
) -> None:
    web = setup.pki.leaf(WEB_ID, roles=("reader",))
    files = web.write(tmp_path / "web", setup.pki.bundle_pem)
    target = ["--target", f"127.0.0.1:{setup.http_port}", "--allow", WEB_ID]
    with (
        tunnel("server", *tls_args(setup.server), *target, log=tmp_path / "s.log") as (server, sport),
        tunnel(
            "client",
            *tls_args(files),
            "--expect",
            TUNNEL_ID,
            "--target",
            f"127.0.0.1:{sport}",
            log=tmp_path / "c.log",
        ) as (_c, cport),
    ):
        fetch = [require_tool("curl"), "-sS", "--max-time", "15", f"http://127.0.0.1:{cport}/"]
        assert subprocess.run(fetch, capture_output=True, text=True, check=False).stdout == PAGE
        server.wait_for(f"serial={web.serial:#x}")
        renewed = setup.pki.leaf(WEB_ID, roles=("reader",))
        renewed.write(tmp_path / "web", setup.pki.bundle_pem)
        deadline = time.monotonic() + DEADLINE
        while f"serial={renewed.serial:#x}" not in server.output():
            assert time.monotonic() < deadline, server.output()
            assert subprocess.run(fetch, capture_output=True, text=True, check=False).stdout == PAGE
            time.sleep(0.2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "default"),
        (["--allow", "example.org/web"], "spiffe://"),
        (["--allow", WEB_ID, "--service", "site"], "--service only applies with --policy"),
        (["--allow", WEB_ID, "--target", "::1:80"], "brackets"),
    ],
)
def test_tunnel_server_refuses_configurations_that_make_no_sense(
    setup: Setup, extra: list[str], message: str
) -> None:
    outcome = run_cli(
        "tunnel",
        "server",
        "--listen",
        "127.0.0.1:0",
        "--target",
        "127.0.0.1:1",
        *tls_args(setup.server),
        *extra,
    )
    assert outcome.code == 1, outcome
    assert message in outcome.stderr


def test_tunnel_client_refuses_an_invalid_expect(setup: Setup) -> None:
    outcome = run_cli(
        "tunnel",
        "client",
        "--listen",
        "127.0.0.1:0",
        "--target",
        "127.0.0.1:1",
        *tls_args(setup.web),
        "--expect",
        "tunnel.example.org",
    )
    assert outcome.code == 1, outcome
    assert "spiffe://" in outcome.stderr
