"""Reload commands, signals, and the two log formats."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from certwright.agent.hooks import HookError, ReloadCommand, SignalProcess
from certwright.agent.logs import JSONFormatter, TextFormatter
from certwright.errors import InvalidInputError


def test_reload_command_failure_and_timeout_are_errors() -> None:
    ReloadCommand("true").run()
    with pytest.raises(HookError, match="exited with 4: boom"):
        ReloadCommand("echo boom >&2; exit 4").run()
    with pytest.raises(HookError, match="did not finish"):
        ReloadCommand("sleep 5", timeout=0.2).run()


@pytest.mark.parametrize(
    ("text", "target", "signum"),
    [
        ("1234:HUP", 1234, signal.SIGHUP),
        ("/run/x.pid:SIGUSR1", Path("/run/x.pid"), signal.SIGUSR1),
        ("77:15", 77, signal.SIGTERM),
    ],
)
def test_signal_parse(text: str, target: int | Path, signum: signal.Signals) -> None:
    parsed = SignalProcess.parse(text)
    assert (parsed.target, parsed.signal) == (target, signum)


@pytest.mark.parametrize("text", ["HUP", "12:", "12:NOPE"])
def test_signal_parse_refuses(text: str) -> None:
    with pytest.raises(InvalidInputError):
        SignalProcess.parse(text)


def test_signal_reaches_the_process_named_in_a_pid_file(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / "svc.pid"
        pid_file.write_text(f"{child.pid}\n")
        SignalProcess.parse(f"{pid_file}:TERM").run()
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with pytest.raises(HookError, match="no process"):
        SignalProcess(child.pid, signal.SIGHUP).run()


def test_signal_refuses_process_groups_and_init() -> None:
    for pid in (0, 1):
        with pytest.raises(HookError, match="refusing"):
            SignalProcess(pid, signal.SIGHUP).run()


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("certwright.agent", logging.INFO, __file__, 1, "renewed %s", ("x",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_log_lines_carry_the_fields() -> None:
    line = JSONFormatter().format(_record(event="renewed", serial="1f", attempt=2))
    document = json.loads(line)
    assert document["message"] == "renewed x"
    assert (document["event"], document["serial"], document["attempt"]) == ("renewed", "1f", 2)
    assert document["level"] == "info"


def test_text_log_lines_end_with_the_fields() -> None:
    line = TextFormatter().format(_record(event="renewed", serial="1f"))
    assert line.endswith("info renewed x serial=1f")
