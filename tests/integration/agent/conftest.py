"""A real ``certwright serve`` with 20-second certificates (profile ``short``) per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.agent_procs import make_short_ca
from support.serve_process import ServeProcess


@pytest.fixture(scope="module")
def ca_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_short_ca(tmp_path_factory.mktemp("agent-ca") / "data")


@pytest.fixture(scope="module")
def server(ca_data: Path) -> Iterator[ServeProcess]:
    with ServeProcess(ca_data) as running:
        yield running
