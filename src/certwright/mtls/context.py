"""ssl.SSLContext builders for mTLS, with rotated files picked up without a restart.

Example::

    >>> from certwright.mtls.context import TLSFiles, server_context     # doctest: +SKIP
    >>> files = TLSFiles(Path("cert.pem"), Path("key.pem"), Path("bundle.pem"))
    >>> ctx = server_context(files)                    # TLS 1.2+, client cert required
    >>> listener = ctx.wrap_socket(sock, server_side=True)                # doctest: +SKIP

How a server reloads: ``ssl`` cannot swap the certificate of a live ``SSLContext`` safely
while other threads handshake with it, but OpenSSL lets the servername (SNI) callback
move a handshake to another ``SSL_CTX`` (``SSL_set_SSL_CTX``). The context returned by
:func:`server_context` installs such a callback: at most once per ``check_interval``
seconds it compares the files' (mtime, size, inode); when they changed it builds a fresh
context, and every handshake is switched to the newest good one. OpenSSL runs the
callback on every ClientHello, with or without an SNI extension (``final_server_name``
in ``ssl/statem/extensions.c``; the tests prove it for a client that sends none).
Connections already open keep what they negotiated.

A reload that fails (a half-written file, a key that does not match the certificate)
keeps the previous context and logs a warning on the ``certwright.mtls`` logger; the
same files are not retried until they change again.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certwright.errors import CertwrightError, InvalidInputError
from certwright.files import read_certificates, read_private_key

_log = logging.getLogger("certwright.mtls")

DEFAULT_CHECK_INTERVAL = 1.0  # seconds between two looks at the files' metadata

_Signature = tuple[tuple[int, int, int], ...]


class TLSFilesError(InvalidInputError):
    """A certificate, key or bundle file is missing, corrupt, or the key does not fit."""


@dataclass(frozen=True)
class TLSFiles:
    """A workload's credentials on disk: certificate (leaf, then intermediates), key, bundle.

    ``bundle`` holds the trust anchors (roots). ``key_passphrase`` opens an encrypted key.
    """

    cert: Path
    key: Path
    bundle: Path
    key_passphrase: bytes | None = None

    def signature(self) -> _Signature:
        """(mtime_ns, size, inode) of each file: changes when a file is rewritten or a
        symlink is swapped (Kubernetes secret volumes rotate by symlink)."""
        result = []
        for path in (self.cert, self.key, self.bundle):
            try:
                st = os.stat(path)
            except OSError:
                result.append((-1, -1, -1))
            else:
                result.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(result)


def _validate(files: TLSFiles) -> None:
    """Read the files with ``cryptography`` first: its errors name the file at fault,
    where OpenSSL's say only "PEM lib"."""
    try:
        chain = read_certificates(files.cert)
        read_certificates(files.bundle)
        if files.key_passphrase is None:
            # An encrypted key is left to OpenSSL: decrypting it twice (scrypt) is slow.
            key = read_private_key(files.key)
            own = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            leaf = chain[0].public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if own != leaf:
                raise TLSFilesError(
                    f"{files.key} does not match the certificate {files.cert} (a rotation half done?)"
                )
    except TLSFilesError:
        raise
    except InvalidInputError as exc:
        raise TLSFilesError(str(exc)) from exc


def _load(ctx: ssl.SSLContext, files: TLSFiles) -> None:
    _validate(files)
    try:
        ctx.load_verify_locations(cafile=str(files.bundle))
    except (ssl.SSLError, OSError) as exc:
        raise TLSFilesError(f"cannot load trust bundle {files.bundle}: {exc}") from exc
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key), password=files.key_passphrase)
    except (ssl.SSLError, OSError) as exc:
        raise TLSFilesError(
            f"cannot load certificate {files.cert} with key {files.key}: {exc}"
        ) from exc


def _build_server(files: TLSFiles, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 is preferred by negotiation
    # Client certificates are the identity of the peer: required unless asked otherwise.
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    # Client-initiated TLS 1.2 renegotiation only costs the server CPU (CVE-2011-1473).
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    _load(ctx, files)
    return ctx


def _build_client(files: TLSFiles, check_hostname: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED  # never talk to an unverified server
    _load(ctx, files)
    return ctx


class _Reloader:
    """Holds the newest good context built from ``files``; rebuilds it on change."""

    def __init__(
        self,
        files: TLSFiles,
        build: Callable[[], ssl.SSLContext],
        check_interval: float,
    ) -> None:
        self._files = files
        self._build = build
        self._interval = check_interval
        self._lock = threading.Lock()
        self._seen = files.signature()  # taken before reading: a change meanwhile is seen next time
        self.current = build()
        self._next_check = time.monotonic() + check_interval

    def refresh(self) -> ssl.SSLContext:
        """The current context, rebuilt first if the files changed (checked rarely)."""
        now = time.monotonic()
        if now < self._next_check:
            return self.current
        # One thread reloads; the others go on with the current context meanwhile.
        if not self._lock.acquire(blocking=False):
            return self.current
        try:
            self._next_check = now + self._interval
            signature = self._files.signature()
            if signature != self._seen:
                self._seen = signature
                try:
                    self.current = self._build()
                except CertwrightError as exc:
                    _log.warning("TLS files changed but cannot be loaded, keeping the previous ones: %s", exc)
                else:
                    _log.info("reloaded TLS certificate %s", self._files.cert)
        finally:
            self._lock.release()
        return self.current


def server_context(
    files: TLSFiles,
    *,
    require_client_cert: bool = True,
    reload: bool = True,
    check_interval: float = DEFAULT_CHECK_INTERVAL,
) -> ssl.SSLContext:
    """A server context: TLS 1.2 minimum, client certificates required (CERT_REQUIRED).

    With ``reload`` the files are re-read when they change on disk and new handshakes use
    them (no restart); connections already open keep what they negotiated. The files are
    looked at (``stat``) at most once per ``check_interval`` seconds.

    Raises :class:`TLSFilesError` naming the file when the files cannot be used.

    Example::

        ctx = server_context(TLSFiles(Path("cert.pem"), Path("key.pem"), Path("bundle.pem")))
        with ctx.wrap_socket(listener, server_side=True) as tls_listener: ...
    """
    def build() -> ssl.SSLContext:
        return _build_server(files, require_client_cert)

    if not reload:
        return build()
    reloader = _Reloader(files, build, check_interval)
    base = reloader.current

    def on_client_hello(conn: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext) -> None:
        # An exception here would abort the handshake (and be printed by
        # sys.unraisablehook): whatever happens, keep serving with what we have.
        try:
            fresh = reloader.refresh()
            if fresh is not base:
                conn.context = fresh
        except Exception:
            _log.exception("TLS context reload failed; keeping the previous context")
        return None

    base.sni_callback = on_client_hello
    return base


def client_context(files: TLSFiles, *, check_hostname: bool = False) -> ssl.SSLContext:
    """A client context presenting ``files.cert`` and trusting ``files.bundle``.

    Workloads are named by their SPIFFE URI, not a hostname: by default hostname checking
    is off and callers check the peer identity after the handshake
    (:func:`certwright.mtls.client.check_peer_identity`, or ``connect(expect=...)``).
    This context does not reload; use :class:`ClientTLS` in long-running clients.
    """
    return _build_client(files, check_hostname)


class ClientTLS:
    """Client contexts that follow rotated files: call :meth:`context` per connection.

    A client's handshake cannot be moved to another context the way a server's can (the
    SNI callback runs on servers only), so the holder hands out a new context when the
    files changed; connections made with an older one are unaffected.

    Example::

        tls = ClientTLS(files)
        sock = tls.context().wrap_socket(socket.create_connection(addr))
    """

    def __init__(
        self,
        files: TLSFiles,
        *,
        check_hostname: bool = False,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
    ) -> None:
        self.files = files
        self._reloader = _Reloader(files, lambda: _build_client(files, check_hostname), check_interval)

    def context(self) -> ssl.SSLContext:
        """The newest good client context (rebuilt if the files changed)."""
        return self._reloader.refresh()
