"""Memory predictions against what was measured."""

import json
from pathlib import Path

import pytest

from core.memory import Layout, layout_of, predict_host_gib
from core.models.flavours import QWEN3
from core.plugins import make, registry


def plugins_of(config: dict):
    """A stored (or partial) config's AC, adapter and model family, as the core asks them."""
    ac = make("ac", config.get("ac") or {"name": "recompute"})
    adapter = make("adapter", config.get("adapter") or {"name": "full"})
    family = registry().get("model_family", (config.get("model") or {}).get("family", "qwen3")).factory
    return ac, adapter, family


def row_layout(config: dict, provider: str = "", wrapped=None) -> dict:
    ac, adapter, family = plugins_of(config)
    return layout_of(config, ac, adapter, family, provider, wrapped).as_dict()


def recompute(mode: str = "full"):
    return make("ac", {"name": "recompute", "mode": mode})


def adapter_of(rank):
    return make("adapter", {"name": "lora", "rank": rank} if rank else {"name": "full"})

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def offload_rows():
    rows = []
    for f in sorted(RESULTS.glob("*.jsonl")) + sorted((RESULTS / "history").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            info = r.get("ac_info") or {}
            if r.get("status") == "ok" and info.get("ac") == "offload" and "host_offload_bytes" in info \
                    and r.get("family") == "qwen3" and r.get("attn") == "FA3":
                rows.append(r)
    return rows


@pytest.mark.parametrize("row", offload_rows(), ids=lambda r: f"{r['model']}-{r['seq_len']}-{r['ac']}")
def test_host_prediction_equals_measured_offload_rows(row):
    """Every committed FA3 offload row (block inputs, and attention's saved tensors in mode=attention):
    the pinned bytes it reported equal the prediction made from its config."""
    cfg = row["config"]
    pred = predict_host_gib(QWEN3[row["flavour"]], row["seq_len"], make("ac", cfg["ac"]))
    assert pred * 2**30 == pytest.approx(row["ac_info"]["host_offload_bytes"], rel=1e-3)


def test_there_are_measured_rows_of_both_modes():
    modes = {r["config"]["ac"].get("mode", "full") for r in offload_rows()}
    assert {"full", "attention"} <= modes


def test_no_host_memory_without_offload():
    assert predict_host_gib(QWEN3["4B"], 65536, recompute()) == 0.0


def measured_rows():
    from plugins.models.native import FAMILIES

    out = []
    for f in sorted(RESULTS.glob("*.jsonl")) + sorted((RESULTS / "history").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            commit = (r.get("env") or {}).get("git_commit")
            if r.get("status") == "ok" and "config" in r and r.get("peak_mem_gib") and not r.get("profiled") \
                    and r.get("attn") in ("FA2", "FA3") and commit not in (None, "HEAD") \
                    and r.get("family") in FAMILIES and not r.get("peer"):  # HEAD: before the head fix; native
                # model code only; a peer's row (+peer=...) is another trainer's memory, not stepbench's
                out.append((FAMILIES[r["family"]].flavours[r["flavour"]], {**r, "_file": f}))
    return out


def test_peak_prediction_never_below_measured_by_more_than_10pct_nor_far_above():
    """The refusal predictor over every committed FA2/FA3 row (per GPU, at its number of GPUs): never
    more than 10% under the measured peak (it must not let a row that cannot fit start), and within
    1.6x above it."""
    from core.memory import predict_peak_gib

    rows = measured_rows()
    assert len(rows) > 30
    for a, r in rows:
        c = r["config"]
        ac, adapter, family = plugins_of(c)
        p = predict_peak_gib(a, r["seq_len"], adapter, ac, r.get("num_gpus", 1), c.get("head_budget_mib", 512),
                             layout_of(c, ac, adapter, family, r.get("attn_provider", ""), r.get("fsdp")))
        assert 0.9 <= p / r["peak_mem_gib"] <= 1.6, (r["model"], r["type"], r["seq_len"], r["ac"], p, r["peak_mem_gib"])


def test_expected_peak_within_10pct_of_every_current_row():
    """The expected peak (``core.predict``'s memory figure, no margin) against every committed row
    of the current results (benchmarks/results/*.jsonl, not history/), at its number of GPUs: within
    10% of the measured ``max_memory_reserved`` (per GPU), in each row's layout (FA2's repeated K/V
    where its provider repeated them, the checkpoint inside a compiled block)."""
    from core.memory import expected_peak_gib

    rows = [(a, r) for a, r in measured_rows() if r["_file"].parent == RESULTS]
    assert len(rows) >= 24
    for a, r in rows:
        c = r["config"]
        ac, adapter, family = plugins_of(c)
        e = expected_peak_gib(a, r["seq_len"], adapter, ac, r.get("num_gpus", 1), c.get("head_budget_mib", 512),
                              layout_of(c, ac, adapter, family, r.get("attn_provider", ""), r.get("fsdp")))
        assert 0.9 <= e / r["peak_mem_gib"] <= 1.1, (r["model"], r["type"], r["seq_len"], r["ac"], e, r["peak_mem_gib"])


def test_sharded_terms_scale_with_ranks_and_activations_do_not():
    from core.memory import peak_terms

    one = peak_terms(QWEN3["4B"], 16384, adapter_of(None), recompute(), 1)
    eight = peak_terms(QWEN3["4B"], 16384, adapter_of(None), recompute(), 8)
    assert eight["states"] == pytest.approx(one["states"] / 8)
    for k in ("saved_activations", "live_block", "head", "blocks_in_flight", "root_gathered"):
        assert eight[k] == one[k]


def test_sharded_state_terms_match_two_rank_gloo_run(tmp_path):
    """The predictor's sharded state term (parameters, gradients, AdamW moments per rank) equals the
    bytes each rank holds in a real FSDP2 run of the tiny Qwen3 over 2 gloo ranks, for full
    fine-tuning and LoRA (adapters sharded, and whole on every rank), within the few rows by which
    shards can differ."""
    from core.memory import peak_terms
    from tests.test_distributed import torchrun

    two = tmp_path / "two.json"
    p = torchrun("tests/state_worker.py", str(two))
    assert p.returncode == 0, p.stderr[-3000:]
    for f, world in ((two, 2),):
        got = json.loads(f.read_text())
        assert got["world"] == world
        for name, rank in (("full", None), ("lora", 16), ("lora_whole", 16)):
            pred = peak_terms(QWEN3["tiny"], 64, adapter_of(rank), recompute(), world,
                              layout=Layout(lora_replicated=name == "lora_whole"))["states"]
            assert pred == pytest.approx(got[name]["max_rank_bytes"], rel=0.01), (name, world)


def test_row_layout_reads_fused_lora_from_the_row():
    """Fused LoRA (fuse=lora, the default, or true) in native models only; rows from before fuse=
    existed ran one GEMM per layer; the hf family runs transformers' layers, never fused."""
    base = {"compile": True, "ac": {"name": "recompute", "inside": True}}
    assert row_layout({**base, "fuse": "lora"})["lora_fused"]
    assert row_layout({**base, "fuse": True})["lora_fused"]
    assert not row_layout({**base, "fuse": False})["lora_fused"]
    assert not row_layout(base)["lora_fused"]
    assert not row_layout({**base, "fuse": "lora", "model": {"family": "hf"}})["lora_fused"]
    assert row_layout({**base, "fuse": "lora"})["inside_compiled"]


def test_row_layout_knows_which_rows_ran_without_fsdp():
    """A row's recorded ``fsdp`` (whether FSDP2 wrapped it) decides; without one, the config as a row
    would run now: native models at fsdp=auto run unwrapped on one GPU (full fine-tuning and LoRA
    with its adapters out of FSDP2), the hf family and sharded adapters keep FSDP2, and rows from
    before fsdp= existed ran FSDP2."""
    full = {"fsdp": "auto", "adapter": {"name": "full"}}
    lora = {"fsdp": "auto", "adapter": {"name": "lora", "replicate": "auto"}}
    assert row_layout(full)["unwrapped"] and row_layout(lora)["unwrapped"]
    assert not row_layout(full, wrapped=True)["unwrapped"]  # a full row of session 11: FSDP2 wrapped it
    assert row_layout(full, wrapped=False)["unwrapped"]
    assert not row_layout({"adapter": {"name": "full"}})["unwrapped"]  # before fsdp=
    assert not row_layout({**full, "fsdp": True})["unwrapped"]
    assert not row_layout({**full, "model": {"family": "hf"}})["unwrapped"]
    assert not row_layout({**lora, "adapter": {"name": "lora", "replicate": False}})["unwrapped"]
    assert not row_layout({**lora, "adapter": {"name": "lora", "experts": "peft"}})["unwrapped"]
