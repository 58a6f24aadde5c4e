"""``certwright agent``: keep a workload's key, certificate and trust bundle fresh in a directory.

Runs the loop of :mod:`certwright.agent` until SIGTERM/SIGINT, or one check with ``--once``
(for cron or a systemd timer). The directory is the one ``certwright enroll --out DIR``
wrote; with ``--token-file`` (and ``--bundle`` on a first start) the agent enrols by itself
when it has no usable certificate. docs/agent.md is the operations guide.

Exit codes: 0 (stopped by a signal; with ``--once``: nothing was due, or renewed), 1 (with
``--once``: a renewal or repair that was due failed, or the reload failed; bad options), 2
(usage).

Example::

    certwright agent --dir /var/lib/certwright/web --server https://ca.internal:8443 \\
        --reload-cmd "systemctl reload nginx" --health-file /run/certwright/web.json
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from certwright.agent import (
    Agent,
    AgentConfig,
    HTTPTransport,
    Outcome,
    ReloadCommand,
    RenewalPolicy,
    SignalProcess,
)
from certwright.agent.hooks import Hook
from certwright.agent.logs import configure
from certwright.agent.policy import DEFAULT_JITTER, DEFAULT_RENEW_AT
from certwright.cli.common import EXIT_REFUSED, Refused, say
from certwright.durations import parse_duration
from certwright.errors import CertwrightError
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType


def _seconds(text: str, option: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except CertwrightError as exc:
        raise Refused(f"{option}: {exc}") from None


@click.command("agent")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The credentials directory (key.pem, cert.pem, chain.pem, bundle.pem).",
)
@click.option("--server", required=True, help="The CA's API URL, e.g. https://ca.internal:8443.")
@click.option("--once", is_flag=True, help="One check, then exit: 1 if a due renewal failed.")
@click.option(
    "--renew-at",
    type=float,
    default=DEFAULT_RENEW_AT,
    show_default="0.667",
    help="Renew once this fraction of the lifetime has passed (0: renew now, with --once).",
)
@click.option(
    "--jitter", type=float, default=DEFAULT_JITTER, show_default=True, help="Up to this fraction earlier."
)
@click.option("--reload-cmd", help="Shell command run after each change, e.g. 'systemctl reload nginx'.")
@click.option("--signal", "signals", multiple=True, help="PID:SIG or PIDFILE:SIG sent after each change.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), help="Enrolment token.")
@click.option(
    "--bundle",
    "trust_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trust bundle to verify the CA with when enrolling (default: DIR/bundle.pem).",
)
@click.option("--dns", multiple=True, help="DNS name to ask for when enrolling.")
@click.option("--ip", "ips", multiple=True, help="IP address to ask for when enrolling.")
@click.option("--server-identity", help="The CA's SPIFFE ID (default spiffe://TD/certwright/server).")
@click.option(
    "--key-type",
    type=click.Choice([t.value for t in KeyType]),
    help="Type of new keys (default: that of the current key).",
)
@click.option("--reuse-key", is_flag=True, help="Keep the current key at renewal (default: a fresh one).")
@click.option("--health-file", type=click.Path(dir_okay=False, path_type=Path), help="JSON status file.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--check-interval", default="60s", show_default=True, help="Longest sleep between checks.")
@click.option("--backoff-max", default="5m", show_default=True, help="Longest wait between retries.")
@click.option("--timeout", default="30s", show_default=True, help="Timeout of each request to the CA.")
def agent(
    directory: Path,
    server: str,
    once: bool,
    renew_at: float,
    jitter: float,
    reload_cmd: str | None,
    signals: tuple[str, ...],
    token_file: Path | None,
    trust_file: Path | None,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    server_identity: str | None,
    key_type: str | None,
    reuse_key: bool,
    health_file: Path | None,
    log_format: str,
    check_interval: str,
    backoff_max: str,
    timeout: str,
) -> None:
    """Renew this workload's certificate before it expires, and tell the service."""
    configure(log_format)
    if renew_at == 0 and not once:
        # Every check would renew: a forced rotation is a one-off (cron, an operator's hand).
        raise Refused("--renew-at 0 renews at every check: use it with --once")
    hooks: list[Hook] = []
    if reload_cmd:
        hooks.append(ReloadCommand(reload_cmd, directory=directory))
    hooks.extend(SignalProcess.parse(text) for text in signals)
    policy = RenewalPolicy(
        renew_at=renew_at,
        jitter=jitter,
        backoff_max=_seconds(backoff_max, "--backoff-max"),
        fresh_key=not reuse_key,
    )
    config = AgentConfig(
        directory=directory,
        policy=policy,
        token_file=token_file,
        trust_file=trust_file,
        dns=dns,
        ips=ips,
        server_identity=SpiffeId.parse(server_identity) if server_identity else None,
        key_type=KeyType(key_type) if key_type else None,
        hooks=tuple(hooks),
        health_file=health_file,
        check_interval=_seconds(check_interval, "--check-interval"),
    )
    runner = Agent(config, transport=HTTPTransport(server, timeout=_seconds(timeout, "--timeout")))
    if once:
        result = runner.run_once()
        if result.outcome is Outcome.FAILED:
            say(result.error or "renewal failed", style="red", label="error:")
            raise SystemExit(EXIT_REFUSED)
        return
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()  # finish the current check (never half a write), then exit 0

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.run_forever(stop)
