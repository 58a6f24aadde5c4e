"""`certwright inspect` and `certwright verify`: the JSON contract; every refusal paired with a success."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from certwright.files import read_certificates
from support.certs import mint_outside_constraints, write_csr, write_tampered_csr
from support.cli import PASSPHRASE, TRUST_DOMAIN, ZONE, run_cli, run_exe
from support.env import require_tool

WEB = f"spiffe://{TRUST_DOMAIN}/ns/prod/web"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CONTRACT_KEYS = {
    "serial",
    "subject",
    "issuer",
    "identity",
    "roles",
    "attributes",
    "dns",
    "ips",
    "uris",
    "not_before",
    "not_after",
    "key_type",
    "is_ca",
    "fingerprint_sha256",
}


@dataclass(frozen=True)
class Issued:
    mtls: Path  # PREFIX of an mtls leaf (roles, attributes, DNS and IP SANs)
    server: Path  # PREFIX of a server-only leaf
    client: Path  # PREFIX of a client-only leaf
    short: Path  # PREFIX of an mtls leaf that lives one hour
    evil: Path  # a leaf outside the intermediate's name constraints
    other_mtls: Path  # PREFIX of an mtls leaf from the other CA


def _issue(ca: Path, prefix: Path, profile: str, *extra: str) -> Path:
    outcome = run_cli("issue", "--ca", ca, "--profile", profile, *extra, "--out", prefix)
    assert outcome.code == 0, outcome
    return prefix


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory, ca_dir: Path, other_ca_dir: Path) -> Issued:
    out = tmp_path_factory.mktemp("issued")
    return Issued(
        mtls=_issue(
            ca_dir,
            out / "web",
            "mtls",
            "--identity",
            WEB,
            "--role",
            "reader",
            "--role",
            "writer",
            "--attr",
            "env=prod",
            "--dns",
            f"web.{ZONE}",
            "--ip",
            "10.0.0.7",
            "--ttl",
            "24h",
        ),
        server=_issue(ca_dir, out / "srv", "server", "--dns", f"srv.{ZONE}", "--ip", "192.168.1.10"),
        client=_issue(
            ca_dir,
            out / "cli",
            "client",
            "--identity",
            f"spiffe://{TRUST_DOMAIN}/ns/prod/batch",
            "--role",
            "reader",
        ),
        short=_issue(ca_dir, out / "short", "mtls", "--identity", WEB, "--ttl", "1h"),
        evil=mint_outside_constraints(ca_dir, out / "evil.pem", passphrase=PASSPHRASE),
        other_mtls=_issue(other_ca_dir, out / "other", "mtls", "--identity", WEB),
    )


def pem(prefix: Path) -> Path:
    return Path(f"{prefix}.pem")


def chain(prefix: Path) -> Path:
    return Path(f"{prefix}.chain.pem")


# --- inspect -------------------------------------------------------------------------------------


def test_inspect_json_has_the_contract_keys(issued: Issued) -> None:
    outcome = run_cli("inspect", pem(issued.mtls), "--json")
    assert outcome.code == 0, outcome
    info = json.loads(outcome.stdout)
    assert set(info) >= CONTRACT_KEYS
    cert = read_certificates(pem(issued.mtls))[0]
    assert info["serial"] == format(cert.serial_number, "x")
    assert int(info["serial"], 16) == cert.serial_number
    assert info["subject"] == cert.subject.rfc4514_string() == "CN=web"
    assert info["issuer"] == cert.issuer.rfc4514_string()
    assert info["identity"] == WEB
    assert info["uris"] == [WEB]
    assert sorted(info["roles"]) == ["reader", "writer"]
    assert info["attributes"] == {"env": "prod"}
    assert info["dns"] == [f"web.{ZONE}"]
    assert info["ips"] == ["10.0.0.7"]
    assert info["key_type"] == "ec-p256"
    assert info["is_ca"] is False
    assert info["fingerprint_sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    for key, value in (("not_before", cert.not_valid_before_utc), ("not_after", cert.not_valid_after_utc)):
        assert ISO_UTC.match(info[key]), info[key]
        assert datetime.datetime.fromisoformat(info[key]) == value


def test_inspect_json_of_the_intermediate(ca_dir: Path) -> None:
    info = json.loads(run_cli("inspect", ca_dir / "intermediate.pem", "--json").stdout)
    assert info["is_ca"] is True
    assert info["identity"] is None and info["roles"] == [] and info["uris"] == []
    assert info["name_constraints"]["permitted"] == [f"uri:{TRUST_DOMAIN}", f"dns:{ZONE}"]


def test_inspect_a_chain_file(issued: Issued, ca_dir: Path) -> None:
    outcome = run_cli("inspect", chain(issued.mtls), "--json")
    assert outcome.code == 0, outcome
    infos = json.loads(outcome.stdout)
    assert isinstance(infos, list) and len(infos) == 2
    assert [i["is_ca"] for i in infos] == [False, True]
    assert infos[0]["identity"] == WEB
    assert infos[1]["subject"] == read_certificates(ca_dir / "intermediate.pem")[0].subject.rfc4514_string()
    assert all(set(i) >= CONTRACT_KEYS for i in infos)
    text = run_cli("inspect", chain(issued.mtls))
    assert text.code == 0, text
    assert "[0]" in text.stdout and "[1]" in text.stdout


def test_inspect_a_csr(tmp_path: Path) -> None:
    assert run_cli("key", "--out", tmp_path / "k.pem").code == 0
    assert (
        run_cli(
            "csr",
            "--key",
            tmp_path / "k.pem",
            "--identity",
            WEB,
            "--dns",
            f"web.{ZONE}",
            "--out",
            tmp_path / "w.csr",
        ).code
        == 0
    )
    outcome = run_cli("inspect", tmp_path / "w.csr", "--json")
    assert outcome.code == 0, outcome
    info = json.loads(outcome.stdout)
    assert info["kind"] == "csr"
    assert info["identity"] == WEB and info["dns"] == [f"web.{ZONE}"] and info["uris"] == [WEB]
    assert info["signature_valid"] is True and info["asks_for_ca"] is False
    text = run_cli("inspect", tmp_path / "w.csr")
    assert text.code == 0 and WEB in text.stdout


def test_inspect_flags_a_csr_asking_for_ca(tmp_path: Path) -> None:
    write_csr(tmp_path / "ca.csr", uris=(WEB,), ca=True)
    info = json.loads(run_cli("inspect", tmp_path / "ca.csr", "--json").stdout)
    assert info["asks_for_ca"] is True


def test_inspect_a_der_csr(tmp_path: Path) -> None:
    write_csr(tmp_path / "w.der", uris=(WEB,), der=True)
    outcome = run_cli("inspect", tmp_path / "w.der", "--json")
    assert outcome.code == 0, outcome
    info = json.loads(outcome.stdout)
    assert info["kind"] == "csr" and info["identity"] == WEB and info["signature_valid"] is True


def test_inspect_shows_a_tampered_csr_as_invalid(tmp_path: Path) -> None:
    write_tampered_csr(tmp_path / "bad.der", uri=WEB)
    outcome = run_cli("inspect", tmp_path / "bad.der", "--json")
    assert outcome.code == 0, outcome
    assert json.loads(outcome.stdout)["signature_valid"] is False


def test_inspect_text_shows_identity_and_roles(issued: Issued) -> None:
    outcome = run_cli("inspect", pem(issued.mtls))
    assert outcome.code == 0, outcome
    for expected in (WEB, "reader", "writer", "env=prod", f"web.{ZONE}", "10.0.0.7"):
        assert expected in outcome.stdout


@pytest.mark.parametrize(
    "content",
    [b"hello\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b"\x30\x03\x02\x01"],
    ids=["text", "bad-pem", "truncated-der"],
)
def test_inspect_a_corrupt_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.pem").write_bytes(content)
    outcome = run_cli("inspect", tmp_path / "bad.pem", "--json")
    assert outcome.code == 1, outcome
    assert "bad.pem" in outcome.stderr and "not a valid certificate" in outcome.stderr
    assert outcome.stdout == ""


def test_inspect_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    outcome = run_cli("inspect", tmp_path / "nope.pem")
    assert outcome.code == 2, outcome
    assert "nope.pem" in outcome.stderr


# --- verify: successes ---------------------------------------------------------------------------


def test_verify_json_gives_identity_and_roles(issued: Issued, ca_dir: Path) -> None:
    outcome = run_cli("verify", "--bundle", ca_dir / "bundle.pem", chain(issued.mtls), "--json")
    assert outcome.code == 0, outcome
    result = json.loads(outcome.stdout)
    assert result["valid"] is True
    assert result["identity"] == WEB
    assert sorted(result["roles"]) == ["reader", "writer"]
    assert result["attributes"] == {"env": "prod"}
    assert len(result["chain"]) == 3


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="server-default"),
        pytest.param(["--dns", f"web.{ZONE}"], id="dns"),
        pytest.param(["--dns", f"WEB.{ZONE.upper()}"], id="dns-case-insensitive"),
        pytest.param(["--ip", "10.0.0.7"], id="ip"),
        pytest.param(["--client"], id="client"),
        pytest.param(["--trust-domain", TRUST_DOMAIN], id="trust-domain"),
    ],
)
def test_verify_mtls_leaf(issued: Issued, ca_dir: Path, extra: list[str]) -> None:
    outcome = run_cli(
        "verify",
        "--bundle",
        ca_dir / "bundle.pem",
        "--untrusted",
        ca_dir / "intermediate.pem",
        pem(issued.mtls),
        *extra,
        "--json",
    )
    assert outcome.code == 0, outcome
    assert json.loads(outcome.stdout)["identity"] == WEB


def test_verify_text_output(issued: Issued, ca_dir: Path) -> None:
    outcome = run_cli("verify", "--bundle", ca_dir / "bundle.pem", chain(issued.client), "--client")
    assert outcome.code == 0, outcome
    assert f"spiffe://{TRUST_DOMAIN}/ns/prod/batch" in outcome.stdout and "reader" in outcome.stdout


def test_verify_server_leaf_without_identity(issued: Issued, ca_dir: Path) -> None:
    outcome = run_cli(
        "verify", "--bundle", ca_dir / "bundle.pem", chain(issued.server), "--dns", f"srv.{ZONE}", "--json"
    )
    assert outcome.code == 0, outcome
    result = json.loads(outcome.stdout)
    assert result["identity"] is None and result["roles"] == []


def test_verify_short_lived_leaf_now(issued: Issued, ca_dir: Path) -> None:
    assert run_cli("verify", "--bundle", ca_dir / "bundle.pem", chain(issued.short)).code == 0


# --- verify: refusals ----------------------------------------------------------------------------


def _refused(*args: str | Path) -> str:
    """Run verify, assert exit 1 with a reason on stderr, and return that reason."""
    outcome = run_cli("verify", *args)
    assert outcome.code == 1, outcome
    assert outcome.stderr.startswith("error: "), outcome
    assert "Traceback" not in outcome.stderr
    return outcome.stderr


def test_verify_refuses_another_cas_bundle(issued: Issued, ca_dir: Path, other_ca_dir: Path) -> None:
    reason = _refused("--bundle", other_ca_dir / "bundle.pem", chain(issued.mtls))
    assert "trusted root" in reason or "issuer" in reason
    # and the other way round: the other CA's leaf against this CA's bundle
    reason = _refused("--bundle", ca_dir / "bundle.pem", chain(issued.other_mtls))
    assert "trusted root" in reason or "issuer" in reason


def test_verify_refuses_an_expired_leaf(issued: Issued, ca_dir: Path) -> None:
    leaf = read_certificates(pem(issued.short))[0]
    later = (leaf.not_valid_after_utc + datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reason = _refused("--bundle", ca_dir / "bundle.pem", chain(issued.short), "--at", later)
    assert "expired" in reason
    # negative control: the same leaf verifies at a time inside its validity
    inside = (leaf.not_valid_after_utc - datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert run_cli("verify", "--bundle", ca_dir / "bundle.pem", chain(issued.short), "--at", inside).code == 0


def test_verify_refuses_a_leaf_before_its_validity(issued: Issued, ca_dir: Path) -> None:
    leaf = read_certificates(pem(issued.short))[0]
    earlier = (leaf.not_valid_before_utc - datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reason = _refused("--bundle", ca_dir / "bundle.pem", chain(issued.short), "--at", earlier)
    assert "not valid" in reason or "not yet valid" in reason or "before" in reason


def test_verify_refuses_a_hostname_mismatch(issued: Issued, ca_dir: Path) -> None:
    reason = _refused("--bundle", ca_dir / "bundle.pem", chain(issued.mtls), "--dns", f"api.{ZONE}")
    assert f"api.{ZONE}" in reason
    reason = _refused("--bundle", ca_dir / "bundle.pem", chain(issued.mtls), "--ip", "10.0.0.8")
    assert "10.0.0.8" in reason


def test_verify_refuses_client_use_of_a_server_only_leaf(issued: Issued, ca_dir: Path) -> None:
    reason = _refused("--bundle", ca_dir / "bundle.pem", chain(issued.server), "--client")
    assert "clientAuth" in reason


def test_verify_refuses_server_use_of_a_client_only_leaf(issued: Issued, ca_dir: Path) -> None:
    reason = _refused("--bundle", ca_dir / "bundle.pem", chain(issued.client))
    assert "serverAuth" in reason


def test_verify_refuses_a_foreign_trust_domain(issued: Issued, ca_dir: Path) -> None:
    reason = _refused(
        "--bundle", ca_dir / "bundle.pem", chain(issued.mtls), "--trust-domain", "other.example"
    )
    assert "other.example" in reason


def test_verify_refuses_a_leaf_outside_the_name_constraints(issued: Issued, ca_dir: Path) -> None:
    reason = _refused(
        "--bundle", ca_dir / "bundle.pem", "--untrusted", ca_dir / "intermediate.pem", issued.evil
    )
    assert "name constraints" in reason
    assert "spiffe://evil.example/x" in reason
    client = _refused(
        "--bundle", ca_dir / "bundle.pem", "--untrusted", ca_dir / "intermediate.pem", issued.evil, "--client"
    )
    assert "name constraints" in client


def test_openssl_also_refuses_the_leaf_outside_the_name_constraints(issued: Issued, ca_dir: Path) -> None:
    openssl = require_tool("openssl")
    proc = subprocess.run(
        [
            openssl,
            "verify",
            "-CAfile",
            str(ca_dir / "bundle.pem"),
            "-untrusted",
            str(ca_dir / "intermediate.pem"),
            str(issued.evil),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0, proc.stdout
    assert "permitted subtree violation" in proc.stdout + proc.stderr
    # negative control: the same openssl call accepts a leaf certwright issued
    good = subprocess.run(
        [
            openssl,
            "verify",
            "-CAfile",
            str(ca_dir / "bundle.pem"),
            "-untrusted",
            str(ca_dir / "intermediate.pem"),
            str(pem(issued.mtls)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr


def test_verify_refuses_a_leaf_without_its_intermediate(issued: Issued, ca_dir: Path) -> None:
    reason = _refused("--bundle", ca_dir / "bundle.pem", pem(issued.mtls))
    # The verifier's own words survive the terminal rendering (rich must not eat "[...]").
    assert "no path to a trusted root [cryptography:" in reason


def test_verify_json_on_refusal(issued: Issued, ca_dir: Path) -> None:
    outcome = run_cli("verify", "--bundle", ca_dir / "bundle.pem", chain(issued.server), "--client", "--json")
    assert outcome.code == 1, outcome
    result = json.loads(outcome.stdout)
    assert result["valid"] is False and "clientAuth" in result["reason"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--at", "yesterday"], "--at"),
        (["--ip", "not-an-ip"], "--ip"),
        (["--extension-oid", "2.25.7"], "2.25"),
    ],
)
def test_verify_refuses_bad_option_values(issued: Issued, ca_dir: Path, extra: list[str], named: str) -> None:
    assert named in _refused("--bundle", ca_dir / "bundle.pem", chain(issued.mtls), *extra)


def test_verify_with_a_corrupt_bundle_or_leaf(tmp_path: Path, issued: Issued, ca_dir: Path) -> None:
    (tmp_path / "corrupt.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert "corrupt.pem" in _refused("--bundle", tmp_path / "corrupt.pem", chain(issued.mtls))
    assert "corrupt.pem" in _refused("--bundle", ca_dir / "bundle.pem", tmp_path / "corrupt.pem")


def test_verify_usage_errors(issued: Issued, ca_dir: Path, tmp_path: Path) -> None:
    missing_bundle = run_cli("verify", chain(issued.mtls))
    assert missing_bundle.code == 2, missing_bundle
    assert "--bundle" in missing_bundle.stderr
    missing_file = run_cli("verify", "--bundle", ca_dir / "bundle.pem")
    assert missing_file.code == 2, missing_file
    no_such_file = run_cli("verify", "--bundle", ca_dir / "bundle.pem", tmp_path / "nope.pem")
    assert no_such_file.code == 2, no_such_file


# --- the real program, end to end ----------------------------------------------------------------


def test_verify_through_the_console_script(issued: Issued, ca_dir: Path, other_ca_dir: Path) -> None:
    ok = run_exe(
        "verify", "--bundle", ca_dir / "bundle.pem", chain(issued.mtls), "--client", "--json", passphrase=None
    )
    assert ok.code == 0, ok
    assert json.loads(ok.stdout)["identity"] == WEB
    wrong = run_exe("verify", "--bundle", other_ca_dir / "bundle.pem", chain(issued.mtls), passphrase=None)
    assert wrong.code == 1, wrong
    assert wrong.stderr.startswith("error: ") and wrong.stdout == ""
    evil = run_exe(
        "verify",
        "--bundle",
        ca_dir / "bundle.pem",
        "--untrusted",
        ca_dir / "intermediate.pem",
        issued.evil,
        passphrase=None,
    )
    assert evil.code == 1, evil
    assert "name constraints" in evil.stderr
    usage = run_exe("verify", chain(issued.mtls), passphrase=None)
    assert usage.code == 2, usage
    assert "Missing option '--bundle'" in usage.stderr


def test_inspect_through_the_console_script(issued: Issued) -> None:
    outcome = run_exe("inspect", chain(issued.mtls), "--json", passphrase=None)
    assert outcome.code == 0, outcome
    assert [i["identity"] for i in json.loads(outcome.stdout)] == [WEB, None]
