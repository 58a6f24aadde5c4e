"""The credentials directory: one atomic switch, never a key with another certificate.

The crash tests raise at every step of a write (the ``checkpoint`` hook) and check what a
service would read at that moment; tests/integration/agent kills real processes there.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from certwright.agent.layout import (
    BUNDLE,
    CERT,
    CHAIN,
    DATA,
    KEY,
    NAMES,
    CredentialDir,
    Credentials,
    CredentialsError,
    DirectoryBusy,
)
from certwright.clock import FixedClock
from certwright.errors import InvalidInputError
from certwright.x509.keys import generate_key
from support.agent_ca import FakeCA


class Crash(Exception):
    pass


def _versions(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("..20"))


def test_store_then_load_round_trips(ca: FakeCA, clock: FixedClock, workdir: Path) -> None:
    creds = ca.credentials(clock.now())
    files = CredentialDir(workdir)
    with files.locked():
        files.store(creds)
    loaded = files.load()
    assert loaded.certificate == creds.certificate
    assert loaded.obtained_at == creds.obtained_at
    for name in NAMES:
        assert os.readlink(workdir / name) == f"{DATA}/{name}"
    assert (workdir / KEY).stat().st_mode & 0o777 == 0o600
    assert (workdir / CHAIN).read_bytes().startswith((workdir / CERT).read_bytes())


def test_previous_set_is_kept_older_ones_removed(ca: FakeCA, clock: FixedClock, workdir: Path) -> None:
    files = CredentialDir(workdir)
    with files.locked():
        for _ in range(4):
            files.store(ca.credentials(clock.now()))
    assert len(_versions(workdir)) == 2
    assert os.readlink(workdir / DATA) in _versions(workdir)


def test_credentials_refuse_a_key_of_another_certificate(ca: FakeCA, clock: FixedClock) -> None:
    creds = ca.credentials(clock.now())
    with pytest.raises(InvalidInputError, match="does not match"):
        Credentials(generate_key(), creds.certificate, creds.intermediates, creds.bundle, clock.now())


def test_load_reports_missing_deleted_corrupt_and_mismatched(
    ca: FakeCA, clock: FixedClock, workdir: Path
) -> None:
    files = CredentialDir(workdir)
    with pytest.raises(CredentialsError) as nothing:
        files.load()
    assert nothing.value.missing
    with files.locked():
        files.store(ca.credentials(clock.now()))
    (workdir / CERT).unlink()
    with pytest.raises(CredentialsError, match=r"cert\.pem is missing") as deleted:
        files.load()
    assert not deleted.value.missing
    with files.locked():
        files.store(ca.credentials(clock.now()))
    (workdir / CERT).write_text("garbage")  # through the link: the set itself is damaged
    with pytest.raises(CredentialsError, match=r"cert\.pem"):
        files.load()
    with files.locked():
        files.store(ca.credentials(clock.now()))
    other = ca.credentials(clock.now())
    (workdir / KEY).unlink()
    (workdir / KEY).write_bytes(other.files()[KEY])
    with pytest.raises(CredentialsError, match="does not match"):
        files.load()


def test_second_agent_on_the_directory_is_refused(workdir: Path) -> None:
    files = CredentialDir(workdir)
    with files.locked(), pytest.raises(DirectoryBusy), CredentialDir(workdir).locked():
        pass


def _enroll_layout(directory: Path, creds: Credentials) -> None:
    """What ``certwright enroll --out`` writes: four regular files."""
    directory.mkdir(parents=True)
    for name, data in creds.files().items():
        (directory / name).write_bytes(data)


def _steps(ca: FakeCA, clock: FixedClock, tmp_path: Path, *, legacy: bool) -> list[str]:
    seen: list[str] = []
    files = CredentialDir(tmp_path / "probe", checkpoint=seen.append)
    first = ca.credentials(clock.now())
    if legacy:
        _enroll_layout(tmp_path / "probe", first)
    else:
        with files.locked():
            files.store(first)
    seen.clear()
    with files.locked():
        files.store(ca.credentials(clock.now()))
    return seen


def _crash_at(ca: FakeCA, clock: FixedClock, directory: Path, step: str, *, legacy: bool) -> None:
    old, new = ca.credentials(clock.now()), ca.credentials(clock.now())
    if legacy:
        _enroll_layout(directory, old)
    else:
        with CredentialDir(directory).locked():
            CredentialDir(directory).store(old)

    def crash(name: str) -> None:
        # What a service reads at this instant must be one whole set, old or new.
        now = CredentialDir(directory).load().certificate
        assert now in (old.certificate, new.certificate), name
        if name == step:
            raise Crash(step)

    files = CredentialDir(directory, checkpoint=crash)
    with pytest.raises(Crash), files.locked():
        files.store(new)
    assert CredentialDir(directory).load().certificate in (old.certificate, new.certificate), step


@pytest.mark.parametrize("legacy", [False, True], ids=["symlinks", "enroll-layout"])
def test_a_crash_at_any_step_leaves_old_or_new_set(
    ca: FakeCA, clock: FixedClock, tmp_path: Path, legacy: bool
) -> None:
    steps = _steps(ca, clock, tmp_path, legacy=legacy)
    assert len(steps) >= 8
    for index, step in enumerate(steps):
        directory = tmp_path / f"crash-{index}"
        _crash_at(ca, clock, directory, step, legacy=legacy)
        # ...and the next write cleans up and succeeds.
        newest = ca.credentials(clock.now())
        with CredentialDir(directory).locked():
            CredentialDir(directory).store(newest)
        assert CredentialDir(directory).load().certificate == newest.certificate
        assert len(_versions(directory)) <= 2
        assert not [p for p in directory.iterdir() if p.name.startswith("..tmp")]


def test_enroll_layout_is_migrated_without_changing_content(
    ca: FakeCA, clock: FixedClock, workdir: Path
) -> None:
    old = ca.credentials(clock.now() - datetime.timedelta(hours=1))
    _enroll_layout(workdir, old)
    before = CredentialDir(workdir).load()
    assert before.certificate == old.certificate
    new = ca.credentials(clock.now())
    with CredentialDir(workdir).locked():
        CredentialDir(workdir).store(new)
    assert CredentialDir(workdir).load().certificate == new.certificate
    assert all((workdir / n).is_symlink() for n in NAMES)
    assert (workdir / BUNDLE).read_bytes() == new.files()[BUNDLE]
