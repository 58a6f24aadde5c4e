"""certwright.x509.keys: key types, PEM in and out, encryption at rest, PKCS#12."""

from __future__ import annotations

import base64
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519
from cryptography.hazmat.primitives.serialization import pkcs12
from pyasn1.codec.der import decoder

from certwright.errors import InvalidKeyError
from certwright.x509 import keyfile, keys
from certwright.x509.keys import KeyType
from certwright.x509.profiles import BUILTIN_PROFILES

PASSPHRASE = b"correct horse battery staple"


def _pem_body(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(pem.splitlines()[1:-1]))


def _public_der(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def ec_key(key_for):
    return key_for(KeyType.EC_P256)


@pytest.fixture(scope="module")
def encrypted_pem(ec_key) -> bytes:
    return keys.private_key_pem(ec_key, PASSPHRASE)


@pytest.fixture(scope="module")
def leaf_and_chain(authority, leaf_keys):
    key = leaf_keys(KeyType.EC_P256)
    leaf = authority.issue(
        key.public_key(), profile=BUILTIN_PROFILES["server"], sans=None, subject="CN=p12 leaf"
    )
    return key, leaf, [authority.certificate]


@pytest.fixture(scope="module")
def p12_bundle(leaf_and_chain) -> bytes:
    key, leaf, chain = leaf_and_chain
    return keys.pkcs12_bytes(key, leaf, chain, PASSPHRASE, name="payments")


# -- KeyType --------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", list(KeyType))
def test_every_key_type_generates_and_round_trips_through_pem(key_for, leaf_keys, key_type):
    key = key_for(key_type)
    assert keys.key_type_of(key) is key_type
    assert keys.key_type_of(key.public_key()) is key_type
    pem = keys.private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = keys.load_private_key(pem)
    assert _public_der(loaded) == _public_der(key)
    # DER input is accepted too
    der_bytes = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert _public_der(keys.load_private_key(der_bytes)) == _public_der(key)
    # negative control: another key of the same type does not load as this one
    other = keys.load_private_key(keys.private_key_pem(leaf_keys(key_type)))
    assert _public_der(other) != _public_der(key)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_pem_is_pkcs8_with_64_character_lines(key_for, key_type):
    pem = keys.private_key_pem(key_for(key_type))
    body = pem.splitlines()[1:-1]
    assert all(len(line) == 64 for line in body[:-1])
    assert 0 < len(body[-1]) <= 64
    # cryptography writes the same PKCS#8 PEM
    assert pem == key_for(key_type).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_generate_key_defaults_to_ec_p256():
    key = keys.generate_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"


@pytest.mark.parametrize(
    ("key_type", "expected"),
    [
        (KeyType.EC_P256, hashes.SHA256),
        (KeyType.EC_P384, hashes.SHA384),
        (KeyType.RSA_2048, hashes.SHA256),
        (KeyType.ED25519, type(None)),
    ],
)
def test_signature_hash_per_key_type(key_for, key_type, expected):
    assert isinstance(keys.signature_hash(key_for(key_type)), expected)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("ec-p256", KeyType.EC_P256), (" RSA-3072 ", KeyType.RSA_3072), ("Ed25519", KeyType.ED25519)],
)
def test_key_type_parse_accepts_cli_names(name, expected):
    assert KeyType.parse(name) is expected


@pytest.mark.parametrize("name", ["ec-p521", "rsa-1024", "ed448", "", "ecdsa"])
def test_key_type_parse_error_lists_the_valid_names(name):
    with pytest.raises(InvalidKeyError, match=f"unknown key type {name!r}") as info:
        KeyType.parse(name)
    for key_type in KeyType:
        assert key_type.value in str(info.value)


# -- unsupported keys -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def unsupported_keys():
    return {
        "rsa-1024": (
            rsa.generate_private_key(public_exponent=65537, key_size=1024),
            "unsupported RSA key size 1024",
        ),
        "p-521": (ec.generate_private_key(ec.SECP521R1()), "unsupported elliptic curve secp521r1"),
        "secp256k1": (ec.generate_private_key(ec.SECP256K1()), "unsupported elliptic curve secp256k1"),
        "ed448": (ed448.Ed448PrivateKey.generate(), "unsupported key algorithm Ed448"),
        "x25519": (x25519.X25519PrivateKey.generate(), "unsupported key algorithm X25519"),
    }


@pytest.mark.parametrize("which", ["rsa-1024", "p-521", "secp256k1", "ed448"])
def test_key_type_of_refuses_unsupported_keys(unsupported_keys, which):
    key, message = unsupported_keys[which]
    with pytest.raises(InvalidKeyError, match=message):
        keys.key_type_of(key)
    with pytest.raises(InvalidKeyError, match=message):
        keys.key_type_of(key.public_key())


@pytest.mark.parametrize("which", ["rsa-1024", "p-521", "secp256k1", "ed448", "x25519"])
def test_load_private_key_refuses_unsupported_keys(unsupported_keys, which):
    key, message = unsupported_keys[which]
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidKeyError, match=message):
        keys.load_private_key(pem)


# -- encryption at rest ---------------------------------------------------------------------


def test_encrypted_pem_loads_with_the_right_passphrase(ec_key, encrypted_pem):
    assert encrypted_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert _public_der(keys.load_private_key(encrypted_pem, PASSPHRASE)) == _public_der(ec_key)


def test_encrypted_pem_is_pbes2_scrypt_aes256_cbc(encrypted_pem):
    info, rest = decoder.decode(_pem_body(encrypted_pem))
    assert not rest
    algorithm = info[0]
    assert str(algorithm[0]) == "1.2.840.113549.1.5.13"  # PBES2
    kdf, cipher = algorithm[1][0], algorithm[1][1]
    assert str(kdf[0]) == "1.3.6.1.4.1.11591.4.11"  # scrypt (RFC 7914 7)
    salt, n, r, p = kdf[1][0], int(kdf[1][1]), int(kdf[1][2]), int(kdf[1][3])
    assert len(bytes(salt)) == 16
    assert (n, r, p) == (keyfile.SCRYPT_N, keyfile.SCRYPT_R, keyfile.SCRYPT_P)
    assert str(cipher[0]) == "2.16.840.1.101.3.4.1.42"  # aes256-CBC
    assert len(bytes(cipher[1])) == 16


def test_each_encryption_uses_a_fresh_salt_and_iv(ec_key, encrypted_pem):
    again = keys.private_key_pem(ec_key, PASSPHRASE)
    assert again != encrypted_pem
    assert _public_der(keys.load_private_key(again, PASSPHRASE)) == _public_der(ec_key)


def test_wrong_passphrase_is_named(encrypted_pem):
    with pytest.raises(InvalidKeyError, match="wrong passphrase"):
        keys.load_private_key(encrypted_pem, b"not the passphrase")


@pytest.mark.parametrize("passphrase", [None, b""])
def test_missing_passphrase_is_named(encrypted_pem, passphrase):
    with pytest.raises(InvalidKeyError, match="encrypted: a passphrase is needed"):
        keys.load_private_key(encrypted_pem, passphrase)


def test_passphrase_for_a_plain_key_is_named(ec_key):
    plain = keys.private_key_pem(ec_key)
    with pytest.raises(InvalidKeyError, match="not encrypted, but a passphrase was given"):
        keys.load_private_key(plain, PASSPHRASE)
    # negative control: no passphrase, no complaint
    assert keys.load_private_key(plain) is not None


@pytest.mark.parametrize(
    "corrupt",
    [
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"this is not a key",
        b"",
    ],
)
def test_corrupt_keys_are_refused_as_invalid(corrupt):
    with pytest.raises(InvalidKeyError, match="not a valid private key"):
        keys.load_private_key(corrupt)


def test_corrupt_encrypted_pem_is_refused(encrypted_pem):
    lines = encrypted_pem.splitlines(keepends=True)
    truncated = b"".join([*lines[:3], lines[-1]])
    with pytest.raises(InvalidKeyError, match="not a valid private key"):
        keys.load_private_key(truncated, PASSPHRASE)


def test_empty_passphrase_is_refused_when_writing(ec_key):
    with pytest.raises(InvalidKeyError, match="empty passphrase"):
        keys.private_key_pem(ec_key, b"")


def test_openssl_reads_our_encrypted_key(tmp_path, openssl, ec_key, encrypted_pem):
    exe = openssl()
    path = tmp_path / "key.pem"
    path.write_bytes(encrypted_pem)
    ok = subprocess.run(
        [exe, "pkey", "-in", str(path), "-passin", f"pass:{PASSPHRASE.decode()}", "-pubout"],
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr.decode()
    assert ok.stdout == keys.public_key_pem(ec_key.public_key())
    # negative control: the wrong passphrase fails in OpenSSL too
    bad = subprocess.run(
        [exe, "pkey", "-in", str(path), "-passin", "pass:wrong", "-noout"],
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0


def test_public_key_pem_is_spki(ec_key):
    pem = keys.public_key_pem(ec_key.public_key())
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert serialization.load_pem_public_key(pem) == ec_key.public_key()


# -- PKCS#12 --------------------------------------------------------------------------------


def test_pkcs12_loads_back_with_cryptography(leaf_and_chain, p12_bundle):
    key, leaf, chain = leaf_and_chain
    loaded = pkcs12.load_pkcs12(p12_bundle, PASSPHRASE)
    assert _public_der(loaded.key) == _public_der(key)
    assert loaded.cert is not None
    assert loaded.cert.certificate == leaf
    assert loaded.cert.friendly_name == b"payments"
    assert [c.certificate for c in loaded.additional_certs] == chain


def test_pkcs12_wrong_passphrase_fails(p12_bundle):
    with pytest.raises(ValueError, match=r"(?i)invalid password"):
        pkcs12.load_pkcs12(p12_bundle, b"wrong")


def test_pkcs12_without_chain_or_name(leaf_and_chain):
    key, leaf, _ = leaf_and_chain
    loaded = pkcs12.load_pkcs12(keys.pkcs12_bytes(key, leaf, [], PASSPHRASE), PASSPHRASE)
    assert loaded.cert.certificate == leaf
    assert loaded.cert.friendly_name is None
    assert loaded.additional_certs == []


def test_pkcs12_needs_a_passphrase(leaf_and_chain):
    key, leaf, chain = leaf_and_chain
    with pytest.raises(InvalidKeyError, match="needs a passphrase"):
        keys.pkcs12_bytes(key, leaf, chain, b"")


def test_openssl_pkcs12_info_reads_our_bundle(tmp_path, openssl, p12_bundle):
    exe = openssl()
    path = tmp_path / "bundle.p12"
    path.write_bytes(p12_bundle)
    ok = subprocess.run(
        [exe, "pkcs12", "-info", "-nokeys", "-in", str(path), "-passin", f"pass:{PASSPHRASE.decode()}"],
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr.decode()
    out, info = ok.stdout.decode(), ok.stderr.decode()
    assert out.count("-----BEGIN CERTIFICATE-----") == 2
    assert "friendlyName: payments" in out
    assert "subject=CN = p12 leaf" in out
    assert "AES-256-CBC" in info
    assert "PBKDF2" in info
    assert "MAC: sha256" in info
    assert "PRIVATE KEY" not in out
    # negative control: the wrong passphrase fails the MAC check
    bad = subprocess.run(
        [exe, "pkcs12", "-info", "-nokeys", "-in", str(path), "-passin", "pass:wrong"],
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0
    assert "mac verify" in bad.stderr.decode().lower()


def test_certwright_format_opens_through_the_gil_free_path_with_the_same_key() -> None:
    # keyfile.decrypt_pkcs8 decrypts certwright's own format itself (so the scrypt
    # derivation can overlap other work); it must give exactly what cryptography gives.
    from cryptography.hazmat.primitives import serialization as ser

    from certwright.x509 import keys as keys_module

    key = keys_module.generate_key(keys_module.KeyType.EC_P256)
    pem = keys_module.private_key_pem(key, b"correct horse")
    fast = keyfile.decrypt_pkcs8(pem, b"correct horse")
    slow = ser.load_pem_private_key(pem, b"correct horse")
    assert fast is not None
    assert fast.private_numbers() == slow.private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    with pytest.raises(keys_module.InvalidKeyError, match="wrong passphrase"):
        keyfile.decrypt_pkcs8(pem, b"wrong horse")
    # Not certwright's format: left to cryptography.
    other = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw"))
    assert keyfile.decrypt_pkcs8(other, b"pw") is None
