"""The renewal agent: keeps a workload's key, certificate and trust bundle fresh on disk.

A client of ``certwright serve`` (it imports neither the server nor the service layer).
``certwright agent`` is the command; Python services can run the same loop in-process.

Example::

    >>> from certwright.agent import Agent, AgentConfig, HTTPTransport     # doctest: +SKIP
    >>> agent = Agent(AgentConfig(directory=Path("/var/lib/certwright/web")),
    ...               transport=HTTPTransport("https://ca.internal:8443"))  # doctest: +SKIP
    >>> running = agent.start()                                             # doctest: +SKIP
"""

from certwright.agent.agent import Agent, AgentConfig, AgentError, Outcome, Result, RunningAgent
from certwright.agent.health import Health, Status
from certwright.agent.hooks import HookError, ReloadCommand, SignalProcess
from certwright.agent.layout import CredentialDir, Credentials, CredentialsError, DirectoryBusy
from certwright.agent.policy import RenewalPolicy
from certwright.agent.transport import (
    HTTPTransport,
    Issued,
    ServerRefused,
    Transport,
    TransportError,
    Unreachable,
)

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "CredentialDir",
    "Credentials",
    "CredentialsError",
    "DirectoryBusy",
    "HTTPTransport",
    "Health",
    "HookError",
    "Issued",
    "Outcome",
    "ReloadCommand",
    "RenewalPolicy",
    "Result",
    "RunningAgent",
    "ServerRefused",
    "SignalProcess",
    "Status",
    "Transport",
    "TransportError",
    "Unreachable",
]
