"""Where the data files are, in a checkout and in a wheel install.

In a checkout they sit beside the packages (``conf/``, ``benchmarks/reference/``); a wheel ships
them as package data inside ``core`` (``core/conf``, ``core/reference``: pyproject.toml's
``package-dir``), so an install works from any directory.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The configs: ``conf/`` beside ``core/`` in a checkout, else the copy a wheel installs as
    package data (``core/conf``)."""
    checkout = HERE.parent / "conf"
    return checkout if (checkout / "bench.yaml").is_file() else HERE / "conf"


def reference_dir() -> Path:
    """The published reference table and its configs: ``benchmarks/reference`` in a checkout, else
    the copy a wheel installs as package data (``core/reference``)."""
    checkout = HERE.parent / "benchmarks" / "reference"
    return checkout if checkout.is_dir() else HERE / "reference"
