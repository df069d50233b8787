"""Metrics from samples: TPS is tokens over time, spreads, executed FLOPs per AC mode, ceilings,
provenance."""

import pytest

from core import flops
from core.contracts import RecomputeFacts
from core.measure import spread, throughput
from core.models.flavours import QWEN3


def test_tps_is_tokens_over_total_time_not_mean_of_rates():
    steps = [1.0, 2.0, 1.0, 4.0]  # whole-step seconds, 8192 tokens x 2 micro-batches each
    tps, per_mb = throughput(steps, 16384, 2)
    assert tps == pytest.approx(16384 * 4 / 8.0)
    mean_of_rates = sum(16384 / s for s in steps) / len(steps)
    assert mean_of_rates > tps * 1.3  # the biased figure we no longer report
    assert per_mb == pytest.approx(8.0 / 8)


def test_spread():
    s = spread([1.0, 1.0, 1.0, 3.0])
    assert (s["n"], s["min"], s["median"], s["max"]) == (4, 1.0, 1.0, 3.0)
    assert s["cv"] == pytest.approx(0.8660254 / 1.5)


@pytest.mark.parametrize("options,blocks,attention", [
    ({"name": "none"}, False, False), ({"name": "recompute"}, True, True),
    ({"name": "recompute", "mode": "selective"}, True, False), ({"name": "offload"}, True, True),
    ({"name": "offload", "mode": "attention"}, True, False),
])
def test_each_strategy_declares_what_backward_runs_again(options, blocks, attention):
    """The executed FLOPs ask the activation strategy (offload mode=attention runs the block again
    without attention, as selective recompute does)."""
    from core.plugins import make

    assert make("ac", options).recompute == RecomputeFacts(blocks=blocks, attention=attention)


def test_offload_attention_executes_the_block_again_without_attention():
    from core.plugins import make

    a = QWEN3["0.6B"]
    none = flops.micro_batch_flops(a, [8192], False, 0, RecomputeFacts())
    sel = flops.micro_batch_flops(a, [8192], False, 0, make("ac", {"name": "offload", "mode": "attention"}).recompute)
    full = flops.micro_batch_flops(a, [8192], False, 0, flops.FULL_RECOMPUTE)
    assert none.executed < sel.executed < full.executed
    assert sel.attn_executed == none.attn_executed and full.attn_executed > sel.attn_executed


@pytest.mark.parametrize("kind", ["none", "full"])
def test_step_budget_splits_the_micro_batch(kind):
    """useful is the roofline fraction; the parts add up to the measured time; attainable is what
    the configuration would reach with nothing but its FLOPs at the ceilings and its hand-off."""
    a = QWEN3["0.6B"]
    sf = flops.micro_batch_flops(a, [8192], False, 0, RecomputeFacts(kind == "full", kind == "full"))
    ceil = {"mm_tflops": 790.0, "attn_tflops": 275.0}
    roof = sf.mm_useful / 790e12 + sf.attn_useful / 275e12
    ideal = sf.mm_executed / 790e12 + sf.attn_executed / 275e12
    b = flops.step_budget([sf], ceil, step_s=2 * ideal, handoff_s=0.1 * ideal)
    assert b["useful"] == pytest.approx(roof / (2 * ideal))
    assert b["useful"] + b["recompute"] + b["handoff"] + b["other"] == pytest.approx(1.0)
    assert b["handoff"] == pytest.approx(0.05) and b["other"] == pytest.approx(0.45)
    assert b["attainable"] == pytest.approx(roof / (1.1 * ideal))
    assert (b["recompute"] > 0.05) == (kind == "full")  # the head's logits are recomputed either way


def test_source_digest_matches_the_committed_tree_when_clean():
    from core.provenance import git_state, source_digest, source_digest_at

    commit, dirty = git_state()
    if commit is None or dirty is None:
        pytest.skip("not a git checkout")
    at = source_digest_at(commit)
    assert at is not None and len(at) == 16
    if not dirty:
        assert at == source_digest()


def test_env_commit_wins_on_device_copies(monkeypatch):
    from core.provenance import git_state, row_provenance

    monkeypatch.setenv("STEPBENCH_GIT_COMMIT", "c" * 40)
    monkeypatch.setenv("STEPBENCH_GIT_DIRTY", "0")
    assert git_state() == ("c" * 40, False)
    monkeypatch.setenv("STEPBENCH_GIT_COMMIT", "c" * 40 + "-dirty")
    assert git_state() == ("c" * 40, True)
    monkeypatch.delenv("STEPBENCH_GIT_DIRTY")
    monkeypatch.setenv("STEPBENCH_GIT_COMMIT", "c" * 40)
    assert git_state() == ("c" * 40, None)
    assert row_provenance({"env": {"git_commit": "HEAD"}}) == "unknown"
    assert row_provenance({"env": {"git_commit": "c" * 40, "git_dirty": False}}) == "clean"
    assert row_provenance({"env": {"git_commit": "c" * 40, "git_dirty": True}}) == "dirty"


def test_busy_fraction_counts_overlapping_device_work_once():
    from core.measure import busy_fraction

    # kernels at 0-10 and 5-20 overlap (20 covered), a copy at 30-40, a gap 20-30 and 40-100
    assert busy_fraction([(30, 40), (0, 10), (5, 20)], 100) == pytest.approx(0.30)
    assert busy_fraction([(0, 10), (2, 8)], 10) == pytest.approx(1.0)  # nested interval
    assert busy_fraction([], 50) == 0.0
    with pytest.raises(ValueError):
        busy_fraction([(0, 1)], 0)


def test_device_time_by_kind_names_kernels_and_shares_wall_time():
    from core.measure import device_time_by_kind, kernel_kind

    assert kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert kernel_kind("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert kernel_kind("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<>>>") \
        == "attention"
    assert kernel_kind("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<>") == "attention"
    assert kernel_kind("Memcpy DtoH (Device -> Pinned)") == "copy"
    assert kernel_kind("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0") == "reduction"
    assert kernel_kind("triton_poi_fused_mul_silu_1") == "elementwise"
    events = [(0, 40, "sm90_xmma_gemm"), (40, 70, "flash_fwd_kernel"), (50, 60, "Memcpy HtoD"),
              (70, 80, "triton_poi_fused_add_0")]
    got = device_time_by_kind(events, 100)
    assert got == {"attention": 0.3, "copy": 0.1, "elementwise": 0.1, "matmul": 0.4, "launches": 4}


def test_trace_summary_attributes_device_time_and_idle_gaps(tmp_path):
    """benchmarks/trace_summary.py on a hand-made Chrome trace: device time of the kernels each
    stepbench range launched, kinds, the op that launched them, and idle gaps by host range."""
    import gzip
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from trace_summary import load, summarize

    ev = [
        {"ph": "X", "cat": "user_annotation", "name": "stepbench.micro_batch_0", "ts": 0, "dur": 1000, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 10, "dur": 50, "tid": 1},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 20, "dur": 5, "tid": 1,
         "args": {"correlation": 7}},
        {"ph": "X", "cat": "kernel", "name": "nvjet_sm90_gemm", "ts": 100, "dur": 300, "args": {"correlation": 7}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::exp", "ts": 500, "dur": 40, "tid": 1},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 510, "dur": 5, "tid": 1,
         "args": {"correlation": 8}},
        {"ph": "X", "cat": "kernel", "name": "vectorized_elementwise_kernel", "ts": 900, "dur": 100,
         "args": {"correlation": 8}},
    ]
    p = tmp_path / "t.json.gz"
    with gzip.open(p, "wt") as f:
        json.dump({"traceEvents": ev}, f)
    text = summarize(load(str(p)))
    assert "step: 1.0 ms wall, GPU busy 40%" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("micro_batch_0"))
    assert line.split()[1:] == ["1.0", "0.4", "0.9", "2"]  # host ms, device ms, span ms, kernels
    assert "matmul 0.3 ms (30%)" in text and "elementwise 0.1 ms (10%)" in text
    assert "1 launches      0.30 ms device  aten::mm" in text
    assert "device idle: 0.5 ms in 1 gaps" in text and "micro_batch_0 0.5 ms" in text
