"""Forward+backward TFLOP/s of each attention backend on packed causal batches (GPU).

    python benchmarks/attention_bench.py [--backends fa2,fa3,cudnn] [--out FILE.jsonl]

Shapes: 4 docs x 4096, 1 x 8192, 1 x 16384, 1 x 65536 tokens, head_dim 128, with Qwen3-4B's heads
(32 query, 8 KV) unless ``--heads`` says otherwise (``--heads 16/8``: Qwen3-0.6B's); each row records
its heads, and a row's roofline takes the ceiling of the kernel that ran with its model's heads where
one was measured (:func:`core.flops.ceilings`, from the hardware profile's ``measured`` entries:
``python benchmarks/write_ceilings.py`` writes them from the committed rows). FLOPs count causal attention as 4*s^2*H*D/2 per
document forward and backward as 2.5x forward, as in shared/reference/h100-ceilings.md, whose
figures are printed beside ours.
Each measurement is the median of CUDA-event-timed iterations after warm-up, on random data.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import AttnMeta  # noqa: E402
from core.plugins import RunContext, registry  # noqa: E402
from core.results import append_row  # noqa: E402

SHAPES = [("4x4096", [4096] * 4), ("1x8192", [8192]), ("1x16384", [16384]), ("1x65536", [65536])]
#: H100 ceilings measured on this project's H100 (shared/reference/h100-ceilings.md), TFLOP/s
CEILINGS = {
    "fa3": {"4x4096": 508, "1x16384": 624, "1x65536": 653},
    "cudnn": {"1x16384": 559, "1x65536": 570},
    "fa2": {"4x4096": 261, "1x16384": 317, "1x65536": 325},
}


def causal_flops(doc_lens, heads=32, dim=128) -> float:
    fwd = sum(4 * s * s * heads * dim / 2 for s in doc_lens)
    return fwd * 3.5


def bench(backend, doc_lens, heads=32, kv=8, dim=128, iters=20) -> float:
    from triton.testing import do_bench

    T = sum(doc_lens)
    meta = AttnMeta.from_doc_lens(doc_lens, "cuda")
    q = torch.randn(T, heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(T, kv, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(T, kv, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(T, heads, dim, device="cuda", dtype=torch.bfloat16)

    def step():
        out = backend(q, k, v, meta)
        torch.autograd.grad(out, (q, k, v), g)

    ms = do_bench(step, warmup=50, rep=max(200, iters * 10), return_mode="median")
    return causal_flops(doc_lens, heads, dim) / (ms * 1e-3) / 1e12


def bench_matmul(n: int = 8192) -> float:
    """bf16 [n, n] @ [n, n] TFLOP/s (median), rotating among three random input pairs so the
    inputs do not sit in L2: the matmul ceiling the rows' roofline uses."""
    from triton.testing import do_bench

    pairs = [(torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
              torch.randn(n, n, device="cuda", dtype=torch.bfloat16)) for _ in range(3)]
    i = [0]

    def step():
        a, b = pairs[i[0] % 3]
        i[0] += 1
        return a @ b

    ms = do_bench(step, warmup=50, rep=300, return_mode="median")
    return 2 * n**3 / (ms * 1e-3) / 1e12


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="fa2,fa3,cudnn")
    ap.add_argument("--out", default=None, help="append one JSON row per measurement")
    ap.add_argument("--matmul", action="store_true", help="also measure the bf16 matmul ceiling (8192^3)")
    ap.add_argument("--heads", default="32/8", help="query/KV heads (32/8: Qwen3-4B; 16/8: Qwen3-0.6B)")
    ap.add_argument("--shapes", default=",".join(s for s, _ in SHAPES),
                    help=f"comma-separated subset of {', '.join(s for s, _ in SHAPES)}")
    a = ap.parse_args()
    try:
        heads, kv = (int(x) for x in a.heads.split("/"))
    except ValueError:
        heads = kv = 0
    if heads <= 0 or kv <= 0 or heads % kv:
        ap.error(f"--heads {a.heads}: give query/KV heads with KV dividing query, e.g. --heads 16/8")
    known = dict(SHAPES)
    shapes = [s for s in a.shapes.split(",") if s]
    bad = [s for s in shapes if s not in known]
    if bad:
        ap.error(f"--shapes {','.join(bad)}: unknown; choose from {','.join(known)}")
    from core.provenance import environment

    reg, ctx = registry(), RunContext.detect()
    env = environment()  # commit, dirty flag and source digest, like the bench's rows
    results = []
    if a.matmul:
        row = {"kind": "attention_bench", "backend": "matmul", "provider": f"torch {torch.__version__} bf16 mm",
               "shape": "8192^3", "tflops": bench_matmul(), "ceiling_tflops": None, "frac_of_ceiling": None,
               "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "env": env}
        results.append(row)
        if a.out:
            append_row(a.out, row)
    for name in a.backends.split(","):
        e = reg.get("attn", name)
        why = e.unavailable(ctx)
        if why:
            print(f"{name}: skipped ({why})")
            continue
        be = e.factory({"name": name}, ctx)
        for label in shapes:
            tf = bench(be, known[label], heads, kv)
            ceil = CEILINGS.get(name, {}).get(label) if (heads, kv) == (32, 8) else None
            row = {"kind": "attention_bench", "backend": name, "provider": be.provider, "shape": label,
                   "heads": f"{heads}/{kv}",
                   "tflops": tf, "ceiling_tflops": ceil, "frac_of_ceiling": tf / ceil if ceil else None,
                   "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                   "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "env": env}
            results.append(row)
            if a.out:
                append_row(a.out, row)
    print(f"\n{'backend':<8} {'shape':<9} {'heads':<6} {'TFLOP/s':>8} {'ceiling':>8} {'ratio':>6}  provider")
    for r in results:
        ratio = f"{r['frac_of_ceiling']:.2f}" if r["frac_of_ceiling"] else "-"
        print(f"{r['backend']:<8} {r['shape']:<9} {r.get('heads', '-'):<6} {r['tflops']:8.0f} "
              f"{str(r['ceiling_tflops'] or '-'):>8} {ratio:>6}  {r['provider']}")


if __name__ == "__main__":
    main()
