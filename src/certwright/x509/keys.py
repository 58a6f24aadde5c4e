"""Key types, generation, PEM in and out, encryption at rest, PKCS#12 export.

Example::

    >>> from certwright.x509.keys import KeyType, generate_key, key_type_of
    >>> key = generate_key(KeyType.EC_P256)
    >>> key_type_of(key.public_key()) is KeyType.EC_P256
    True
"""

from __future__ import annotations

import base64
import enum
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import pkcs12

from certwright.errors import InvalidKeyError
from certwright.x509 import der

PrivateKey = CertificateIssuerPrivateKeyTypes
PublicKey = CertificatePublicKeyTypes
# The key types certwright issues for and signs with (DSA and Ed448 are left out on purpose:
# the first is obsolete, the second barely supported by TLS peers).
SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


class KeyType(enum.Enum):
    """A key algorithm and size; the value is the name used on the command line."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    ED25519 = "ed25519"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @classmethod
    def parse(cls, name: str) -> KeyType:
        """Look a key type up by its CLI name, with an error listing the valid ones."""
        try:
            return cls(name.strip().lower())
        except ValueError:
            valid = ", ".join(t.value for t in cls)
            raise InvalidKeyError(f"unknown key type {name!r}; choose one of: {valid}") from None


_CURVES: dict[KeyType, ec.EllipticCurve] = {
    KeyType.EC_P256: ec.SECP256R1(),
    KeyType.EC_P384: ec.SECP384R1(),
}
_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}

# PBES2 with scrypt (RFC 7914 section 7) for keys at rest: cryptography's
# BestAvailableEncryption uses PBKDF2 with only 2,048 iterations for PKCS#8.
# N=2^14, r=8 needs 16 MiB, within OpenSSL's 32 MiB default scrypt limit (so
# `openssl pkey` reads these files too); p=4 makes each guess four times dearer.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 4
_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
_PKCS12_KDF_ROUNDS = 600_000


def generate_key(key_type: KeyType = KeyType.EC_P256) -> SigningKey:
    """Generate a new private key of ``key_type`` (ECDSA P-256 unless told otherwise)."""
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type])
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def key_type_of(key: PublicKey | PrivateKey) -> KeyType:
    """The :class:`KeyType` of a public or private key; refuses what certwright does not use."""
    public = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public, ec.EllipticCurvePublicKey):
        for key_type, curve in _CURVES.items():
            if public.curve.name == curve.name:
                return key_type
        raise InvalidKeyError(f"unsupported elliptic curve {public.curve.name}")
    if isinstance(public, ed25519.Ed25519PublicKey):
        return KeyType.ED25519
    if isinstance(public, rsa.RSAPublicKey):
        for key_type, bits in _RSA_BITS.items():
            if public.key_size == bits:
                return key_type
        raise InvalidKeyError(f"unsupported RSA key size {public.key_size}")
    raise InvalidKeyError(f"unsupported key algorithm {type(public).__name__}")


def signature_hash(key: PrivateKey | PublicKey) -> hashes.HashAlgorithm | None:
    """The hash certwright signs with for ``key`` (None for Ed25519, which hashes itself)."""
    key_type = key_type_of(key)
    if key_type is KeyType.ED25519:
        return None
    if key_type is KeyType.EC_P384:
        return hashes.SHA384()
    return hashes.SHA256()


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of ``key``; encrypted with PBES2/scrypt/AES-256-CBC when a passphrase is given."""
    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if passphrase is None:
        return _pem("PRIVATE KEY", plain)
    if not passphrase:
        raise InvalidKeyError("an empty passphrase does not protect a key; give a real one")
    return _pem("ENCRYPTED PRIVATE KEY", _encrypt_pkcs8(plain, passphrase))


def _encrypt_pkcs8(plain: bytes, passphrase: bytes) -> bytes:
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


def _pem(label: str, body: bytes) -> bytes:
    b64 = base64.encodebytes(body).replace(b"\n", b"")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return b"".join(
        [
            f"-----BEGIN {label}-----\n".encode(),
            *(ln + b"\n" for ln in lines),
            f"-----END {label}-----\n".encode(),
        ]
    )


def load_private_key(data: bytes, passphrase: bytes | None = None) -> SigningKey:
    """Load a PEM (or DER) private key, with errors that say what went wrong."""
    # An empty passphrase protects nothing (private_key_pem refuses it): treat it as none, so an
    # encrypted key read with one is reported as needing a passphrase, not as "not encrypted".
    passphrase = passphrase or None
    if passphrase is not None:
        fast = _load_scrypt_pkcs8(data, passphrase)
        if fast is not None:
            return fast
    loader = (
        serialization.load_pem_private_key
        if data.lstrip().startswith(b"-----")
        else serialization.load_der_private_key
    )
    try:
        key = loader(data, passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise InvalidKeyError("the private key is encrypted: a passphrase is needed") from exc
        raise InvalidKeyError("the private key is not encrypted, but a passphrase was given") from exc
    except ValueError as exc:
        if passphrase is not None and "password" in str(exc).lower():
            raise InvalidKeyError("wrong passphrase for the private key") from exc
        raise InvalidKeyError(f"not a valid private key: {exc}") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and others
        raise InvalidKeyError(f"not a valid private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise InvalidKeyError(f"unsupported key algorithm {type(key).__name__}")
    key_type_of(key)  # refuses odd curves and sizes
    return key


def _load_scrypt_pkcs8(data: bytes, passphrase: bytes) -> SigningKey | None:
    """Open a key in certwright's own at-rest format, or None for any other format.

    cryptography reads these files too, but holds the GIL through the scrypt derivation;
    its ``Scrypt`` KDF releases it, so a CA key opened in a background thread overlaps
    with other start-up work (batch signing measures this). The result is the same key.
    """
    der_bytes = _pem_body(data, "ENCRYPTED PRIVATE KEY")
    if der_bytes is None:
        return None
    try:
        salt, n, r, p, iv, encrypted = _parse_encrypted_pkcs8(der_bytes)
    except (ValueError, IndexError):
        return None  # not ours, or malformed: cryptography gives the precise error
    if n > 2**20 or r > 32 or p > 16:
        return None  # beyond what certwright writes; let cryptography apply its limits
    aes_key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(encrypted) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        key = serialization.load_der_private_key(plain, None)
    except ValueError:
        raise InvalidKeyError("wrong passphrase for the private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise InvalidKeyError(f"unsupported key algorithm {type(key).__name__}")
    key_type_of(key)
    return key


def _pem_body(data: bytes, label: str) -> bytes | None:
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


def public_key_pem(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def pkcs12_bytes(
    key: SigningKey,
    certificate: x509.Certificate,
    chain: list[x509.Certificate],
    passphrase: bytes,
    *,
    name: str | None = None,
) -> bytes:
    """A PKCS#12 bundle (key, certificate, chain) protected with AES-256 and PBKDF2-SHA256."""
    if not passphrase:
        raise InvalidKeyError("a PKCS#12 file needs a passphrase")
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(_PKCS12_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase)
    )
    return pkcs12.serialize_key_and_certificates(
        name.encode() if name else None, key, certificate, chain or None, encryption
    )
