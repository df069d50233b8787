"""Config composition, the command line's errors, and sweeps (multirun) with a failing row."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
GROUPS = ["model", "task", "adapter", "hardware", "attn", "ac", "sync", "sweep"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for opt in options(group):
            plus = "+" if group in ("attn", "ac", "sync", "sweep") else ""
            cfg = compose("bench", overrides=[f"{plus}{group}={opt}"])
            assert cfg[group] is not None


def test_card_command_composes_verbatim():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=["+attn=fa3", "+ac=offload", "model=qwen3_4b"])
    assert (cfg.attn.name, cfg.ac.name, cfg.model.flavour) == ("fa3", "offload", "4B")


def run(*args, env=None):
    """``python -m core.bench ARGS`` as a user types it: a fresh invocation with its own run id (an
    in-process test before may have set this process's)."""
    from core.sweep import RUN_ENV

    e = {k: v for k, v in os.environ.items() if k != RUN_ENV}
    e.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "core.bench", *args], cwd=ROOT, capture_output=True, text=True,
                          env=e, timeout=600)


@pytest.mark.parametrize("args,expect", [
    (["+attn=nope"], "unknown attn 'nope': choose one of"),
    (["attn=fa3"], "type +attn=fa3"),
    (["model=qwen3_5b"], "unknown model 'qwen3_5b'"),
    (["+ac=fast"], "unknown ac 'fast'"),
    (["adapter=qlora"], "unknown adapter 'qlora'"),
    (["hardware=tpu"], "unknown hardware 'tpu'"),
    (["seq_len=1000"], "seq_len must be a positive multiple of 128 (got 1000): try seq_len=1024"),
    (["seq_len=0"], "seq_len must be a positive multiple of 128"),
    (["+attn=fa3", "device=cpu"], "attn 'fa3' cannot run here"),
    (["+attn=cudnn", "device=cpu"], "attn 'cudnn' cannot run here: needs a CUDA GPU"),
    (["+ac=offload_attention", "max_host_gib=0.0001", "device=cpu"], "GiB is available: try a shorter seq_len"),
])
def test_bad_input_one_line_exit_2(args, expect):
    p = run(*args)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0], p.stderr


@pytest.mark.parametrize("args,expect", [
    (["+ac=offload", "ac.mode=bogus"], "offload mode 'bogus' is unknown: use ac.mode=full, selective or attention"),
    (["model=qwen3_moe_tiny", "adapter=lora", "adapter.experts=fused"], "try adapter.experts=grouped"),
    (["model=qwen3_tiny", "adapter=lora", "adapter.replicate=maybe"], "try adapter.replicate=auto"),
])
def test_bad_plugin_option_one_line_exit_2(tmp_path, args, expect):
    """A plugin that rejects its options: refused before anything is built (its factory is asked
    while the row resolves), exit 2, that one line, no traceback, and no row appended for a typo."""
    p = run(*args, "device=cpu", "steps=2", "seq_len=256", f"results={tmp_path / 'r.jsonl'}")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].endswith(expect), p.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_default_run_on_cpu_says_so_and_writes_a_row(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("the CPU default applies without a GPU")
    res = tmp_path / "rows.jsonl"
    p = run(f"results={res}", "steps=2")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "no CUDA GPU: running qwen3 tiny on the CPU" in p.stderr
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    assert row["status"] == "ok" and row["tps"] > 0 and len(row["samples"]["step_s"]) == 1
    assert row["type"] == "RL Full" and row["env"]["torch"]


def test_multirun_failed_row_does_not_stop_sweep_and_resume_skips(tmp_path):
    res = tmp_path / "rows.jsonl"
    args = ["-m", "model=qwen3_tiny", "+attn=sdpa,fa3", "+ac=recompute,offload", "device=cpu", "steps=2",
            "seq_len=128", f"results={res}"]
    p = run(*args)
    assert p.returncode == 1, p.stderr[-3000:]  # the sweep went on, and its status says rows failed
    assert p.stderr.strip().splitlines()[-1] == ("stepbench: 2 rows of the sweep failed (each is in the results "
                                                 "with its error): exit status 1")
    rows = [json.loads(x) for x in res.read_text().splitlines()]
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(ok) == 2 and {r["ac"] for r in ok} == {"Recompute", "Offload"}
    assert len(failed) == 2 and all("fa3" in r["error"] and "cannot run here" in r["error"] for r in failed)
    assert len({r["run_id"] for r in rows}) == 1  # one invocation, one run (the report's "same call")
    p = run(*args)  # resume: finished rows are skipped, refusals are recorded again
    assert p.returncode == 1
    assert p.stderr.count("skipped: already in results") == 2
    rows = [json.loads(x) for x in res.read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["run_id"] != rows[0]["run_id"]


def test_run_rows_keeps_a_refused_rows_reason_and_goes_on(tmp_path):
    """benchmarks/run_rows.py: a row the bench refuses before measuring (status 2, no row of its
    own) becomes a failed row that keeps the bench's one line saying what to type instead; the set
    goes on and its table is printed last."""
    from core.sweep import child_error

    res = tmp_path / "rows.jsonl"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_rows.py"), "--results", str(res),
                        "model=qwen3_tiny device=cpu task=rl sync.unmap=inline", "model=qwen3_tiny attn=fa3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(x) for x in res.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[0]["error"].endswith("type +sync=filesystem sync.unmap=..."), rows[0]["error"]
    assert "+attn=fa3" in rows[1]["error"]  # Hydra's own hint for an appended group
    assert "FAILED: " + rows[0]["error"][:40] in p.stdout.splitlines()[-2]  # the table, last
    assert child_error(-9, ["x"]) == "child exited with status -9 (signal 9)"
    assert child_error(1, ["stepbench: something", "RuntimeError: boom"]) == "RuntimeError: boom"


@pytest.mark.parametrize("sweep", options("sweep"))
def test_every_sweep_row_composes_and_validates(sweep):
    import shlex

    from omegaconf import OmegaConf

    from core.options import validate

    rows = OmegaConf.load(CONF / "sweep" / f"{sweep}.yaml").rows
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for spec in rows:
            if "++=" in spec:  # cpu_checks holds a row that must not compose
                continue
            cfg = compose("bench", overrides=shlex.split(spec))
            if "fixed:0" not in spec:
                validate(cfg)


@pytest.mark.parametrize("overrides,variant", [
    ([], ""),
    (["+attn=fa2", "+ac=recompute", "+sync=filesystem", "fuse=lora", "sync.writer=mapped"], ""),  # defaults spelled out
    (["adapter=lora", "fuse=false"], "fuse=false"),
    (["fuse=true"], "fuse=true"),
    (["+ac=recompute", "ac.inside=false", "+sync=filesystem", "sync.writer=write"], "ac.inside=false sync.writer=write"),
    (["+attn=fa2", "attn.via=varlen", "compile_head=false"], "compile_head=false attn.via=varlen"),
    (["+ac=offload_selective", "+sync=filesystem_shm"], ""),  # in the AC and Sync columns already
])
def test_row_variant_names_options_off_their_defaults(overrides, variant):
    """Rows that differ only in such an option are different rows (a sweep does not skip one as
    done because the other is); rows written before the field existed read as defaults."""
    from core.resolve import variant_label
    from core.results import row_key

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=overrides)
    assert variant_label(cfg) == variant
    old = {"model": "m", "seq_len": 8}
    assert row_key(old) == row_key({**old, "variant": ""}) != row_key({**old, "variant": "fuse=false"})


def test_every_committed_sweep_row_passes_the_checks():
    """Each row of conf/sweep/*.yaml is a command line the checks take (a new refusal must not leave
    a committed sweep unrunnable)."""
    import yaml

    from core.bench import check_overrides
    from core.resolve import UserError

    bad, seen = [], set()
    for f in sorted(CONF.glob("sweep/*.yaml")):
        if f.stem == "cpu_checks":  # its bad rows are on purpose: a sweep's failed rows
            continue
        for row in yaml.safe_load(f.read_text()).get("rows") or []:
            if str(row) in seen:  # sweeps share rows: each checked once
                continue
            seen.add(str(row))
            try:
                check_overrides(str(row).split())
            except UserError as e:
                bad.append(f"{f.name}: {row}: {e}")
    assert not bad, "\n".join(bad)


def test_ctrl_c_while_starting_is_one_line_and_130():
    """Round ten: Ctrl-C while torch and Hydra were imported was swallowed by an import guard (the row
    ran and was written), became a RecursionError row, or aborted the interpreter. Until the rows
    start, the bench now leaves at once: one line, status 130."""
    import signal
    import subprocess
    import sys

    code = ("import os, signal, time; from core.errors import exit_on_ctrl_c_while_starting; "
            "exit_on_ctrl_c_while_starting('stepbench'); os.kill(os.getpid(), signal.SIGINT); time.sleep(30)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 130 and p.stderr.strip() == "stepbench: interrupted (Ctrl-C) while starting: nothing was measured"
    bench = (ROOT / "core" / "bench.py").read_text()
    assert bench.index("exit_on_ctrl_c_while_starting(") < bench.index("\nimport os"), "installed before the imports"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # importing core.bench installs nothing
