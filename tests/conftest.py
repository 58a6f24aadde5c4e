"""Root conftest: no fixtures here (see the per-directory conftest.py files).

The helpers live in the ``support`` package (pyproject.toml puts tests/ on ``sys.path``).
Registered here, before anything imports them, so their asserts get pytest's rewriting and
report the values involved when they fail.
"""

import pytest

pytest.register_assert_rewrite("support")
