"""Files: atomic writes (secrets 0600 from the first byte), reading keys and certificates.

Example::

    >>> import tempfile, pathlib
    >>> from certwright.files import write_secret
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "k"
    >>> write_secret(p, b"secret")
    >>> oct(p.stat().st_mode & 0o777)
    '0o600'
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography import x509

from certwright.errors import InvalidCertificateError, InvalidCSRError, InvalidKeyError
from certwright.x509.keys import SigningKey, load_private_key


def read_private_key(path: Path, passphrase: bytes | None = None) -> SigningKey:
    """Load a private key file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidKeyError(f"cannot read key file {path}: {exc.strerror}") from exc
    try:
        return load_private_key(data, passphrase)
    except InvalidKeyError as exc:
        raise InvalidKeyError(f"{path}: {exc}") from exc


def write_secret(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` with mode 0600 from the first byte, atomically.

    The file is created 0600 (never chmod-ed after the fact, which would leave a window
    where another user can open it) in the same directory, then renamed into place.
    """
    write_file(path, data, mode=0o600, overwrite=overwrite)


def write_file(
    path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = False, durable: bool = True
) -> None:
    """Atomically write ``data`` to ``path`` (temporary file + rename) with ``mode``.

    ``durable=False`` skips the per-file fsync, for batches that call :func:`sync` once
    at the end (an fsync per file costs more than issuing the certificate).
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sync(directory: Path) -> None:
    """Flush everything written so far to disk, and the directory entries of ``directory``."""
    os.sync()
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_certificate(path: Path) -> x509.Certificate:
    """Read the first certificate of a PEM or DER file."""
    certs = read_certificates(path)
    return certs[0]


def read_certificates(path: Path) -> list[x509.Certificate]:
    """Read every certificate of a PEM file (or the one of a DER file)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidCertificateError(f"cannot read {path}: {exc.strerror}") from None
    return parse_certificates(data, source=str(path))


def parse_certificates(data: bytes, *, source: str) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise InvalidCertificateError(f"{source}: not a valid certificate: {exc}") from None
    if not certs:
        raise InvalidCertificateError(f"{source}: no certificate found")
    return certs


def read_csr(path: Path) -> x509.CertificateSigningRequest:
    """Read a PEM or DER certificate signing request."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidCSRError(f"cannot read {path}: {exc.strerror}") from None
    return parse_csr(data, source=str(path))


def parse_csr(data: bytes, *, source: str) -> x509.CertificateSigningRequest:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise InvalidCSRError(f"{source}: not a valid certificate signing request: {exc}") from None
