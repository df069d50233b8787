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


def autoload_disabled() -> bool:
    """``STEPBENCH_DISABLE_PLUGIN_AUTOLOAD`` set to a true value (``1``, ``true``, ...; not ``0``,
    ``false``, ``no``, ``off`` or empty): built-in plugins only."""
    import os

    value = os.environ.get("STEPBENCH_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower()
    if value not in ("", "0", "false", "no", "off", "1", "true", "yes", "on"):
        raise ValueError(f"STEPBENCH_DISABLE_PLUGIN_AUTOLOAD={value!r} is neither on nor off: set it to 1 (no "
                         "third-party plugins) or 0, or unset it")
    return value not in ("", "0", "false", "no", "off")


def plugin_conf_dirs() -> list[Path]:
    """The config folders of the installed third-party plugin packages: ``<package>/conf`` of each
    ``stepbench`` entry point's top-level package where it has one (the folder its Hydra
    SearchPathPlugin adds, ``pkg://<package>/conf``), so their options are typed and checked like the
    built-ins'. Empty with ``STEPBENCH_DISABLE_PLUGIN_AUTOLOAD=1``."""
    import importlib.util
    import os
    from importlib.metadata import entry_points

    if autoload_disabled():
        return []
    out = []
    for ep in entry_points(group="stepbench"):
        try:
            spec = importlib.util.find_spec(ep.value.split(":")[0].split(".")[0])
        except (ImportError, ValueError):  # a broken plugin: the registry says so
            continue
        for loc in (spec.submodule_search_locations or []) if spec else []:
            if (Path(loc) / "conf").is_dir() and Path(loc) / "conf" not in out:
                out.append(Path(loc) / "conf")
    return out
