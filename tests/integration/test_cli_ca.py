"""`certwright ca init` and `ca show`: the files, their modes, and failures that leave nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import certwright.cadir
from certwright.files import read_certificates, read_private_key
from certwright.x509.authz import Authorization
from support.cli import (
    DEFAULT_OID,
    KEY_TYPES,
    PASSPHRASE,
    TRUST_DOMAIN,
    ZONE,
    make_ca,
    mode,
    run_cli,
    run_exe,
    tree,
)

KEY_CLASSES = {
    "ec-p256": (ec.EllipticCurvePrivateKey, 256),
    "ec-p384": (ec.EllipticCurvePrivateKey, 384),
    "ed25519": (ed25519.Ed25519PrivateKey, None),
    "rsa-2048": (rsa.RSAPrivateKey, 2048),
}


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One CA per key type, created once for the module (two zones each)."""
    base = tmp_path_factory.mktemp("cas")
    return {kt: make_ca(base / kt, key_type=kt, zones=(ZONE, "internal.example.net")) for kt in KEY_TYPES}


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_ca_init_writes_certificates_and_private_keys(cas: dict[str, Path], key_type: str) -> None:
    directory = cas[key_type]
    assert {"ca.toml", "root.pem", "root.key", "intermediate.pem", "intermediate.key", "bundle.pem"} <= tree(
        directory
    )
    assert not [name for name in tree(directory) if name.startswith(".")], "staging files left behind"
    for secret in ("root.key", "intermediate.key"):
        assert mode(directory / secret) == 0o600, secret
        text = (directory / secret).read_text()
        assert "BEGIN ENCRYPTED PRIVATE KEY" in text, f"{secret} is not encrypted at rest"
    root = read_certificates(directory / "root.pem")
    intermediate = read_certificates(directory / "intermediate.pem")
    assert len(root) == 1 and len(intermediate) == 1
    assert read_certificates(directory / "bundle.pem") == root
    assert intermediate[0].issuer == root[0].subject
    intermediate[0].verify_directly_issued_by(root[0])
    root[0].verify_directly_issued_by(root[0])


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_ca_keys_open_with_the_passphrase_and_have_the_key_type(cas: dict[str, Path], key_type: str) -> None:
    directory = cas[key_type]
    cls, size = KEY_CLASSES[key_type]
    for name, cert_name in (("root.key", "root.pem"), ("intermediate.key", "intermediate.pem")):
        key = read_private_key(directory / name, PASSPHRASE.encode())
        assert isinstance(key, cls)
        if size is not None:
            assert key.key_size == size  # type: ignore[union-attr]
        cert = read_certificates(directory / cert_name)[0]
        assert cert.public_key() == key.public_key()


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_intermediate_is_name_constrained_to_trust_domain_and_zones(
    cas: dict[str, Path], key_type: str
) -> None:
    intermediate = read_certificates(cas[key_type] / "intermediate.pem")[0]
    constraints = intermediate.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    permitted = set(constraints.value.permitted_subtrees or [])
    assert permitted == {
        x509.UniformResourceIdentifier(TRUST_DOMAIN),
        x509.DNSName(ZONE),
        x509.DNSName("internal.example.net"),
    }
    basic = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_ca_show_json(cas: dict[str, Path], key_type: str) -> None:
    outcome = run_cli("ca", "show", "--dir", cas[key_type], "--json", passphrase=None)
    assert outcome.code == 0, outcome
    shown = json.loads(outcome.stdout)
    assert shown["trust_domain"] == TRUST_DOMAIN
    assert shown["dns_zones"] == [ZONE, "internal.example.net"]
    assert shown["key_type"] == key_type
    assert shown["extension_oid"] == DEFAULT_OID
    assert shown["root"]["is_ca"] and shown["intermediate"]["is_ca"]
    assert shown["root"]["key_type"] == shown["intermediate"]["key_type"] == key_type
    assert shown["intermediate"]["issuer"] == shown["root"]["subject"]
    assert shown["intermediate"]["chain_position"] == "intermediate"
    assert {"root-ca", "intermediate-ca", "server", "client", "mtls", "ocsp-responder"} <= set(
        shown["profiles"]
    )


def test_ca_show_text(cas: dict[str, Path]) -> None:
    outcome = run_cli("ca", "show", "--ca", cas["ec-p256"], passphrase=None)
    assert outcome.code == 0, outcome
    assert TRUST_DOMAIN in outcome.stdout
    assert "Test ec-p256 Issuing CA" in outcome.stdout


def test_ca_init_json_and_dns_zone_default(tmp_path: Path) -> None:
    outcome = run_cli(
        "ca", "init", "--dir", tmp_path / "ca", "--name", "Json", "--trust-domain", "corp.example", "--json"
    )
    assert outcome.code == 0, outcome
    summary = json.loads(outcome.stdout)
    assert summary["trust_domain"] == "corp.example"
    assert summary["dns_zones"] == ["corp.example"], "without --dns-zone, the trust domain is the zone"
    assert summary["key_type"] == "ec-p256"
    assert summary["root"]["subject"] == "CN=Json Root CA"


def test_custom_extension_oid_is_used_for_roles(tmp_path: Path) -> None:
    oid = "1.3.6.1.4.1.99999.42.1"
    directory = make_ca(tmp_path / "ca", extension_oid=oid)
    shown = json.loads(run_cli("ca", "show", "--dir", directory, "--json").stdout)
    assert shown["extension_oid"] == oid
    prefix = tmp_path / "svc"
    outcome = run_cli(
        "issue",
        "--ca",
        directory,
        "--profile",
        "mtls",
        "--identity",
        f"spiffe://{TRUST_DOMAIN}/svc",
        "--role",
        "reader",
        "--out",
        prefix,
    )
    assert outcome.code == 0, outcome
    leaf = read_certificates(Path(f"{prefix}.pem"))[0]
    assert Authorization.from_certificate(leaf, oid).roles == ("reader",)
    ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    assert not ext.critical
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(DEFAULT_OID))
    inspected = json.loads(run_cli("inspect", f"{prefix}.pem", "--json", "--extension-oid", oid).stdout)
    assert inspected["roles"] == ["reader"]


def test_passphrase_file_instead_of_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text("from a file, not the env\n")
    outcome = run_cli(
        "ca",
        "init",
        "--dir",
        tmp_path / "ca",
        "--name",
        "F",
        "--trust-domain",
        TRUST_DOMAIN,
        "--passphrase-file",
        secret,
        passphrase=None,
    )
    assert outcome.code == 0, outcome
    read_private_key(tmp_path / "ca" / "intermediate.key", b"from a file, not the env")
    issued = run_cli(
        "issue",
        "--ca",
        tmp_path / "ca",
        "--profile",
        "client",
        "--identity",
        f"spiffe://{TRUST_DOMAIN}/c",
        "--passphrase-file",
        secret,
        "--out",
        tmp_path / "c",
        passphrase=None,
    )
    assert issued.code == 0, issued


def test_ca_init_into_existing_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    make_ca(tmp_path / "ca")
    assert (tmp_path / "ca" / "root.pem").is_file()


# --- failures leave nothing behind -------------------------------------------------------------

INIT_FAILURES = [
    pytest.param(["--extension-oid", "2.25.329800735698586629295641978511506172918"], "2.25", id="uuid-oid"),
    pytest.param(["--extension-oid", "1.3.6.1.4.1.2147483648.1"], "2^31", id="oid-arc-2^31"),
    pytest.param(["--extension-oid", "1.3.6.1.4.1.32473.1.4294967296"], "2^31", id="oid-arc-2^32"),
    pytest.param(["--extension-oid", "not.an.oid"], "not.an.oid", id="oid-garbage"),
    pytest.param(["--trust-domain", "Example.ORG"], "trust domain", id="trust-domain-uppercase"),
    pytest.param(["--trust-domain", "example.org:8443"], "trust domain", id="trust-domain-port"),
    pytest.param(["--dns-zone", "bad_zone..example"], "bad_zone..example", id="bad-dns-zone"),
    pytest.param(["--root-ttl", "30y"], "lifetime", id="root-ttl-over-max"),
    pytest.param(["--intermediate-ttl", "11y"], "lifetime", id="intermediate-ttl-over-max"),
    pytest.param(["--root-ttl", "forever"], "duration", id="ttl-garbage"),
]


@pytest.mark.parametrize(("extra", "named"), INIT_FAILURES)
def test_ca_init_refuses_bad_input_and_leaves_nothing(tmp_path: Path, extra: list[str], named: str) -> None:
    args = ["ca", "init", "--dir", tmp_path / "fresh" / "ca", "--name", "Bad"]
    if "--trust-domain" not in extra:
        args += ["--trust-domain", TRUST_DOMAIN]
    outcome = run_cli(*args, *extra)
    assert outcome.code == 1, outcome
    assert "error:" in outcome.stderr and named in outcome.stderr, outcome
    assert "Traceback" not in outcome.stderr
    assert tree(tmp_path) == set(), f"left behind: {tree(tmp_path)}"


def test_ca_init_short_passphrase(tmp_path: Path) -> None:
    outcome = run_cli(
        "ca",
        "init",
        "--dir",
        tmp_path / "ca",
        "--name",
        "S",
        "--trust-domain",
        TRUST_DOMAIN,
        passphrase="short",
    )
    assert outcome.code == 1, outcome
    assert "at least 8" in outcome.stderr
    assert tree(tmp_path) == set()


def test_ca_init_without_any_passphrase(tmp_path: Path) -> None:
    outcome = run_cli(
        "ca", "init", "--dir", tmp_path / "ca", "--name", "S", "--trust-domain", TRUST_DOMAIN, passphrase=None
    )
    assert outcome.code == 1, outcome
    assert "CERTWRIGHT_CA_PASSPHRASE" in outcome.stderr and "--passphrase-file" in outcome.stderr
    assert tree(tmp_path) == set()


def test_ca_init_refuses_a_non_empty_directory_and_keeps_it(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "precious.txt").write_text("keep me")
    outcome = run_cli("ca", "init", "--dir", tmp_path / "ca", "--name", "X", "--trust-domain", TRUST_DOMAIN)
    assert outcome.code == 1, outcome
    assert "not empty" in outcome.stderr
    assert tree(tmp_path) == {"ca", "ca/precious.txt"}
    assert (tmp_path / "ca" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("parent", ["existing", "fresh/nested"])
def test_ca_init_failing_mid_write_leaves_no_directory_and_no_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parent: str
) -> None:
    real_write_secret = certwright.cadir.write_secret

    def failing_write_secret(path: Path, data: bytes, **kwargs: object) -> None:
        if path.name == "intermediate.key":
            raise OSError(28, "No space left on device", str(path))
        real_write_secret(path, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(certwright.cadir, "write_secret", failing_write_secret)
    if parent == "existing":
        (tmp_path / parent).mkdir()
    before = tree(tmp_path)
    outcome = run_cli(
        "ca", "init", "--dir", tmp_path / parent / "ca", "--name", "X", "--trust-domain", TRUST_DOMAIN
    )
    assert outcome.code == 1, outcome
    assert "No space left on device" in outcome.stderr
    # no CA directory, no hidden staging directory, and no parent directories made for it
    assert tree(tmp_path) == before, f"left behind: {tree(tmp_path) - before}"


@pytest.mark.parametrize("key_type", ["dsa", "rsa-1024", "ec-p521"])
def test_ca_init_unknown_key_type_is_refused(tmp_path: Path, key_type: str) -> None:
    # An unknown key type is refused input (exit 1), with the valid names in the message.
    outcome = run_cli(
        "ca",
        "init",
        "--dir",
        tmp_path / "ca",
        "--name",
        "X",
        "--trust-domain",
        TRUST_DOMAIN,
        "--key-type",
        key_type,
    )
    assert outcome.code == 1, outcome
    assert f"unknown key type {key_type!r}" in outcome.stderr and "ec-p256" in outcome.stderr
    assert tree(tmp_path) == set()


@pytest.mark.parametrize("missing", ["--dir", "--name", "--trust-domain"])
def test_ca_init_missing_required_option_is_a_usage_error(tmp_path: Path, missing: str) -> None:
    options = {"--dir": str(tmp_path / "ca"), "--name": "X", "--trust-domain": TRUST_DOMAIN}
    args = [part for opt, value in options.items() if opt != missing for part in (opt, value)]
    outcome = run_cli("ca", "init", *args)
    assert outcome.code == 2, outcome
    assert missing in outcome.stderr
    assert tree(tmp_path) == set()


def test_ca_show_on_a_directory_that_is_no_ca(tmp_path: Path) -> None:
    outcome = run_cli("ca", "show", "--dir", tmp_path)
    assert outcome.code == 1, outcome
    assert "not a certwright CA directory" in outcome.stderr


def test_ca_show_with_a_corrupt_root(tmp_path: Path, cas: dict[str, Path]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("ca.toml", "intermediate.pem", "bundle.pem"):
        (broken / name).write_bytes((cas["ec-p256"] / name).read_bytes())
    (broken / "root.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n"
    )
    outcome = run_cli("ca", "show", "--dir", broken)
    assert outcome.code == 1, outcome
    assert "root.pem" in outcome.stderr and "not a valid certificate" in outcome.stderr


# --- the real program, end to end ----------------------------------------------------------------


def test_ca_init_and_show_through_the_console_script(tmp_path: Path) -> None:
    outcome = run_exe(
        "ca",
        "init",
        "--dir",
        tmp_path / "ca",
        "--name",
        "Exe",
        "--trust-domain",
        TRUST_DOMAIN,
        "--key-type",
        "ed25519",
    )
    assert outcome.code == 0, outcome
    assert mode(tmp_path / "ca" / "intermediate.key") == 0o600
    assert mode(tmp_path / "ca" / "root.key") == 0o600
    shown = run_exe("ca", "show", "--dir", tmp_path / "ca", "--json", passphrase=None)
    assert shown.code == 0, shown
    assert json.loads(shown.stdout)["key_type"] == "ed25519"


def test_console_script_exit_codes_for_refusal_and_usage(tmp_path: Path) -> None:
    refused = run_exe(
        "ca",
        "init",
        "--dir",
        tmp_path / "ca",
        "--name",
        "X",
        "--trust-domain",
        TRUST_DOMAIN,
        "--extension-oid",
        "2.25.1",
    )
    assert refused.code == 1, refused
    assert refused.stderr.startswith("error: ") and "2.25" in refused.stderr
    assert refused.stdout == ""
    assert "Traceback" not in refused.stderr
    usage = run_exe("ca", "init", "--name", "X", "--trust-domain", TRUST_DOMAIN)
    assert usage.code == 2, usage
    assert "Missing option '--dir'" in usage.stderr
    assert tree(tmp_path) == set()
