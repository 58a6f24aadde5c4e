"""The CA key opened early (certwright.cli.prefetch): used only when it is the right one.

``certwright.cli.main.main`` lets the prefetch start decrypting the key named on the command
line before click and the commands load. These tests run ``main()`` in this process (as
the console script does) and check that the early key is used when the command's own
reading agrees, and that any disagreement (another passphrase, the file changed, a
misread command line) falls back to the ordinary path with its ordinary errors.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certwright import cadir
from certwright.cli import common, prefetch
from certwright.cli.main import main
from certwright.files import read_private_key
from support.certs import write_csr
from support.cli import PASSPHRASE, PASSPHRASE_ENV, TRUST_DOMAIN, make_ca


@pytest.fixture(scope="module")
def ca_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("prefetch") / "ca")


@pytest.fixture
def ca(ca_template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ca"
    shutil.copytree(ca_template, copy)
    return copy


@pytest.fixture(autouse=True)
def nothing_pending() -> Iterator[None]:
    prefetch.claim(Path("/nonexistent"), b"")  # joins and drops what an earlier test left
    yield
    prefetch.claim(Path("/nonexistent"), b"")


@pytest.fixture
def unlock_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records each time the ordinary path opens the key (the prefetch was not used)."""
    calls: list[Path] = []
    ordinary = cadir.CADirectory.unlock

    def unlock(self: cadir.CADirectory, passphrase: bytes, **kwargs: object) -> cadir.CADirectory:
        calls.append(self.key_path)
        return ordinary(self, passphrase, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cadir.CADirectory, "unlock", unlock)
    return calls


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> int:
    monkeypatch.setattr("sys.argv", ["certwright", *(str(a) for a in args)])
    with pytest.raises(SystemExit) as exited:
        main()
    code = exited.value.code
    return 0 if code is None else int(code)


def csr_dir(tmp_path: Path, count: int = 3) -> Path:
    directory = tmp_path / "csrs"
    directory.mkdir()
    for i in range(count):
        write_csr(directory / f"svc{i}.csr", uris=(f"spiffe://{TRUST_DOMAIN}/ns/prod/sa/svc{i}",))
    return directory


def sign_batch_args(ca: Path, csrs: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["sign", "--ca", ca, "--profile", "mtls", "--csr-dir", csrs, "--out-dir", out, *extra]


# -- the mirrors of names it may not import --------------------------------------------


def test_prefetch_names_the_files_and_variable_the_cli_uses() -> None:
    assert prefetch.INTERMEDIATE_KEY == cadir.INTERMEDIATE_KEY
    assert prefetch.PASSPHRASE_ENV == common.PASSPHRASE_ENV == PASSPHRASE_ENV


# -- reading the command line ahead of click -------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sign", "--ca", "d", "--csr-dir", "x"], ("d", None)),
        (["sign", "--ca=d", "--passphrase-file", "p"], ("d", "p")),
        (["issue", "--profile", "mtls", "--ca", "d", "--passphrase-file=p"], ("d", "p")),
        (["sign", "--csr-dir", "x"], None),  # no CA named
        (["sign", "--ca"], None),  # no value
        (["sign", "--ca="], None),
        (["sign", "--ca", "a", "--ca", "b"], None),  # repeated: click's to judge
        (["sign", "--ca", "d", "--", "x"], None),
        (["inspect", "--ca", "d"], None),  # not a signing command
        (["--version", "sign", "--ca", "d"], None),
        ([], None),
    ],
)
def test_options_read_only_plain_signing_command_lines(
    args: list[str], expected: tuple[str, str | None] | None
) -> None:
    assert prefetch._options(args) == expected


def test_nothing_starts_without_a_passphrase_it_can_read(ca: Path, tmp_path: Path) -> None:
    assert not prefetch.start(["sign", "--ca", str(ca)], {})  # would prompt: never ahead
    assert not prefetch.start(["sign", "--ca", str(ca), "--passphrase-file", str(tmp_path / "none")], {})
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    assert not prefetch.start(["sign", "--ca", str(ca), "--passphrase-file", str(empty)], {})
    assert prefetch.claim(ca / cadir.INTERMEDIATE_KEY, PASSPHRASE.encode()) is None


def test_nothing_starts_for_a_missing_or_plain_key(ca: Path, tmp_path: Path) -> None:
    env = {PASSPHRASE_ENV: PASSPHRASE}
    assert not prefetch.start(["sign", "--ca", str(tmp_path / "nowhere")], env)
    plain = tmp_path / "plain"
    plain.mkdir()
    key = read_private_key(ca / cadir.INTERMEDIATE_KEY, PASSPHRASE.encode())
    unencrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (plain / cadir.INTERMEDIATE_KEY).write_bytes(unencrypted)
    assert not prefetch.start(["sign", "--ca", str(plain)], env)


def test_a_passphrase_fifo_is_neither_opened_nor_read_ahead(ca: Path, tmp_path: Path) -> None:
    # Opening a FIFO blocks until a writer comes (and would release a waiting writer into
    # a reader that then goes away): the prefetch must not even open it.
    fifo = tmp_path / "passphrase.fifo"
    os.mkfifo(fifo)
    started: list[bool] = []
    thread = threading.Thread(
        target=lambda: started.append(
            prefetch.start(["sign", "--ca", str(ca), "--passphrase-file", str(fifo)], {})
        ),
        daemon=True,
    )
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "prefetch.start() blocked on a FIFO"
    assert started == [False]


# -- claiming ----------------------------------------------------------------------------


def test_the_key_is_handed_over_once_to_the_same_file_and_passphrase(ca: Path) -> None:
    path = ca / cadir.INTERMEDIATE_KEY
    assert prefetch.start(["sign", "--ca", str(ca)], {PASSPHRASE_ENV: PASSPHRASE})
    early = prefetch.claim(path, PASSPHRASE.encode())
    assert early is not None
    assert early.private_numbers() == read_private_key(path, PASSPHRASE.encode()).private_numbers()  # type: ignore[union-attr]
    assert prefetch.claim(path, PASSPHRASE.encode()) is None  # once


def test_a_passphrase_file_is_read_as_the_cli_reads_it(ca: Path, tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_bytes(PASSPHRASE.encode() + b"\r\n")  # the CLI strips the line end
    assert prefetch.start(["issue", "--ca", str(ca), "--passphrase-file", str(secret)], {})
    assert prefetch.claim(ca / cadir.INTERMEDIATE_KEY, PASSPHRASE.encode()) is not None


def test_another_passphrase_gets_nothing(ca: Path) -> None:
    assert prefetch.start(["sign", "--ca", str(ca)], {PASSPHRASE_ENV: PASSPHRASE})
    assert prefetch.claim(ca / cadir.INTERMEDIATE_KEY, b"another passphrase") is None


def test_another_file_gets_nothing(ca: Path, ca_template: Path) -> None:
    assert prefetch.start(["sign", "--ca", str(ca)], {PASSPHRASE_ENV: PASSPHRASE})
    assert prefetch.claim(ca_template / cadir.INTERMEDIATE_KEY, PASSPHRASE.encode()) is None


def test_a_key_file_replaced_after_the_start_gets_nothing(ca: Path, tmp_path: Path) -> None:
    path = ca / cadir.INTERMEDIATE_KEY
    assert prefetch.start(["sign", "--ca", str(ca)], {PASSPHRASE_ENV: PASSPHRASE})
    other = make_ca(tmp_path / "other")  # same passphrase, another key
    shutil.copyfile(other / cadir.INTERMEDIATE_KEY, path)
    assert prefetch.claim(path, PASSPHRASE.encode()) is None


def test_a_wrong_passphrase_ahead_gets_nothing(ca: Path) -> None:
    assert prefetch.start(["sign", "--ca", str(ca)], {PASSPHRASE_ENV: "wrong"})
    assert prefetch.claim(ca / cadir.INTERMEDIATE_KEY, b"wrong") is None


# -- through the console script's main() --------------------------------------------------


def test_a_batch_signs_with_the_key_opened_ahead(
    ca: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unlock_calls: list[Path]
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    out = tmp_path / "out"
    assert run_main(monkeypatch, *sign_batch_args(ca, csr_dir(tmp_path), out, "--jobs", "1")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["svc0.pem", "svc1.pem", "svc2.pem"]
    assert unlock_calls == []  # the ordinary path never opened the key


def test_issue_uses_the_key_opened_ahead(
    ca: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unlock_calls: list[Path]
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    args = ["issue", "--ca", ca, "--passphrase-file", secret, "--profile", "mtls",
            "--identity", f"spiffe://{TRUST_DOMAIN}/ns/prod/sa/web", "--out", tmp_path / "web"]  # fmt: skip
    assert run_main(monkeypatch, *args) == 0
    assert (tmp_path / "web.pem").is_file()
    assert unlock_calls == []


def test_a_passphrase_file_overrides_the_environment_ahead_too(
    ca: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    unlock_calls: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The environment holds the right passphrase, the file a wrong one: the CLI uses the
    # file, so the batch must fail as it always did, and the early key must not rescue it.
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    out = tmp_path / "out"
    code = run_main(monkeypatch, *sign_batch_args(ca, csr_dir(tmp_path), out, "--passphrase-file", wrong))
    assert code == 1
    assert "wrong passphrase" in capsys.readouterr().err
    assert not out.exists()
    assert len(unlock_calls) == 1  # the early attempt failed: the ordinary path said why


def test_a_passphrase_from_a_pipe_is_left_whole_for_the_command(
    ca: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unlock_calls: list[Path]
) -> None:
    # --passphrase-file /dev/fd/N (what `<(pass show ca)` gives): a pipe can be read once.
    # Read ahead, the command would find it empty; the prefetch stays out instead.
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, PASSPHRASE.encode() + b"\n")
        os.close(write_end)
        out = tmp_path / "out"
        args = sign_batch_args(
            ca, csr_dir(tmp_path), out, "--jobs", "1", "--passphrase-file", f"/dev/fd/{read_end}"
        )
        assert run_main(monkeypatch, *args) == 0
        assert len(list(out.iterdir())) == 3
        assert len(unlock_calls) == 1  # opened by the command itself, from what it read
    finally:
        os.close(read_end)


def test_a_misread_command_line_decides_nothing(
    ca: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unlock_calls: list[Path]
) -> None:
    # To click, "--role --ca" is a role named "--ca", so this line names no CA at all; the
    # prefetch, reading ahead, takes DECOY for the CA and opens its key. click refuses the
    # line as it always did (usage error), and nothing is signed with the decoy's key.
    decoy = make_ca(tmp_path / "decoy")
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    out = tmp_path / "out"
    args = ["sign", "--role", "--ca", decoy, "--profile", "mtls", "--csr-dir", csr_dir(tmp_path),
            "--out-dir", out]  # fmt: skip
    assert prefetch._options([str(a) for a in args]) == (str(decoy), None)
    assert run_main(monkeypatch, *args) == 2
    assert not out.exists()
    assert unlock_calls == []
    # Any other --ca on the line (click's real one) makes two: the prefetch stays out.
    assert prefetch._options([str(a) for a in [*args, "--ca", ca]]) is None
