"""The renewal loop against a real in-memory CA (fake network only), on a fixed clock."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
from pathlib import Path

import pytest

from certwright.agent import Agent, Outcome, ReloadCommand, RenewalPolicy, ServerRefused
from certwright.agent.layout import CERT, KEY, CredentialDir, Credentials
from certwright.clock import FixedClock
from certwright.x509.names import SubjectAltNames
from support.agent_ca import IDENTITY, LIFETIME, UNREACHABLE, FakeCA, config
from support.pki import TestPKI

HOUR = datetime.timedelta(hours=1)


def make_agent(ca: FakeCA, clock: FixedClock, directory: Path, **changes: object) -> Agent:
    return Agent(config(directory, **changes), transport=ca, clock=clock, random_source=lambda: 1.0)


def test_not_due_does_nothing(ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials) -> None:
    clock.advance(LIFETIME / 2)
    result = make_agent(ca, clock, workdir).run_once()
    assert result.outcome is Outcome.NOT_DUE
    assert result.next_check == enrolled.obtained_at + LIFETIME * (2 / 3)
    assert ca.calls == []


def test_due_renews_with_a_fresh_key_same_identity_and_names(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials
) -> None:
    clock.advance(LIFETIME * 0.7)
    result = make_agent(ca, clock, workdir).run_once()
    assert result.outcome is Outcome.RENEWED
    now = CredentialDir(workdir).load()
    assert now.certificate != enrolled.certificate
    assert now.key.public_key() != enrolled.key.public_key()
    assert str(now.identity) == IDENTITY
    assert SubjectAltNames.of(now.certificate).dns == ("web.example.org",)
    assert now.obtained_at == clock.now()


def test_reuse_key_keeps_the_key(ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials) -> None:
    clock.advance(LIFETIME * 0.7)
    make_agent(ca, clock, workdir, policy=RenewalPolicy(fresh_key=False)).run_once()
    assert (workdir / KEY).read_bytes() == enrolled.files()[KEY]
    assert (workdir / CERT).read_bytes() != enrolled.files()[CERT]


def test_many_renewals_in_a_row_never_let_it_expire(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials
) -> None:
    agent = make_agent(ca, clock, workdir, policy=RenewalPolicy())  # default jitter
    serials = set()
    for _ in range(10):
        result = agent.run_once()
        assert result.outcome in (Outcome.NOT_DUE, Outcome.RENEWED)
        assert result.next_check is not None
        current = CredentialDir(workdir).load()
        assert clock.now() < current.not_after
        serials.add(current.serial_hex)
        clock.current = result.next_check + datetime.timedelta(seconds=1)
    assert len(serials) >= 5


def test_ca_down_keeps_old_pair_and_backs_off(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials
) -> None:
    clock.advance(LIFETIME * 0.7)
    ca.fail = UNREACHABLE
    agent = make_agent(ca, clock, workdir)
    delays = []
    for _ in range(4):
        result = agent.run_once()
        assert result.outcome is Outcome.FAILED and result.transient
        delays.append(agent.delay_after(result))
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert CredentialDir(workdir).load().certificate == enrolled.certificate
    ca.fail = None
    assert agent.run_once().outcome is Outcome.RENEWED
    assert agent.failures == 0


def test_backoff_capped_by_time_left(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials
) -> None:
    clock.current = enrolled.not_after - datetime.timedelta(seconds=40)
    ca.fail = UNREACHABLE
    agent = make_agent(ca, clock, workdir, check_interval=3600.0)
    for _ in range(12):
        result = agent.run_once()
    assert agent.delay_after(result) == 10.0  # a quarter of 40 s, not 2^11 s


def test_missing_files_without_token_are_reported(ca: FakeCA, clock: FixedClock, workdir: Path) -> None:
    result = make_agent(ca, clock, workdir).run_once()
    assert result.outcome is Outcome.FAILED and not result.transient
    assert "no enrolment token" in (result.error or "")
    assert ca.calls == []


@pytest.mark.parametrize("damage", ["delete", "corrupt", "expire"])
def test_damage_is_repaired_with_a_token_reported_without(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials, tmp_path: Path, damage: str
) -> None:
    if damage == "delete":
        (workdir / CERT).unlink()
    elif damage == "corrupt":
        (workdir / CERT).write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    else:
        clock.current = enrolled.not_after + datetime.timedelta(seconds=1)
    without = make_agent(ca, clock, workdir).run_once()
    assert without.outcome is Outcome.FAILED and not without.transient
    assert "cannot be repaired" in (without.error or "")
    token = tmp_path / "token"
    token.write_text("secret-1\n")
    ca.tokens["secret-1"] = IDENTITY
    repaired = make_agent(ca, clock, workdir, token_file=token).run_once()
    assert repaired.outcome is Outcome.ENROLLED
    now = CredentialDir(workdir).load()
    assert str(now.identity) == IDENTITY and clock.now() < now.not_after
    # A spent token cannot repair twice: reported, not retried in a loop of enrolments.
    (workdir / CERT).unlink()
    again = make_agent(ca, clock, workdir, token_file=token).run_once()
    assert again.outcome is Outcome.FAILED and not again.transient


def test_refused_renewal_reenrols_with_token(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials, tmp_path: Path
) -> None:
    clock.advance(LIFETIME * 0.7)
    ca.fail = ServerRefused(403, "Renewal refused", "certificate 1f is revoked (keyCompromise): enrol again")
    assert make_agent(ca, clock, workdir).run_once().outcome is Outcome.FAILED
    token = tmp_path / "token"
    token.write_text("secret-2")
    ca.tokens["secret-2"] = IDENTITY
    agent = make_agent(ca, clock, workdir, token_file=token)
    ca.fail = None
    ca.renew = lambda *a, **k: (_ for _ in ()).throw(  # type: ignore[method-assign]
        ServerRefused(403, "Renewal refused", "revoked")
    )
    assert agent.run_once().outcome is Outcome.ENROLLED


@pytest.mark.parametrize("tamper", ["key", "identity", "chain"])
def test_a_wrong_answer_is_never_written(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials, tamper: str
) -> None:
    clock.advance(LIFETIME * 0.7)
    ca.tamper = tamper
    result = make_agent(ca, clock, workdir).run_once()
    assert result.outcome is Outcome.FAILED
    assert CredentialDir(workdir).load().certificate == enrolled.certificate


def test_bundle_is_refreshed_and_a_bad_one_ignored(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials
) -> None:
    other_root = TestPKI.create(name="Next").root
    clock.advance(LIFETIME * 0.7)
    ca.bundle = (ca.pki.root, other_root)  # a rotation: old and new roots
    make_agent(ca, clock, workdir).run_once()
    assert CredentialDir(workdir).load().bundle == (ca.pki.root, other_root)
    clock.advance(LIFETIME * 0.7)
    ca.bundle = (other_root,)  # would not anchor our own chain: kept the previous one
    assert make_agent(ca, clock, workdir).run_once().outcome is Outcome.RENEWED
    assert CredentialDir(workdir).load().bundle == (ca.pki.root, other_root)


def test_reload_hook_runs_after_a_change_and_its_failure_is_reported(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials, tmp_path: Path
) -> None:
    marker = tmp_path / "reloads"
    ok = ReloadCommand(f'echo "$CERTWRIGHT_AGENT_DIR" >> {marker}', directory=workdir)
    agent = make_agent(ca, clock, workdir, hooks=(ok,))
    agent.run_once()
    assert not marker.exists()  # nothing changed, nothing to reload
    clock.advance(LIFETIME * 0.7)
    assert agent.run_once().outcome is Outcome.RENEWED
    assert marker.read_text() == f"{workdir}\n"
    failing = make_agent(ca, clock, workdir, hooks=(ReloadCommand("exit 3"),))
    clock.advance(LIFETIME * 0.7)
    result = failing.run_once()
    assert result.outcome is Outcome.FAILED and "exited with 3" in (result.error or "")
    assert failing.run_once().outcome is Outcome.FAILED  # retried though nothing new was due


def test_health_file(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials, tmp_path: Path
) -> None:
    health = tmp_path / "health.json"
    agent = make_agent(ca, clock, workdir, health_file=health)
    clock.advance(HOUR)
    agent.run_once()
    document = json.loads(health.read_text())
    assert document["status"] == "ok"
    assert document["seconds_left"] == int((enrolled.not_after - clock.now()).total_seconds())
    assert document["identity"] == IDENTITY and document["last_error"] is None
    clock.advance(LIFETIME * 0.65)
    ca.fail = UNREACHABLE
    agent.run_once()
    document = json.loads(health.read_text())
    assert document["status"] == "degraded" and "cannot reach" in document["last_error"]
    assert document["not_after"] == enrolled.not_after.isoformat()


def test_run_forever_on_a_thread_renews_and_stops(
    ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials
) -> None:
    clock.advance(LIFETIME * 0.7)
    agent = make_agent(ca, clock, workdir, check_interval=0.05)
    running = agent.start()
    try:
        deadline = threading.Event()
        for _ in range(200):
            if CredentialDir(workdir).load().certificate != enrolled.certificate:
                break
            deadline.wait(0.05)
    finally:
        running.stop()
    assert not running.thread.is_alive()
    assert CredentialDir(workdir).load().certificate != enrolled.certificate


def test_run_async(ca: FakeCA, clock: FixedClock, workdir: Path, enrolled: Credentials) -> None:
    clock.advance(LIFETIME * 0.7)
    agent = make_agent(ca, clock, workdir, check_interval=0.05)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run_async(stop))
        for _ in range(200):
            if ca.calls:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(main())
    assert ca.calls == ["renew"]
