"""Human-readable rendering of certificates and CSRs (rich, to stdout)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from certwright.durations import format_duration
from certwright.inspect import CertificateInfo, CSRInfo

stdout = Console(highlight=False, soft_wrap=True)


def _time_left(info: CertificateInfo) -> Text:
    import datetime

    left = info.seconds_left
    if left <= 0:
        return Text(f"EXPIRED {format_duration(datetime.timedelta(seconds=-left))} ago", style="bold red")
    style = "yellow" if left < 7 * 86400 else "green"
    return Text(f"{format_duration(datetime.timedelta(seconds=left))} left", style=style)


def print_certificate(info: CertificateInfo, *, title: str | None = None) -> None:
    table = Table(show_header=False, box=None, pad_edge=False, title=title, title_justify="left")
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    position = info.position.value + (
        f" (path length {info.path_length})" if info.is_ca and info.path_length is not None else ""
    )
    rows: list[tuple[str, str | Text]] = [
        ("certificate", position),
        ("identity", info.identity or "-"),
        ("roles", ", ".join(info.roles) or "-"),
        ("attributes", ", ".join(f"{k}={v}" for k, v in info.attributes.items()) or "-"),
        ("subject", info.subject or "(empty)"),
        ("issuer", info.issuer),
        ("serial", info.serial),
        ("valid", f"{info.not_before:%Y-%m-%d %H:%M:%S}Z -> {info.not_after:%Y-%m-%d %H:%M:%S}Z"),
        ("expires", _time_left(info)),
        ("key", info.key_type),
        ("signature", info.signature_algorithm),
    ]
    for label, values in (("dns", info.dns), ("ip", info.ips), ("email", info.emails)):
        if values:
            rows.append((label, ", ".join(values)))
    extra_uris = [u for u in info.uris if u != info.identity]
    if extra_uris:
        rows.append(("other URIs", ", ".join(extra_uris)))
    rows.append(("key usage", ", ".join(info.key_usage) or "-"))
    if info.extended_key_usage:
        rows.append(("ext key usage", ", ".join(info.extended_key_usage)))
    if info.permitted_names or info.excluded_names:
        rows.append(("permits", ", ".join(info.permitted_names) or "-"))
        if info.excluded_names:
            rows.append(("excludes", ", ".join(info.excluded_names)))
    if info.crl_urls:
        rows.append(("CRL", ", ".join(info.crl_urls)))
    if info.ocsp_urls:
        rows.append(("OCSP", ", ".join(info.ocsp_urls)))
    if info.other_extensions:
        rows.append(("other ext.", ", ".join(info.other_extensions)))
    rows.append(("sha256", info.fingerprint_sha256))
    for problem in info.problems:
        rows.append(("problem", Text(problem, style="bold red")))
    for label, value in rows:
        table.add_row(label, value if isinstance(value, Text) else Text(value))
    stdout.print(table)


def print_csr(info: CSRInfo) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    sig = Text("valid", style="green") if info.signature_valid else Text("INVALID", style="bold red")
    rows: list[tuple[str, str | Text]] = [
        ("request", "certificate signing request (PKCS#10)"),
        ("signature", sig),
        ("identity", info.identity or "-"),
        ("subject", info.subject or "(empty)"),
        ("key", info.key_type),
    ]
    for label, values in (("dns", info.dns), ("ip", info.ips), ("uri", info.uris), ("email", info.emails)):
        if values:
            rows.append((label, ", ".join(values)))
    if info.asks_for_ca:
        rows.append(("asks for", Text("CA:true (certwright refuses this for leaf profiles)", style="yellow")))
    if info.requested_extensions:
        rows.append(("extensions", ", ".join(info.requested_extensions)))
    for label, value in rows:
        table.add_row(label, value if isinstance(value, Text) else Text(value))
    stdout.print(table)
