"""``python -m core.fa3_build``: build and install FlashAttention-3 with only what stepbench needs.

    python -m core.fa3_build --source ~/src/flash-attention          # a checkout you point at
    python -m core.fa3_build --clone                                 # online: clone at the pinned commit

FA3 has no wheel on PyPI, and a full build of the flash-attention ``hopper/`` directory compiles
every head dimension, dtype and feature. This command drives that upstream build as it is, with
the build's own ``FLASH_ATTENTION_DISABLE_*`` switches set so that only what stepbench's ``fa3``
backend calls is compiled: bf16, head dim 128, varlen, causal, forward and backward, SM90
(no FP8/FP16, other head dims, split-KV, paged KV, append-KV, softcap, local attention, SM80 or
clusters). The wheel is cached under ``--wheel-dir`` keyed by the source, torch, CUDA and the
switches, so a second run installs without compiling. It then installs the wheel and runs the fa3
plugin's GPU test. Nothing of the flash-attention repository is part of stepbench.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = "https://github.com/Dao-AILab/flash-attention.git"
PINNED_COMMIT = "0251105a"  # the commit this command was checked with (hopper/ at FA3 3.0.0)
CUTLASS_COMMIT = "7127592069c2fe01b041e174ba4345ef9b279671"  # that commit's csrc/cutlass submodule
#: features stepbench's fa3 backend never calls: switched off through the build's own variables
DISABLE = ("FP8", "FP16", "HDIM64", "HDIM96", "HDIM192", "HDIM256", "HDIMDIFF64", "HDIMDIFF192", "SPLIT",
           "PAGEDKV", "APPENDKV", "SOFTCAP", "LOCAL", "SM80", "CLUSTER")
#: measured: the trimmed build took 173 s with 16 jobs on the lent H100's host (16 cores)
MEASURED_S, MEASURED_JOBS = 173.0, 16


class BuildError(Exception):
    """Reported as one line, exit status 2."""


def say(msg: str) -> None:
    """One line to stderr, prefixed as the tool was called: ``stepbench fa3-build:`` from the console
    command (which sets ``sys.argv[0]``), ``fa3_build:`` from ``python -m core.fa3_build``."""
    name = sys.argv[0] if sys.argv and str(sys.argv[0]).startswith("stepbench ") else "fa3_build"
    print(f"{name}: {msg}", file=sys.stderr, flush=True)


def build_env(jobs: int) -> dict:
    env = dict(os.environ)
    env.update({f"FLASH_ATTENTION_DISABLE_{d}": "TRUE" for d in DISABLE})
    env.update(FLASH_ATTENTION_FORCE_BUILD="TRUE", FLASH_ATTENTION_OFFLINE_BUILD="TRUE", MAX_JOBS=str(jobs),
               NVCC_THREADS=env.get("NVCC_THREADS", "2"))
    return env


def estimate_s(jobs: int) -> float:
    """Expected build time: the measured build scaled by the number of parallel jobs."""
    return MEASURED_S * MEASURED_JOBS / max(1, min(jobs, MEASURED_JOBS))


def check_source(src: Path, cutlass: Path | None) -> Path:
    """The ``hopper/`` directory to build; links ``csrc/cutlass`` to ``cutlass`` if given."""
    hopper = src / "hopper"
    if not (hopper / "setup.py").is_file() or not (hopper / "instantiations").is_dir():
        raise BuildError(f"{src} is not a flash-attention checkout (no hopper/setup.py and hopper/instantiations): "
                         "point --source at one, "
                         "or use --clone on a machine that is online")
    inc = src / "csrc" / "cutlass" / "include" / "cutlass"
    if not inc.is_dir():
        if cutlass is None:
            raise BuildError(f"{src}/csrc/cutlass is empty (a git submodule): run git submodule update --init "
                             "csrc/cutlass there, or pass --cutlass PATH to a CUTLASS checkout")
        if not (cutlass / "include" / "cutlass").is_dir():
            raise BuildError(f"--cutlass {cutlass} has no include/cutlass: point it at a CUTLASS checkout")
        target = src / "csrc" / "cutlass"
        if target.exists() and not target.is_symlink() and (not target.is_dir() or any(target.iterdir())):
            raise BuildError(f"{target} holds something other than a CUTLASS checkout (no include/cutlass) and is not "
                             "empty: move it aside (--cutlass links a checkout there), or check CUTLASS out there")
    return hopper


def link_cutlass(src: Path, cutlass: Path | None) -> None:
    """Link ``csrc/cutlass`` (empty, or a link) to ``cutlass``, where it has no include/cutlass: done
    only when a build runs, after everything else was checked (the checkout is changed last)."""
    target = src / "csrc" / "cutlass"
    if cutlass is None or (target / "include" / "cutlass").is_dir():
        return
    if target.is_symlink() or (target.exists() and not any(target.iterdir())):
        target.unlink() if target.is_symlink() else target.rmdir()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(cutlass.resolve(), target_is_directory=True)


def check_toolkit() -> None:
    """A CUDA toolkit and a CUDA build of torch, before a build changes anything."""
    if not shutil.which("nvcc") and not os.environ.get("CUDA_HOME"):
        raise BuildError("nvcc is not on PATH and CUDA_HOME is unset: install the CUDA toolkit (12.3+)")
    home = os.environ.get("CUDA_HOME")
    if home and not (Path(home) / "bin" / "nvcc").is_file():  # the build takes CUDA_HOME's nvcc over PATH's
        raise BuildError(f"CUDA_HOME={home} has no bin/nvcc: point it at a CUDA toolkit (12.3+), or unset it to use "
                         f"{shutil.which('nvcc') or 'the nvcc on PATH'}")
    import torch

    if torch.version.cuda is None:
        raise BuildError(f"torch {torch.__version__} is a CPU build: FA3 needs a CUDA build of torch")


def cache_key(hopper: Path) -> str:
    """Source (setup.py, interface and kernel list), torch, CUDA and switches -> a short key."""
    import torch

    h = hashlib.sha256()
    for f in ("setup.py", "flash_attn_interface.py", "flash_api.cpp"):
        p = hopper / f
        if p.is_file():
            h.update(p.read_bytes())
    h.update("|".join(sorted(os.listdir(hopper / "instantiations"))).encode())
    h.update(f"{torch.__version__}|{torch.version.cuda}|{','.join(DISABLE)}|{sys.version_info[:2]}".encode())
    return h.hexdigest()[:16]


def unreachable(url: str) -> str | None:
    """``host (why)`` where the host of ``url`` has no address (offline: no DNS), else None. Behind
    a proxy (``https_proxy``, ``all_proxy``) git asks the proxy, so nothing is looked up here."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return None
    host = urlparse(url).hostname or ""
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:  # socket.gaierror is an OSError
        return f"{host} ({getattr(e, 'strerror', None) or e})"
    return None


def clone(dest: Path) -> Path:
    """Clone the upstream repository at the pinned commit (needs the network)."""
    if dest.exists() and not dest.is_dir():
        raise BuildError(f"--clone {dest} is a file: name a folder to clone into, e.g. --clone "
                         "~/.cache/stepbench/flash-attention")
    fresh = not dest.exists() or not any(dest.iterdir())
    if not fresh and not (dest / ".git").exists():
        raise BuildError(f"--clone {dest} holds files but no git checkout: name a new (or empty) folder, or "
                         f"build what is there with --source {dest}")
    if not shutil.which("git"):
        raise BuildError("git is not installed: install it, or download flash-attention and pass --source PATH")
    if not fresh:  # switching commits in a checkout of another repository would change a user's work
        r = subprocess.run(["git", "remote", "get-url", "origin"], cwd=dest, capture_output=True, text=True)
        origin = r.stdout.strip()
        if r.returncode or "flash-attention" not in origin:
            raise BuildError(f"--clone {dest} is a git checkout of {origin or 'a repository without an origin'}, not of "
                             f"{UPSTREAM}: name a new (or empty) folder, or a flash-attention checkout")
    if fresh:
        offline = unreachable(UPSTREAM)
        if offline:  # one line, before the "cloning" line (git would only fail after it)
            raise BuildError(f"cannot reach {offline}, so --clone cannot download flash-attention: clone {UPSTREAM} "
                             "on a machine that is online and pass the checkout with --source PATH")
        say(f"cloning {UPSTREAM} into {dest}")
        r = subprocess.run(["git", "clone", "--quiet", "--filter=blob:none", UPSTREAM, str(dest)],
                           capture_output=True, text=True)
        if r.returncode:
            why = next((ln.strip() for ln in r.stderr.splitlines() if ln.startswith("fatal:")), "")
            raise BuildError(f"cloning {UPSTREAM} failed ({why or 'offline?'}): download it elsewhere and pass "
                             "--source PATH")
    for cmd in (["git", "checkout", "--quiet", PINNED_COMMIT],
                ["git", "submodule", "--quiet", "update", "--init", "csrc/cutlass"]):
        r = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if r.returncode:
            why = next((ln.strip() for ln in r.stderr.splitlines() if ln.strip()), "")
            raise BuildError(f"{' '.join(cmd)} failed in {dest} ({why}): fix the checkout or pass --source PATH")
    return dest


def build(hopper: Path, wheel_dir: Path, jobs: int) -> Path:
    """Run the upstream build (``pip wheel`` of hopper/) with the switches; returns the wheel."""
    check_toolkit()
    wheel_dir.mkdir(parents=True, exist_ok=True)
    say(f"building FA3 (bf16, head dim 128, varlen, causal, fwd+bwd, SM90) with {jobs} jobs: about "
        f"{estimate_s(jobs) / 60:.0f} min (measured {MEASURED_S:.0f} s with {MEASURED_JOBS} jobs); wheel -> {wheel_dir}")
    t = time.time()
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(wheel_dir), str(hopper)]
    r = subprocess.run(cmd, env=build_env(jobs))
    if r.returncode:
        raise BuildError(f"the FA3 build failed (exit {r.returncode}); its output is above")
    wheels = sorted(wheel_dir.glob("flash_attn_3-*.whl"))
    if not wheels:
        raise BuildError(f"the build finished but wrote no flash_attn_3 wheel into {wheel_dir}")
    say(f"built in {time.time() - t:.0f} s: {wheels[-1]}")
    return wheels[-1]


def install(wheel: Path, target: str | None) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)]
    if target:
        cmd += ["--target", target, "--upgrade"]
    if subprocess.run(cmd).returncode:
        raise BuildError(f"installing {wheel} failed; its output is above")


def check() -> int:
    """The fa3 plugin's GPU tests (correctness against the float32 reference)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-k", "fa3",
                           str(ROOT / "tests" / "test_attention.py")], cwd=ROOT).returncode


def _jobs(v: str) -> int:
    """--jobs: a whole number of parallel compile jobs, 1 or more."""
    if not v.strip().isdigit() or not 1 <= int(v) <= 4096:
        raise argparse.ArgumentTypeError(f"must be a whole number of build jobs from 1 to 4096 (got {v!r}): "
                                         f"e.g. --jobs {os.cpu_count() or 4}")
    return int(v)


def _folder(v: str) -> Path:
    """A folder argument: not empty (``Path("")`` would be the current folder)."""
    if not v.strip():
        raise argparse.ArgumentTypeError("is empty: name a folder, e.g. --wheel-dir ~/.cache/stepbench/fa3-wheels")
    return Path(v).expanduser()  # a quoted '~/...' as the shell would have expanded it


def _checkout(v: str) -> Path:
    """--source, --clone and --cutlass: a folder, not an empty string."""
    if not v.strip():
        raise argparse.ArgumentTypeError("is empty: name the checkout's folder")
    return Path(v).expanduser()


def _probe_folder(path: Path) -> None:
    """Raise OSError where ``path`` could not be made or written: a folder is made and removed in
    its nearest existing ancestor (or in it), so nothing is left behind."""
    import tempfile

    base = path
    while not base.exists() and base != base.parent:
        base = base.parent
    os.rmdir(tempfile.mkdtemp(dir=base, prefix=".stepbench-probe-"))


def check_paths(a) -> None:
    """The folders named on the command line, before anything is cloned, built or installed."""
    from core.results import has_control_char, too_long

    for flag, path in (("--source", a.source), ("--clone", a.clone), ("--cutlass", a.cutlass),
                       ("--wheel-dir", a.wheel_dir), ("--target", a.target)):
        if path is not None and too_long(path):
            raise BuildError(f"{flag} {too_long(path)}: name a shorter path, e.g. {flag} "
                             f"{EXAMPLES.get(flag, '~/src/flash-attention')}")
        if path is not None and has_control_char(str(path)):
            raise BuildError(f"{flag} {str(path)!r} has a control character (a newline, a tab) in its name: name a "
                             f"folder without one, e.g. {flag} {EXAMPLES.get(flag, '~/src/flash-attention')}")
    if a.cutlass is not None and not (a.cutlass.expanduser() / "include" / "cutlass").is_dir():
        raise BuildError(f"--cutlass {a.cutlass} has no include/cutlass: point it at a CUTLASS checkout "
                         f"(at {CUTLASS_COMMIT[:8]}), or leave --cutlass out where csrc/cutlass is checked out")
    for flag, path in (("--clone", a.clone), ("--wheel-dir", a.wheel_dir), ("--target", a.target and Path(a.target))):
        eg = EXAMPLES[flag]
        if path is not None and str(path).strip() == "":
            raise BuildError(f"{flag} is empty: name a folder, e.g. {flag} {eg}")
        if path is not None and path.expanduser().exists() and not path.expanduser().is_dir():
            raise BuildError(f"{flag} {path} is a file: name a folder, e.g. {flag} {eg}")
        if path is not None:  # a folder that cannot be made is refused before git or the build starts
            try:
                _probe_folder(path.expanduser())
            except OSError as e:
                raise BuildError(f"{flag} {path} cannot be made ({e.strerror or e}): name a folder you can write, e.g. "
                                 f"{flag} {eg}") from None


#: an example folder for each path option, in its one-line refusals
EXAMPLES = {"--clone": "~/.cache/stepbench/flash-attention", "--wheel-dir": "~/.cache/stepbench/fa3",
            "--target": "~/.cache/stepbench/fa3", "--cutlass": "~/src/cutlass", "--source": "~/src/flash-attention"}


def main(argv=None) -> int:
    from core.cli import arg_parser

    ap = arg_parser("core.fa3_build", __doc__.splitlines()[0], "--source ~/src/flash-attention")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", type=_checkout, help="a flash-attention checkout (with csrc/cutlass, or --cutlass)")
    src.add_argument("--clone", type=_checkout, nargs="?", const=Path.home() / ".cache" / "stepbench" / "flash-attention",
                     help=f"clone {UPSTREAM} at {PINNED_COMMIT} into this folder (needs the network)")
    ap.add_argument("--cutlass", type=_checkout, help=f"a CUTLASS checkout for an empty csrc/cutlass ({CUTLASS_COMMIT[:8]})")
    ap.add_argument("--jobs", type=_jobs, default=os.cpu_count() or 4)
    ap.add_argument("--wheel-dir", type=_folder, default=Path.home() / ".cache" / "stepbench" / "fa3-wheels")
    ap.add_argument("--target", help="install into this folder (pip --target) instead of site-packages")
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--no-test", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.no_install and a.target is not None:
            raise BuildError("--target names where to install, and --no-install installs nothing: leave --target out")
        if a.target is not None and a.target.strip():
            a.target = str(Path(a.target).expanduser())
        if a.no_install and a.no_test:
            raise BuildError("--no-test skips the tests of an installed build, and --no-install installs nothing: "
                             "leave --no-test out")
        check_paths(a)
        source = clone(a.clone.expanduser()) if a.clone else a.source.expanduser()
        hopper = check_source(source, a.cutlass and a.cutlass.expanduser())
        cached = a.wheel_dir / cache_key(hopper)
        wheels = sorted(cached.glob("flash_attn_3-*.whl"))
        if wheels:
            say(f"cached wheel {wheels[-1]} (same source, torch, CUDA and switches): not rebuilding")
            wheel = wheels[-1]
        else:
            check_toolkit()
            link_cutlass(source, a.cutlass and a.cutlass.expanduser())
            wheel = build(hopper, cached, a.jobs)
        if not a.no_install:
            install(wheel, a.target)
    except BuildError as e:
        say(str(e))
        return 2
    if a.no_install or a.no_test:
        return 0
    if a.target:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [a.target, os.environ.get("PYTHONPATH")]))
    rc = check()
    say("fa3 GPU tests passed" if rc == 0 else f"fa3 GPU tests failed (pytest exit {rc})")
    return rc


if __name__ == "__main__":
    from core.errors import run_main

    run_main(main, "fa3_build")
