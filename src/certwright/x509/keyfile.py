"""certwright's format for private keys at rest: PKCS#8 with PBES2, scrypt and AES-256-CBC.

cryptography's ``BestAvailableEncryption`` uses PBKDF2 with only 2,048 iterations for
PKCS#8, so certwright encrypts keys itself (RFC 8018 PBES2, RFC 7914 section 7 scrypt).
Reading these files goes through cryptography's ``Scrypt`` KDF, which releases the GIL:
a CA key opened in a background thread overlaps with other start-up work (the batch CLI
starts it before its own modules have loaded, see :mod:`certwright.cli.prefetch`). That
is also why this module imports only the KDF up front, so that the derivation can begin
~50 ms into the process, and the cipher and key loading when they are needed.

:mod:`certwright.x509.keys` is the public API (``private_key_pem``, ``load_private_key``);
this module returns whatever key the file holds and leaves the type checks to it.

Example::

    >>> from certwright.x509.keyfile import decrypt_pkcs8
    >>> decrypt_pkcs8(b"not a key file", b"secret") is None   # another format: not ours
    True
"""

from __future__ import annotations

import base64
import secrets
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from certwright.errors import InvalidKeyError
from certwright.x509 import der

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

# N=2^14, r=8 needs 16 MiB, within OpenSSL's 32 MiB default scrypt limit (so
# `openssl pkey` reads these files too); p=4 makes each guess four times dearer.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 4
_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


def encrypt_pkcs8(plain: bytes, passphrase: bytes) -> bytes:
    """The DER EncryptedPrivateKeyInfo of the PKCS#8 DER ``plain``, fresh salt and IV."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    salt = secrets.token_bytes(16)
    iv = secrets.token_bytes(16)
    kdf = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    aes_key = kdf.derive(passphrase)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    scrypt_params = der.sequence(
        der.tlv(der.OCTET_STRING, salt),
        der.integer(SCRYPT_N),
        der.integer(SCRYPT_R),
        der.integer(SCRYPT_P),
    )
    pbes2_params = der.sequence(
        der.sequence(der.oid(_OID_SCRYPT), scrypt_params),
        der.sequence(der.oid(_OID_AES256_CBC), der.tlv(der.OCTET_STRING, iv)),
    )
    algorithm = der.sequence(der.oid(_OID_PBES2), pbes2_params)
    return der.sequence(algorithm, der.tlv(der.OCTET_STRING, encrypted))


def decrypt_pkcs8(data: bytes, passphrase: bytes) -> PrivateKeyTypes | None:
    """The key in a PEM file of this format, or None for any other format.

    Raises :class:`InvalidKeyError` for a wrong passphrase. None also covers files this
    format does not describe exactly (other ciphers, parameters beyond what certwright
    writes, malformed structures): cryptography then reads them and gives its precise error.
    """
    der_bytes = pem_body(data, "ENCRYPTED PRIVATE KEY")
    if der_bytes is None:
        return None
    try:
        salt, n, r, p, iv, encrypted = _parse_encrypted_pkcs8(der_bytes)
    except (ValueError, IndexError):
        return None
    if n > 2**20 or r > 32 or p > 16:
        return None  # beyond what certwright writes; let cryptography apply its limits
    aes_key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)
    from cryptography.hazmat.primitives import padding, serialization
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(encrypted) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        return serialization.load_der_private_key(plain, None)
    except ValueError:
        raise InvalidKeyError("wrong passphrase for the private key") from None


def pem(label: str, body: bytes) -> bytes:
    """``body`` as PEM with ``label``, 64 characters a line."""
    b64 = base64.encodebytes(body).replace(b"\n", b"")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return b"".join(
        [
            f"-----BEGIN {label}-----\n".encode(),
            *(ln + b"\n" for ln in lines),
            f"-----END {label}-----\n".encode(),
        ]
    )


def pem_body(data: bytes, label: str) -> bytes | None:
    """The DER inside the first PEM block labelled ``label``, or None."""
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    start = data.find(begin)
    stop = data.find(end, start + 1)
    if start < 0 or stop < 0:
        return None
    try:
        return base64.b64decode(b"".join(data[start + len(begin) : stop].split()), validate=True)
    except ValueError:
        return None


def _parse_encrypted_pkcs8(data: bytes) -> tuple[bytes, int, int, int, bytes, bytes]:
    """(salt, N, r, p, iv, ciphertext) of PBES2/scrypt/AES-256-CBC, else ValueError."""

    def expect(tag: int, value: bytes, offset: int, limit: int) -> tuple[int, int]:
        found, start, end = der.read_tlv(value, offset)
        if found != tag or end > limit:
            raise ValueError("unexpected structure")
        return start, end

    def integer(offset: int, limit: int) -> tuple[int, int]:
        start, end = expect(der.INTEGER, data, offset, limit)
        return int.from_bytes(data[start:end], "big", signed=True), end

    outer_start, outer_end = expect(der.SEQUENCE, data, 0, len(data))
    alg_start, alg_end = expect(der.SEQUENCE, data, outer_start, outer_end)
    if not data.startswith(der.oid(_OID_PBES2), alg_start):
        raise ValueError("not PBES2")
    params_start, params_end = expect(der.SEQUENCE, data, alg_start + len(der.oid(_OID_PBES2)), alg_end)
    kdf_start, kdf_end = expect(der.SEQUENCE, data, params_start, params_end)
    if not data.startswith(der.oid(_OID_SCRYPT), kdf_start):
        raise ValueError("not scrypt")
    sp_start, sp_end = expect(der.SEQUENCE, data, kdf_start + len(der.oid(_OID_SCRYPT)), kdf_end)
    salt_start, salt_end = expect(der.OCTET_STRING, data, sp_start, sp_end)
    n, pos = integer(salt_end, sp_end)
    r, pos = integer(pos, sp_end)
    p, pos = integer(pos, sp_end)
    if pos != sp_end:
        raise ValueError("unexpected scrypt parameters")  # e.g. an explicit key length
    enc_start, enc_end = expect(der.SEQUENCE, data, kdf_end, params_end)
    if not data.startswith(der.oid(_OID_AES256_CBC), enc_start):
        raise ValueError("not AES-256-CBC")
    iv_start, iv_end = expect(der.OCTET_STRING, data, enc_start + len(der.oid(_OID_AES256_CBC)), enc_end)
    ct_start, ct_end = expect(der.OCTET_STRING, data, alg_end, outer_end)
    if iv_end - iv_start != 16 or min(n, r, p) < 1:
        raise ValueError("bad parameters")
    return data[salt_start:salt_end], n, r, p, data[iv_start:iv_end], data[ct_start:ct_end]
