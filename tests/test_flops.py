"""prime-rl's MFU formula reproduces the MFU column of every Qwen3 row of the published table.

The Qwen3-30B-A3B LoRA rows check the adapter count as well: per-expert LoRA on gate, up and down
(843.8M parameters) reproduces their MFU. The roofline's ceilings come from the hardware profiles'
``measured`` entries, which are the committed attention_bench rows, and reproduce the committed rows'."""

import importlib.util
import json
import random
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from core import flops, hardware
from core.contracts import RecomputeFacts
from core.models.flavours import QWEN3, QWEN3_MOE
from core.report import parse_published
from core.results import load_rows

MODELS = {"Qwen3-0.6B": QWEN3["0.6B"], "Qwen3-4B-Instruct-2507": QWEN3["4B"],
          "Qwen3-30B-A3B-Instruct-2507": QWEN3_MOE["30B-A3B"]}
PEAK = {"H100 HBM3": 989e12, "H200": 989e12, "B200": 2.25e15, "A6000": 312e12}


def lora_counts(args):
    from plugins.adapters.lora import LoRA
    from core.models.common import CausalLM

    with torch.device("meta"):
        model = LoRA(16, 32).apply(CausalLM(args))
    return LoRA(16, 32).counts(model)


@pytest.fixture(scope="module")
def counts():
    return {name: lora_counts(a) for name, a in MODELS.items()}


def qwen3_rows():
    rows, _, _ = parse_published()
    return [r for r in rows if r["model"] in MODELS]


@pytest.mark.parametrize("row", qwen3_rows(), ids=lambda r: f"{r['model']}-{r['type']}-{r['seq_len']}-{r['hardware_label']}")
def test_mfu_column_reproduced(row, counts):
    a = MODELS[row["model"]]
    lora = row["type"].startswith("RL LoRA")
    c = counts[row["model"]]
    fpt = flops.prime_rl_flops_per_token(a, row["seq_len"], c["adapter"], c["fully_trainable"], lora)
    got = flops.mfu(fpt, row["tps"], PEAK[row["hardware"]], row["num_gpus"])
    assert got == pytest.approx(row["mfu"], abs=0.1), (got, row["mfu"])


def test_design_checks():
    a = QWEN3["0.6B"]
    assert flops.mfu(flops.prime_rl_flops_per_token(a, 8192), 20.57e3, 989e12) == pytest.approx(13.3, abs=0.05)


def test_exact_flops_count_causal_attention_once():
    a = QWEN3["tiny"]
    one = flops.micro_batch_flops(a, [128], frozen_base=False, recompute=RecomputeFacts())
    two = flops.micro_batch_flops(a, [64, 64], frozen_base=False, recompute=RecomputeFacts())
    assert one.mm_useful == two.mm_useful and two.attn_useful < one.attn_useful
    rec = flops.micro_batch_flops(a, [128], frozen_base=False, recompute=flops.FULL_RECOMPUTE)
    assert rec.executed > one.executed


ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("write_ceilings", ROOT / "benchmarks" / "write_ceilings.py")
write_ceilings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(write_ceilings)
BENCH_FILES = sorted(write_ceilings.RESULTS.glob(write_ceilings.BENCH_GLOB))


@pytest.mark.parametrize("name", sorted(p.stem for p in write_ceilings.PROFILES.glob("*.yaml")))
def test_profiles_measured_blocks_are_the_committed_bench_rows(name):
    """Every profile is what ``python benchmarks/write_ceilings.py`` writes from the committed rows:
    the measured ceilings can never drift from them."""
    path = write_ceilings.PROFILES / f"{name}.yaml"
    assert write_ceilings.render(path, BENCH_FILES) == path.read_text(), \
        f"{path.name} is stale: run python benchmarks/write_ceilings.py"
    assert bool(hardware.load(name).get("measured")) == (name in ("h100", "h200"))


def test_write_ceilings_keeps_the_hand_written_keys_and_is_deterministic(tmp_path):
    rows = [{"kind": "attention_bench", "gpu": "NVIDIA H100 80GB HBM3", "backend": b, "provider": p, "shape": s,
             "tflops": t, **({"heads": h} if h else {})}
            for b, p, h, s, t in [("fa3", "k", "16/8", "1x8192", 500.0), ("fa3", "k", "16/8", "1x8192", 520.0),
                                  ("fa3", "k", "16/8", "1x8192", 530.0), ("fa2", "old", None, "4x4096", 270.0),
                                  ("matmul", "mm", None, "8192^3", 780.0)]]
    rows.append({"kind": "attention_bench", "gpu": "NVIDIA H200", "backend": "fa3", "provider": "k",
                 "shape": "1x8192", "tflops": 1.0})
    rows.append({"kind": "head_bench", "gpu": "NVIDIA H100 80GB HBM3", "tflops": 1.0})
    profile = tmp_path / "h100.yaml"
    head = "name: H100   # kept\n# a comment, kept\nmm_tflops: 790\n"
    profile.write_text(f"{head}{write_ceilings.MARKER}\nmeasured: [stale]\n")
    texts = []
    for seed in range(3):
        random.Random(seed).shuffle(rows)
        bench = tmp_path / f"h100-attention-{seed}.jsonl"
        bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
        texts.append(write_ceilings.render(profile, [bench]).replace(bench.name, "FILE"))
    assert texts[0] == texts[1] == texts[2] and texts[0].startswith(head + write_ceilings.MARKER + "\n")
    profile.write_text(texts[0])
    assert OmegaConf.load(profile).measured == [
        {"kernel": "fa2", "provider": "old", "heads": "32/8", "doc_len": 4096, "tflops": 270.0, "n": 1,
         "gpu": "NVIDIA H100 80GB HBM3"},
        {"kernel": "fa3", "provider": "k", "heads": "16/8", "doc_len": 8192, "tflops": 520.0, "n": 3,
         "gpu": "NVIDIA H100 80GB HBM3"},
        {"kernel": "matmul", "provider": "mm", "heads": None, "doc_len": None, "tflops": 780.0, "n": 1,
         "gpu": "NVIDIA H100 80GB HBM3"}]
    assert write_ceilings.render(profile, []) == head


def entry(kernel, provider, heads, doc_len, tflops, n=1):
    return {"kernel": kernel, "provider": provider, "heads": heads, "doc_len": doc_len, "tflops": tflops, "n": n,
            "gpu": "NVIDIA H100 80GB HBM3"}


def test_ceilings_come_from_the_kernel_that_ran():
    hw = {"name": "H100", "mm_tflops": 790, "attn_tflops": 624, "measured": [
        entry("fa3", "k3", "32/8", 16384, 620), entry("fa3", "k3", "32/8", 65536, 600),
        entry("fa2", "k2", "32/8", 16384, 310, n=2), entry("fa2", "k2", "32/8", 65536, 330),
        entry("matmul", "mm", None, None, 785, n=2)]}
    c = flops.ceilings(hw, "fa2", "k2", 16384)
    assert c == {"mm_tflops": 785, "mm_source": "attention_bench matmul (2 rows)", "attn_tflops": 310,
                 "attn_source": "attention_bench fa2 1 doc of 16384 (2 rows, same kernel)"}
    assert flops.ceilings(hw, "fa3", None, 50000)["attn_tflops"] == 600
    assert flops.ceilings(hw, "sdpa", None, 8192)["attn_source"] == "hardware profile (FA3)"
    cpu = flops.ceilings(hardware.load("cpu"), "fa2", "k2", 8192)
    assert (cpu["mm_tflops"], cpu["attn_tflops"], cpu["mm_source"]) == (1, 1, "hardware profile")


def test_ceilings_prefer_the_kernel_and_heads_that_ran():
    hw = {"name": "H100", "mm_tflops": 790, "attn_tflops": 624, "measured": [
        entry("fa2", "old", "32/8", 8192, 250), entry("fa2", "new", "32/8", 8192, 300),
        entry("fa2", "new", "16/8", 8192, 280), entry("fa2", "new", "16/8", 65536, 330)]}
    c = flops.ceilings(hw, "fa2", "new", 8192, heads="16/8")
    assert c["attn_tflops"] == 280
    assert c["attn_source"] == "attention_bench fa2 1 doc of 8192 (1 rows, same kernel, heads 16/8)"
    assert flops.ceilings(hw, "fa2", "new", 8192, heads="32/8")["attn_tflops"] == 300
    # a kernel never measured: the fa2 entries of those heads, their rows' median
    assert flops.ceilings(hw, "fa2", "other", 8192, heads="32/8")["attn_tflops"] == 275
    assert flops.ceilings(hw, "fa2", "new", 65536, heads="40/8")["attn_tflops"] == 330


def test_ceilings_of_several_entries_count_each_row():
    hw = {"name": "H100", "measured": [entry("fa2", "a", "32/8", 8192, 300, n=2), entry("fa2", "b", "32/8", 8192, 330)]}
    c = flops.ceilings(hw, "fa2", "other", 8192, heads="32/8")
    assert c["attn_tflops"] == 300 and c["attn_source"] == "attention_bench fa2 1 doc of 8192 (3 rows, heads 32/8)"


def kernel_of(provider: str) -> str:
    """The attention kernel family of a row's stored provider."""
    p = provider.lower()
    return "fa3" if "flash_attn_3" in p else "cudnn" if "cudnn" in p else "fa2" if "fa2" in p or "flash" in p \
        else "sdpa"


def test_committed_h100_rows_ceilings_are_reproduced_from_the_profile():
    """Every committed H100 row with ceilings (benchmarks/results/*.jsonl, not history/) gets the
    ceilings it stores from the H100 profile, its ``measured`` entries made from the committed
    bench rows measured before it (a row stores the ceilings of its day; for a row after the newest
    bench row that is the committed profile). Skipped: rows whose stored source counts more bench
    rows than were committed from before them (their ceilings came from bench rows not committed
    anymore: benchmarks/results/history/h100-attention-no-commit.jsonl), and rows of model families
    without native shapes (``hf``)."""
    from plugins.models.native import FAMILIES

    hw = hardware.load("h100")
    bench = [r for _, r in write_ceilings.bench_rows(BENCH_FILES) if "H100" in r["gpu"]]
    checked = skipped = 0
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.jsonl")):
        for row in load_rows(path):
            if row.get("status") != "ok" or not isinstance(row.get("ceilings"), dict) \
                    or not row.get("attn_provider") or "H100" not in str(row.get("hardware_label")) \
                    or row.get("family") not in FAMILIES:
                continue
            a = FAMILIES[row["family"]].flavours[row["flavour"]]
            kernel, stored = kernel_of(row["attn_provider"]), row["ceilings"]
            measured = write_ceilings.entries([b for b in bench if b["time"] <= row["time"]])
            n = re.search(r"\((\d+) rows", stored["attn_source"])
            doc = re.search(r"1 doc of (\d+)", stored["attn_source"])
            if n and int(n[1]) > sum(e["n"] for e in measured if e["kernel"] == kernel and e["doc_len"] == int(doc[1])):
                skipped += 1
                continue
            got = flops.ceilings({**hw, "measured": measured}, kernel, row["attn_provider"], row["seq_len"],
                                 heads=f"{a.n_heads}/{a.n_kv_heads}")
            where = f"{path.name} {row['time']} {row['model']} {row['seq_len']} {row['attn_provider']}"
            assert (got["mm_tflops"], got["attn_tflops"]) == (stored["mm_tflops"], stored["attn_tflops"]), \
                (where, got, stored)
            checked += 1
    assert checked >= 20 and skipped < checked, (checked, skipped)
