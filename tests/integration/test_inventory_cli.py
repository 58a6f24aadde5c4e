"""The inventory CLI of issue 3, end to end, on a real SQLite file and a real PostgreSQL database.

Each backend gets one CA per module (``site``): on SQLite the CA's own ``DIR/inventory.db``
and every command takes ``--ca DIR``; on PostgreSQL the database is migrated with
``certwright db upgrade --db URL``, the CA is created with ``ca init --db URL`` and the
inventory commands take ``--db URL`` (plus ``--ca DIR`` for those that sign or are per
issuer: revoke, unrevoke, crl, ocsp). Tests share the site, so each works on certificates
it issued itself (its own identities) and asserts on those.

"Changes nothing" is checked on the database itself, with raw SQL: row counts by status,
the names table, CRL numbers and the audit head (sequence and hash) before and after.
openssl's view of the CRLs and OCSP responses is in tests/interop/test_openssl_inventory.py.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy.pool import NullPool

from certwright.files import read_private_key
from support.certs import write_csr
from support.cli import PASSPHRASE, TRUST_DOMAIN, ZONE, Outcome, run_cli, run_exe, tree
from support.postgres import PG_ADMIN, pg_url, postgres_database

CRL_URL = "http://crl.example.org/issuing.crl"
NS = f"spiffe://{TRUST_DOMAIN}/ns"
NOW = datetime.datetime.now(datetime.UTC)
MALFORMED_DER = bytes.fromhex("3003 0a01 01")  # OCSPResponse { responseStatus malformedRequest(1) }
DOWN_URL = "postgresql+psycopg://postgres@127.0.0.1:1/certwright"  # nothing listens on port 1
# For the tests of one backend only: the module's site of that backend, not a new one.
SQLITE_ONLY = pytest.mark.parametrize("site", ["sqlite"], indirect=True)
POSTGRESQL_ONLY = pytest.mark.parametrize("site", ["postgresql"], indirect=True)


# -- PostgreSQL ---------------------------------------------------------------------------


# -- the site: a CA and its inventory -----------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    serial: str  # hex, as the CLI prints it
    path: Path  # the certificate (PREFIX.pem)

    @property
    def number(self) -> int:
        return int(self.serial, 16)


@dataclass(frozen=True)
class Site:
    backend: str
    ca: Path
    url: str  # the inventory's SQLAlchemy URL
    base: Path  # where tests write their files

    def where(self, *, ca: bool = False) -> tuple[str | Path, ...]:
        """The options naming the inventory (and the CA, for commands that need it)."""
        if self.backend == "sqlite":
            return ("--ca", self.ca)
        return ("--ca", self.ca, "--db", self.url) if ca else ("--db", self.url)

    def run(self, *args: str | Path, ca: bool = False) -> Outcome:
        return run_cli(*args, *self.where(ca=ca))

    def ok(self, *args: str | Path, ca: bool = False) -> str:
        outcome = self.run(*args, ca=ca)
        assert outcome.code == 0, outcome
        return outcome.stdout

    def json(self, *args: str | Path, ca: bool = False) -> Any:
        return json.loads(self.ok(*args, "--json", ca=ca))

    def sql(self, statement: str, **params: object) -> list[Any]:
        engine = sa.create_engine(self.url, poolclass=NullPool)
        try:
            with engine.begin() as connection:
                result = connection.execute(sa.text(statement), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    def snapshot(self) -> dict[str, Any]:
        """What any change to the inventory would show: rows by status, names, CRL numbers, audit head."""
        return {
            "certificates": sorted(
                tuple(r) for r in self.sql("SELECT status, count(*) FROM certificates GROUP BY status")
            ),
            "revoked": sorted(
                (bytes(r[0]), r[1]) for r in self.sql("SELECT serial, revocation_reason FROM certificates")
            ),
            "names": self.sql("SELECT count(*) FROM certificate_names")[0][0],
            "crl": sorted(tuple(r[1:]) for r in self.sql("SELECT issuer_key_id, last_number FROM crl_state")),
            "audit": tuple(self.sql("SELECT seq, hash FROM audit_head")[0]),
            "events": self.sql("SELECT count(*) FROM audit_events")[0][0],
        }

    def issue(self, name: str, identity: str | None, *extra: str, profile: str = "mtls") -> Leaf:
        args: list[str | Path] = ["issue", "--ca", self.ca, "--profile", profile, "--out", self.base / name]
        if identity:
            args += ["--identity", identity]
        outcome = run_cli(*args, *extra, "--json")
        assert outcome.code == 0, outcome
        return Leaf(json.loads(outcome.stdout)["serial"], self.base / f"{name}.pem")

    def row(self, leaf: Leaf) -> dict[str, Any]:
        shown: dict[str, Any] = self.json("show", leaf.serial)
        return shown

    def mint(
        self, identity: str, *, issued: datetime.datetime, lifetime: datetime.timedelta
    ) -> x509.Certificate:
        """A leaf signed with the CA's intermediate key directly, never recorded in the inventory.

        Built with cryptography rather than the Authority, which (rightly) will not backdate
        a leaf before its issuer's notBefore: expired certificates need that.
        """
        issuer = x509.load_pem_x509_certificate((self.ca / "intermediate.pem").read_bytes())
        issuer_key = read_private_key(self.ca / "intermediate.key", PASSPHRASE.encode())
        key = ec.generate_private_key(ec.SECP256R1())
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "minted")]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(issued)
            .not_valid_after(issued + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
        )


def create_ca(directory: Path, *extra: str) -> Path:
    outcome = run_cli(
        "ca",
        "init",
        "--dir",
        directory,
        "--name",
        "Inventory Test",
        "--trust-domain",
        TRUST_DOMAIN,
        "--dns-zone",
        ZONE,
        "--crl-url",
        CRL_URL,
        *extra,
    )
    assert outcome.code == 0, outcome
    return directory


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp(f"inventory-{request.param}")
    if request.param == "sqlite":
        ca = create_ca(base / "ca")
        yield Site("sqlite", ca, f"sqlite:///{ca / 'inventory.db'}", base)
        return
    with postgres_database("certwright_inv") as url:
        upgraded = run_cli("db", "upgrade", "--db", url)
        assert upgraded.code == 0, upgraded
        assert "is at revision" in upgraded.stdout
        yield Site("postgresql", create_ca(base / "ca", "--db", url), url, base)


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def items(listing: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = listing["items"]
    return rows


def serials(listing: dict[str, Any]) -> list[str]:
    return [row["serial"] for row in items(listing)]


def assert_clear_error(outcome: Outcome, *fragments: str) -> None:
    """Exit 1, one ``error:`` line naming the problem, no traceback."""
    assert outcome.code == 1, outcome
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome
    assert "error:" in outcome.stderr, outcome
    for fragment in fragments:
        assert fragment in outcome.stderr, outcome


# -- what ca init and db upgrade leave ------------------------------------------------------


def test_ca_init_records_the_ca_certificates_and_audits_them(site: Site) -> None:
    listing = site.json("list", "--all", "--limit", "1000")
    profiles = {row["profile"]: row for row in items(listing)}
    root = x509.load_pem_x509_certificate((site.ca / "root.pem").read_bytes())
    intermediate = x509.load_pem_x509_certificate((site.ca / "intermediate.pem").read_bytes())
    assert int(profiles["root-ca"]["serial"], 16) == root.serial_number
    assert int(profiles["intermediate-ca"]["serial"], 16) == intermediate.serial_number
    assert profiles["intermediate-ca"]["is_ca"] is True
    verdict = site.json("audit", "verify")
    assert verdict["ok"] is True and verdict["events"] >= 2
    assert "audit log intact" in site.ok("audit", "verify")
    if site.backend == "postgresql":
        assert not (site.ca / "inventory.db").exists()  # the rows live in PostgreSQL only
        again = run_cli("db", "upgrade", "--db", site.url)  # idempotent
        assert again.code == 0, again


# -- list / show ----------------------------------------------------------------------------


def test_list_and_show_json_rows_are_inspect_json_plus_the_inventory_fields(site: Site) -> None:
    identity = f"{NS}/json/api"
    leaf = site.issue(
        "json-api",
        identity,
        "--role",
        "reader",
        "--attr",
        "env=prod",
        "--dns",
        f"api.{ZONE}",
        "--ip",
        "10.1.2.3",
    )
    inspected = json.loads(run_cli("inspect", leaf.path, "--json").stdout)
    listing = site.json("list", "--identity", identity)
    assert listing["next_cursor"] is None
    [row] = items(listing)
    assert set(inspected) <= set(row)
    assert {"status", "revoked_at", "revocation_reason"} <= set(row)
    for key, value in inspected.items():
        if key != "days_left":  # computed at each call's own "now"
            assert row[key] == value, key
    assert (row["status"], row["revoked_at"], row["revocation_reason"]) == ("good", None, None)
    assert (row["roles"], row["attributes"], row["dns"], row["ips"]) == (
        ["reader"],
        {"env": "prod"},
        [f"api.{ZONE}"],
        ["10.1.2.3"],
    )
    shown = site.row(leaf)
    assert {k: v for k, v in shown.items() if k != "days_left"} == {
        k: v for k, v in row.items() if k != "days_left"
    }
    # Serials are accepted as inspect prints them, with 0x or colons too.
    colons = ":".join(leaf.serial[i : i + 2] for i in range(0, len(leaf.serial), 2))
    assert site.json("show", f"0x{leaf.serial.upper()}")["serial"] == leaf.serial
    assert site.json("show", colons)["serial"] == leaf.serial
    text = site.ok("show", leaf.serial)
    assert identity in text and "status         good" in text
    table = site.ok("list", "--identity", identity)
    assert "good" in table and "mtls" in table


def test_list_filters_by_identity_glob_status_and_expiry(site: Site) -> None:
    a = site.issue("filter-a", f"{NS}/filter/a")
    b = site.issue("filter-b", f"{NS}/filter/b")
    deep = site.issue("filter-deep", f"{NS}/filter/x/y")
    long = site.issue("filter-long", f"{NS}/filter/long", "--ttl", "20d")
    held = site.issue("filter-held", f"{NS}/filter/held")
    gone = site.issue("filter-gone", f"{NS}/filter/gone")
    site.ok("revoke", held.serial, "--reason", "certificateHold", ca=True)
    site.ok("revoke", gone.serial, "--reason", "superseded", ca=True)
    expired = site.mint(
        f"{NS}/filter/old", issued=NOW - datetime.timedelta(days=3), lifetime=datetime.timedelta(days=1)
    )
    (site.base / "filter-old.pem").write_bytes(pem(expired))
    site.ok("import", site.base / "filter-old.pem")
    old = format(expired.serial_number, "x")

    glob = f"{NS}/filter/*"
    assert set(serials(site.json("list", "--identity", glob))) == {
        a.serial,
        b.serial,
        long.serial,
        held.serial,
        gone.serial,
        old,
    }  # "*" stays within one path segment: x/y is not matched
    assert set(serials(site.json("list", "--identity", f"{NS}/filter/**"))) >= {deep.serial}
    assert serials(site.json("list", "--identity", f"{NS}/filter/a")) == [a.serial]

    def having(status: str) -> set[str]:
        return set(serials(site.json("list", "--identity", glob, "--status", status)))

    assert having("good") == {a.serial, b.serial, long.serial}
    assert having("revoked") == {gone.serial}
    assert having("on_hold") == {held.serial}
    assert having("expired") == {old}
    rows = {r["serial"]: r for r in items(site.json("list", "--identity", glob))}
    assert rows[gone.serial]["status"] == "revoked"
    assert rows[gone.serial]["revocation_reason"] == "superseded"
    assert rows[held.serial]["status"] == "on_hold"
    assert rows[held.serial]["revocation_reason"] == "certificateHold"
    assert rows[old]["status"] == "expired" and rows[old]["expired"] is True
    # Expiring within 7d: still valid, not revoked (held ones stay: a hold may be lifted).
    assert set(serials(site.json("list", "--identity", glob, "--expiring-within", "7d"))) == {
        a.serial,
        b.serial,
        held.serial,
    }
    assert set(serials(site.json("list", "--identity", glob, "--expiring-within", "30d"))) == {
        a.serial,
        b.serial,
        held.serial,
        long.serial,
    }


def test_expiring_lists_what_expires_within_the_window_soonest_first(site: Site) -> None:
    soon = site.issue("exp-soon", f"{NS}/expiring/soon", "--ttl", "2d")
    sooner = site.issue("exp-sooner", f"{NS}/expiring/sooner", "--ttl", "1h")
    later = site.issue("exp-later", f"{NS}/expiring/later", "--ttl", "20d")
    revoked = site.issue("exp-revoked", f"{NS}/expiring/revoked", "--ttl", "2d")
    site.ok("revoke", revoked.serial, "--reason", "keyCompromise", ca=True)
    rows = items(site.json("expiring", "--within", "7d", "--all"))
    listed = [r["serial"] for r in rows]
    assert sooner.serial in listed and soon.serial in listed
    assert listed.index(sooner.serial) < listed.index(soon.serial)
    assert later.serial not in listed and revoked.serial not in listed
    assert all(r["status"] in ("good", "on_hold") for r in rows)
    not_after = [r["not_after"] for r in rows]
    assert not_after == sorted(not_after)
    assert later.serial in serials(site.json("expiring", "--within", "21d", "--all"))
    assert site.run("expiring", "--within", "7d").code == 0  # the table renders too


def test_pagination_is_complete_ordered_and_stable_under_changes(site: Site) -> None:
    requests = site.base / "page-csrs"
    requests.mkdir()
    for i in range(23):
        write_csr(requests / f"w{i:02d}.csr", uris=(f"{NS}/page/w{i:02d}",))
    signed = run_cli(
        "sign", "--ca", site.ca, "--profile", "mtls", "--csr-dir", requests, "--out-dir", site.base / "page"
    )
    assert signed.code == 0, signed
    glob = f"{NS}/page/*"
    everything = site.json("list", "--identity", glob, "--limit", "1000")
    expected = serials(everything)
    assert len(expected) == 23 and everything["next_cursor"] is None
    keys = [(r["not_after"], r["serial"]) for r in items(everything)]
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)  # by expiry

    walked: list[str] = []
    cursor = None
    pages = 0
    while True:
        extra = ("--cursor", cursor) if cursor else ()
        page = site.json("list", "--identity", glob, "--limit", "5", *extra)
        assert len(items(page)) == (5 if page["next_cursor"] else 23 - 5 * pages)
        walked += serials(page)
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5 and walked == expected
    assert serials(site.json("list", "--identity", glob, "--limit", "5", "--all")) == expected
    assert site.json("list", "--identity", glob, "--limit", "5", "--all")["next_cursor"] is None

    # A cursor survives revocations and new issuance between pages: nothing repeats, nothing
    # that was there is skipped, and the new certificate (latest expiry) comes last.
    first = site.json("list", "--identity", glob, "--limit", "5")
    assert serials(first) == expected[:5]
    site.ok("revoke", expected[7], "--reason", "superseded", ca=True)
    site.ok("revoke", expected[0], "--reason", "superseded", ca=True)
    newer = site.issue("page-late", f"{NS}/page/late", "--ttl", "2d")
    rest = site.json("list", "--identity", glob, "--limit", "1000", "--cursor", first["next_cursor"])
    assert serials(rest) == [*expected[5:], newer.serial]
    assert next(r for r in items(rest) if r["serial"] == expected[7])["status"] == "revoked"
    # The text table says how to go on.
    table = site.run("list", "--identity", glob, "--limit", "3")
    assert table.code == 0 and "--cursor" in table.stderr


# -- revoke / unrevoke ------------------------------------------------------------------------


def test_revoke_by_serial_records_time_reason_and_an_audit_event(site: Site) -> None:
    leaf = site.issue("rev-serial", f"{NS}/revoke/serial")
    before = site.snapshot()
    out = site.json("revoke", leaf.serial, "--reason", "keyCompromise", ca=True)
    assert out == {"revoked": [leaf.serial], "reason": "keyCompromise"}
    row = site.row(leaf)
    assert (row["status"], row["revocation_reason"]) == ("revoked", "keyCompromise")
    revoked_at = datetime.datetime.strptime(row["revoked_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC
    )
    assert abs(revoked_at - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=2)
    after = site.snapshot()
    assert after["events"] == before["events"] + 1
    [(kind, subject, details)] = site.sql(
        "SELECT kind, subject, details FROM audit_events WHERE seq = :seq", seq=after["audit"][0]
    )
    assert (str(kind).lower(), subject) == ("revoked", leaf.serial)
    assert json.loads(details)["reason"] == "keyCompromise"
    assert "revoked 1 certificate(s) (superseded)" in site.ok(
        "revoke",
        site.issue("rev-serial2", None, "--dns", f"r.{ZONE}", profile="server").serial,
        "--reason",
        "superseded",
        ca=True,
    )
    assert site.json("audit", "verify")["ok"] is True


def test_revoke_and_unrevoke_with_only_the_database_url(site: Site) -> None:
    # Serials are 127 random bits: without --ca the inventory finds the certificate by serial alone.
    leaf = site.issue("rev-db-only", f"{NS}/revoke/db-only")
    out = json.loads(
        run_cli("revoke", leaf.serial, "--reason", "certificateHold", "--db", site.url, "--json").stdout
    )
    assert out == {"revoked": [leaf.serial], "reason": "certificateHold"}
    assert site.row(leaf)["status"] == "on_hold"
    assert run_cli("unrevoke", leaf.serial, "--db", site.url).code == 0
    assert site.row(leaf)["status"] == "good"


def test_revoke_by_identity_revokes_every_live_certificate_of_it(site: Site) -> None:
    identity = f"{NS}/revoke/identity"
    mine = [site.issue(f"rev-id-{i}", identity) for i in range(3)]
    other = site.issue("rev-id-other", f"{NS}/revoke/identity-other")
    expired = site.mint(
        identity, issued=NOW - datetime.timedelta(days=5), lifetime=datetime.timedelta(days=1)
    )
    (site.base / "rev-id-old.pem").write_bytes(pem(expired))
    site.ok("import", site.base / "rev-id-old.pem")
    before = site.snapshot()
    out = site.json("revoke", "--identity", identity, "--reason", "cessationOfOperation", ca=True)
    assert sorted(out["revoked"]) == sorted(leaf.serial for leaf in mine)
    assert site.snapshot()["events"] == before["events"] + 3  # one audit event per certificate
    for leaf in mine:
        assert site.row(leaf)["revocation_reason"] == "cessationOfOperation"
    assert site.row(other)["status"] == "good"
    assert site.json("show", format(expired.serial_number, "x"))["status"] == "expired"  # not live: untouched


def test_revoke_by_key_revokes_every_certificate_of_that_key(site: Site) -> None:
    key = site.base / "by-key.key"
    run_cli("key", "--out", key)
    csr = site.base / "by-key.csr"
    assert run_cli("csr", "--key", key, "--identity", f"{NS}/revoke/key", "--out", csr).code == 0
    leaves = []
    for i in range(2):
        prefix = site.base / f"by-key-{i}"
        outcome = run_cli(
            "sign", "--ca", site.ca, "--profile", "mtls", "--csr", csr, "--out", prefix, "--json"
        )
        assert outcome.code == 0, outcome
        leaves.append(Leaf(json.loads(outcome.stdout)["serial"], Path(f"{prefix}.pem")))
    bystander = site.issue("by-key-other", f"{NS}/revoke/key")  # same identity, another key
    public = site.base / "by-key.pub.pem"
    public.write_bytes(
        x509.load_pem_x509_certificate(leaves[0].path.read_bytes())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    out = site.json("revoke", "--key", public, "--reason", "keyCompromise", ca=True)
    assert sorted(out["revoked"]) == sorted(leaf.serial for leaf in leaves)
    assert site.row(bystander)["status"] == "good"
    # A certificate file names its key too.
    assert site.json("revoke", "--key", bystander.path, "--reason", "keyCompromise", ca=True)["revoked"] == [
        bystander.serial
    ]


def test_certificate_hold_can_be_lifted_and_a_held_certificate_revoked_for_good(site: Site) -> None:
    leaf = site.issue("hold", f"{NS}/revoke/hold")
    site.ok("revoke", leaf.serial, "--reason", "certificateHold", ca=True)
    held = site.row(leaf)
    assert (held["status"], held["revocation_reason"]) == ("on_hold", "certificateHold")
    assert f"certificate {leaf.serial} is good again" in site.ok("unrevoke", leaf.serial, ca=True)
    assert (site.row(leaf)["status"], site.row(leaf)["revoked_at"]) == ("good", None)
    site.ok("revoke", leaf.serial, "--reason", "certificateHold", ca=True)
    first = site.row(leaf)["revoked_at"]
    site.ok("revoke", leaf.serial, "--reason", "keyCompromise", ca=True)
    final = site.row(leaf)
    assert (final["status"], final["revocation_reason"], final["revoked_at"]) == (
        "revoked",
        "keyCompromise",
        first,
    )
    assert site.json("audit", "verify")["ok"] is True


# -- crl ---------------------------------------------------------------------------------------


def test_crl_lists_the_revoked_and_held_certificates_with_increasing_numbers(site: Site) -> None:
    revoked = site.issue("crl-revoked", f"{NS}/crl/revoked")
    held = site.issue("crl-held", f"{NS}/crl/held")
    good = site.issue("crl-good", f"{NS}/crl/good")
    site.ok("revoke", revoked.serial, "--reason", "affiliationChanged", ca=True)
    site.ok("revoke", held.serial, "--reason", "certificateHold", ca=True)
    first = site.base / "first.crl"
    summary = site.json("crl", "--out", first, ca=True)
    crl = x509.load_der_x509_crl(first.read_bytes())
    intermediate = x509.load_pem_x509_certificate((site.ca / "intermediate.pem").read_bytes())
    assert crl.is_signature_valid(intermediate.public_key())  # type: ignore[arg-type]
    assert crl.issuer == intermediate.subject
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert summary["crl_number"] == number and summary["entries"] == len(crl)
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert [n.value for n in idp.full_name or []] == [CRL_URL]
    assert crl.next_update_utc is not None and crl.last_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == datetime.timedelta(days=7)

    def reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
        try:
            return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            return None

    entries = {e.serial_number: reason(e) for e in crl}
    assert entries[revoked.number] is x509.ReasonFlags.affiliation_changed
    assert entries[held.number] is x509.ReasonFlags.certificate_hold
    assert good.number not in entries
    # Every revoked or held row of this issuer is listed, and nothing else.
    listed = site.json("list", "--all", "--limit", "1000")
    on_crl = {int(r["serial"], 16) for r in items(listed) if r["status"] in ("revoked", "on_hold")}
    assert set(entries) == on_crl

    second = site.base / "second.crl"
    before = site.snapshot()
    site.ok("crl", "--out", second, "--pem", "--validity", "2d", ca=True)
    assert second.read_bytes().startswith(b"-----BEGIN X509 CRL-----")
    again = x509.load_pem_x509_crl(second.read_bytes())
    assert again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert site.snapshot()["events"] == before["events"] + 1  # the CRL is audited
    site.ok("crl", "--out", second, "--force", ca=True)
    assert (
        x509.load_der_x509_crl(second.read_bytes())
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
        == number + 2
    )


# -- ocsp (statuses; openssl's verdicts are in the interop tests) --------------------------------


def ocsp_request(leaf: Path, issuer: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    ca = x509.load_pem_x509_certificate(issuer.read_bytes())
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, ca, hashes.SHA256()).build()
    return request.public_bytes(serialization.Encoding.DER)


def test_ocsp_answers_good_revoked_and_unknown_from_the_inventory(site: Site) -> None:
    good = site.issue("ocsp-good", f"{NS}/ocsp/good")
    revoked = site.issue("ocsp-revoked", f"{NS}/ocsp/revoked")
    site.ok("revoke", revoked.serial, "--reason", "keyCompromise", ca=True)
    stranger = site.mint(f"{NS}/ocsp/unknown", issued=NOW, lifetime=datetime.timedelta(hours=1))
    (site.base / "ocsp-unknown.pem").write_bytes(pem(stranger))
    expected = {
        "ocsp-good": ocsp.OCSPCertStatus.GOOD,
        "ocsp-revoked": ocsp.OCSPCertStatus.REVOKED,
        "ocsp-unknown": ocsp.OCSPCertStatus.UNKNOWN,
    }
    for name, status in expected.items():
        request = site.base / f"{name}.req"
        request.write_bytes(ocsp_request(site.base / f"{name}.pem", site.ca / "intermediate.pem"))
        out = site.base / f"{name}.resp"
        outcome = site.run("ocsp", "--request", request, "--out", out, ca=True)
        assert outcome.code == 0, outcome
        assert outcome.stdout.strip() == f"wrote {out}: {status.name.lower()}"
        response = ocsp.load_der_ocsp_response(out.read_bytes())
        assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.certificate_status is status
    assert good.number != revoked.number
    # The delegated responder was issued once, recorded, and is reused.
    responder = x509.load_pem_x509_certificate((site.ca / "ocsp.pem").read_bytes())
    assert site.json("show", format(responder.serial_number, "x"))["profile"] == "ocsp-responder"
    assert len(serials(site.json("list", "--profile", "ocsp-responder"))) == 1


# -- import -------------------------------------------------------------------------------------


def test_import_brings_certificates_in_and_skips_duplicates(site: Site) -> None:
    fresh = [
        site.mint(f"{NS}/import/{i}", issued=NOW, lifetime=datetime.timedelta(hours=6)) for i in range(3)
    ]
    bundle = site.base / "import-bundle.pem"
    bundle.write_bytes(pem(*fresh[:2]))
    single = site.base / "import-single.pem"
    single.write_bytes(pem(fresh[2]))
    before = site.snapshot()
    out = site.json("import", bundle)
    assert sorted(out["imported"]) == sorted(format(c.serial_number, "x") for c in fresh[:2])
    assert out["already_present"] == []
    after = site.snapshot()
    assert after["events"] == before["events"] + 2
    row = site.json("show", format(fresh[0].serial_number, "x"))
    assert (row["identity"], row["status"], row["profile"]) == (f"{NS}/import/0", "good", None)
    # Again, with one new certificate and an issued one's chain file: only the new one is added.
    issued = site.issue("import-issued", f"{NS}/import/issued")
    chain = site.base / "import-issued.chain.pem"
    out = site.json("import", bundle, single, chain)
    assert out["imported"] == [format(fresh[2].serial_number, "x")]
    assert len(out["already_present"]) == 4  # two of the bundle, the issued leaf, the intermediate
    assert issued.serial in out["already_present"]
    assert "imported 0, already present 3" in site.ok("import", bundle, single)
    assert site.json("audit", "verify")["ok"] is True


# -- audit verify finds tampering ---------------------------------------------------------------


def test_audit_verify_names_an_edited_or_deleted_event(site: Site) -> None:
    site.issue("audit-a", f"{NS}/audit/a")
    site.issue("audit-b", f"{NS}/audit/b")
    head = site.json("audit", "verify")
    assert head["ok"] is True
    target = head["head"] - 1
    [(details,)] = site.sql("SELECT details FROM audit_events WHERE seq = :s", s=target)

    site.sql(
        "UPDATE audit_events SET details = :d WHERE seq = :s", d=details.replace("mtls", "server"), s=target
    )
    edited = site.run("audit", "verify")
    assert edited.code == 1, edited
    assert f"audit log broken at event {target}" in edited.stdout
    verdict = json.loads(site.run("audit", "verify", "--json").stdout)
    assert (verdict["ok"], verdict["first_bad_event"]) == (False, target)
    site.sql("UPDATE audit_events SET details = :d WHERE seq = :s", d=details, s=target)
    assert site.json("audit", "verify")["ok"] is True

    [saved] = site.sql("SELECT * FROM audit_events WHERE seq = :s", s=target)
    site.sql("DELETE FROM audit_events WHERE seq = :s", s=target)
    deleted = site.run("audit", "verify")
    assert deleted.code == 1, deleted
    assert f"audit log broken at event {target}" in deleted.stdout and "missing" in deleted.stdout
    columns = ", ".join(saved._fields)
    values = ", ".join(f":{c}" for c in saved._fields)
    site.sql(f"INSERT INTO audit_events ({columns}) VALUES ({values})", **saved._asdict())
    assert site.json("audit", "verify")["ok"] is True

    last = head["head"]
    [saved] = site.sql("SELECT * FROM audit_events WHERE seq = :s", s=last)
    site.sql("DELETE FROM audit_events WHERE seq = :s", s=last)  # the newest one: only the head knows
    truncated = json.loads(site.run("audit", "verify", "--json").stdout)
    assert (truncated["ok"], truncated["first_bad_event"]) == (False, last)
    site.sql(f"INSERT INTO audit_events ({columns}) VALUES ({values})", **saved._asdict())
    assert site.json("audit", "verify")["ok"] is True


# -- bad input changes nothing --------------------------------------------------------------------


@pytest.fixture(scope="module")
def marked(site: Site) -> dict[str, Leaf]:
    """A good, a revoked (keyCompromise) certificate, and a working OCSP responder."""
    good = site.issue("bad-good", f"{NS}/bad/good")
    revoked = site.issue("bad-revoked", f"{NS}/bad/revoked")
    site.ok("revoke", revoked.serial, "--reason", "keyCompromise", ca=True)
    request = site.base / "bad-warmup.req"
    request.write_bytes(ocsp_request(good.path, site.ca / "intermediate.pem"))
    site.ok("ocsp", "--request", request, "--out", site.base / "bad-warmup.resp", ca=True)
    (site.base / "bad-existing.crl").write_bytes(b"keep me")
    (site.base / "not-a-cert.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    return {"good": good, "revoked": revoked}


BAD_INPUTS: dict[str, tuple[tuple[str, ...], bool, str]] = {
    # name: (arguments, needs the CA, what stderr says); {good}/{revoked}/{base} are filled in
    "unknown serial": (
        ("revoke", "1234abcd", "--reason", "keyCompromise"),
        True,
        "no certificate with serial 1234abcd",
    ),
    "invalid reason": (
        ("revoke", "{good}", "--reason", "stolen"),
        True,
        "unknown revocation reason 'stolen'",
    ),
    "reason spelled snake_case": (
        ("revoke", "{good}", "--reason", "key_compromise"),
        True,
        "unknown revocation reason",
    ),
    "removeFromCRL": (
        ("revoke", "{good}", "--reason", "removeFromCRL"),
        True,
        "removeFromCRL revokes nothing",
    ),
    "revoked twice": (("revoke", "{revoked}", "--reason", "keyCompromise"), True, "already revoked"),
    "revoked again, other reason": (
        ("revoke", "{revoked}", "--reason", "superseded"),
        True,
        "already revoked",
    ),
    "unrevoke keyCompromise": (("unrevoke", "{revoked}"), True, "only a certificateHold can be lifted"),
    "unrevoke a good one": (("unrevoke", "{good}"), True, "only a certificateHold can be lifted"),
    "not a serial": (("revoke", "xyz", "--reason", "keyCompromise"), True, "is not a serial number"),
    "identity without live certificates": (
        ("revoke", "--identity", f"{NS}/bad/nobody", "--reason", "keyCompromise"),
        True,
        "no live certificate",
    ),
    "not a SPIFFE ID": (
        ("revoke", "--identity", "https://example.org/x", "--reason", "keyCompromise"),
        True,
        "",
    ),
    "show unknown serial": (("show", "1234abcd"), False, "no certificate with serial 1234abcd"),
    "bad page cursor": (("list", "--cursor", "bm9wZQ"), False, "invalid page cursor"),
    "import a non-certificate": (("import", "{base}/not-a-cert.pem"), False, "not a valid certificate"),
    "crl onto an existing file": (("crl", "--out", "{base}/bad-existing.crl"), True, "already exists"),
    "revoke an unknown serial with only the database": (
        ("revoke", "abcdef0123", "--reason", "keyCompromise"),
        False,
        "no certificate with serial abcdef0123 in the inventory",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_changes_nothing(site: Site, marked: dict[str, Leaf], case: str) -> None:
    args, needs_ca, says = BAD_INPUTS[case]
    filled = [
        a.format(good=marked["good"].serial, revoked=marked["revoked"].serial, base=site.base) for a in args
    ]
    before = site.snapshot()
    if case == "revoke an unknown serial with only the database":
        outcome = run_cli(*filled, "--db", site.url)
    else:
        outcome = site.run(*filled, ca=needs_ca)
    assert_clear_error(outcome, says)
    assert site.snapshot() == before
    assert (site.base / "bad-existing.crl").read_bytes() == b"keep me"


def test_usage_errors_change_nothing(site: Site, marked: dict[str, Leaf]) -> None:
    before = site.snapshot()
    both = site.run(
        "revoke", marked["good"].serial, "--identity", f"{NS}/bad/good", "--reason", "keyCompromise", ca=True
    )
    assert both.code == 2 and "exactly one of SERIAL, --identity or --key" in both.stderr
    nothing = site.run("revoke", "--reason", "keyCompromise", ca=True)
    assert nothing.code == 2
    no_reason = site.run("revoke", marked["good"].serial, ca=True)
    assert no_reason.code == 2 and "--reason" in no_reason.stderr
    bad_status = site.run("list", "--status", "lost")
    assert bad_status.code == 2
    assert site.snapshot() == before


CORRUPT_REQUESTS = {
    "random bytes": bytes.fromhex("deadbeef") * 8,
    "empty": b"",
    "truncated": None,  # a real request cut short: built in the test
    "a certificate, not a request": "certificate",
}


@pytest.mark.parametrize("kind", sorted(CORRUPT_REQUESTS))
def test_a_corrupt_ocsp_request_gets_malformed_request_and_exit_1(
    site: Site, marked: dict[str, Leaf], kind: str
) -> None:
    data = CORRUPT_REQUESTS[kind]
    if data is None:
        data = ocsp_request(marked["good"].path, site.ca / "intermediate.pem")[:-7]
    elif data == "certificate":
        data = x509.load_pem_x509_certificate(marked["good"].path.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    assert isinstance(data, bytes)
    request = site.base / f"corrupt-{kind.replace(' ', '-')}.req"
    request.write_bytes(data)
    out = site.base / f"corrupt-{kind.replace(' ', '-')}.resp"
    responder = (site.ca / "ocsp.pem").read_bytes()
    before = site.snapshot()
    outcome = site.run("ocsp", "--request", request, "--out", out, ca=True)
    # The precise behaviour: an (unsigned) malformedRequest OCSPResponse is written, so an
    # air-gapped relay has something to hand back; the command says so and exits 1.
    assert outcome.code == 1, outcome
    assert outcome.stdout.strip() == f"wrote {out}: malformed_request"
    assert "Traceback" not in outcome.stderr
    assert out.read_bytes() == MALFORMED_DER
    assert ocsp.load_der_ocsp_response(out.read_bytes()).response_status is (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    assert site.snapshot() == before
    assert (site.ca / "ocsp.pem").read_bytes() == responder


def test_a_corrupt_ocsp_request_to_a_new_ca_issues_no_responder(tmp_path: Path) -> None:
    """The first OCSP request of a CA normally issues (and records) its responder: not a corrupt one."""
    ca = create_ca(tmp_path / "ca")
    site = Site("sqlite", ca, f"sqlite:///{ca / 'inventory.db'}", tmp_path)
    request = tmp_path / "garbage.req"
    request.write_bytes(b"\x30\x03\x02\x01\x01")
    before, files = site.snapshot(), tree(ca)
    outcome = site.run("ocsp", "--request", request, "--out", tmp_path / "garbage.resp", ca=True)
    assert outcome.code == 1 and (tmp_path / "garbage.resp").read_bytes() == MALFORMED_DER
    assert site.snapshot() == before
    assert tree(ca) == files  # no ocsp.pem / ocsp.key


# -- a database that is down or missing -----------------------------------------------------------


@SQLITE_ONLY  # the database that is down is the same for both
def test_an_unreachable_database_is_a_clear_error_without_traceback(site: Site) -> None:
    where = "inventory database postgresql+psycopg://postgres@127.0.0.1:1/certwright"
    # The installed program, as a script sees it: exit 1, one line on stderr.
    outcome = run_exe("list", "--db", DOWN_URL)
    assert_clear_error(outcome, where)
    assert "refused" in outcome.stderr.lower() or "connection failed" in outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1, outcome
    # In-process (an unexpected exception would propagate and fail the test).
    before = site.snapshot()
    for args in (
        ("show", "1234", "--db", DOWN_URL),
        ("audit", "verify", "--db", DOWN_URL),
        ("import", site.ca / "root.pem", "--db", DOWN_URL),
        ("revoke", "1234", "--reason", "keyCompromise", "--ca", site.ca, "--db", DOWN_URL),
        ("crl", "--out", site.base / "down.crl", "--ca", site.ca, "--db", DOWN_URL),
        ("db", "upgrade", "--db", DOWN_URL),
    ):
        assert_clear_error(run_cli(*args), where)
    assert not (site.base / "down.crl").exists()
    assert site.snapshot() == before


def test_a_missing_database_is_a_clear_error(site: Site) -> None:
    if site.backend == "postgresql":
        missing = site.url.rsplit("/", 1)[0] + f"/certwright_missing_{uuid.uuid4().hex[:8]}"
        assert_clear_error(run_cli("list", "--db", missing), "does not exist")
    missing_file = site.base / "nowhere" / "inventory.db"
    assert_clear_error(run_cli("list", "--db", f"sqlite:///{missing_file}"), "does not exist")
    assert not missing_file.parent.exists()
    never_made = site.base / "never.db"
    assert_clear_error(run_cli("list", "--db", f"sqlite:///{never_made}"), "no inventory database")
    assert not never_made.exists()  # a typo must not create an empty inventory
    assert_clear_error(run_cli("list", "--db", "mysql://root@127.0.0.1/x"), "unsupported database URL")


def ca_copy(site: Site, name: str, inventory_url: str | None) -> Path:
    """The site's CA (same keys) in a new directory, pointed at another inventory."""
    copy = site.base / name
    shutil.copytree(site.ca, copy, ignore=shutil.ignore_patterns("inventory.db*"))
    config = copy / "ca.toml"
    lines = [line for line in config.read_text().splitlines() if not line.startswith("inventory_url")]
    if inventory_url is not None:
        lines.append(f"inventory_url = {json.dumps(inventory_url)}")
    config.write_text("\n".join(lines) + "\n")
    return copy


def test_issuing_against_a_database_that_is_down_writes_nothing(site: Site, tmp_path: Path) -> None:
    ca = ca_copy(site, f"down-{uuid.uuid4().hex[:6]}", DOWN_URL)
    before = tree(tmp_path)
    outcome = run_cli(
        "issue", "--ca", ca, "--profile", "mtls", "--identity", f"{NS}/down", "--out", tmp_path / "x"
    )
    assert_clear_error(outcome, "connection failed")
    write_csr(tmp_path / "one.csr", uris=(f"{NS}/down/one",))
    signed = run_cli(
        "sign", "--ca", ca, "--profile", "mtls", "--csr", tmp_path / "one.csr", "--out", tmp_path / "y"
    )
    assert_clear_error(signed, "connection failed")
    assert tree(tmp_path) == before | {"one.csr"}


# -- atomicity: no certificate without its row ----------------------------------------------------


def make_read_only(database: Path) -> None:
    """Make a SQLite file read-only for every connection, root's included.

    chmod 0444 does not stop root (the CI containers run as root). The file header's
    "write version" byte (offset 18) set above 2 does: SQLite then opens the database
    read-only, and any write fails with SQLITE_READONLY. Checkpoint first so that the
    header on disk is the current one.
    """
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with database.open("r+b") as handle:
        handle.seek(18)
        assert handle.read(2) == b"\x02\x02"  # WAL
        handle.seek(18)
        handle.write(b"\x03")


def make_writable(database: Path) -> None:
    with database.open("r+b") as handle:
        handle.seek(18)
        handle.write(b"\x02")


def batch_dir(base: Path, name: str, count: int) -> Path:
    requests = base / name
    requests.mkdir()
    for i in range(count):
        write_csr(requests / f"r{i}.csr", uris=(f"{NS}/{name}/r{i}",))
    return requests


@pytest.fixture
def read_only_sqlite_ca(site: Site, tmp_path: Path) -> Iterator[tuple[Path, Site]]:
    """A CA whose own SQLite inventory is a read-only copy of the site's data."""
    assert site.backend == "sqlite"
    ca = ca_copy(site, f"ro-{uuid.uuid4().hex[:6]}", None)
    shutil.copy(site.ca / "inventory.db", ca / "inventory.db")
    make_read_only(ca / "inventory.db")
    yield ca, Site("sqlite", ca, f"sqlite:///{ca / 'inventory.db'}", tmp_path)
    make_writable(ca / "inventory.db")


@SQLITE_ONLY
def test_issue_and_sign_write_no_file_when_the_sqlite_inventory_is_read_only(
    read_only_sqlite_ca: tuple[Path, Site], tmp_path: Path
) -> None:
    ca, copy = read_only_sqlite_ca
    before = copy.snapshot()  # reads still work
    requests = batch_dir(tmp_path, "batch", 5)
    write_csr(tmp_path / "one.csr", uris=(f"{NS}/ro/one",))
    files = tree(tmp_path)

    issued = run_cli(
        "issue", "--ca", ca, "--profile", "mtls", "--identity", f"{NS}/ro", "--out", tmp_path / "leaf"
    )
    assert_clear_error(issued, "readonly database")
    signed = run_cli(
        "sign", "--ca", ca, "--profile", "mtls", "--csr", tmp_path / "one.csr", "--out", tmp_path / "one"
    )
    assert_clear_error(signed, "readonly database")
    batch = run_cli(
        "sign", "--ca", ca, "--profile", "mtls", "--csr-dir", requests, "--out-dir", tmp_path / "out"
    )
    assert_clear_error(batch, "readonly database")
    revoked = copy.run("revoke", "--identity", f"{NS}/bad/good", "--reason", "superseded", ca=True)
    assert revoked.code == 1
    assert tree(tmp_path) == files  # no certificate, key, chain, output directory or staging left
    make_writable(ca / "inventory.db")
    assert copy.snapshot() == before
    assert copy.json("audit", "verify")["ok"] is True


@SQLITE_ONLY
def test_issue_writes_no_file_while_another_writer_holds_the_sqlite_lock(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert site.backend == "sqlite"
    monkeypatch.setattr("certwright.store.session.SQLITE_BUSY_TIMEOUT_MS", 300)  # not 30 s
    database = site.ca / "inventory.db"
    before = site.snapshot()
    holder = sqlite3.connect(database, isolation_level=None, timeout=5)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        outcome = run_cli(
            "issue",
            "--ca",
            site.ca,
            "--profile",
            "mtls",
            "--identity",
            f"{NS}/locked",
            "--out",
            tmp_path / "leaf",
        )
        requests = batch_dir(tmp_path, "locked-batch", 3)
        batch = run_cli(
            "sign", "--ca", site.ca, "--profile", "mtls", "--csr-dir", requests, "--out-dir", tmp_path / "out"
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_clear_error(outcome, "database is locked")
    assert_clear_error(batch, "database is locked")
    assert tree(tmp_path) == {"locked-batch", *(f"locked-batch/r{i}.csr" for i in range(3))}
    assert site.snapshot() == before


@pytest.fixture
def restricted_pg_ca(site: Site) -> Iterator[Path]:
    """The site's CA, connecting to its PostgreSQL inventory as a role that may not INSERT certificates."""
    assert site.backend == "postgresql"
    role = f"certwright_noinsert_{uuid.uuid4().hex[:8]}"
    database = site.url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    dsn = pg_url(database).replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO "{role}"')
            db.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
            db.execute(f'REVOKE INSERT ON certificates FROM "{role}"')
        yield ca_copy(site, f"pg-ro-{role[-8:]}", pg_url(database, user=role))
    finally:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f'DROP OWNED BY "{role}"')
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@POSTGRESQL_ONLY
def test_issue_and_sign_write_no_file_when_postgresql_refuses_the_insert(
    site: Site, restricted_pg_ca: Path, tmp_path: Path
) -> None:
    ca = restricted_pg_ca
    requests = batch_dir(tmp_path, "batch", 5)
    write_csr(tmp_path / "one.csr", uris=(f"{NS}/pgro/one",))
    files = tree(tmp_path)
    before = site.snapshot()
    issued = run_cli(
        "issue", "--ca", ca, "--profile", "mtls", "--identity", f"{NS}/pgro", "--out", tmp_path / "leaf"
    )
    assert_clear_error(issued, "permission denied for table certificates")
    signed = run_cli(
        "sign", "--ca", ca, "--profile", "mtls", "--csr", tmp_path / "one.csr", "--out", tmp_path / "one"
    )
    assert_clear_error(signed, "permission denied for table certificates")
    batch = run_cli(
        "sign", "--ca", ca, "--profile", "mtls", "--csr-dir", requests, "--out-dir", tmp_path / "out"
    )
    assert_clear_error(batch, "permission denied for table certificates")
    assert tree(tmp_path) == files
    assert site.snapshot() == before
    # The role can still read and revoke (UPDATE is granted): only the insert was refused.
    assert run_cli("show", "1234abcd", "--ca", ca).code == 1
    assert site.json("audit", "verify")["ok"] is True
