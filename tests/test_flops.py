"""prime-rl's MFU formula reproduces the MFU column of every Qwen3 row of the published table.

The Qwen3-30B-A3B LoRA rows check the adapter count as well: per-expert LoRA on gate, up and down
(843.8M parameters) reproduces their MFU."""

import pytest
import torch

from core import flops
from core.models.registry import QWEN3, QWEN3_MOE
from core.report import parse_published

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
    one = flops.micro_batch_flops(a, [128], lora=False, recompute="none")
    two = flops.micro_batch_flops(a, [64, 64], lora=False, recompute="none")
    assert one.mm_useful == two.mm_useful and two.attn_useful < one.attn_useful
    rec = flops.micro_batch_flops(a, [128], lora=False, recompute="full")
    assert rec.executed > one.executed
