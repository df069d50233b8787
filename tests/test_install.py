"""The wheel: what ``pip wheel .`` puts in it (the configs and the published reference table as
package data, every module, the ``stepbench`` console script), and the console script's dispatch.
The wheel installed into a fresh venv and run from a temporary directory is ``.ci/wheel_check.sh``."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def clean_copy(dst: Path) -> Path:
    """The working tree's files that git does not ignore (an in-tree build would reuse ./build,
    where deleted files linger), else the tree less the usual build and run folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                             capture_output=True, timeout=60).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".*", "build", "runs", "*.egg-info", "__pycache__"))
        return dst
    for name in filter(None, out.split("\0")):
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    return dst


def _setuptools_new_enough() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = clean_copy(tmp / "src")
    # offline with the installed setuptools where it is new enough (pyproject's build-system needs >= 77)
    isolation = [] if not _setuptools_new_enough() else ["--no-build-isolation"]
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp / "dist"),
                        str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = (tmp / "dist").glob("stepbench-*.whl")
    with zipfile.ZipFile(whl) as z:
        yield z


def test_wheel_ships_configs_and_reference(wheel):
    names = set(wheel.namelist())
    for need in ("core/conf/bench.yaml", "core/conf/model/qwen3_0_6b.yaml", "core/conf/task/sft.yaml",
                 "core/reference/prime-rl-benchmarks-2026-01.md"):
        assert need in names, f"{need} is not in the wheel"
    assert any(n.startswith("core/conf/sweep/") and n.endswith(".yaml") for n in names)
    # every config of the checkout, subfolders included, under core/conf
    missing = [f"core/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")]
    missing = [m for m in missing if m not in names]
    assert not missing, f"configs missing from the wheel: {missing}"
    # and nothing of the checkout's layout outside the packages
    assert not [n for n in names if n.startswith(("conf/", "benchmarks/", "tests/"))]


def test_wheel_has_every_module(wheel):
    """pyproject.toml lists the packages (conf and the reference table are mapped into core): a
    package folder missing from that list would silently leave its modules out of the wheel."""
    names = set(wheel.namelist())
    missing = [p.relative_to(ROOT).as_posix() for top in ("core", "plugins") for p in (ROOT / top).rglob("*.py")
               if "__pycache__" not in p.parts and p.relative_to(ROOT).as_posix() not in names]
    assert not missing, f"add their packages to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_wheel_console_script(wheel):
    (ep,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(ep).decode()
    assert "[console_scripts]" in text
    assert "stepbench = core.cli:main" in text
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    assert "Requires-Dist: rich" not in wheel.read(meta).decode()


def test_cli_help_lists_commands(capsys):
    from core.cli import COMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("bench", "report", "predict", "fa3-build"):
        assert name in COMMANDS
        (line,) = [ln for ln in out.splitlines() if ln.strip().startswith(name + " ")]
        assert f"python -m {COMMANDS[name][0]}" in line
    assert main(["help"]) == 0
    assert capsys.readouterr().out == out
    assert main([]) == 2  # no command: one line on stderr
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stepbench: name a command: bench, report, predict, fa3-build")


def test_cli_unknown_command_one_line_exit_2(capsys):
    from core.cli import main

    with pytest.raises(SystemExit) as e:
        main(["reprot"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "unknown command 'reprot'" in err and "stepbench report" in err


def test_cli_bench_gets_the_argv_of_python_m_core_bench(monkeypatch):
    import core.bench
    from core.cli import main

    seen = {}
    monkeypatch.setattr(core.bench, "main", lambda: seen.update(argv=list(sys.argv)))
    argv = list(sys.argv)
    assert main(["bench", "+attn=sdpa", "-m", "steps=2"]) == 0
    assert seen["argv"] == [core.bench.__file__, "+attn=sdpa", "-m", "steps=2"]
    assert sys.argv == argv  # put back


def test_cli_passes_arguments_and_exit_status(capsys):
    from core.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", "--no-such-option"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stepbench report: unrecognized arguments: --no-such-option")
    with pytest.raises(SystemExit) as e:
        main(["bench", "+attn=nope"])
    assert e.value.code == 2
