"""Where the data files are, in a checkout and in a wheel install.

In a checkout they sit beside the packages (``conf/``, ``benchmarks/reference/``); a wheel ships
them as package data inside ``core`` (``core/conf``, ``core/reference``: pyproject.toml's
``package-dir``), so an install works from any directory. The configs' folder is
:func:`core.options.conf_dir`.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def reference_dir() -> Path:
    """The published reference table and its configs: ``benchmarks/reference`` in a checkout, else
    the copy a wheel installs as package data (``core/reference``)."""
    checkout = HERE.parent / "benchmarks" / "reference"
    return checkout if checkout.is_dir() else HERE / "reference"
