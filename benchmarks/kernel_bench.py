"""Time and bytes moved of each block operation per kernels provider, at the published shapes (GPU).

    python benchmarks/kernel_bench.py [--providers eager,inductor,triton,liger] [--ops rms_norm,add_rms_norm] [--out FILE.jsonl]

Shapes: one micro-batch of the published rows (8192 and 16384 tokens) at Qwen3-0.6B's widths
(hidden 1024, MLP 3072, 16 query heads of 128) and Qwen3-4B's (2560, 9728, 32 heads). For each
operation, forward and forward+backward are timed two ways: ``wall`` (median of CUDA-event-timed
repetitions, Triton's ``do_bench``: what one call costs where nothing hides its host work, as in an
uncompiled block) and ``gpu`` (the device time of the kernels the pass launched, summed from the
profiler over repetitions: what the kernels themselves cost, the figure against the bandwidth
ceiling). Wall above gpu is host work (dispatch, autograd, guards, launches) the GPU waited for.
The bytes each pass must move at least (every input read once, every output written once, bf16;
RMSNorm's fp32 per-row rstd; ``add_rms_norm`` reads x and the residual and writes the norm and the
sum, and its backward reads both outputs' gradients) over the gpu time give GB/s, reported as a fraction of the copy
bandwidth measured in the same process (a 1 GiB device-to-device copy: read + write), the ceiling
a memory-bound kernel can reach. ``eager`` runs the PyTorch ops uncompiled (what an
uncompiled block does); ``inductor`` is inductor's fused kernel of each operation.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.plugins import RunContext, registry  # noqa: E402
from core.results import append_row  # noqa: E402

#: (label, tokens, hidden, mlp width, query heads, head_dim)
SHAPES = [("0.6B/8192", 8192, 1024, 3072, 16, 128), ("0.6B/16384", 16384, 1024, 3072, 16, 128),
          ("4B/8192", 8192, 2560, 9728, 32, 128), ("4B/16384", 16384, 2560, 9728, 32, 128)]
B = 2  # bytes per bf16 element


def copy_gbps() -> float:
    """Device-to-device copy of 1 GiB: (read + write) bytes over the median time."""
    from triton.testing import do_bench

    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=20, rep=200, return_mode="median")
    return 2 * src.numel() * B / (ms * 1e-3) / 1e9


def cases(tokens, hidden, ffn, heads, hd):
    """(op, forward fn, inputs needing grad, bytes forward, bytes backward) per operation."""
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(tokens, hidden, device=dev, dtype=bf)
    res = torch.randn(tokens, hidden, device=dev, dtype=bf)
    w = torch.randn(hidden, device=dev, dtype=bf)
    g, u = (torch.randn(tokens, ffn, device=dev, dtype=bf) for _ in range(2))
    q = torch.randn(tokens, heads, hd, device=dev, dtype=bf)
    f = torch.arange(tokens, device=dev).float()[:, None] * (1e6 ** -(torch.arange(hd // 2, device=dev) / (hd // 2)))
    emb = torch.cat([f, f], -1)[:, None, :]
    cos, sin = emb.cos().to(bf), emb.sin().to(bf)
    n, m, r = tokens * hidden, tokens * ffn, tokens * heads * hd
    return [
        ("rms_norm", lambda k, a, b: k.rms_norm(a, b, 1e-6), (x, w), (2 * n + hidden) * B + tokens * 4,
         (3 * n + 2 * hidden) * B + tokens * 4),
        ("add_rms_norm", lambda k, a, b, c: k.add_rms_norm(a, b, c, 1e-6), (x, res, w),
         (4 * n + hidden) * B + tokens * 4, (4 * n + 2 * hidden) * B + tokens * 4),
        ("swiglu", lambda k, a, b: k.swiglu(a, b), (g, u), 3 * m * B, 5 * m * B),
        ("rope", lambda k, a: k.rope(a, cos, sin), (q,), (2 * r + 2 * tokens * hd) * B, (2 * r + 2 * tokens * hd) * B),
    ]


def time_pass(provider, fn, inputs, backward: bool, reps: int = 20) -> tuple[float, float]:
    """(wall seconds, gpu seconds) of one pass: the event-timed median, and the device time of the
    kernels it launched (profiler, mean over ``reps`` passes)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from triton.testing import do_bench

    xs = [t.clone().requires_grad_(backward) for t in inputs]
    out = fn(provider, *xs)
    outs = tuple(out) if isinstance(out, tuple) else (out,)  # add_rms_norm: the norm and the sum
    grads = [torch.randn_like(o) for o in outs]

    def run():
        y = fn(provider, *xs)
        if backward:
            torch.autograd.grad(y if isinstance(y, tuple) else (y,), xs, grads)

    wall = do_bench(run, warmup=25, rep=100, return_mode="median") * 1e-3
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            run()
        torch.cuda.synchronize()
    # the profiler table's own rule: device events (kernels, copies, sets), not user annotations
    gpu_us = sum(e.self_device_time_total for e in prof.key_averages()
                 if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    return wall, gpu_us * 1e-6 / reps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", default="eager,inductor,triton,liger")
    ap.add_argument("--out", default=None, help="append one JSON row per measurement")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--ops", default="rms_norm,add_rms_norm,swiglu,rope", help="the operations to time")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_bench: needs a CUDA GPU (the CPU suite checks the kernels' numerics instead)")
    from core.provenance import environment

    reg, ctx, env = registry(), RunContext.detect(), environment()
    ceiling = copy_gbps()
    print(f"copy bandwidth (1 GiB, read + write): {ceiling:.0f} GB/s")
    rows = []
    known = {s[0]: s for s in SHAPES}
    for name in a.providers.split(","):
        e = reg.get("kernels", name)
        why = e.unavailable(ctx)
        if why:
            print(f"{name}: skipped ({why})")
            continue
        k = e.make({"name": name}, ctx)
        k.prepare()
        for label in a.shapes.split(","):
            _, tokens, hidden, ffn, heads, hd = known[label]
            for op, fn, inputs, bytes_fwd, bytes_bwd in cases(tokens, hidden, ffn, heads, hd):
                if op not in k.ops or op not in a.ops.split(","):
                    continue
                w_fwd, t_fwd = time_pass(k, fn, inputs, False)
                w_all, t_all = time_pass(k, fn, inputs, True)
                t_bwd = max(t_all - t_fwd, 1e-9)
                row = {"kind": "kernel_bench", "provider_name": name, "provider": k.provider, "op": op,
                       "shape": label, "fwd_us": t_fwd * 1e6, "bwd_us": t_bwd * 1e6,
                       "fwd_wall_us": w_fwd * 1e6, "bwd_wall_us": max(w_all - w_fwd, 0.0) * 1e6,
                       "fwd_gbps": bytes_fwd / t_fwd / 1e9, "bwd_gbps": bytes_bwd / t_bwd / 1e9,
                       "copy_gbps": ceiling, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                       "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "env": env}
                row["fwd_frac"], row["bwd_frac"] = row["fwd_gbps"] / ceiling, row["bwd_gbps"] / ceiling
                rows.append(row)
                if a.out:
                    append_row(a.out, row)
    print("\ngpu us: the kernels' device time; frac: bytes over gpu time / copy bandwidth; wall us: one call "
          "timed by events (host work included)")
    print(f"{'op':<12} {'shape':<11} {'provider':<8} {'fwd gpu':>8} {'frac':>5} {'wall':>7} {'bwd gpu':>8} "
          f"{'frac':>5} {'wall':>7}")
    for r in rows:
        print(f"{r['op']:<12} {r['shape']:<11} {r['provider_name']:<8} {r['fwd_us']:8.1f} {r['fwd_frac']:5.2f} "
              f"{r['fwd_wall_us']:7.1f} {r['bwd_us']:8.1f} {r['bwd_frac']:5.2f} {r['bwd_wall_us']:7.1f}")


if __name__ == "__main__":
    main()
