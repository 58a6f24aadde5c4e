"""Key types, generation, PEM in and out, encryption at rest, PKCS#12 export.

Example::

    >>> from certwright.x509.keys import KeyType, generate_key, key_type_of
    >>> key = generate_key(KeyType.EC_P256)
    >>> key_type_of(key.public_key()) is KeyType.EC_P256
    True
"""

from __future__ import annotations

import enum

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import pkcs12

from certwright.errors import InvalidKeyError
from certwright.x509 import keyfile

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
    family = _FAMILIES.get(type(public))
    if family is None:
        family = _FAMILIES[type(public)] = _family(public)
    if family is _Family.EC:
        curve = public.curve.name  # type: ignore[union-attr]
        key_type = _CURVE_TYPES.get(curve)
        if key_type is None:
            raise InvalidKeyError(f"unsupported elliptic curve {curve}")
        return key_type
    if family is _Family.ED25519:
        return KeyType.ED25519
    if family is _Family.RSA:
        size = public.key_size  # type: ignore[union-attr]
        for key_type, bits in _RSA_BITS.items():
            if size == bits:
                return key_type
        raise InvalidKeyError(f"unsupported RSA key size {size}")
    raise InvalidKeyError(f"unsupported key algorithm {type(public).__name__}")


class _Family(enum.Enum):
    EC = "ec"
    ED25519 = "ed25519"
    RSA = "rsa"
    OTHER = "other"


def _family(public: object) -> _Family:
    # The key classes are ABCs: an isinstance check costs ~1 us, more than the rest of
    # key_type_of, so the answer is kept per concrete class (a handful of them).
    if isinstance(public, ec.EllipticCurvePublicKey):
        return _Family.EC
    if isinstance(public, ed25519.Ed25519PublicKey):
        return _Family.ED25519
    if isinstance(public, rsa.RSAPublicKey):
        return _Family.RSA
    return _Family.OTHER


_FAMILIES: dict[type, _Family] = {}
_CURVE_TYPES = {curve.name: key_type for key_type, curve in _CURVES.items()}


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
        return keyfile.pem("PRIVATE KEY", plain)
    if not passphrase:
        raise InvalidKeyError("an empty passphrase does not protect a key; give a real one")
    return keyfile.pem("ENCRYPTED PRIVATE KEY", keyfile.encrypt_pkcs8(plain, passphrase))


def load_private_key(data: bytes, passphrase: bytes | None = None) -> SigningKey:
    """Load a PEM (or DER) private key, with errors that say what went wrong."""
    # An empty passphrase protects nothing (private_key_pem refuses it): treat it as none, so an
    # encrypted key read with one is reported as needing a passphrase, not as "not encrypted".
    passphrase = passphrase or None
    if passphrase is not None:
        # certwright's own format: its Scrypt derivation frees the GIL (see keyfile).
        opened = keyfile.decrypt_pkcs8(data, passphrase)
        if opened is not None:
            return as_signing_key(opened)
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
    return as_signing_key(key)


def as_signing_key(key: object) -> SigningKey:
    """``key``, if it is of a type and size certwright signs with (else :class:`InvalidKeyError`)."""
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise InvalidKeyError(f"unsupported key algorithm {type(key).__name__}")
    key_type_of(key)  # refuses odd curves and sizes
    return key


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
