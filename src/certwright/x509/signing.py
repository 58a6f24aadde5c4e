"""How a CA key signs certificates and CRLs: the AlgorithmIdentifier it announces and the call.

One place for the algorithm choices (ECDSA with SHA-256, or SHA-384 on P-384; RSA PKCS#1
v1.5 with SHA-256; pure Ed25519), shared by issuance and the CRL builder. The tests of both
prove the choices equal ``cryptography``'s builders byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from certwright.errors import InvalidKeyError
from certwright.x509 import der
from certwright.x509.keys import SigningKey


@dataclass(frozen=True)
class Signer:
    """The AlgorithmIdentifier DER a signature announces, and the call that makes it."""

    algorithm_der: bytes
    sign: Callable[[bytes], bytes]


def signer_for(key: SigningKey) -> Signer:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return Signer(der.sequence(der.oid("1.3.101.112")), key.sign)  # RFC 8410 3
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sha384 = key.curve.key_size > 256
        digest = hashlib.sha384 if sha384 else hashlib.sha256
        # The same signature over the same hash, hashed here: given a hash object,
        # cryptography checks it against the HashAlgorithm ABC on every call (two
        # isinstance/issubclass trips through abc, ~1-2 us of each certificate).
        algorithm = ec.ECDSA(utils.Prehashed(hashes.SHA384() if sha384 else hashes.SHA256()))
        oid = "1.2.840.10045.4.3.3" if sha384 else "1.2.840.10045.4.3.2"  # RFC 5758 3.2

        def sign_ec(data: bytes) -> bytes:
            return key.sign(digest(data).digest(), algorithm)

        return Signer(der.sequence(der.oid(oid)), sign_ec)
    if isinstance(key, rsa.RSAPrivateKey):
        pkcs1, sha256 = padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())

        def sign_rsa(data: bytes) -> bytes:  # hashed here, as for ECDSA above
            return key.sign(hashlib.sha256(data).digest(), pkcs1, sha256)

        # RFC 4055 5: the parameters of sha256WithRSAEncryption are NULL.
        return Signer(der.sequence(der.oid("1.2.840.113549.1.1.11"), b"\x05\x00"), sign_rsa)
    raise InvalidKeyError(f"cannot sign with a {type(key).__name__}")
