"""Where a row comes from: the software environment, the commit and whether the tree was clean.

A device copy of the repository may carry a stale ``.git``; there the caller sets
``STEPBENCH_GIT_COMMIT`` (and ``STEPBENCH_GIT_DIRTY=0|1``). Every row also stores a digest of
the source files that ran (``core/``, ``plugins/``, ``conf/``), which ``source_digest_at`` can
recompute from any commit: a row whose digest differs from its commit's did not run that commit.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("core", "plugins", "conf")
SOURCE_SUFFIXES = (".py", ".yaml")


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.decode("utf-8", "replace") if p.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the code that runs: from the environment on device copies, else git."""
    env = os.environ.get("STEPBENCH_GIT_COMMIT")
    if env:
        flag = os.environ.get("STEPBENCH_GIT_DIRTY")
        dirty = True if env.endswith("-dirty") else {"0": False, "1": True}.get(flag or "")
        return env.removesuffix("-dirty"), dirty
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return sha.strip(), (bool(status.strip()) if status is not None else None)


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:16]


def _is_source(rel: str) -> bool:
    return rel.split("/", 1)[0] in SOURCE_DIRS and rel.endswith(SOURCE_SUFFIXES) and "__pycache__" not in rel


def source_digest() -> str:
    """Digest of the source files in this checkout (what runs)."""
    files = {}
    for d in SOURCE_DIRS:
        for p in (ROOT / d).rglob("*"):
            rel = p.relative_to(ROOT).as_posix()
            if p.is_file() and _is_source(rel):
                files[rel] = p.read_bytes()
    return _digest(files)


@lru_cache(maxsize=None)
def source_digest_at(commit: str) -> str | None:
    """Digest of the same files as committed at ``commit`` (None if git cannot tell)."""
    listing = _git("ls-tree", "-r", "--name-only", commit, *SOURCE_DIRS)
    if listing is None:
        return None
    files = {}
    for rel in listing.splitlines():
        if _is_source(rel):
            try:
                files[rel] = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=ROOT, capture_output=True,
                                            timeout=20, check=True).stdout
            except (OSError, subprocess.SubprocessError):
                return None
    return _digest(files)


#: how many commits after a row's recorded one :func:`commit_with_digest` looks through
DESCENDANTS_SEARCHED = 100


def descendants(commit: str) -> list[str]:
    """The first :data:`DESCENDANTS_SEARCHED` commits after ``commit`` up to HEAD, oldest first
    (empty if git cannot tell)."""
    out = _git("rev-list", "--reverse", f"{commit}..HEAD")
    return out.split()[:DESCENDANTS_SEARCHED] if out else []


def commit_with_digest(digest: str, after: str) -> str | None:
    """The oldest commit after ``after`` whose sources have ``digest``: where a row ran when its
    device copy's stale ``.git`` recorded ``after`` (None where no such commit exists)."""
    for c in descendants(after):
        if source_digest_at(c) == digest:
            return c
    return None


def environment() -> dict:
    """GPU, driver, library versions, commit, dirty flag and source digest."""
    import torch

    from plugins.attention.common import package_version

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "host": platform.node()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            env["driver"] = None
    for pkg in ("triton", "peft", "transformers", "liger-kernel", "flash_attn_3", "flash_attn", "hydra-core", "pluggy",
                "safetensors"):
        v = package_version(pkg)
        if v != "unknown":
            env[pkg] = v
    commit, dirty = git_state()
    env["git_commit"], env["git_dirty"], env["source_digest"] = commit, dirty, source_digest()
    return env


def row_provenance(row: dict) -> str:
    """'clean', 'dirty' or 'unknown' for a row's recorded commit."""
    env = row.get("env") or {}
    commit = env.get("git_commit")
    if not commit or commit == "HEAD" or env.get("git_dirty") is None:
        return "dirty" if commit and commit.endswith("-dirty") else "unknown"
    return "dirty" if env["git_dirty"] or commit.endswith("-dirty") else "clean"
