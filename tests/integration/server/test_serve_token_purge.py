"""``certwright serve`` deletes enrolment tokens that expired unredeemed (``token_retention``).

The real program, with its maintenance loop made to run every second: a token that
expired unused disappears from the inventory with one audit event, and a live token stays.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.serve_process import ServeProcess

DEADLINE = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    env = {"CERTWRIGHT_RENEW_CHECK": "1s", "CERTWRIGHT_TOKEN_RETENTION": "1s"}
    with ServeProcess(tmp_path / "data", "--workers", "2", env=env) as running:
        yield running


def create_token(server: ServeProcess, identity: str, ttl: str) -> str:
    d = server.directory
    context = ssl.create_default_context(cafile=str(d / "bundle.pem"))
    context.load_cert_chain(d / "admin.pem", d / "admin.key")
    with httpx.Client(verify=context) as client:
        response = client.post(f"{server.api_url}/v1/tokens", json={"identity": identity, "ttl": ttl})
    assert response.status_code == 201, response.text
    return str(response.json()["token_id"])


def rows(server: ServeProcess, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(server.directory / "ca" / "inventory.db")) as db:
        return db.execute(sql).fetchall()


def test_an_unredeemed_expired_token_is_purged_and_audited_a_live_one_stays(server: ServeProcess) -> None:
    dead = create_token(server, "spiffe://example.org/purge/dead", "1s")
    live = create_token(server, "spiffe://example.org/purge/live", "1h")
    deadline = time.monotonic() + DEADLINE
    while (dead,) in rows(server, "SELECT token_id FROM enrollment_tokens"):
        assert time.monotonic() < deadline, f"token {dead} still there\n{server.output}"
        time.sleep(0.1)
    assert rows(server, "SELECT token_id FROM enrollment_tokens") == [(live,)]
    [(actor, details)] = rows(server, "SELECT actor, details FROM audit_events WHERE subject = 'tokens'")
    assert actor == "certwright-serve"
    assert json.loads(str(details))["purged"] == 1
    deadline = time.monotonic() + DEADLINE
    while "purged 1 enrolment tokens" not in server.output:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.1)
