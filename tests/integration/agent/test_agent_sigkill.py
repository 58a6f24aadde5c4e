"""SIGKILL the agent at every step of a write, and at random instants: a matching key and
certificate are always on disk.

Two ways: (1) a small driver runs the library's loop against the real server with a
checkpoint hook that SIGKILLs its own process at one named step, for every step of a
renewal (and of the first renewal of a directory written by ``certwright enroll``, which is
migrated to the symlink layout); (2) the real ``certwright agent --once --renew-at 0`` is
SIGKILLed after a random delay spread over its run time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from certwright.agent.layout import CredentialDir
from support.agent_procs import WEB, agent_command, agent_env, enroll, make_token, run_agent
from support.cli import certwright_exe
from support.serve_process import ServeProcess

DRIVER = """
import os, signal, sys
from pathlib import Path
from certwright.agent import Agent, AgentConfig, HTTPTransport

directory, server, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = 0

def checkpoint(step):
    global seen
    print(step, flush=True)
    if seen == target:
        os.kill(os.getpid(), signal.SIGKILL)
    seen += 1

agent = Agent(AgentConfig(directory=Path(directory)), transport=HTTPTransport(server), checkpoint=checkpoint)
result = agent.run_once(force=True)
print("outcome", result.outcome.value, result.error, flush=True)
"""


def drive(workdir: Path, server: ServeProcess, target: int = -1) -> subprocess.CompletedProcess[str]:
    """Run one forced renewal; SIGKILL at the ``target``-th step (counting from 0; -1: never)."""
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(workdir), server.api_url, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        env=agent_env(),
        check=False,
    )


def assert_whole_set(workdir: Path) -> int:
    """What a service would load now: parses, key matches certificate (load checks it)."""
    creds = CredentialDir(workdir).load()
    assert str(creds.identity) == WEB
    return creds.certificate.serial_number


def enroll_with_cli(server: ServeProcess, data: Path, out: Path) -> None:
    """A directory as ``certwright enroll`` writes it (regular files)."""
    token = make_token(server, data, WEB)
    done = subprocess.run(
        [str(certwright_exe()), "enroll", "--server", server.api_url, "--bundle", str(data / "bundle.pem"),
         "--token", token, "--out", str(out)],
        capture_output=True, text=True, timeout=60, env=agent_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (out / "cert.pem").is_symlink()


def steps_of(workdir: Path, server: ServeProcess) -> list[str]:
    done = drive(workdir, server)
    lines = done.stdout.splitlines()
    assert lines and lines[-1].startswith("outcome renewed"), done.stdout + done.stderr
    return lines[:-1]


def test_sigkill_at_every_step_of_a_write(server: ServeProcess, ca_data: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "web"
    enroll(server, ca_data, workdir)
    steps = steps_of(workdir, server)
    assert len(steps) >= 9, steps
    for index, step in enumerate(steps):
        before = assert_whole_set(workdir)
        done = drive(workdir, server, index)
        assert done.returncode == -signal.SIGKILL, (step, done.stdout, done.stderr)
        after = assert_whole_set(workdir)
        # Killed before the switch: the old set; after it: the new one. Either is whole.
        assert step in done.stdout
        if step.startswith("write:"):
            assert after == before, step
        if step in ("switch:synced", "collect:done") or step.startswith("link:"):
            assert after != before, step
    # The directory recovers: the next run cleans up and renews.
    assert drive(workdir, server).stdout.splitlines()[-1].startswith("outcome renewed")
    leftovers = [p.name for p in workdir.iterdir() if p.name.startswith("..tmp")]
    assert leftovers == []
    assert len([p for p in workdir.iterdir() if p.name.startswith("..20")]) == 2


def test_sigkill_while_migrating_an_enroll_directory(
    server: ServeProcess, ca_data: Path, tmp_path: Path
) -> None:
    probe = tmp_path / "probe"
    enroll_with_cli(server, ca_data, probe)
    steps = steps_of(probe, server)
    switched = steps.index("migrate:switched")
    final = steps.index("switch:renamed", switched + 1)  # the switch to the renewed set
    assert any(s.startswith("link:") for s in steps), steps  # regular files become links
    assert len(steps) >= 20, steps
    for index, step in enumerate(steps):
        workdir = tmp_path / f"web{index}"
        enroll_with_cli(server, ca_data, workdir)
        before = assert_whole_set(workdir)
        done = drive(workdir, server, index)
        assert done.returncode == -signal.SIGKILL, (step, done.stdout, done.stderr)
        after = assert_whole_set(workdir)
        if index < final:
            assert after == before, step  # migrating never changes what the names hold
        else:
            assert after != before, step
        finished = drive(workdir, server)
        assert finished.stdout.splitlines()[-1].startswith("outcome renewed"), finished.stdout
        assert assert_whole_set(workdir) != after
        assert all(
            (workdir / name).is_symlink() for name in ("key.pem", "cert.pem", "chain.pem", "bundle.pem")
        )


def test_sigkill_the_cli_at_random_instants(server: ServeProcess, ca_data: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "web"
    enroll(server, ca_data, workdir)
    started = time.monotonic()
    done = run_agent(workdir, server.api_url, "--once", "--renew-at", "0")
    assert done.returncode == 0, done.stderr
    duration = time.monotonic() - started
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    killed = 0
    for _ in range(24):
        before = assert_whole_set(workdir)
        started = time.monotonic()
        proc = subprocess.Popen(
            agent_command(workdir, server.api_url, "--once", "--renew-at", "0"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=agent_env(),
        )  # fmt: skip
        try:
            # The kill instant is the test's subject: spread over the run, mostly its second
            # half (start-up is the first); the network exchange and the write come last.
            time.sleep(rng.uniform(0.3, 1.0) * duration)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            code = proc.wait(timeout=60)
        killed += code == -signal.SIGKILL
        after = assert_whole_set(workdir)
        assert code in (0, -signal.SIGKILL)
        if code == 0:
            assert after != before
            # It finished before the kill: runs are faster now than the first one, aim earlier.
            duration = min(duration, 0.9 * (time.monotonic() - started))
    assert killed >= 12  # most runs were really interrupted
