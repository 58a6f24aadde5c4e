"""write_all: several files or none, and with force the old set survives a failed write."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from certwright.cli import cert_cmds
from certwright.cli.cert_cmds import write_all


def _set(directory: Path, tag: bytes) -> dict[Path, tuple[bytes, bool]]:
    return {
        directory / "key.pem": (b"key " + tag, True),
        directory / "cert.pem": (b"cert " + tag, False),
        directory / "chain.pem": (b"chain " + tag, False),
    }


def _fail_on(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    original = cert_cmds.write_file

    def write_file(path: Path, data: bytes, **kwargs: object) -> None:
        if path.name == name and data.endswith(b"new"):
            raise OSError(28, "No space left on device")
        original(path, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cert_cmds, "write_file", write_file)


def test_a_failed_forced_write_gives_every_file_its_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_all(_set(tmp_path, b"old"), force=False)
    _fail_on(monkeypatch, "chain.pem")  # the key and the certificate are replaced first
    with pytest.raises(OSError, match="No space"):
        write_all(_set(tmp_path, b"new"), force=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        "key.pem": b"key old", "cert.pem": b"cert old", "chain.pem": b"chain old",
    }  # fmt: skip
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600


def test_a_failed_forced_write_removes_the_files_that_were_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "key.pem").write_bytes(b"key old")
    _fail_on(monkeypatch, "chain.pem")
    with pytest.raises(OSError):
        write_all(_set(tmp_path, b"new"), force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]
    assert (tmp_path / "key.pem").read_bytes() == b"key old"


def test_without_force_an_existing_file_refuses_the_whole_set(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"cert\.pem"):
        write_all(_set(tmp_path, b"new"), force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem"]
