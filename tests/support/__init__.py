"""Helpers shared by the test suite, imported as ``support.<module>``.

pyproject.toml puts tests/ on ``sys.path`` (``pythonpath = ["tests"]``), so test modules and
conftest.py files write ``from support.cli import run_cli``. conftest.py files hold fixtures
only; everything a test module imports lives here:

``support.env``
    :func:`~support.env.require` / :func:`~support.env.require_tool` (skip locally, fail
    under CI) and the repository paths.
``support.cli``
    Running the CLI in-process or as the installed program, creating CAs, looking at the
    files it writes.
``support.certs``
    CSRs and certificates built with cryptography directly, around certwright: good and
    tampered CSRs, a leaf outside a CA's name constraints.
``support.locks``
    Whether the writers' lock file of a SQLite inventory is free.
``support.interop``
    The PKI (one per key type) that the interop tests hand to external programs.
"""
