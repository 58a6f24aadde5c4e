"""A batch's rows are what the certificates themselves say, and its events chain.

Workers send back each certificate's DER and facts; the service builds the rows from
those (shared columns encoded once) and appends the events chunk by chunk. Read back, each
row must equal the row made from the parsed certificate (the ORM path's derivation).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from service_helpers import MTLS, NS, assert_chain_intact, events, snapshot

from certwright.batch import CHUNK, BatchRequest
from certwright.service import CertificateService
from certwright.store import Store
from certwright.store.records import certificate_fields
from certwright.x509.authz import Authorization
from support.certs import write_csr

COUNT = CHUNK + 6  # two chunks: recorded in two steps


def test_batch_rows_equal_the_rows_of_the_parsed_certificates(
    certificates: CertificateService, store: Store, tmp_path: Path
) -> None:
    requests = tmp_path / "requests"
    requests.mkdir()
    for i in range(COUNT):
        write_csr(requests / f"r{i:03d}.csr", uris=(f"{NS}/rows/{i}",), common_name=f"r {i},+")
    names = sorted(p.name for p in requests.iterdir())
    staging = tmp_path / "staging"
    staging.mkdir()
    before = snapshot(store)
    request = BatchRequest(profile=MTLS, authorization=Authorization.create(("reader",), {"env": "prod"}))
    outcome = certificates.sign_csr_batch(requests, names, request, staging=staging, jobs=2)
    assert (len(outcome.signed), outcome.failures) == (COUNT, [])
    authority = certificates.authority
    assert authority is not None
    for path in staging.glob("*.pem"):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        record = certificates.get(cert.serial_number)
        assert record is not None
        fields, names_of = certificate_fields(
            cert,
            profile="mtls",
            requested_by=certificates.actor,
            created_at=record.created_at,
            extension_oid=certificates.extension_oid,
        )
        assert {key: getattr(record, key) for key in fields} == fields, path.name
        assert sorted((n.kind, n.value) for n in record.names) == sorted(names_of), path.name
    added = events(store, before.head[0])
    assert [kind for kind, *_ in added] == ["issued"] * COUNT
    assert_chain_intact(store)
