"""`certwright key`, `csr`, `issue`, `sign` and `pkcs12`: files written, and refusals that write nothing."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from certwright.files import read_certificates, read_csr, read_private_key
from certwright.x509.authz import Authorization
from certwright.x509.keys import key_type_of
from support.certs import sans_of, spki, write_csr, write_tampered_csr
from support.cli import KEY_TYPES, PASSPHRASE, TRUST_DOMAIN, ZONE, make_ca, mode, run_cli, run_exe, tree

WEB = f"spiffe://{TRUST_DOMAIN}/ns/prod/web"


@pytest.fixture(scope="module")
def strict_ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with a user profile that narrows identities, roles and key types."""
    directory = make_ca(tmp_path_factory.mktemp("strict") / "ca")
    (directory / "profiles.toml").write_text(
        "[profile.prod-web]\n"
        'base = "mtls"\n'
        'identities = ["spiffe://{trust_domain}/ns/prod/*"]\n'
        'roles = ["reader", "writer"]\n'
        'key_types = ["ec-p256"]\n'
        'max_lifetime = "2d"\n'
        'default_lifetime = "1d"\n'
    )
    return directory


# --- key and csr ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_key_writes_a_0600_key_of_the_type(tmp_path: Path, key_type: str) -> None:
    out = tmp_path / "k.pem"
    outcome = run_cli("key", "--type", key_type, "--out", out)
    assert outcome.code == 0, outcome
    assert mode(out) == 0o600
    assert key_type_of(read_private_key(out)).value == key_type


def test_key_encrypted_with_a_passphrase_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("key passphrase!\n")
    outcome = run_cli("key", "--out", tmp_path / "k.pem", "--passphrase-file", secret)
    assert outcome.code == 0, outcome
    assert "ENCRYPTED" in (tmp_path / "k.pem").read_text()
    read_private_key(tmp_path / "k.pem", b"key passphrase!")


def test_key_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "k.pem"
    out.write_text("precious")
    outcome = run_cli("key", "--out", out)
    assert outcome.code == 1, outcome
    assert "already exists" in outcome.stderr and "--force" in outcome.stderr
    assert out.read_text() == "precious"
    assert tree(tmp_path) == {"k.pem"}
    forced = run_cli("key", "--out", out, "--force")
    assert forced.code == 0, forced
    assert mode(out) == 0o600 and "PRIVATE KEY" in out.read_text()


def test_key_unknown_type_is_refused(tmp_path: Path) -> None:
    outcome = run_cli("key", "--type", "rsa-1024", "--out", tmp_path / "k.pem")
    assert outcome.code == 1, outcome
    assert "unknown key type 'rsa-1024'" in outcome.stderr and "ec-p256" in outcome.stderr
    assert tree(tmp_path) == set()


def test_csr_for_an_existing_key(tmp_path: Path) -> None:
    assert run_cli("key", "--type", "ec-p384", "--out", tmp_path / "k.pem").code == 0
    outcome = run_cli(
        "csr",
        "--key",
        tmp_path / "k.pem",
        "--identity",
        WEB,
        "--dns",
        f"web.{ZONE}",
        "--ip",
        "10.1.2.3",
        "--subject",
        "CN=web",
        "--out",
        tmp_path / "web.csr",
    )
    assert outcome.code == 0, outcome
    request = read_csr(tmp_path / "web.csr")
    assert request.is_signature_valid
    assert spki(request.public_key()) == spki(read_private_key(tmp_path / "k.pem").public_key())
    names = sans_of(request)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert names.get_values_for_type(x509.DNSName) == [f"web.{ZONE}"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert request.subject.rfc4514_string() == "CN=web"


@pytest.mark.parametrize(
    ("identity", "named"),
    [
        ("spiffe://example.org/a//b", "empty segment"),
        ("https://example.org/web", "spiffe://"),
        ("spiffe://example.org/web/", "end with '/'"),
    ],
)
def test_csr_refuses_an_invalid_spiffe_id(tmp_path: Path, identity: str, named: str) -> None:
    assert run_cli("key", "--out", tmp_path / "k.pem").code == 0
    outcome = run_cli("csr", "--key", tmp_path / "k.pem", "--identity", identity, "--out", tmp_path / "x.csr")
    assert outcome.code == 1, outcome
    assert named in outcome.stderr
    assert tree(tmp_path) == {"k.pem"}


def test_csr_with_a_corrupt_key(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    outcome = run_cli("csr", "--key", tmp_path / "k.pem", "--identity", WEB, "--out", tmp_path / "x.csr")
    assert outcome.code == 1, outcome
    assert "k.pem" in outcome.stderr
    assert tree(tmp_path) == {"k.pem"}


# --- issue ---------------------------------------------------------------------------------------


def test_issue_writes_certificate_key_and_chain(tmp_path: Path, ca_dir: Path) -> None:
    prefix = tmp_path / "web"
    started = datetime.datetime.now(datetime.UTC)
    outcome = run_cli(
        "issue",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--identity",
        WEB,
        "--role",
        "reader",
        "--role",
        "writer",
        "--attr",
        "env=prod",
        "--attr",
        "owner=team-a",
        "--dns",
        f"web.{ZONE}",
        "--ip",
        "10.0.0.7",
        "--ip",
        "fd00::7",
        "--ttl",
        "24h",
        "--out",
        prefix,
    )
    assert outcome.code == 0, outcome
    assert tree(tmp_path) == {"web.pem", "web.key", "web.chain.pem"}
    assert mode(tmp_path / "web.key") == 0o600
    leaf = read_certificates(tmp_path / "web.pem")
    chain = read_certificates(tmp_path / "web.chain.pem")
    intermediate = read_certificates(ca_dir / "intermediate.pem")
    assert len(leaf) == 1
    assert chain == [leaf[0], intermediate[0]], "the chain is the leaf then the intermediate (no root)"
    cert = leaf[0]
    cert.verify_directly_issued_by(intermediate[0])
    assert spki(cert.public_key()) == spki(read_private_key(tmp_path / "web.key").public_key())
    names = sans_of(cert)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert names.get_values_for_type(x509.DNSName) == [f"web.{ZONE}"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("fd00::7"),
    ]
    authz = Authorization.from_certificate(cert)
    assert set(authz.roles) == {"reader", "writer"}
    assert authz.attribute_map == {"env": "prod", "owner": "team-a"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime_end = cert.not_valid_after_utc - started
    assert datetime.timedelta(hours=23, minutes=59) <= lifetime_end <= datetime.timedelta(hours=24, minutes=1)
    assert cert.not_valid_before_utc <= started
    assert cert.serial_number.bit_length() >= 64


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_issue_each_key_type(tmp_path: Path, ca_dir: Path, key_type: str) -> None:
    outcome = run_cli(
        "issue",
        "--ca",
        ca_dir,
        "--profile",
        "server",
        "--dns",
        f"api.{ZONE}",
        "--key-type",
        key_type,
        "--out",
        tmp_path / "api",
        "--json",
    )
    assert outcome.code == 0, outcome
    info = json.loads(outcome.stdout)
    assert info["key_type"] == key_type
    assert info["dns"] == [f"api.{ZONE}"]
    assert info["identity"] is None
    assert sorted(info["files"]) == sorted(str(tmp_path / f"api{s}") for s in (".pem", ".key", ".chain.pem"))
    assert key_type_of(read_private_key(tmp_path / "api.key")).value == key_type
    assert mode(tmp_path / "api.key") == 0o600


def test_issue_force_replaces_existing_files(tmp_path: Path, ca_dir: Path) -> None:
    prefix = tmp_path / "c"
    args = (
        "issue",
        "--ca",
        ca_dir,
        "--profile",
        "client",
        "--identity",
        f"spiffe://{TRUST_DOMAIN}/c",
        "--out",
        prefix,
    )
    assert run_cli(*args).code == 0
    first = (tmp_path / "c.pem").read_bytes()
    again = run_cli(*args)
    assert again.code == 1, again
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "c.pem").read_bytes() == first
    forced = run_cli(*args, "--force")
    assert forced.code == 0, forced
    assert (tmp_path / "c.pem").read_bytes() != first
    assert mode(tmp_path / "c.key") == 0o600


def test_issue_with_one_existing_output_writes_none(tmp_path: Path, ca_dir: Path) -> None:
    (tmp_path / "w.chain.pem").write_text("someone else's file")
    outcome = run_cli(
        "issue", "--ca", ca_dir, "--profile", "mtls", "--identity", WEB, "--out", tmp_path / "w"
    )
    assert outcome.code == 1, outcome
    assert "w.chain.pem" in outcome.stderr
    assert tree(tmp_path) == {"w.chain.pem"}
    assert (tmp_path / "w.chain.pem").read_text() == "someone else's file"


ISSUE_REFUSALS = [
    pytest.param(
        "mtls", ["--identity", WEB, "--dns", "web.example.com"], "web.example.com", id="dns-outside-zone"
    ),
    pytest.param(
        "mtls",
        ["--identity", WEB, "--dns", f"web.{TRUST_DOMAIN}"],
        f"web.{TRUST_DOMAIN}",
        id="dns-in-trust-domain-but-not-zone",
    ),
    pytest.param("server", ["--dns", f"*.{ZONE}"], "wildcard", id="wildcard-dns"),
    pytest.param("mtls", ["--identity", WEB, "--ip", "8.8.8.8"], "8.8.8.8", id="ip-outside-ranges"),
    pytest.param("mtls", ["--identity", WEB, "--ip", "2001:db8::1"], "2001:db8::1", id="ipv6-outside-ranges"),
    pytest.param("client", ["--identity", WEB, "--ip", "10.0.0.1"], "10.0.0.1", id="ip-in-client-profile"),
    pytest.param("mtls", ["--identity", WEB, "--email", "a@example.org"], "a@example.org", id="email"),
    pytest.param("mtls", ["--identity", "spiffe://evil.example/web"], "trust domain", id="identity-other-td"),
    pytest.param("mtls", ["--identity", f"spiffe://{TRUST_DOMAIN}"], "path", id="identity-without-path"),
    pytest.param("client", [], "requires a SPIFFE identity", id="client-without-identity"),
    pytest.param(
        "ocsp-responder", ["--identity", WEB], "does not carry an identity", id="ocsp-with-identity"
    ),
    pytest.param("mtls", ["--identity", WEB, "--ttl", "31d"], "exceeds the maximum", id="lifetime-over-max"),
    pytest.param(
        "server", ["--dns", f"a.{ZONE}", "--ttl", "398d"], "exceeds the maximum", id="server-over-max"
    ),
    pytest.param("mtls", ["--identity", WEB, "--ttl", "soon"], "invalid duration", id="ttl-garbage"),
    pytest.param("mtls", ["--identity", WEB, "--ttl", "0s"], "positive", id="ttl-zero"),
    pytest.param("mtls", ["--identity", "spiffe://Example.org/web"], "'E'", id="spiffe-uppercase-td"),
    pytest.param("mtls", ["--identity", f"spiffe://{TRUST_DOMAIN}/a/../b"], "'..'", id="spiffe-dot-dot"),
    pytest.param("mtls", ["--identity", f"spiffe://{TRUST_DOMAIN}/web?x=1"], "query", id="spiffe-query"),
    pytest.param(
        "mtls", ["--identity", f"spiffe://user@{TRUST_DOMAIN}/web"], "user info", id="spiffe-userinfo"
    ),
    pytest.param("mtls", ["--identity", f"spiffe://{TRUST_DOMAIN}:443/web"], "port", id="spiffe-port"),
    pytest.param("mtls", ["--identity", "web"], "spiffe://", id="not-a-uri"),
    pytest.param("mtls", ["--identity", WEB, "--attr", "novalue"], "KEY=VALUE", id="attr-without-value"),
    pytest.param("mtls", ["--identity", WEB, "--ip", "10.0.0.256"], "10.0.0.256", id="ip-garbage"),
    pytest.param(
        "mtls", ["--identity", WEB, "--dns", "bad_name..svc.example.org"], "bad_name", id="dns-garbage"
    ),
    pytest.param("mtls", ["--identity", WEB, "--subject", "CN"], "invalid subject", id="subject-garbage"),
    pytest.param(
        "no-such-profile", ["--identity", WEB], "unknown profile 'no-such-profile'", id="unknown-profile"
    ),
    # RFC 5280 4.1.2.6: a certificate with an empty subject and no SAN names nobody.
    pytest.param("ocsp-responder", [], "name nobody", id="ocsp-without-subject"),
    pytest.param("server", [], "name nobody", id="server-without-any-name"),
]


@pytest.mark.parametrize(("profile", "extra", "named"), ISSUE_REFUSALS)
def test_issue_refuses_with_the_reason_and_writes_nothing(
    tmp_path: Path, ca_dir: Path, profile: str, extra: list[str], named: str
) -> None:
    outcome = run_cli("issue", "--ca", ca_dir, "--profile", profile, *extra, "--out", tmp_path / "x")
    assert outcome.code == 1, outcome
    assert outcome.stderr.startswith("error: "), outcome
    assert named in outcome.stderr, outcome
    assert tree(tmp_path) == set(), f"left behind: {tree(tmp_path)}"


def test_issue_ocsp_responder_with_a_subject(tmp_path: Path, ca_dir: Path) -> None:
    outcome = run_cli(
        "issue",
        "--ca",
        ca_dir,
        "--profile",
        "ocsp-responder",
        "--subject",
        "CN=OCSP,O=Example",
        "--out",
        tmp_path / "ocsp",
        "--json",
    )
    assert outcome.code == 0, outcome
    info = json.loads(outcome.stdout)
    assert info["subject"] == "CN=OCSP,O=Example" and info["uris"] == [] and info["dns"] == []
    assert info["extended_key_usage"] == ["OCSPSigning"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        pytest.param(
            ["--identity", f"spiffe://{TRUST_DOMAIN}/ns/dev/web"],
            "does not match profile",
            id="identity-outside-profile-pattern",
        ),
        pytest.param(["--identity", WEB, "--role", "admin"], "role 'admin'", id="role-outside-profile"),
        pytest.param(
            ["--identity", WEB, "--key-type", "rsa-2048"], "key type rsa-2048", id="key-type-outside"
        ),
        pytest.param(["--identity", WEB, "--ttl", "3d"], "exceeds the maximum", id="user-profile-max"),
    ],
)
def test_user_profile_narrows_what_may_be_issued(
    tmp_path: Path, strict_ca_dir: Path, extra: list[str], named: str
) -> None:
    outcome = run_cli(
        "issue", "--ca", strict_ca_dir, "--profile", "prod-web", *extra, "--out", tmp_path / "x"
    )
    assert outcome.code == 1, outcome
    assert named in outcome.stderr, outcome
    assert tree(tmp_path) == set()


def test_user_profile_allows_what_it_names(tmp_path: Path, strict_ca_dir: Path) -> None:
    outcome = run_cli(
        "issue",
        "--ca",
        strict_ca_dir,
        "--profile",
        "prod-web",
        "--identity",
        WEB,
        "--role",
        "writer",
        "--out",
        tmp_path / "x",
        "--json",
    )
    assert outcome.code == 0, outcome
    assert json.loads(outcome.stdout)["roles"] == ["writer"]


def test_unknown_key_type_in_a_profile_file(tmp_path: Path, ca_dir: Path) -> None:
    broken = tmp_path / "ca"
    shutil.copytree(ca_dir, broken)
    (broken / "profiles.toml").write_text('[profile.web]\nbase = "mtls"\nkey_types = ["dsa"]\n')
    outcome = run_cli(
        "issue", "--ca", broken, "--profile", "mtls", "--identity", WEB, "--out", tmp_path / "x"
    )
    assert outcome.code == 1, outcome
    assert "profiles.toml" in outcome.stderr and "unknown key type 'dsa'" in outcome.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("x.")]


def test_issue_with_a_wrong_passphrase(tmp_path: Path, ca_dir: Path) -> None:
    outcome = run_cli(
        "issue",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--identity",
        WEB,
        "--out",
        tmp_path / "x",
        passphrase="not the passphrase",
    )
    assert outcome.code == 1, outcome
    assert "wrong passphrase" in outcome.stderr and "intermediate.key" in outcome.stderr
    assert tree(tmp_path) == set()


def test_issue_from_a_directory_that_is_no_ca(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    outcome = run_cli(
        "issue", "--ca", tmp_path / "empty", "--profile", "mtls", "--identity", WEB, "--out", tmp_path / "x"
    )
    assert outcome.code == 1, outcome
    assert "not a certwright CA directory" in outcome.stderr
    assert tree(tmp_path) == {"empty"}


@pytest.mark.parametrize("missing", ["--ca", "--profile", "--out"])
def test_issue_missing_required_option_is_a_usage_error(tmp_path: Path, ca_dir: Path, missing: str) -> None:
    options = {"--ca": str(ca_dir), "--profile": "mtls", "--out": str(tmp_path / "x")}
    args = [part for opt, value in options.items() if opt != missing for part in (opt, value)]
    outcome = run_cli("issue", "--identity", WEB, *args)
    assert outcome.code == 2, outcome
    assert missing in outcome.stderr
    assert tree(tmp_path) == set()


# --- sign ----------------------------------------------------------------------------------------


def test_sign_a_csr(tmp_path: Path, ca_dir: Path) -> None:
    request = write_csr(
        tmp_path / "api.csr", uris=(f"spiffe://{TRUST_DOMAIN}/api",), dns=(f"api.{ZONE}",), common_name="api"
    )
    outcome = run_cli(
        "sign",
        "--ca",
        ca_dir,
        "--profile",
        "server",
        "--csr",
        tmp_path / "api.csr",
        "--role",
        "reader",
        "--ttl",
        "2d",
        "--out",
        tmp_path / "api",
    )
    assert outcome.code == 0, outcome
    assert tree(tmp_path) == {"api.csr", "api.pem", "api.chain.pem"}
    cert = read_certificates(tmp_path / "api.pem")[0]
    assert spki(cert.public_key()) == spki(request.public_key())
    assert sans_of(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{TRUST_DOMAIN}/api"
    ]
    assert sans_of(cert).get_values_for_type(x509.DNSName) == [f"api.{ZONE}"]
    assert Authorization.from_certificate(cert).roles == ("reader",)
    assert cert.subject.rfc4514_string() == "CN=api"
    chain = read_certificates(tmp_path / "api.chain.pem")
    assert chain == [cert, *read_certificates(ca_dir / "intermediate.pem")]


def test_sign_a_der_csr_made_by_the_csr_command(tmp_path: Path, ca_dir: Path) -> None:
    assert run_cli("key", "--type", "ed25519", "--out", tmp_path / "k.pem").code == 0
    made = run_cli("csr", "--key", tmp_path / "k.pem", "--identity", WEB, "--out", tmp_path / "w.csr")
    assert made.code == 0, made
    der = read_csr(tmp_path / "w.csr").public_bytes(serialization.Encoding.DER)
    (tmp_path / "w.der").write_bytes(der)
    outcome = run_cli(
        "sign",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--csr",
        tmp_path / "w.der",
        "--identity",
        WEB,
        "--out",
        tmp_path / "w",
        "--json",
    )
    assert outcome.code == 0, outcome
    info = json.loads(outcome.stdout)
    assert info["identity"] == WEB and info["key_type"] == "ed25519"


SIGN_REFUSALS = [
    pytest.param({"ca": True, "uris": (WEB,)}, "mtls", "CA:true", id="csr-asks-for-ca"),
    pytest.param(
        {"uris": (WEB,), "dns": ("web.example.com",)}, "mtls", "web.example.com", id="csr-dns-outside"
    ),
    pytest.param({"uris": ("spiffe://evil.example/web",)}, "mtls", "trust domain", id="csr-identity-outside"),
    pytest.param(
        {"uris": ("spiffe://example.org/a//b",)}, "mtls", "empty segment", id="csr-invalid-spiffe-id"
    ),
    pytest.param({"uris": (WEB, f"{WEB}2")}, "mtls", "more than one URI", id="csr-two-uris"),
    pytest.param({"dns": (f"web.{ZONE}",)}, "client", "requires a SPIFFE identity", id="csr-no-identity"),
]


@pytest.mark.parametrize(("csr", "profile", "named"), SIGN_REFUSALS)
def test_sign_refuses_a_bad_csr_and_writes_nothing(
    tmp_path: Path, ca_dir: Path, csr: dict[str, object], profile: str, named: str
) -> None:
    write_csr(tmp_path / "req.csr", **csr)  # type: ignore[arg-type]
    outcome = run_cli(
        "sign", "--ca", ca_dir, "--profile", profile, "--csr", tmp_path / "req.csr", "--out", tmp_path / "out"
    )
    assert outcome.code == 1, outcome
    assert named in outcome.stderr, outcome
    assert tree(tmp_path) == {"req.csr"}


def test_sign_refuses_a_csr_with_a_bad_signature(tmp_path: Path, ca_dir: Path) -> None:
    write_tampered_csr(tmp_path / "req.der", uri=WEB)
    outcome = run_cli(
        "sign", "--ca", ca_dir, "--profile", "mtls", "--csr", tmp_path / "req.der", "--out", tmp_path / "out"
    )
    assert outcome.code == 1, outcome
    assert "signature does not verify" in outcome.stderr
    assert tree(tmp_path) == {"req.der"}


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a CSR\n",
        b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
        b"\x30\x82\x01\x00garbage",
    ],
    ids=["text", "truncated-pem", "truncated-der"],
)
def test_sign_refuses_a_corrupt_csr(tmp_path: Path, ca_dir: Path, content: bytes) -> None:
    (tmp_path / "req.csr").write_bytes(content)
    outcome = run_cli(
        "sign", "--ca", ca_dir, "--profile", "mtls", "--csr", tmp_path / "req.csr", "--out", tmp_path / "out"
    )
    assert outcome.code == 1, outcome
    assert "req.csr" in outcome.stderr and "not a valid certificate signing request" in outcome.stderr
    assert tree(tmp_path) == {"req.csr"}


def test_sign_refuses_an_identity_other_than_the_csrs(tmp_path: Path, ca_dir: Path) -> None:
    write_csr(tmp_path / "req.csr", uris=(WEB,))
    outcome = run_cli(
        "sign",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--csr",
        tmp_path / "req.csr",
        "--identity",
        f"spiffe://{TRUST_DOMAIN}/other",
        "--out",
        tmp_path / "out",
    )
    assert outcome.code == 1, outcome
    assert "asks for identity" in outcome.stderr
    assert tree(tmp_path) == {"req.csr"}


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--out", "x"], id="neither-csr-nor-dir"),
        pytest.param(["--csr", "REQ"], id="csr-without-out"),
        pytest.param(["--csr", "REQ", "--csr-dir", "DIR", "--out", "x"], id="both"),
        pytest.param(["--csr-dir", "DIR"], id="dir-without-out-dir"),
    ],
)
def test_sign_usage_errors(tmp_path: Path, ca_dir: Path, args: list[str]) -> None:
    write_csr(tmp_path / "req.csr", uris=(WEB,))
    (tmp_path / "in").mkdir()
    mapping = {"REQ": str(tmp_path / "req.csr"), "DIR": str(tmp_path / "in"), "x": str(tmp_path / "x")}
    outcome = run_cli("sign", "--ca", ca_dir, "--profile", "mtls", *[mapping.get(a, a) for a in args])
    assert outcome.code == 2, outcome
    assert tree(tmp_path) == {"req.csr", "in"}


def _csr_dir(directory: Path, count: int) -> list[str]:
    directory.mkdir()
    names = []
    for index in range(count):
        name = f"svc{index}"
        write_csr(
            directory / f"{name}.csr", uris=(f"spiffe://{TRUST_DOMAIN}/{name}",), dns=(f"{name}.{ZONE}",)
        )
        names.append(name)
    return names


def test_sign_a_directory_of_csrs(tmp_path: Path, ca_dir: Path) -> None:
    names = _csr_dir(tmp_path / "in", 4)
    outcome = run_cli(
        "sign",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--csr-dir",
        tmp_path / "in",
        "--out-dir",
        tmp_path / "out",
        "--role",
        "batch",
        "--json",
    )
    assert outcome.code == 0, outcome
    result = json.loads(outcome.stdout)
    assert result["refused"] == []
    assert tree(tmp_path / "out") == {f"{n}.pem" for n in names}
    for name in names:
        cert = read_certificates(tmp_path / "out" / f"{name}.pem")[0]
        uris = sans_of(cert).get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == [f"spiffe://{TRUST_DOMAIN}/{name}"]
        assert Authorization.from_certificate(cert).roles == ("batch",)


@pytest.mark.parametrize("bad", ["ca", "tampered", "outside", "corrupt"])
def test_sign_directory_with_one_bad_csr_writes_nothing(tmp_path: Path, ca_dir: Path, bad: str) -> None:
    _csr_dir(tmp_path / "in", 3)
    if bad == "ca":
        write_csr(tmp_path / "in" / "bad.csr", uris=(WEB,), ca=True)
    elif bad == "tampered":
        write_tampered_csr(tmp_path / "in" / "bad.der", uri=WEB)
    elif bad == "outside":
        write_csr(tmp_path / "in" / "bad.pem", uris=("spiffe://evil.example/x",))
    else:
        (tmp_path / "in" / "bad.csr").write_text("garbage")
    outcome = run_cli(
        "sign",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--csr-dir",
        tmp_path / "in",
        "--out-dir",
        tmp_path / "out",
    )
    assert outcome.code == 1, outcome
    assert "bad." in outcome.stderr and "nothing written" in outcome.stderr, outcome
    assert not (tmp_path / "out").exists(), f"written: {tree(tmp_path / 'out')}"


def test_sign_directory_keep_going_writes_the_good_ones(tmp_path: Path, ca_dir: Path) -> None:
    names = _csr_dir(tmp_path / "in", 3)
    write_csr(tmp_path / "in" / "bad.csr", uris=(WEB,), ca=True)
    outcome = run_cli(
        "sign",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--csr-dir",
        tmp_path / "in",
        "--out-dir",
        tmp_path / "out",
        "--keep-going",
        "--json",
    )
    assert outcome.code == 1, outcome
    assert "bad.csr" in outcome.stderr and "CA:true" in outcome.stderr
    result = json.loads(outcome.stdout)
    assert [r["csr"] for r in result["refused"]] == [str(tmp_path / "in" / "bad.csr")]
    assert tree(tmp_path / "out") == {f"{n}.pem" for n in names}


def test_sign_directory_refuses_existing_outputs_without_force(tmp_path: Path, ca_dir: Path) -> None:
    _csr_dir(tmp_path / "in", 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "svc1.pem").write_text("old")
    outcome = run_cli(
        "sign",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--csr-dir",
        tmp_path / "in",
        "--out-dir",
        tmp_path / "out",
    )
    assert outcome.code == 1, outcome
    assert "svc1.pem" in outcome.stderr and "already exists" in outcome.stderr
    assert tree(tmp_path / "out") == {"svc1.pem"}
    assert (tmp_path / "out" / "svc1.pem").read_text() == "old"


def test_sign_directory_without_requests(tmp_path: Path, ca_dir: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no CSRs here")
    outcome = run_cli(
        "sign",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--csr-dir",
        tmp_path / "in",
        "--out-dir",
        tmp_path / "out",
    )
    assert outcome.code == 1, outcome
    assert "no *.csr" in outcome.stderr
    assert not (tmp_path / "out").exists()


# --- pkcs12 --------------------------------------------------------------------------------------


def test_pkcs12_bundles_key_certificate_and_chain(tmp_path: Path, ca_dir: Path) -> None:
    assert (
        run_cli("issue", "--ca", ca_dir, "--profile", "mtls", "--identity", WEB, "--out", tmp_path / "w").code
        == 0
    )
    (tmp_path / "p12pw").write_text("p12 passphrase\n")
    outcome = run_cli(
        "pkcs12",
        "--cert",
        tmp_path / "w.pem",
        "--key",
        tmp_path / "w.key",
        "--chain",
        tmp_path / "w.chain.pem",
        "--passphrase-file",
        tmp_path / "p12pw",
        "--name",
        "web",
        "--out",
        tmp_path / "w.p12",
    )
    assert outcome.code == 0, outcome
    assert mode(tmp_path / "w.p12") == 0o600
    loaded = pkcs12.load_pkcs12((tmp_path / "w.p12").read_bytes(), b"p12 passphrase")
    assert loaded.cert is not None and loaded.key is not None
    assert loaded.cert.certificate == read_certificates(tmp_path / "w.pem")[0]
    assert loaded.cert.friendly_name == b"web"
    assert [c.certificate for c in loaded.additional_certs] == read_certificates(ca_dir / "intermediate.pem")
    assert spki(loaded.key.public_key()) == spki(read_private_key(tmp_path / "w.key").public_key())


def test_pkcs12_refuses_a_key_that_is_not_the_certificates(tmp_path: Path, ca_dir: Path) -> None:
    assert (
        run_cli("issue", "--ca", ca_dir, "--profile", "mtls", "--identity", WEB, "--out", tmp_path / "w").code
        == 0
    )
    assert run_cli("key", "--out", tmp_path / "other.key").code == 0
    (tmp_path / "p12pw").write_text("p12 passphrase\n")
    before = tree(tmp_path)
    outcome = run_cli(
        "pkcs12",
        "--cert",
        tmp_path / "w.pem",
        "--key",
        tmp_path / "other.key",
        "--passphrase-file",
        tmp_path / "p12pw",
        "--out",
        tmp_path / "w.p12",
    )
    assert outcome.code == 1, outcome
    assert "is not the key of" in outcome.stderr
    assert tree(tmp_path) == before


# --- the real program, end to end ----------------------------------------------------------------


def test_issue_and_sign_through_the_console_script(tmp_path: Path, ca_dir: Path) -> None:
    issued = run_exe(
        "issue",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--identity",
        WEB,
        "--role",
        "reader",
        "--dns",
        f"web.{ZONE}",
        "--ttl",
        "24h",
        "--out",
        tmp_path / "web",
    )
    assert issued.code == 0, issued
    assert "wrote" in issued.stdout
    assert mode(tmp_path / "web.key") == 0o600
    write_csr(tmp_path / "api.csr", uris=(f"spiffe://{TRUST_DOMAIN}/api",))
    signed = run_exe(
        "sign",
        "--ca",
        ca_dir,
        "--profile",
        "client",
        "--csr",
        tmp_path / "api.csr",
        "--out",
        tmp_path / "api",
    )
    assert signed.code == 0, signed
    assert (tmp_path / "api.pem").is_file() and (tmp_path / "api.chain.pem").is_file()


def test_console_script_refusals_exit_1_with_the_reason_on_stderr(tmp_path: Path, ca_dir: Path) -> None:
    outside = run_exe(
        "issue",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--identity",
        WEB,
        "--ip",
        "8.8.8.8",
        "--out",
        tmp_path / "x",
    )
    assert outside.code == 1, outside
    assert outside.stderr.startswith("error: IP address 8.8.8.8 is not allowed"), outside
    assert outside.stdout == ""
    wrong = run_exe(
        "issue",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--identity",
        WEB,
        "--out",
        tmp_path / "x",
        passphrase=PASSPHRASE + "x",
    )
    assert wrong.code == 1, wrong
    assert "wrong passphrase" in wrong.stderr
    no_passphrase = run_exe(
        "issue",
        "--ca",
        ca_dir,
        "--profile",
        "mtls",
        "--identity",
        WEB,
        "--out",
        tmp_path / "x",
        passphrase=None,
    )
    assert no_passphrase.code == 1, no_passphrase
    assert "CERTWRIGHT_CA_PASSPHRASE" in no_passphrase.stderr
    usage = run_exe("issue", "--ca", ca_dir, "--identity", WEB, "--out", tmp_path / "x")
    assert usage.code == 2, usage
    assert "Missing option '--profile'" in usage.stderr
    for outcome in (outside, wrong, no_passphrase, usage):
        assert "Traceback" not in outcome.stderr
    assert tree(tmp_path) == set()
