"""Opening the CA key of ``sign`` and ``issue`` while the command line is still loading.

A signing command spends its first ~0.2-0.3 s importing click, cryptography and
certwright on one core, then ~0.15-0.25 s deriving the CA key's scrypt key. The
derivation releases the GIL, so it can run during the imports, on the core that is idle:
:func:`start` looks at the arguments before anything heavy is imported and, when they
name a CA directory and the passphrase can be had without asking (``--passphrase-file``
or ``$CERTWRIGHT_CA_PASSPHRASE``), begins decrypting the issuing key in a daemon thread.
For a batch of 5,000 CSRs that is ~7 % of the run (``benchmarks/bench.py``).

It reads only regular files: a passphrase given as a pipe (``--passphrase-file
/dev/stdin``, ``<(...)``) or a FIFO is left whole for the command, and nothing starts.

Speculation decides nothing. click parses the command line afterwards as always, and the
command :func:`claim`\\ s the early key with the key file and passphrase it resolved
itself: the key is handed over only if the file holds the very bytes that were decrypted
(re-read at claim time) and the passphrase is the same; otherwise it is dropped and the
key is opened the usual way, with the usual errors. A misread command line costs at most
one wasted derivation. The passphrase is kept only until the claim.

Example::

    >>> from certwright.cli import prefetch
    >>> prefetch.start(["inspect", "cert.pem"], {})   # not a signing command: nothing starts
    False
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from certwright.x509.keys import SigningKey

# Mirrors of cadir.INTERMEDIATE_KEY and cli.common.PASSPHRASE_ENV, which this module must
# not import (they pull in the modules it runs ahead of); the tests hold them equal.
INTERMEDIATE_KEY = "intermediate.key"
PASSPHRASE_ENV = "CERTWRIGHT_CA_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
COMMANDS = ("sign", "issue")
_OPTIONS = ("--ca", "--passphrase-file")
_MAX_FILE = 1 << 20  # a key or passphrase file is a few hundred bytes


class _Opening:
    """A key file's bytes and passphrase, and the thread decrypting them."""

    def __init__(self, path: str, data: bytes, passphrase: bytes) -> None:
        self.path = path
        self.data = data
        self.passphrase = passphrase
        self.key: object | None = None
        self.thread = threading.Thread(target=self._open, name="certwright-key-prefetch", daemon=True)

    def _open(self) -> None:
        from certwright.x509.keyfile import decrypt_pkcs8  # imported already by start()

        try:
            self.key = decrypt_pkcs8(self.data, self.passphrase)
        except Exception:  # any failure: the command opens the key itself and says why
            self.key = None


_pending: _Opening | None = None
_lock = threading.Lock()


def start(args: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Begin opening the CA key named by ``args`` (the arguments after the program name).

    Returns whether a derivation started. Never raises and never prompts: anything it
    cannot read, it leaves to the command.
    """
    global _pending
    options = _options(args)
    if options is None:
        return False
    ca, passphrase_file = options
    passphrase = _passphrase(passphrase_file, environ)
    if passphrase is None:
        return False
    path = os.path.join(ca, INTERMEDIATE_KEY)
    data = _read(path)
    if data is None or b"ENCRYPTED PRIVATE KEY" not in data:
        return False
    # Imported here, in this thread, before the derivation starts: it loads only the KDF
    # (~50 ms), and an import racing the main thread's for the GIL would delay the start.
    import certwright.x509.keyfile  # noqa: F401

    opening = _Opening(path, data, passphrase)
    with _lock:
        if _pending is not None:
            return False
        _pending = opening
    opening.thread.start()
    return True


def claim(path: Path, passphrase: bytes) -> SigningKey | None:
    """The key opened early from ``path`` with ``passphrase``, or None.

    Waits for the derivation if it is still running. None when nothing was started, when
    it failed, or when ``path`` or ``passphrase`` differ from what it used (the caller then
    opens the key itself). Any later claim gets None: the key is handed over once.
    """
    global _pending
    with _lock:
        opening, _pending = _pending, None
    if opening is None:
        return None
    opening.thread.join()
    used, opening.passphrase = opening.passphrase, b""
    key, opening.key = opening.key, None
    if key is None or used != passphrase:
        return None
    if os.path.realpath(opening.path) != os.path.realpath(path) or _read(str(path)) != opening.data:
        return None
    from certwright.x509.keys import as_signing_key

    try:
        return as_signing_key(key)
    except ValueError:
        return None


def _options(args: Sequence[str]) -> tuple[str, str | None] | None:
    """``(--ca, --passphrase-file)`` of a signing command line, or None when unsure."""
    if not args or args[0] not in COMMANDS or "--" in args:
        return None
    found: dict[str, str] = {}
    rest = iter(args[1:])
    for token in rest:
        name, equals, value = token.partition("=")
        if name not in _OPTIONS:
            continue
        if not equals:
            value = next(rest, "")
        if not value or name in found:
            return None  # missing or repeated: let click say what it makes of it
        found[name] = value
    ca = found.get("--ca")
    return None if ca is None else (ca, found.get("--passphrase-file"))


def _passphrase(passphrase_file: str | None, environ: Mapping[str, str]) -> bytes | None:
    """As :func:`certwright.cli.common.read_passphrase` would find it without a prompt."""
    if passphrase_file is not None:
        data = _read(passphrase_file)
        value = data.rstrip(b"\r\n") if data is not None else b""
        return value or None
    from_env = environ.get(PASSPHRASE_ENV)
    return from_env.encode() if from_env else None


def _read(path: str) -> bytes | None:
    """A regular file's bytes (up to 1 MiB), else None.

    Never a pipe, FIFO or device: reading one here would take what the command must read
    itself (``--passphrase-file /dev/stdin`` or ``<(pass show ca)``), and opening a FIFO
    could block, or release a writer that then finds no reader. So: ``stat`` first, which
    opens nothing; then a non-blocking open, checked again on the descriptor.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # replaced by something else since the stat
        return os.read(fd, _MAX_FILE)
    except OSError:
        return None
    finally:
        os.close(fd)
