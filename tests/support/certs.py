"""CSRs and certificates built with cryptography directly, not through certwright."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from certwright.files import read_certificate, read_private_key


def spki(key: object) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key (to compare keys across objects)."""
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sans_of(cert: x509.Certificate | x509.CertificateSigningRequest) -> x509.SubjectAlternativeName:
    """The subjectAltName extension of a certificate or CSR (x509.ExtensionNotFound if absent)."""
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def write_csr(
    path: Path,
    *,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    common_name: str | None = None,
    ca: bool = False,
    der: bool = False,
) -> x509.CertificateSigningRequest:
    """Build a CSR with cryptography (a fresh P-256 key), optionally asking for CA:true."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)] if common_name else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    request = builder.sign(key, hashes.SHA256())
    path.write_bytes(request.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM))
    return request


def write_tampered_csr(path: Path, *, uri: str) -> None:
    """A DER CSR whose signature no longer verifies: one byte of the signature flipped.

    The last octet of a DER CSR lies inside the signature BIT STRING (for ECDSA, inside
    the INTEGER s), so the request still parses but its proof of possession fails.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    data = bytearray(request.public_bytes(serialization.Encoding.DER))
    data[-1] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(data))
    assert not tampered.is_signature_valid
    path.write_bytes(bytes(data))


def mint_outside_constraints(
    ca_dir: Path, out: Path, *, passphrase: str, uri: str = "spiffe://evil.example/x"
) -> Path:
    """A leaf signed by the CA's name-constrained intermediate key, bypassing the profile.

    ``passphrase`` opens ``ca_dir/intermediate.key``. The leaf's URI SAN lies outside the
    intermediate's permitted subtrees: every correct verifier must refuse it (RFC 5280
    4.2.1.10), whatever else about it is right.
    """
    issuer = read_certificate(ca_dir / "intermediate.pem")
    issuer_key = read_private_key(ca_dir / "intermediate.key", passphrase.encode())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "evil")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(issuer_key, None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out
