"""How a batch's certificates reach --out-dir: a new directory appears whole, in one rename.

The staging directory of a new --out-dir is a hidden sibling, private (0700) while the
batch runs; once the batch is recorded it gets the mode a plain mkdir would have given
and is renamed into place. An existing --out-dir is covered in test_batch.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from support.certs import write_csr
from support.cli import TRUST_DOMAIN, run_cli, tree

NAMES = ("a", "b", "c")


def _requests(directory: Path) -> Path:
    directory.mkdir()
    for name in NAMES:
        write_csr(directory / f"{name}.csr", uris=(f"spiffe://{TRUST_DOMAIN}/publish/{name}",))
    return directory


def test_a_new_out_dir_appears_whole_with_the_usual_mode(tmp_path: Path, ca_dir: Path) -> None:
    requests = _requests(tmp_path / "in")
    out = tmp_path / "made" / "out"
    outcome = run_cli("sign", "--ca", ca_dir, "--profile", "mtls", "--csr-dir", requests, "--out-dir", out)
    assert outcome.code == 0, outcome
    assert tree(out) == {f"{name}.pem" for name in NAMES}
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert os.listdir(out.parent) == ["out"]  # no staging directory left beside it


def test_a_refused_batch_leaves_no_staging_beside_the_out_dir(tmp_path: Path, ca_dir: Path) -> None:
    requests = _requests(tmp_path / "in")
    write_csr(requests / "evil.csr", uris=("spiffe://evil.example/x",))
    outcome = run_cli(
        "sign", "--ca", ca_dir, "--profile", "mtls", "--csr-dir", requests, "--out-dir", tmp_path / "out"
    )
    assert outcome.code == 1, outcome
    assert sorted(os.listdir(tmp_path)) == ["in"]
