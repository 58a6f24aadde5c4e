"""Package attributes imported on first use (PEP 562), for packages with costly parts.

``certwright.store`` and ``certwright.service`` re-export names whose modules import
SQLAlchemy. Importing them lazily lets a process that needs only their light modules (the
batch CLI recording into SQLite, :mod:`certwright.store.sqlite_batch`) skip that import.

Example::

    >>> _LAZY = {"Store": "certwright.store.session"}        # name -> defining module
    >>> __getattr__ = lazy_attributes(__name__, _LAZY)       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``names[name]`` on first use and keeping the value."""

    def attribute(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return attribute
