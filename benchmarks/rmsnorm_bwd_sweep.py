"""The triton RMSNorm backward's launch choices on this GPU (exploration, not a report input).

    python benchmarks/rmsnorm_bwd_sweep.py [--out FILE.jsonl]

For each shape (the published rows' hidden-size norms, and Qwen3's per-head q/k norms: width 128
over tokens x heads rows), every launch (programs per SM, rows per step R, warps) of
``plugins.kernels.triton_ops.rms_norm_backward_launch`` is timed as a CUDA graph (device time of
both kernels, no host launch cost) and checked against the default choice's output. The bytes the
backward must move (dy, x read, dx written, weight read and its gradient written, rstd read) over
that time, as a fraction of the measured copy bandwidth, is the figure; the table prints the best
launch per shape and where ``rms_norm_bwd_config``'s choice stands, then the partial sums' kernel
alone for several tiles, and each kernel's share of the default launch (profiler).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: (label, rows, width)
SHAPES = [("0.6B/8192", 8192, 1024), ("0.6B/16384", 16384, 1024), ("4B/8192", 8192, 2560),
          ("4B/16384", 16384, 2560), ("0.6B/8192 qk", 8192 * 16, 128), ("4B/16384 qk", 16384 * 32, 128)]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Within bf16 rounding of the reference (the launches sum in different orders)."""
    return (got.float() - want.float()).abs().max().item() <= 1e-2 * max(want.float().abs().max().item(), 1e-6)


def kernel_split(t, dy, x, w, rstd) -> str:
    """Each kernel's device time (profiler, mean of 20 launches) of the default launch."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            t.rms_norm_backward_launch(dy, x, w, rstd)
        torch.cuda.synchronize()
    return "  ".join(f"{e.key[:40]} {e.self_device_time_total / 20:.1f} us" for e in prof.key_averages()
                     if e.self_device_time_total > 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("rmsnorm_bwd_sweep: needs a CUDA GPU")
    import triton
    from triton.testing import do_bench, do_bench_cudagraph

    from plugins.kernels import triton_ops as t

    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ceiling = 2 * src.numel() * 2 / (do_bench(lambda: dst.copy_(src), warmup=20, rep=200, return_mode="median") * 1e-3) / 1e9
    src = dst = None  # the 1 GiB buffers freed before the sweep
    print(f"copy bandwidth (1 GiB, read + write): {ceiling:.0f} GB/s")
    best = []
    for label, n, d in SHAPES:
        x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
        w = (1 + 0.2 * torch.randn(d, device="cuda")).to(torch.bfloat16)
        dy = torch.randn_like(x)
        rstd = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-6)
        nbytes = 3 * n * d * 2 + 2 * d * 2 + n * 4
        default = t.rms_norm_bwd_config(n, d, x.device)
        xf, wf = x.float().requires_grad_(), w.float().requires_grad_()
        torch.nn.functional.rms_norm(xf, (d,), wf, 1e-6).backward(dy.float())
        ref_dx, ref_dw = xf.grad, wf.grad
        block = triton.next_power_of_2(d)
        results = []
        for pps, r, warps, pre in itertools.product((1, 2, 4), (1, 2, 4, 8, 16, 32, 64), (4, 8, 16), (False, True)):
            if not 512 <= r * block <= 16384 or warps * 32 * 4 > r * block:
                continue
            cfg = (pps, r, warps, pre)
            try:
                dx, dw = t.rms_norm_backward_launch(dy, x, w, rstd, cfg)
                ok = close(dx, ref_dx) and close(dw, ref_dw)
                ms = do_bench_cudagraph(lambda: t.rms_norm_backward_launch(dy, x, w, rstd, cfg), rep=20)
            except Exception as e:  # a launch that does not fit (registers, shared memory) is skipped
                print(f"{label} {cfg}: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
                continue
            frac = nbytes / (ms * 1e-3) / 1e9 / ceiling
            results.append({"shape": label, "rows": n, "width": d, "programs_per_sm": pps, "R": r, "warps": warps,
                            "prefetch": pre, "us": ms * 1e3, "frac": frac, "matches_default": ok,
                            "default": cfg == default})
        # the partial sums' kernel alone, at the default's number of programs
        _, programs = t.rms_norm_bwd_grid(n, default[0], default[1], x.device)
        partial = torch.randn(programs, d, device="cuda")
        out = torch.empty(d, device="cuda", dtype=torch.bfloat16)
        for red in ((32, 32, 4), (64, 16, 4), (16, 64, 4), (128, 8, 4), (8, 128, 4), (64, 32, 8), (256, 8, 8)):
            grid = (triton.cdiv(d, red[1]),)
            ms = do_bench_cudagraph(lambda: t._sum_rows_cast[grid](partial, out, programs, d, BLOCK_P=red[0],
                                                                   BLOCK_D=red[1], num_warps=red[2]), rep=20)
            ok = close(out, partial.sum(0).to(torch.bfloat16))
            results.append({"shape": label, "rows": n, "width": d, "reduce": list(red), "programs": programs,
                            "us": ms * 1e3, "matches_default": ok, "default": red == t.REDUCE})
        if a.out:
            with open(a.out, "a") as f:
                for row in results:
                    f.write(json.dumps({**row, "copy_gbps": ceiling, "gpu": torch.cuda.get_device_name(0)}) + "\n")
        bad = [row for row in results if not row["matches_default"]]
        if bad:
            print(f"{label}: {len(bad)} launches differ from the reference: {bad[:3]}")
        reduces = sorted((row for row in results if "reduce" in row), key=lambda row: row["us"])
        print(f"{label}: the partials' sum ({reduces[0]['programs']} x {d}): " + "  ".join(
            f"{tuple(row['reduce'])}{'*' if row['default'] else ''} {row['us']:.1f} us" for row in reduces))
        results = sorted((row for row in results if "reduce" not in row), key=lambda row: row["us"])
        chosen = next((row for row in results if row["default"]), None)
        best.append((label, results[:3], chosen))
        print(f"{label}: {kernel_split(t, dy, x, w, rstd)}")
    print(f"\n{'shape':<14} {'default (pps,R,warps,pre)':>26} {'us':>7} {'frac':>5}   best three (pps,R,warps: us frac)")
    for label, top, chosen in best:
        c = chosen or {"programs_per_sm": "-", "R": "-", "warps": "-", "prefetch": "-", "us": float("nan"),
                       "frac": float("nan")}
        tops = "  ".join(f"{row['programs_per_sm']},{row['R']},{row['warps']},{int(row['prefetch'])}: {row['us']:.1f} "
                         f"{row['frac']:.2f}" for row in top)
        print(f"{label:<14} {str((c['programs_per_sm'], c['R'], c['warps'], int(c['prefetch']))):>26} {c['us']:7.1f} "
              f"{c['frac']:5.2f}   {tops}")


if __name__ == "__main__":
    main()
