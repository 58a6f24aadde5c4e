"""Issuance benchmark: certwright's rates beside OpenSSL's, measured in one run, as ratios.

Rows (see benchmarks/README.md for what each means):

* ``openssl speed`` one-core signature rates: the ceiling any issuer on this machine faces;
* the library path, ``Authority.issue`` and ``Authority.sign_csr``, beside the naive
  ``cryptography.x509.CertificateBuilder`` path for the same leaf;
* the batch CLI, ``certwright sign --csr-dir``, beside ``openssl ca -batch -infiles`` and a
  script that runs ``openssl x509 -req`` once per certificate.

Run ``python benchmarks/bench.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchcommon import log, machine_info
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import certwright
from certwright.cadir import INVENTORY, init_ca
from certwright.cli.ca_cmds import create_inventory
from certwright.files import read_private_key
from certwright.issuance import Authority
from certwright.x509.authz import DEFAULT_OID, Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, SigningKey, signature_hash
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES

TRUST_DOMAIN = "example.org"
PASSPHRASE = "bench-passphrase"  # a throw-away CA in a temporary directory
PROFILE = "mtls"
ROLES = ("orders.read", "payments.write")
OWNERS = 8  # attributes take one of a handful of values, as in a fleet
# `openssl speed` algorithm names for the CA key types the benchmark can use.
SPEED_ALGORITHMS = {
    KeyType.EC_P256: "ecdsap256",
    KeyType.EC_P384: "ecdsap384",
    KeyType.ED25519: "ed25519",
    KeyType.RSA_2048: "rsa2048",
}
# The digest `openssl ca` / `openssl x509` must use to match certwright (None: Ed25519 hashes itself).
OPENSSL_DIGESTS = {KeyType.EC_P256: "sha256", KeyType.EC_P384: "sha384", KeyType.ED25519: None,
                   KeyType.RSA_2048: "sha256"}


# ---------------------------------------------------------------------------------------------
# The machine and the baselines


def openssl_speed(algorithm: str, seconds: int) -> tuple[float, float]:
    """One-core (sign/s, verify/s) of ``openssl speed -seconds S ALGORITHM``, from its table."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), algorithm],
        capture_output=True, text=True, check=True,
    ).stdout
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "sign/s" in line.split())
    # The row after the header: "... 0.0000s 0.0001s  50919.2  16815.0" (sign/s verify/s last).
    row = lines[header + 1].split()
    return float(row[-2]), float(row[-1])


# ---------------------------------------------------------------------------------------------
# The workload: N distinct leaves, their inputs prepared once


@dataclass
class Workload:
    keys: list[ec.EllipticCurvePrivateKey]
    identities: list[SpiffeId]
    sans: list[SubjectAltNames]
    authorizations: list[Authorization]
    csr_der: list[bytes]

    @property
    def n(self) -> int:
        return len(self.keys)


def make_workload(n: int) -> Workload:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(n)]
    identities = [SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/prod/sa/svc{i}") for i in range(n)]
    sans = [SubjectAltNames.create(dns=[f"svc{i}.prod.{TRUST_DOMAIN}"]) for i in range(n)]
    authorizations = [
        Authorization.create(ROLES, {"env": "prod", "owner": f"team-{i % OWNERS}"}) for i in range(n)
    ]
    csr_der = [
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"svc{i}")]))
        .add_extension(
            x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(str(identities[i])), x509.DNSName(sans[i].dns[0]),
            ]),
            critical=False,
        )
        .sign(keys[i], hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
        for i in range(n)
    ]
    return Workload(keys, identities, sans, authorizations, csr_der)


@dataclass
class Loop:
    """A timed body over n items; ``setup`` (untimed) runs before each repetition."""

    name: str
    run: Callable[[], object]
    setup: Callable[[], object] | None = None


def best_rates(loops: Sequence[Loop], n: int, *, repeat: int) -> dict[str, float]:
    """Items per second of the fastest of ``repeat`` timed runs of each loop.

    The loops run in rounds (each loop once per round) so that a burst of load from other
    processes hits them alike rather than spoiling every repetition of one of them.
    """
    best = {loop.name: float("inf") for loop in loops}
    for r in range(repeat):
        log(f"library: round {r + 1} of {repeat}: " + ", ".join(loop.name for loop in loops))
        for loop in loops:
            if loop.setup is not None:
                loop.setup()
            gc.collect()
            start = time.perf_counter()
            loop.run()
            best[loop.name] = min(best[loop.name], time.perf_counter() - start)
    return {name: n / seconds for name, seconds in best.items()}


# ---------------------------------------------------------------------------------------------
# The library path


def raw_signer(key: SigningKey) -> Callable[[bytes], bytes]:
    """How ``cryptography`` signs with ``key``, exactly as an issuer has to (digest included)."""
    digest = signature_hash(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert digest is not None
        algorithm = ec.ECDSA(digest)
        return lambda data: key.sign(data, algorithm)
    if isinstance(key, rsa.RSAPrivateKey):
        pkcs1 = padding.PKCS1v15()
        return lambda data: key.sign(data, pkcs1, digest)  # type: ignore[arg-type]
    raise TypeError(f"unsupported key {type(key).__name__}")


def issue_loop(authority: Authority, work: Workload, warmup: int) -> tuple[Callable[[], None], object]:
    profile = BUILTIN_PROFILES[PROFILE]
    public_keys = [k.public_key() for k in work.keys]
    rows = list(zip(public_keys, work.identities, work.sans, work.authorizations, strict=True))

    def run(items: Sequence[tuple[object, SpiffeId, SubjectAltNames, Authorization]] = rows) -> None:
        for public_key, identity, sans, authorization in items:
            authority.issue(public_key, profile=profile, identity=identity, sans=sans,  # type: ignore[arg-type]
                            authorization=authorization)

    run(rows[:warmup])
    return run, authority.issue(public_keys[0], profile=profile, identity=work.identities[0],
                                sans=work.sans[0], authorization=work.authorizations[0])


def naive_loop(authority: Authority, work: Workload, warmup: int) -> tuple[Callable[[], None], object]:
    """The same leaf with ``x509.CertificateBuilder``: per-CA objects hoisted, as anyone would."""
    issuer, key, digest = authority.certificate.subject, authority.key, signature_hash(authority.key)
    lifetime, backdate = BUILTIN_PROFILES[PROFILE].default_lifetime, authority.settings.backdate
    basic = x509.BasicConstraints(ca=False, path_length=None)
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    oid = authority.settings.oid
    # The caller's per-certificate inputs, in the builder's terms (as SpiffeId/SubjectAltNames for ours).
    inputs = [
        (k.public_key(), x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(sid)),
                                                       x509.DNSName(s.dns[0])]), sid.segments[-1], a)
        for k, sid, s, a in zip(work.keys, work.identities, work.sans, work.authorizations, strict=True)
    ]

    def one(public_key: ec.EllipticCurvePublicKey, san: x509.SubjectAlternativeName, label: str,
            authorization: Authorization) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(now + lifetime)
            .add_extension(basic, critical=True)
            .add_extension(usage, critical=True)
            .add_extension(eku, critical=False)
            .add_extension(san, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(aki, critical=False)
            .add_extension(x509.UnrecognizedExtension(oid, authorization.to_der()), critical=False)
            .sign(key, digest)  # type: ignore[arg-type]
        )

    def run(items: Sequence[tuple[ec.EllipticCurvePublicKey, x509.SubjectAlternativeName, str,
                                  Authorization]] = inputs) -> None:
        for item in items:
            one(*item)

    run(inputs[:warmup])
    return run, one(*inputs[0])


def same_leaf_content(ours: x509.Certificate, naive: x509.Certificate) -> str:
    """'' when both leaves carry the same names, validity length and extensions; else what differs."""
    checks = {
        "subject": (ours.subject, naive.subject),
        "issuer": (ours.issuer, naive.issuer),
        "public key": (ours.public_key(), naive.public_key()),
        "validity": (ours.not_valid_after_utc - ours.not_valid_before_utc,
                     naive.not_valid_after_utc - naive.not_valid_before_utc),
        "extensions": (list(ours.extensions), list(naive.extensions)),
        "signature algorithm": (ours.signature_algorithm_oid, naive.signature_algorithm_oid),
    }
    return ", ".join(name for name, (a, b) in checks.items() if a != b)


def sign_csr_loop(
    authority: Authority, work: Workload, warmup: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    """Authority.sign_csr over CSRs parsed afresh (untimed) before each repetition."""
    profile = BUILTIN_PROFILES[PROFILE]
    csrs: list[x509.CertificateSigningRequest] = []

    def setup() -> None:
        csrs[:] = [x509.load_der_x509_csr(d) for d in work.csr_der]

    def run() -> None:
        for csr, authorization in zip(csrs, work.authorizations, strict=True):
            authority.sign_csr(csr, profile=profile, authorization=authorization)

    setup()
    for csr, authorization in zip(csrs[:warmup], work.authorizations, strict=False):
        authority.sign_csr(csr, profile=profile, authorization=authorization)
    return setup, run


@dataclass
class LibraryResult:
    raw_sign: float
    issue: float
    naive: float
    sign_csr: float
    content_mismatch: str
    tbs_bytes: int


def bench_library(authority: Authority, work: Workload, repeat: int) -> LibraryResult:
    warmup = min(work.n, 200)
    issue, sample = issue_loop(authority, work, warmup)
    naive, naive_sample = naive_loop(authority, work, warmup)
    assert isinstance(sample, x509.Certificate) and isinstance(naive_sample, x509.Certificate)
    tbs = sample.tbs_certificate_bytes
    sign = raw_signer(authority.key)
    for _ in range(warmup):
        sign(tbs)
    csr_setup, csr_run = sign_csr_loop(authority, work, warmup)
    log(f"library: {work.n} items per loop; raw sign() is over the {len(tbs)}-byte TBSCertificate")
    rates = best_rates([
        Loop("sign()", lambda: [sign(tbs) for _ in range(work.n)]),
        Loop("Authority.issue", issue),
        Loop("CertificateBuilder", naive),
        Loop("Authority.sign_csr", csr_run, csr_setup),
    ], work.n, repeat=repeat)
    return LibraryResult(rates["sign()"], rates["Authority.issue"], rates["CertificateBuilder"],
                         rates["Authority.sign_csr"], same_leaf_content(sample, naive_sample), len(tbs))


def profile_issue(authority: Authority, work: Workload, top: int) -> None:
    """cProfile of the Authority.issue loop, to stderr: where the time per certificate goes."""
    run, _ = issue_loop(authority, work, min(work.n, 200))
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    log(f"\ncProfile of Authority.issue x {work.n} (times are totals; divide by {work.n} per certificate)")
    stats = pstats.Stats(profiler, stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(top)


# ---------------------------------------------------------------------------------------------
# The batch CLI beside openssl


@dataclass
class CliSetup:
    root: Path
    ca_dir: Path
    ca_cert: Path
    ca_key: Path  # the same issuing key, unencrypted, for openssl
    csr_dir: Path
    csr_files: list[Path]
    key_type: KeyType
    authz_der: bytes
    authority: Authority


def make_cli_setup(root: Path, work: Workload, key_type: KeyType) -> CliSetup:
    # As `certwright ca init` does: the inventory exists, holding the CA's own certificates.
    ca = init_ca(root / "ca", name="Bench", trust_domain=TRUST_DOMAIN, passphrase=PASSPHRASE.encode(),
                 key_type=key_type,
                 prepare=lambda staging, root_cert, inter: create_inventory(
                     str(staging / INVENTORY), root_cert, inter, DEFAULT_OID))
    authority = ca.require_authority()
    ca_key = root / "intermediate-plain.key"
    ca_key.write_bytes(authority.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    ca_key.chmod(0o600)
    csr_dir = root / "csr"
    csr_dir.mkdir()
    files = []
    for i, der in enumerate(work.csr_der):
        path = csr_dir / f"svc{i:06d}.csr"
        path.write_bytes(x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM))
        files.append(path)
    # The CLI's --role/--attr apply to the whole batch: one value, as for openssl's config.
    authz = Authorization.create(ROLES, {"env": "prod", "owner": "team-0"})
    return CliSetup(root, ca.path, ca.path / "intermediate.pem", ca_key, csr_dir, files, key_type,
                    authz.to_der(), authority)


def certwright_command() -> list[str]:
    found = shutil.which("certwright") or shutil.which("certwright", path=str(Path(sys.executable).parent))
    if found:
        return [found]
    return [sys.executable, "-c", "from certwright.cli.main import main; main()"]


def timed(command: list[str], *, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return elapsed


def run_certwright_batch(setup: CliSetup, out_dir: Path) -> float:
    # Each run starts from the CA as `ca init` left it, as each openssl ca run starts from an
    # empty index.txt.
    ca_dir = out_dir.with_name(out_dir.name + "-ca")
    shutil.copytree(setup.ca_dir, ca_dir)
    roles = [arg for role in ROLES for arg in ("--role", role)]
    command = [*certwright_command(), "sign", "--ca", str(ca_dir), "--profile", PROFILE,
               "--csr-dir", str(setup.csr_dir), "--out-dir", str(out_dir), *roles,
               "--attr", "env=prod", "--attr", "owner=team-0"]
    elapsed = timed(command, env={**os.environ, "CERTWRIGHT_CA_PASSPHRASE": PASSPHRASE})
    issued = len(list(out_dir.glob("*.pem")))
    if issued != len(setup.csr_files):
        raise RuntimeError(f"certwright sign wrote {issued} of {len(setup.csr_files)} certificates")
    return elapsed


def openssl_extensions(setup: CliSetup) -> str:
    """An extensions section like certwright's mtls leaf (the SANs are copied from the CSR)."""
    return "\n".join([
        "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature",
        "extendedKeyUsage = serverAuth, clientAuth",
        "subjectKeyIdentifier = hash",
        "authorityKeyIdentifier = keyid",
        f"{setup.authority.settings.extension_oid} = DER:{setup.authz_der.hex()}",
    ])


def openssl_ca_config(setup: CliSetup, work_dir: Path) -> Path:
    digest = OPENSSL_DIGESTS[setup.key_type] or "default"
    config = f"""\
[ ca ]
default_ca = bench

[ bench ]
dir = {work_dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
certificate = {setup.ca_cert}
private_key = {setup.ca_key}
default_md = {digest}
default_days = 1
policy = policy_anything
copy_extensions = copy
unique_subject = no
email_in_dn = no
x509_extensions = leaf

[ policy_anything ]
countryName = optional
stateOrProvinceName = optional
localityName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
emailAddress = optional

[ leaf ]
{openssl_extensions(setup)}
"""
    path = work_dir / "openssl-ca.cnf"
    path.write_text(config)
    return path


def run_openssl_ca(setup: CliSetup, work_dir: Path) -> float:
    work_dir.mkdir()
    (work_dir / "newcerts").mkdir()
    (work_dir / "index.txt").write_text("")
    # openssl reads the serial file as whole hex octets: keep an even number of digits, no sign bit.
    (work_dir / "serial").write_text((b"\x01" + os.urandom(15)).hex().upper() + "\n")
    config = openssl_ca_config(setup, work_dir)
    out = work_dir / "issued.pem"
    command = ["openssl", "ca", "-batch", "-config", str(config), "-notext", "-out", str(out),
               "-infiles", *map(str, setup.csr_files)]
    elapsed = timed(command)
    # OpenSSL 3.0 reopens -out for each certificate (only the last stays): count new_certs_dir.
    issued = len(list((work_dir / "newcerts").glob("*.pem")))
    if issued != len(setup.csr_files):
        raise RuntimeError(f"openssl ca wrote {issued} of {len(setup.csr_files)} certificates")
    return elapsed


def run_openssl_x509(setup: CliSetup, work_dir: Path, count: int) -> float:
    """One `openssl x509 -req` process per certificate, as shell scripts do; seconds for ``count``."""
    work_dir.mkdir()
    ext = work_dir / "ext.cnf"
    ext.write_text(f"[ leaf ]\n{openssl_extensions(setup)}\n")
    digest = OPENSSL_DIGESTS[setup.key_type]
    start = time.perf_counter()
    for path in setup.csr_files[:count]:
        command = ["openssl", "x509", "-req", "-in", str(path), "-CA", str(setup.ca_cert),
                   "-CAkey", str(setup.ca_key), "-days", "1", *([f"-{digest}"] if digest else []),
                   "-extfile", str(ext), "-extensions", "leaf", "-copy_extensions", "copy",
                   "-out", str(work_dir / f"{path.stem}.pem")]
        subprocess.run(command, capture_output=True, check=True)
    return time.perf_counter() - start


@dataclass
class CliResult:
    certwright: float
    openssl_ca: float
    openssl_x509: float
    x509_count: int
    startup_s: float  # `certwright --version`: interpreter start and imports
    key_open_s: float  # decrypting the scrypt-protected CA key, in-process


def compile_certwright() -> None:
    """Byte-compile certwright's modules, as ``pip install`` does for an installed package.

    An editable (development) install compiles each module on first import and caches the
    result, unless PYTHONDONTWRITEBYTECODE is set (as in some CI and sandbox shells): then
    every run compiles ~100 modules again (~0.1-0.2 s) and the CLI rows would measure the
    compiler. Cached bytecode is read whatever that variable says.
    """
    package = Path(certwright.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)


def bench_cli(setup: CliSetup, repeat: int, x509_limit: int) -> CliResult:
    n = len(setup.csr_files)
    ours, theirs = [], []
    compile_certwright()
    for r in range(repeat):
        log(f"cli: certwright sign --csr-dir ({n} CSRs), run {r + 1} of {repeat}")
        ours.append(run_certwright_batch(setup, setup.root / f"out-certwright-{r}"))
        log(f"cli: openssl ca -batch -infiles ({n} CSRs), run {r + 1} of {repeat}")
        theirs.append(run_openssl_ca(setup, setup.root / f"openssl-ca-{r}"))
    count = min(n, x509_limit)
    log(f"cli: openssl x509 -req, one process per certificate ({count} CSRs)")
    per_process = run_openssl_x509(setup, setup.root / "openssl-x509", count)
    log("cli: fixed costs (certwright --version; opening the CA key)")
    startup = min(timed([*certwright_command(), "--version"]) for _ in range(repeat))
    key_open = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        read_private_key(setup.ca_dir / "intermediate.key", PASSPHRASE.encode())
        key_open = min(key_open, time.perf_counter() - start)
    return CliResult(n / min(ours), n / min(theirs), count / per_process, count, startup, key_open)


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class Row:
    id: str  # stable key for --json consumers
    what: str
    rate: float | None
    ratio: float | None = None
    ratio_to: str = ""
    target: float | None = None

    @property
    def verdict(self) -> str:
        if self.target is None or self.ratio is None:
            return ""
        return f">= {self.target:g}: {'yes' if self.ratio >= self.target else 'NO'}"


@dataclass
class Report:
    machine: dict[str, object]
    parameters: dict[str, object]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def library_rows(speed: tuple[float, float], alg: str, lib: LibraryResult) -> list[Row]:
    sign = speed[0]
    vs_speed = f"openssl speed {alg} sign/s"
    # The issue's target (>= 25% of openssl speed) is stated for P-256, the default CA key.
    target = 0.25 if alg == "ecdsap256" else None
    return [
        Row("library.raw_sign", "cryptography sign() in-process (its bundled OpenSSL)",
            lib.raw_sign, lib.raw_sign / sign, vs_speed),
        Row("library.issue", "Authority.issue, mtls leaf (library)",
            lib.issue, lib.issue / sign, vs_speed, target=target),
        Row("library.naive_builder", "naive x509.CertificateBuilder, same leaf",
            lib.naive, lib.naive / sign, vs_speed),
        Row("library.issue_vs_naive", "Authority.issue / naive CertificateBuilder",
            None, lib.issue / lib.naive, "naive builder"),
        Row("library.issue_vs_raw_sign", "Authority.issue / raw in-process sign()",
            None, lib.issue / lib.raw_sign, "in-process sign()"),
        Row("library.sign_csr", "Authority.sign_csr (verifies each CSR)",
            lib.sign_csr, lib.sign_csr / sign, vs_speed),
    ]


def cli_rows(speed: tuple[float, float], alg: str, cli: CliResult, n: int) -> list[Row]:
    vs_speed = f"openssl speed {alg} sign/s"
    return [
        Row("cli.certwright_batch", f"certwright sign --csr-dir ({n} certs, default --jobs)",
            cli.certwright, cli.certwright / speed[0], vs_speed),
        Row("cli.openssl_ca", f"openssl ca -batch -infiles ({n} certs, 1 process)",
            cli.openssl_ca, cli.openssl_ca / speed[0], vs_speed),
        Row("cli.openssl_x509_per_process", f"openssl x509 -req, 1 process/cert ({cli.x509_count} certs)",
            cli.openssl_x509, cli.openssl_x509 / speed[0], vs_speed),
        Row("cli.certwright_vs_openssl_ca", "certwright batch / openssl ca",
            None, cli.certwright / cli.openssl_ca, "openssl ca", target=3),
        Row("cli.certwright_vs_openssl_x509", "certwright batch / openssl x509 per process",
            None, cli.certwright / cli.openssl_x509, "openssl x509 loop"),
    ]


def format_rate(rate: float | None) -> str:
    return "" if rate is None else f"{rate:,.0f}"


def format_micros(rate: float | None) -> str:
    return "" if rate is None else f"{1e6 / rate:,.1f}"


def render(report: Report) -> str:
    m, p = report.machine, report.parameters
    load = " ".join(map(str, m["load_average"]))  # type: ignore[call-overload]
    load_end = " ".join(map(str, m.get("load_average_end", [])))  # type: ignore[call-overload]
    lines = [
        "certwright issuance benchmark",
        f"machine      {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable); "
        f"load average {load} at start, {load_end} at end",
        f"python       {m['python']}",
        f"cryptography {m['cryptography']}, bundling its own {m['cryptography_openssl']}",
        f"openssl CLI  {m['openssl_cli']}",
        f"parameters   n={p['n']}, best of {p['repeat']}, openssl speed -seconds {p['speed_seconds']}, "
        f"CA key {p['key_type']}, leaf keys {p['leaf_key_type']}, profile {p['profile']}",
        "",
    ]
    header = ("what", "certs/s", "us/cert", "ratio", "ratio to", "target")
    table = [header] + [
        (r.what, format_rate(r.rate), format_micros(r.rate), "" if r.ratio is None else f"{r.ratio:.2f}",
         r.ratio_to, r.verdict)
        for r in report.rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for j, row in enumerate(table):
        cells = [row[0].ljust(widths[0]), *(row[i].rjust(widths[i]) for i in (1, 2, 3)),
                 row[4].ljust(widths[4]), row[5]]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines += [f"* {note}" for note in report.notes]
    return "\n".join(lines)


def to_json(report: Report) -> str:
    rows = []
    for r in report.rows:
        row = asdict(r)
        row["certs_per_s"] = row.pop("rate")
        row["meets_target"] = None if r.target is None or r.ratio is None else r.ratio >= r.target
        rows.append(row)
    return json.dumps({"machine": report.machine, "parameters": report.parameters, "rows": rows,
                       "notes": report.notes}, indent=2)


def notes_for(report: Report, lib: LibraryResult, speeds: dict[str, tuple[float, float]], alg: str,
              cli: CliResult | None) -> None:
    speed, leaf_verify = speeds[alg], speeds["ecdsap256"][1]
    per_cert = 1e6 / lib.issue
    sign_us = 1e6 / lib.raw_sign
    report.notes += [
        f"The openssl CLI is the system's {report.machine['openssl_cli']}; the Python `cryptography` "
        f"package bundles its own {report.machine['cryptography_openssl']}, which certwright signs with.",
        f"Authority.issue: {per_cert:.1f} us per certificate = {sign_us:.1f} us signature "
        f"(in-process sign() of the {lib.tbs_bytes}-byte TBS) + {per_cert - sign_us:.1f} us everything else.",
        f"Library ratios: target >= 25% of openssl speed sign/s (P-256); the issue puts naive use of "
        f"cryptography at about 21%, measured here: {lib.naive / speed[0]:.0%}."
        if alg == "ecdsap256" else
        f"Library ratios are against the system OpenSSL's {alg}; certwright signs with cryptography's "
        "bundled OpenSSL, so read them beside the in-process sign() row (for P-384 the two differ "
        "several-fold).",
        f"Authority.sign_csr also verifies each CSR's signature (P-256): the bound for sign + verify from "
        f"openssl speed is {1 / (1 / speed[0] + 1 / leaf_verify):,.0f}/s (CA {alg} sign + ecdsap256 verify).",
        "Library loops: inputs (keys, SpiffeId, SubjectAltNames, Authorization) prepared before timing; "
        "best of R timed passes after a warm-up; results discarded.",
    ]
    if lib.content_mismatch:
        report.notes.append(f"WARNING: the naive leaf differs from certwright's in: {lib.content_mismatch}")
    else:
        report.notes.append("The naive leaf carries the same subject, issuer, validity length and "
                            "extensions as certwright's (checked in this run).")
    if cli is not None:
        n = report.parameters["n"]
        assert isinstance(n, int)
        report.notes += [
            "CLI rows are wall-clock, end to end: process start, CA key load (certwright: scrypt-encrypted "
            "key; openssl: unencrypted PEM), CSR parse and verify, signing, writing one file per "
            "certificate (openssl ca also writes -out and index.txt). Best of R runs. certwright signs on "
            "one worker process per core for large batches, writes each file atomically (temporary file "
            "+ rename) and syncs once at the end; openssl ca uses one process and does not sync.",
            f"openssl x509 -req ran once per certificate for {cli.x509_count} CSRs; its rate is "
            "extrapolated from those.",
            f"certwright batch fixed costs, included above: process start and imports "
            f"{cli.startup_s * 1e3:.0f} ms (`certwright --version`), and the CA key's decryption "
            f"(scrypt, {cli.key_open_s * 1e3:.0f} ms in-process), which the batch starts before its "
            "imports (certwright.cli.prefetch) so that the two overlap on two cores; without the "
            f"longer of the two the batch would run at "
            f"{n / (n / cli.certwright - max(cli.startup_s, cli.key_open_s)):,.0f} certs/s.",
        ]


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="certificates per measurement (default 5000)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: n=200, openssl speed -seconds 1, 50 openssl x509 processes")
    parser.add_argument("--repeat", type=int, default=3, help="R: report the best of R runs (default 3)")
    parser.add_argument("--seconds", type=int, default=3, help="openssl speed -seconds (default 3)")
    parser.add_argument("--key-type", default=KeyType.EC_P256.value,
                        choices=[t.value for t in SPEED_ALGORITHMS], help="CA (signing) key type")
    parser.add_argument("--x509-limit", type=int, default=200,
                        help="certificates for the one-process-per-cert openssl x509 loop (default 200)")
    parser.add_argument("--no-cli", action="store_true", help="skip the batch CLI rows")
    parser.add_argument("--cprofile", type=int, metavar="TOP", default=0,
                        help="also print a cProfile of Authority.issue (TOP functions) to stderr")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--workdir", type=Path, default=_default_workdir(),
        help="where CA, CSRs and outputs go (default: /dev/shm when it exists, else benchmarks/.work). "
             "On the VMs seen here, creating a file on disk costs 40-700 us depending on the disk's "
             "recent load, which would measure the disk, not the two tools that write the same files",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.seconds, args.x509_limit = min(args.n, 200), 1, min(args.x509_limit, 50)
    if args.n < 1 or args.repeat < 1 or args.seconds < 1:
        parser.error("--n, --repeat and --seconds must be positive")
    return args


def _default_workdir() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / "certwright-bench"
    return Path(__file__).resolve().parent / ".work"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    key_type = KeyType(args.key_type)
    machine = machine_info()
    algorithms = list(dict.fromkeys(["ecdsap256", SPEED_ALGORITHMS[key_type]]))
    speeds = {}
    for algorithm in algorithms:
        log(f"openssl speed -seconds {args.seconds} {algorithm}")
        speeds[algorithm] = openssl_speed(algorithm, args.seconds)
    alg = SPEED_ALGORITHMS[key_type]
    parameters = {"n": args.n, "repeat": args.repeat, "speed_seconds": args.seconds,
                  "key_type": key_type.value, "leaf_key_type": KeyType.EC_P256.value, "profile": PROFILE}
    report = Report(machine, parameters)
    for algorithm, (sign, _verify) in speeds.items():
        report.rows.append(Row(f"speed.{algorithm}.sign", f"openssl speed {algorithm} sign/s (1 core)", sign))
    report.rows.append(Row("speed.ecdsap256.verify", "openssl speed ecdsap256 verify/s (1 core; CSR check)",
                           speeds["ecdsap256"][1]))
    log(f"preparing {args.n} P-256 keys and CSRs")
    work = make_workload(args.n)
    args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="certwright-bench-", dir=args.workdir) as tmp:
        setup = make_cli_setup(Path(tmp), work, key_type)
        lib = bench_library(setup.authority, work, args.repeat)
        report.rows += library_rows(speeds[alg], alg, lib)
        cli = None if args.no_cli else bench_cli(setup, args.repeat, args.x509_limit)
        if cli is not None:
            report.rows += cli_rows(speeds[alg], alg, cli, args.n)
        if args.cprofile:
            profile_issue(setup.authority, work, args.cprofile)
    report.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    notes_for(report, lib, speeds, alg, cli)
    print(to_json(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
