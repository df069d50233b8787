"""Bad input: one line on stderr, exit 2, no traceback, the results file untouched; sweeps go on."""

import os
from pathlib import Path

import pytest

from core.results import append_row, read_rows
from tests.test_cli import run

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model=qwen3_tiny", "device=cpu", "steps=2", "seq_len=128"]


BAD = [
    (["packing=fixed:0"], "packing='fixed:0' is unknown: use packing=single"),
    (["packing=bogus"], "packing='bogus' is unknown"),
    (["adapter=lora", "adapter.rank=abc"], "adapter.rank must be an integer (got 'abc')"),
    (["seed=abc"], "seed must be an integer"),
    (["max_host_gib=abc"], "max_host_gib must be a number"),
    (["row_timeout_s=abc"], "row_timeout_s must be a number"),
    (["compile=no"], "compile must be true or false (got 'no')"),
    (["+seq_lenn=128"], "unknown option 'seq_lenn' (did you mean seq_len?)"),
    (["foo=1"], "unknown option 'foo'"),
    (["adapter=lora", "+adapter.rnk=4"], "unknown option 'adapter.rnk' (did you mean rank?)"),
    (["hardware=a6000"], "hardware=a6000 names a GPU profile, and this row runs on the CPU"),
    (["steps=1"], "steps must be at least 2"),
    (["micro_batches=0"], "micro_batches must be at least 1"),
    (["device=gpu"], "device 'gpu' is unknown: use device=auto"),
    (["+sync=filesystem", "sync.keep=0"], "sync.keep must be a positive integer"),
    (["+sync=nccl", "sync.backend=nccl"], "sync.backend=nccl needs a GPU for the receiver"),
    (["+sync=filesystem", "sync.overlap=maybe"], "sync.overlap must be true or false"),
    (["sync.writer=write"], "the default sync has no option 'writer': it is an option of filesystem, "
                            "filesystem_shm: type +sync=filesystem sync.writer=..."),
    (["seq_len=1000000000"], "seq_len must be at most 1048576"),
    (["+sweep=nope"], "unknown sweep 'nope'"),
    (["results=/"], "results=/ is a directory"),
]


@pytest.mark.parametrize("args,expect", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2(tmp_path, args, expect):
    res = tmp_path / "r.jsonl"
    extra = [] if any(a.startswith("results=") for a in args) else [f"results={res}"]
    keys = {a.split("=", 1)[0].lstrip("+") for a in args}
    p = run(*[a for a in TINY if a.split("=", 1)[0] not in keys], *args, *extra)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0], p.stderr
    assert "Traceback" not in p.stderr and not res.exists()


def test_plugin_option_hint_names_the_plugins_that_have_it():
    from core.bench import plugin_option_hint

    assert plugin_option_hint("attn", "attn.via", ["+attn=sdpa"]) == \
        "the attn plugin 'sdpa' has no option 'via': it is an option of fa2: type +attn=fa2 attn.via=..."
    assert "no ac plugin has it" in plugin_option_hint("ac", "ac.bogus", [])


def test_sweep_suggestion_has_the_plus():
    p = run("+sweep=nope")
    assert "e.g. +sweep=" in p.stderr


def test_unknown_block_name_and_broken_registration(tmp_path):
    p = run(*TINY, f"results={tmp_path / 'r.jsonl'}", env={"STEPBENCH_BLOCK_PLUGINS": "bogus"})
    assert p.returncode == 2 and "'bogus', which matches no plugin" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_blocked_sdpa_is_not_used_by_auto(tmp_path):
    """Blocking the only backend auto picks from on the CPU: refused before the row (one line, no
    failed row for what is a configuration problem)."""
    p = run(*TINY, f"results={tmp_path / 'r.jsonl'}", env={"STEPBENCH_BLOCK_PLUGINS": "sdpa"})
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "attn 'auto' cannot run here" in lines[0], p.stderr
    assert "STEPBENCH_BLOCK_PLUGINS" in lines[0] and not (tmp_path / "r.jsonl").exists()


def test_torn_last_line_never_swallows_the_next_row(tmp_path):
    res = tmp_path / "r.jsonl"
    res.write_text('{"status": "ok", "half": ')  # a crash mid-write elsewhere
    append_row(res, {"status": "ok", "n": 1})
    rows, problems = read_rows(res)
    assert rows == [{"status": "ok", "n": 1}]
    assert problems == [f"{res}:1: not JSON (Expecting value; a torn line?)"]


def test_a_bad_row_in_a_sweep_is_a_failed_row_and_the_sweep_goes_on(tmp_path):
    res = tmp_path / "r.jsonl"
    p = run("+sweep=cpu_checks", f"results={res}")
    assert p.returncode == 1, p.stderr[-3000:]  # it went on; its status says a row failed
    rows = read_rows(res)[0]
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "ok"]
    assert "packing='fixed:0' is unknown" in rows[1]["error"]
    assert rows[2]["error"].startswith("refused: bad overrides")
    assert (rows[0]["family"], rows[0]["ac"], rows[0]["type"]) == ("qwen3_moe", "Offload", "RL LoRA(r=16)")
    assert (rows[3]["family"], rows[3]["type"]) == ("glm4_moe", "SFT Full")


def test_sweep_command_line_replaces_the_rows_own_choice(tmp_path):
    res = tmp_path / "r.jsonl"
    p = run("+sweep=cpu_smoke", "+attn=fa2", f"results={res}")
    assert p.returncode == 1, p.stderr[-3000:]  # every row refused: the status says so
    rows = read_rows(res)[0]
    assert len(rows) == 3 and all(r["status"] == "failed" and "attn 'fa2' cannot run here" in r["error"]
                                  for r in rows)


def test_sweep_over_packing_runs_each_value_and_repeats_resume(tmp_path):
    res = tmp_path / "r.jsonl"
    args = ["-m", *TINY, "micro_batches=1", "packing=single,fixed:2", f"results={res}"]
    p = run(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_rows(res)[0]
    assert len(rows) == 2 and {r["packing"] for r in rows} == {"single", "fixed:2"}  # not skipped as "done"
    one = ["-m", *TINY, "micro_batches=1", "packing=single", f"results={res}", "repeats=2"]
    p = run(*one)  # one more fresh run of that row, then nothing left to do
    assert p.returncode == 0 and len(read_rows(res)[0]) == 3
    p = run(*one)
    assert p.stderr.count("skipped: already in results 2x") == 1 and len(read_rows(res)[0]) == 3


def test_nan_backend_fails_its_row(tmp_path, monkeypatch, dist_group):
    from hydra import compose, initialize_config_dir

    import plugins.attention.sdpa as sdpa
    from core.bench import run_row

    monkeypatch.setattr(sdpa.SDPA, "__call__", lambda self, q, k, v, meta: q * float("nan"))
    res = tmp_path / "r.jsonl"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("bench", overrides=[*TINY, "+attn=sdpa", f"results={res}", "+sync=none"])
    try:
        assert run_row(cfg) == 1
    finally:  # run_row ends the process group the other tests share
        from core.trainer import init_distributed

        init_distributed("cpu")
    (row,) = read_rows(res)[0]
    assert row["status"] == "failed" and "not finite with attn 'sdpa'" in row["error"]


def _sweep_cmd(res, *extra):
    import sys

    return [sys.executable, "-m", "core.bench", "-m", "model=qwen3_tiny", "device=cpu", "steps=2", "seq_len=128",
            "micro_batches=1,2", f"results={res}", *extra]


def test_two_sweeps_on_one_results_file_never_measure_a_key_twice(tmp_path):
    """Concurrent writers take turns at each row (a lock beside the results file): the second sees
    the rows the first measured and skips them."""
    import subprocess

    from tests.test_cli import ROOT

    res = tmp_path / "rows.jsonl"
    ENV = {**os.environ, "STEPBENCH_RUN_ID": ""}
    procs = [subprocess.Popen(_sweep_cmd(res, "tag=concurrent"), env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    rows = read_rows(res)[0]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}  # each key once
    assert sum(o[1].count("skipped: already in results") for o in outs) == 2


def test_ctrl_c_stops_a_sweep_with_one_line_and_status_130(tmp_path):
    """SIGINT mid-sweep: status 130, one line saying how to resume; a resumed sweep repeats no row."""
    import signal
    import subprocess
    import time

    from tests.test_cli import ROOT

    res = tmp_path / "rows.jsonl"
    ENV = {**os.environ, "STEPBENCH_RUN_ID": ""}
    p = subprocess.Popen(_sweep_cmd(res), env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (res.exists() and read_rows(res)[0]):
        time.sleep(0.2)  # the first row is written: the second is in flight
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert "interrupted (Ctrl-C)" in err.strip().splitlines()[-1] and "Traceback" not in err
    done = len(read_rows(res)[0])
    q = subprocess.run(_sweep_cmd(res), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-2000:]
    assert q.stderr.count("skipped: already in results") == done and len(read_rows(res)[0]) == 2


def test_a_results_file_whose_only_row_is_torn_still_takes_rows(tmp_path):
    """A crash mid-write leaves a torn first row: the file is still a rows file (the next row closes
    the torn line), while a file of another kind is refused."""
    from core.results import ResultsError, check_writable

    res = tmp_path / "r.jsonl"
    res.write_text('{"status": "ok", "half": ')
    assert check_writable(res) == res.resolve()
    other = tmp_path / "o.json"
    other.write_text('{"keep": 1}\n')
    with pytest.raises(ResultsError, match="holds something other than rows"):
        check_writable(other)


def test_the_sweep_lock_holds_the_rows_file_by_any_name(tmp_path):
    """Two sweeps naming one results file by a symbolic link or another hard link take turns (round
    ten: each locked the name it was given, and both measured one key)."""
    import fcntl

    from core.sweep import results_lock

    rows = tmp_path / "rows.jsonl"
    rows.write_text("")
    (tmp_path / "sym.jsonl").symlink_to(rows)
    os.link(rows, tmp_path / "hard.jsonl")
    for name, held in (("sym.jsonl", (rows, tmp_path / "rows.jsonl.lock")), ("hard.jsonl", (rows,))):
        with results_lock(str(tmp_path / name)):
            for other in held:
                with open(other, "a") as f, pytest.raises(BlockingIOError):
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not (tmp_path / "sym.jsonl.lock").exists()


def test_a_file_of_blank_lines_then_prose_takes_no_row(tmp_path):
    """Round ten: 70,000 blank lines hid the prose after them from the first 64 KiB that were read,
    and a row was appended to the file."""
    from core.results import ResultsError, check_writable

    f = tmp_path / "notes.jsonl"
    f.write_bytes(b"\n" * 70000 + b"my notes\n")
    with pytest.raises(ResultsError, match="holds something other than rows"):
        check_writable(f)
