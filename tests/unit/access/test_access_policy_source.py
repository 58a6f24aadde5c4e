"""certwright.mtls.policy_source: reload on change, keep the old policy when the new one is bad."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

import certwright.mtls.policy_source as policy_source
from certwright.access import Decision, PolicyError, Request, Subject
from certwright.mtls.policy_source import PolicySource

WEB = Subject("spiffe://example.org/web")
READ = Request("payments", "GET", "/v1/payments/1")


def policy_text(service: str) -> str:
    return (
        "version = 1\n\n[[rule]]\n"
        f'name = "web-{service}"\nservices = ["{service}"]\nidentities = ["spiffe://example.org/web"]\n'
    )


BAD = 'version = 1\n[[rule]]\nname = "x"\nservices = ["payments"]\nroles = ["r"]\nmethods = ["GTE"]\n'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(policy_text("payments"))
    return path


def rewrite(path, text: str) -> None:
    """Replace the file as deploy tools do (write a temporary file, rename it into place)."""
    staging = path.with_suffix(".tmp")
    staging.write_text(text)
    os.replace(staging, path)


def test_first_load_must_succeed(tmp_path, clock):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    with pytest.raises(PolicyError) as info:
        PolicySource(bad, clock=clock)
    assert info.value.line == 6
    with pytest.raises(PolicyError, match="cannot read"):
        PolicySource(tmp_path / "missing.toml", clock=clock)


def test_decides_with_the_file_policy(path, clock):
    source = PolicySource(path, clock=clock)
    decision = source.decide(WEB, READ)
    assert decision == Decision(
        True, f"allowed by rule 'web-payments' ({path} line 3)", f"web-payments ({path} line 3)"
    )
    assert source.current() is source.current()


def test_change_is_picked_up_after_the_interval_only(path, clock):
    source = PolicySource(path, clock=clock)
    rewrite(path, policy_text("ledger"))
    assert source.decide(WEB, READ)  # not checked yet: within the interval
    clock.tick(0.5)
    assert source.decide(WEB, READ)
    clock.tick(0.5)
    assert not source.decide(WEB, READ)
    assert source.decide(WEB, Request("ledger"))


def test_in_place_edit_is_picked_up(path, clock):
    source = PolicySource(path, clock=clock)
    path.write_text(policy_text("ledger-in-place"))  # same inode, new size
    clock.tick()
    assert source.decide(WEB, Request("ledger-in-place"))


def test_the_file_is_checked_at_most_once_per_interval(path, clock, monkeypatch):
    source = PolicySource(path, clock=clock)
    calls = []
    real_stat = os.stat
    monkeypatch.setattr(policy_source.os, "stat", lambda p: calls.append(p) or real_stat(p))
    for _ in range(1000):
        source.decide(WEB, READ)
    assert calls == []
    clock.tick()
    for _ in range(1000):
        source.decide(WEB, READ)
    assert len(calls) == 1


def test_bad_new_version_keeps_the_old_policy_and_logs_the_line(path, clock, caplog):
    source = PolicySource(path, clock=clock)
    rewrite(path, BAD)
    clock.tick()
    with caplog.at_level(logging.ERROR, logger="certwright.mtls.policy"):
        assert source.decide(WEB, READ)  # still the old policy
        for _ in range(3):  # the same bad version is reported once, not every second
            clock.tick()
            assert source.decide(WEB, READ)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"{path}:6:" in errors[0] and "GTE" in errors[0] and "keeping the policy in force" in errors[0]
    assert source.last_error is not None and f"{path}:6:" in source.last_error
    # Fixed: the fixed version takes over, and the error is cleared.
    rewrite(path, policy_text("ledger"))
    clock.tick()
    assert source.decide(WEB, Request("ledger"))
    assert source.last_error is None


def test_truncated_file_is_refused_not_read_as_deny_all(path, clock):
    source = PolicySource(path, clock=clock)
    path.write_text("")
    clock.tick()
    assert source.decide(WEB, READ)
    assert "missing `version = 1`" in (source.last_error or "")


def test_missing_file_keeps_the_old_policy(path, clock, caplog):
    source = PolicySource(path, clock=clock)
    path.unlink()
    clock.tick()
    with caplog.at_level(logging.ERROR, logger="certwright.mtls.policy"):
        assert source.decide(WEB, READ)
    assert "cannot read the policy" in (source.last_error or "")
    path.write_text(policy_text("payments"))  # restored, same content: back to normal
    clock.tick()
    assert source.decide(WEB, READ)
    assert source.last_error is None


def test_reload_checks_now_and_says_whether_it_changed(path, clock):
    source = PolicySource(path, clock=clock)
    assert source.reload() is False
    rewrite(path, policy_text("ledger"))
    assert source.reload() is True
    assert source.reload() is False


def test_on_change_is_called_and_its_failure_does_not_escape(path, clock, caplog):
    seen = []

    def on_change(policy):
        seen.append(policy)
        raise RuntimeError("callback bug")

    source = PolicySource(path, clock=clock, on_change=on_change)
    rewrite(path, policy_text("ledger"))
    clock.tick()
    with caplog.at_level(logging.ERROR, logger="certwright.mtls.policy"):
        assert source.decide(WEB, Request("ledger"))
    assert [p.rules[0].name for p in seen] == ["web-ledger"]
    assert any("on_change callback failed" in r.getMessage() for r in caplog.records)


def test_concurrent_deciders_see_one_policy_or_the_other(path):
    # Real clock, zero interval: every call may check the file while another thread rewrites it.
    source = PolicySource(path, interval=0.0)
    errors: list[BaseException] = []
    outcomes: set[str | None] = set()
    stop = threading.Event()

    def decide() -> None:
        try:
            while not stop.is_set():
                decision = source.decide(WEB, READ)
                assert decision.reason.startswith(("allowed by rule 'web-payments'", "denied: no rule"))
                outcomes.add(decision.rule)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=decide) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        versions = [policy_text("payments"), BAD, policy_text("ledger")]
        for index in range(60):
            rewrite(path, versions[index % 3])
        rewrite(path, policy_text("ledger"))
        deadline = time.monotonic() + 10
        while source.current().rules[0].name != "web-ledger" and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not errors, errors
    assert source.current().rules[0].name == "web-ledger"
