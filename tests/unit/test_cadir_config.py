"""ca.toml never holds a database password (it is copied to replicas, read by every command)."""

from __future__ import annotations

import pytest

from certwright.cadir import CAConfig, without_password
from certwright.x509.keys import KeyType
from certwright.x509.profiles import CASettings


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("postgresql+psycopg://ca:s3cret@db.internal:5432/certwright?sslmode=require",
         "postgresql+psycopg://ca@db.internal:5432/certwright?sslmode=require"),
        ("postgresql+psycopg://ca:p@ss:w@rd@db/x", "postgresql+psycopg://ca@db/x"),
        ("postgresql+psycopg://:only-a-password@db/x", "postgresql+psycopg://db/x"),
        ("postgresql+psycopg://ca@db/x", "postgresql+psycopg://ca@db/x"),
        ("postgresql+psycopg://db/x", "postgresql+psycopg://db/x"),
        ("sqlite:////var/lib/certwright/inventory.db", "sqlite:////var/lib/certwright/inventory.db"),
    ],
)  # fmt: skip
def test_without_password(url: str, stored: str) -> None:
    assert without_password(url) == stored


def test_ca_toml_keeps_the_database_but_not_its_password() -> None:
    config = CAConfig(
        name="ca",
        settings=CASettings(trust_domain="example.org"),
        key_type=KeyType.EC_P256,
        inventory_url="postgresql+psycopg://ca:s3cret@db.internal/certwright",
    )
    text = config.to_toml()
    assert "s3cret" not in text
    read = CAConfig.from_toml(text, source="ca.toml")
    assert read.inventory_url == "postgresql+psycopg://ca@db.internal/certwright"
