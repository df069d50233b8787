"""One MoE expert layer with LoRA, forward+backward: grouped per-expert LoRA against peft (GPU).

    python benchmarks/moe_lora_bench.py [--model 30B-A3B] [--tokens 16384] [--out FILE.jsonl]

Runs the routed experts of one Qwen3-MoE layer (frozen bf16 base weights, the model's expert
count, top-k and widths) on ``tokens * top_k`` routed token copies with a random, uneven routing,
for each LoRA mode of the ``lora`` adapter:

- ``grouped``: per-expert LoRA on gate, up and down as grouped GEMMs beside the base GEMM;
- ``peft``: peft's ``target_parameters`` LoRA on the fused ``gate_up_proj`` / ``down_proj``
  (adds ``B @ A`` to the weights each forward, full expert weight gradient in backward);
- ``frozen``: no expert adapter (the floor).

Prints the median fwd+bwd time (CUDA events via triton's do_bench) and the peak memory above the
layer's weights, so the choice of the default mode rests on a measurement.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.models.moe import Experts  # noqa: E402
from core.models.flavours import QWEN3_MOE  # noqa: E402
from core.results import append_row  # noqa: E402


class Holder(nn.Module):
    """peft targets parameters by module path: ``experts.gate_up_proj``."""

    def __init__(self, experts):
        super().__init__()
        self.experts = experts


def build(mode: str, a, rank: int):
    from plugins.adapters.lora import LoRA

    with torch.device("cuda"):
        m = Holder(Experts(a))
    for p in m.parameters():
        p.data = (torch.randn_like(p) * 0.02).to(torch.bfloat16)
        p.requires_grad_(False)
    if mode != "frozen":
        m = LoRA(rank, 2 * rank, targets=["nothing"], experts=mode).apply(m)
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.data = (torch.randn_like(p) * 0.01).to(torch.bfloat16)
                p.requires_grad_(True)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="30B-A3B", choices=[k for k in QWEN3_MOE if k != "tiny"])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--modes", default="grouped,peft,frozen")
    ap.add_argument("--out", default=None, help="append one JSON row per mode")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("moe_lora_bench needs a CUDA GPU: run it on the GPU machine")
    from triton.testing import do_bench

    a = QWEN3_MOE[args.model]
    n = args.tokens * a.top_k
    g = torch.Generator(device="cuda").manual_seed(0)
    idx = torch.multinomial(torch.rand(a.n_experts, device="cuda", generator=g) + 0.2,
                            n, replacement=True, generator=g).sort().values  # uneven expert loads
    offs = torch.bincount(idx, minlength=a.n_experts).cumsum(0).to(torch.int32)
    x = torch.randn(n, a.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(n, a.dim, device="cuda", dtype=torch.bfloat16)
    rows = []
    for mode in args.modes.split(","):
        m = build(mode, a, args.rank)
        experts = m.experts
        params = [p for p in m.parameters() if p.requires_grad]

        def step():
            y = experts(x, offs)
            torch.autograd.grad(y, [x, *params], dy)

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ms = do_bench(step, warmup=5, rep=200, return_mode="median")
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        row = {"kind": "moe_lora_bench", "model": a.name, "mode": mode, "tokens": args.tokens,
               "rank": args.rank, "ms": ms, "peak_above_weights_gib": peak,
               "adapter_params": sum(p.numel() for p in params),
               "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        rows.append(row)
        if args.out:
            append_row(args.out, row)
        del m, experts, params
        torch.cuda.empty_cache()
    print(f"\n{a.name}, one MoE layer, {args.tokens} tokens x top-{a.top_k}, LoRA r={args.rank}")
    print(f"{'mode':<8} {'fwd+bwd ms':>10} {'peak GiB':>9} {'adapter':>10}")
    for r in rows:
        print(f"{r['mode']:<8} {r['ms']:10.2f} {r['peak_above_weights_gib']:9.2f} {r['adapter_params']:>10,}")


if __name__ == "__main__":
    main()
