"""The renewal loop: keep one workload's key, certificate and trust bundle fresh on disk.

:meth:`Agent.run_once` is one check (what ``certwright agent --once`` does from cron):

1. load the set the service sees (:class:`~certwright.agent.layout.CredentialDir`);
2. unusable (missing, corrupt, key and certificate apart, expired): enrol again with the
   token when one was given, otherwise report it (a renewal needs a valid certificate);
3. not due (:class:`~certwright.agent.policy.RenewalPolicy`): nothing to do;
4. due: a fresh key (by default) and a CSR naming the same identity and SANs, ``POST
   /v1/renew`` over mTLS, then check what came back (our key, our identity, a chain to the
   trust bundle) before writing it as one set, and tell the service (hooks).

:meth:`Agent.run_forever` repeats it: sleeps until the renewal time, and after a failure
backs off exponentially (capped, and never longer than a quarter of the time the
certificate has left). :meth:`Agent.run_async` is the same loop for an asyncio service,
:meth:`Agent.start` runs it on a thread. Nothing here exits the process: the CLI maps
results to exit codes.

Example::

    >>> agent = Agent(AgentConfig(directory=Path("/var/lib/certwright/web")),
    ...               transport=HTTPTransport("https://ca.internal:8443"))   # doctest: +SKIP
    >>> agent.run_once().outcome                                             # doctest: +SKIP
    <Outcome.NOT_DUE: 'not-due'>
    >>> running = agent.start()        # in-process, on a thread               # doctest: +SKIP
    >>> running.stop()                                                        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certwright.agent.health import Health, Status
from certwright.agent.hooks import Hook, HookError
from certwright.agent.layout import Checkpoint, CredentialDir, Credentials, CredentialsError
from certwright.agent.policy import RenewalPolicy, jitter_fraction
from certwright.agent.transport import SERVER_PATH, Issued, Transport, TransportError
from certwright.clock import Clock, SystemClock
from certwright.errors import CertwrightError, VerificationError
from certwright.files import read_certificates
from certwright.verify.chain import Purpose, verify_chain
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, SigningKey, generate_key, key_type_of, signature_hash
from certwright.x509.names import SubjectAltNames

log = logging.getLogger("certwright.agent")

DEFAULT_CHECK_INTERVAL = 60.0  # seconds: the longest sleep (health file fresh, deleted files seen)


class Outcome(enum.Enum):
    NOT_DUE = "not-due"
    RENEWED = "renewed"
    ENROLLED = "enrolled"
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    """What one check did. ``due_failed``: a renewal (or repair) was needed and did not
    happen, which ``--once`` reports with a non-zero exit. ``next_check``: when to look again
    (the renewal time; :meth:`Agent.run_forever` computes its own backoff after failures)."""

    outcome: Outcome
    next_check: datetime.datetime | None = None
    error: str | None = None
    transient: bool = True
    credentials: Credentials | None = None

    @property
    def due_failed(self) -> bool:
        return self.outcome is Outcome.FAILED


class AgentError(CertwrightError):
    """The CA answered with something the agent will not write (wrong key, identity, chain)."""


@dataclass(frozen=True)
class AgentConfig:
    """What the agent manages and how.

    ``token_file``: a one-time enrolment token, used only when there is no usable
    certificate (first start, or files lost or corrupt). ``trust_file``: the trust bundle
    to verify the CA with when enrolling (default: ``DIR/bundle.pem``). ``dns``/``ips``:
    the names to ask for at enrolment (renewal keeps those of the current certificate).
    ``server_identity``: the CA's SPIFFE ID (default: ``spiffe://<TD>/certwright/server``).
    ``key_type``: the type of fresh keys (default: that of the current key; P-256 at first).
    """

    directory: Path
    policy: RenewalPolicy = field(default_factory=RenewalPolicy)
    token_file: Path | None = None
    trust_file: Path | None = None
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    server_identity: SpiffeId | None = None
    key_type: KeyType | None = None
    hooks: Sequence[Hook] = ()
    health_file: Path | None = None
    check_interval: float = DEFAULT_CHECK_INTERVAL


class Agent:
    """One workload's renewal loop (see the module documentation).

    ``clock`` decides what is due (inject a fixed clock in tests); ``random`` draws backoff
    jitter; ``checkpoint`` is passed to the directory writer (tests kill the process there).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: Transport,
        clock: Clock | None = None,
        random_source: Callable[[], float] = random.random,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.clock = clock or SystemClock()
        self.random = random_source
        self.files = CredentialDir(config.directory, checkpoint=checkpoint)
        self.last_success: datetime.datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime.datetime | None = None
        self.failures = 0
        self._hooks_pending = False
        self._current: Credentials | None = None

    # -- one check ------------------------------------------------------------------------

    def run_once(self, *, force: bool = False) -> Result:
        """Check, and renew or enrol when due (``force``: renew now whatever the schedule).

        Holds the directory's lock throughout (another agent on it raises DirectoryBusy).
        """
        with self.files.locked():
            result = self._check(force=force)
            if result.outcome in (Outcome.RENEWED, Outcome.ENROLLED) or self._hooks_pending:
                result = self._notify(result)
        self._record(result)
        return result

    def _check(self, *, force: bool) -> Result:
        now = self.clock.now()
        try:
            current = self.files.load()
        except CredentialsError as exc:
            self._current = None  # what the service has is unusable: say so in the health file
            return self._repair(str(exc))
        self._current = current
        if now >= current.not_after:
            expired = current.not_after.isoformat()
            return self._repair(f"the certificate {current.serial_hex} expired at {expired}")
        due = self.renewal_time(current)
        if now < due and not force:
            return Result(Outcome.NOT_DUE, next_check=due, credentials=current)
        try:
            renewed = self._renew(current)
        except TransportError as exc:
            if not exc.transient and self.config.token_file is not None:
                # Refused for good (revoked, unknown to the CA): only a new enrolment helps.
                return self._repair(f"renewal refused: {exc}")
            return Result(Outcome.FAILED, error=str(exc), transient=exc.transient, credentials=current)
        except CertwrightError as exc:
            return Result(Outcome.FAILED, error=str(exc), credentials=current)
        self._current = renewed
        log.info(
            "renewed certificate",
            extra={
                "event": "renewed",
                "identity": str(renewed.identity),
                "serial": renewed.serial_hex,
                "not_after": renewed.not_after.isoformat(),
            },
        )
        return Result(Outcome.RENEWED, next_check=self.renewal_time(renewed), credentials=renewed)

    def renewal_time(self, credentials: Credentials) -> datetime.datetime:
        """When ``credentials`` are due (stable for a certificate: its own jitter)."""
        u = jitter_fraction(credentials.fingerprint)
        return self.config.policy.renewal_time(credentials.start, credentials.not_after, u=u)

    def _renew(self, current: Credentials) -> Credentials:
        key = self._new_key(current.key) if self.config.policy.fresh_key else current.key
        held = SubjectAltNames.of(current.certificate)
        csr = _csr(key, current.identity, dns=held.dns, ips=tuple(str(ip) for ip in held.ips))
        expect = self._expect(current.identity)
        issued = self.transport.renew(csr, files=self.files.tls_files(), expect=expect)
        fresh = self._accept(issued, key, bundle=current.bundle, identity=current.identity)
        self.files.store(fresh)
        return fresh

    def _repair(self, reason: str) -> Result:
        """No usable certificate: enrol with the token if there is one, else report."""
        token_file = self.config.token_file
        if token_file is None:
            return Result(
                Outcome.FAILED,
                error=f"{reason}; no enrolment token was given (--token-file), so it cannot be repaired",
                transient=False,
            )
        log.warning("enrolling with the token: %s", reason, extra={"event": "repair"})
        try:
            enrolled = self._enroll(token_file)
        except CertwrightError as exc:
            # Network trouble and 5xx pass; a refused token or unusable files will not.
            transient = exc.transient if isinstance(exc, TransportError) else False
            return Result(Outcome.FAILED, error=f"{reason}; enrolment failed: {exc}", transient=transient)
        self._current = enrolled
        log.info(
            "enrolled",
            extra={
                "event": "enrolled",
                "identity": str(enrolled.identity),
                "serial": enrolled.serial_hex,
                "not_after": enrolled.not_after.isoformat(),
            },
        )
        return Result(Outcome.ENROLLED, next_check=self.renewal_time(enrolled), credentials=enrolled)

    def _enroll(self, token_file: Path) -> Credentials:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise AgentError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not token:
            raise AgentError(f"token file {token_file} is empty")
        if self.config.trust_file is not None:
            trust = tuple(read_certificates(self.config.trust_file))
        else:
            trust = self.files.load_bundle()
        key = generate_key(self.config.key_type or KeyType.EC_P256)
        csr = _csr(key, None, dns=self.config.dns, ips=self.config.ips)
        issued = self.transport.enroll(token, csr, trust=trust, expect=self.config.server_identity)
        fresh = self._accept(issued, key, bundle=trust, identity=None)
        self.files.store(fresh)
        return fresh

    def _new_key(self, current: SigningKey) -> SigningKey:
        return generate_key(self.config.key_type or key_type_of(current))

    def _expect(self, identity: SpiffeId | None) -> SpiffeId | None:
        if self.config.server_identity is not None:
            return self.config.server_identity
        if identity is None:
            return None
        return SpiffeId.parse(f"spiffe://{identity.trust_domain}{SERVER_PATH}")

    def _accept(
        self,
        issued: Issued,
        key: SigningKey,
        *,
        bundle: tuple[x509.Certificate, ...],
        identity: SpiffeId | None,
    ) -> Credentials:
        """The set to write, once the answer is checked: never write what cannot work."""
        now = self.clock.now()
        try:
            credentials = Credentials(
                key=key,
                certificate=issued.certificate,
                intermediates=issued.intermediates,
                bundle=issued.bundle or bundle,
                obtained_at=now,
            )
        except CertwrightError as exc:
            raise AgentError(f"the CA's answer cannot be used: {exc}") from None
        if identity is not None and credentials.identity != identity:
            raise AgentError(f"the CA renewed {identity} as {credentials.identity}: not written")
        if issued.bundle is not None and not _chains(credentials, now):
            # A bundle that does not anchor our own chain is a broken rotation: keep the
            # bundle we have, which does (checked next), and fetch again next time.
            log.warning("the CA's trust bundle does not anchor the new chain; keeping the current bundle")
            credentials = Credentials(key, issued.certificate, issued.intermediates, bundle, now)
        if not _chains(credentials, now):
            raise AgentError("the CA's certificate does not chain to the trust bundle: not written")
        return credentials

    # -- telling the service ------------------------------------------------------------

    def _notify(self, result: Result) -> Result:
        failed: list[str] = []
        for hook in self.config.hooks:
            try:
                hook.run()
            except HookError as exc:
                failed.append(str(exc))
                log.error("reload failed: %s", exc, extra={"event": "reload-failed"})
            else:
                log.info("reloaded: %s", hook.describe(), extra={"event": "reloaded"})
        self._hooks_pending = bool(failed)
        if not failed:
            return result
        # The files are new but the service may still serve the old ones: that is a failure
        # to report (and to retry), even though the renewal itself worked.
        return Result(Outcome.FAILED, error="; ".join(failed), credentials=result.credentials)

    def _record(self, result: Result) -> None:
        now = self.clock.now()
        if result.outcome is Outcome.FAILED:
            self.failures += 1
            self.last_error, self.last_error_at = result.error, now
            log.error("%s", result.error, extra={"event": "failed", "attempt": self.failures})
        else:
            if result.outcome is not Outcome.NOT_DUE:
                self.last_success = now
            self.failures = 0
            self.last_error = None
        if self.config.health_file is not None:
            try:
                self.health(now, result).write(self.config.health_file)
            except OSError as exc:
                log.error("cannot write health file %s: %s", self.config.health_file, exc.strerror)

    def health(self, now: datetime.datetime, result: Result | None = None) -> Health:
        """A snapshot for the health file (or an embedding's own health endpoint)."""
        current = result.credentials if result is not None and result.credentials else self._current
        if current is None:
            status = Status.MISSING
        elif now >= current.not_after:
            status = Status.EXPIRED
        else:
            status = Status.DEGRADED if self.last_error else Status.OK
        return Health(
            status=status,
            updated_at=now,
            identity=str(current.identity) if current and current.identity else None,
            serial=current.serial_hex if current else None,
            not_after=current.not_after if current else None,
            next_renewal=self.renewal_time(current) if current else None,
            last_success=self.last_success,
            last_error=self.last_error,
            last_error_at=self.last_error_at if self.last_error else None,
        )

    # -- loops ------------------------------------------------------------------------

    def delay_after(self, result: Result) -> float:
        """Seconds until the next check after ``result`` (backoff after a failure)."""
        now = self.clock.now()
        if result.outcome is Outcome.FAILED:
            current = result.credentials or self._current
            left = (current.not_after - now).total_seconds() if current else 0.0
            delay = self.config.policy.retry_delay(self.failures, seconds_left=left, u=self.random())
            if not result.transient:
                delay = max(delay, min(self.config.policy.backoff_max, self.config.check_interval))
        elif result.next_check is not None:
            delay = (result.next_check - now).total_seconds()
        else:
            delay = self.config.check_interval
        return max(0.0, min(delay, self.config.check_interval))

    def step(self) -> float:
        """One check that never raises (errors are logged and reported): the loops' body.
        Returns the seconds to wait before the next."""
        try:
            result = self.run_once()
        except CertwrightError as exc:
            result = Result(Outcome.FAILED, error=str(exc))
            self._record(result)
        except OSError as exc:
            result = Result(Outcome.FAILED, error=f"{exc.filename or ''} {exc.strerror or exc}".strip())
            self._record(result)
        except Exception as exc:
            # A bug must not end the loop that keeps the service's certificate alive: log it
            # with its traceback and try again after the backoff.
            log.exception("unexpected error in the renewal loop")
            result = Result(Outcome.FAILED, error=f"unexpected error: {exc!r}")
            self._record(result)
        delay = self.delay_after(result)
        if result.outcome is Outcome.FAILED:
            log.info("next attempt in %.1fs", delay, extra={"event": "retry", "retry_in": round(delay, 3)})
        return delay

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Check, sleep, check... until ``stop`` is set (never, without one)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            delay = self.step()
            stop.wait(max(delay, 0.05))  # a floor: a clock that says "due" forever must not spin

    async def run_async(self, stop: asyncio.Event | None = None) -> None:
        """The loop for an asyncio program; checks run on a worker thread (file and network
        I/O, key generation), the event loop only waits."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            delay = await asyncio.to_thread(self.step)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.05))

    def start(self) -> RunningAgent:
        """Run the loop on a daemon thread; ``stop()`` the returned handle to end it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run_forever, args=(stop,), name="certwright-agent", daemon=True)
        thread.start()
        return RunningAgent(thread, stop)


@dataclass(frozen=True)
class RunningAgent:
    """An agent running on a thread (:meth:`Agent.start`)."""

    thread: threading.Thread
    stop_event: threading.Event

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the loop to stop after the current check, and wait for it."""
        self.stop_event.set()
        self.thread.join(timeout)


def _csr(
    key: SigningKey, identity: SpiffeId | None, *, dns: Sequence[str], ips: Sequence[str]
) -> x509.CertificateSigningRequest:
    """A CSR naming ``identity`` (the CA decides it anyway) and the DNS/IP SANs to keep."""
    sans = SubjectAltNames.create(dns=dns, ips=ips)
    if identity is not None:
        sans = SubjectAltNames(uris=(str(identity),)).merge(sans)
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans.general_names()), critical=False)
    return builder.sign(key, signature_hash(key))  # type: ignore[arg-type]


def _chains(credentials: Credentials, now: datetime.datetime) -> bool:
    leaf = credentials.certificate
    try:
        ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        purpose = Purpose.CLIENT if ExtendedKeyUsageOID.CLIENT_AUTH in ekus else Purpose.SERVER
    except x509.ExtensionNotFound:
        purpose = Purpose.CLIENT
    try:
        verify_chain(
            leaf, trusted=credentials.bundle, untrusted=credentials.intermediates, purpose=purpose, at=now
        )
    except (VerificationError, CertwrightError, ValueError):
        return False
    return True
