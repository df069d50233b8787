"""The log-prob head alone: eager chunked vs compiled chunked (``compile=true``), forward+backward.

    python benchmarks/head_bench.py [--tokens 8192,16384] [--out FILE.jsonl]

Shapes: Qwen3-0.6B's head (hidden 1024, vocabulary 151936; 4B: --hidden 2560), bf16 hidden states
and weight, fp32 log-probabilities, a 512 MiB logit budget (the bench's default). For each number of
tokens and each variant: the median time of a forward + backward (``triton.testing.do_bench``
after warm-up), the GPU memory the call adds at its peak, and the error against an fp64 reference
on a slice of the tokens (log-probs, entropies, both gradients). Rows (``kind: head_bench``) carry
the commit like the bench's rows. On a machine without CUDA it runs a tiny shape on the CPU (a
smoke check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.losses import chunked_logprobs, naive_logprobs  # noqa: E402
from core.results import append_row  # noqa: E402

VARIANTS = {"eager": False, "compiled": True}


def inputs(T: int, H: int, V: int, device: str, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    h = torch.randn(T, H, device=device, generator=g).to(torch.bfloat16).requires_grad_()
    w = (0.02 * torch.randn(V, H, device=device, generator=g)).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, V, (T,), device=device, generator=g)
    dlp = torch.randn(T, device=device, generator=g)
    return h, w, t, dlp


def errors(h, w, t, dlp, compiled: bool, budget: int, n: int = 512) -> dict:
    """Relative errors of one variant against fp64 on the first ``n`` tokens."""
    hs, ts, gs = h[:n].detach().requires_grad_(), t[:n], dlp[:n]
    ws = w.detach().requires_grad_()
    lp, ent = chunked_logprobs(hs, ws, ts, budget, compiled)
    gh, gw = torch.autograd.grad(lp, (hs, ws), gs)
    h64, w64 = hs.detach().double().requires_grad_(), ws.detach().double().requires_grad_()
    lp_r, ent_r = naive_logprobs(h64, w64, ts)
    gh_r, gw_r = torch.autograd.grad(lp_r, (h64, w64), gs.double())
    rel = lambda a, b: ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()  # noqa: E731
    return {"lp": rel(lp, lp_r), "entropy": rel(ent, ent_r), "grad_h": rel(gh, gh_r), "grad_w": rel(gw, gw_r)}


def measure(h, w, t, dlp, compiled: bool, budget: int, cuda: bool) -> tuple[float, float]:
    """(median ms of forward + backward, GiB the call adds at its peak)."""
    import time

    def step():
        lp, _ = chunked_logprobs(h, w, t, budget, compiled)
        torch.autograd.grad(lp, (h, w), dlp)

    step()  # compile / warm up
    if not cuda:
        t0 = time.perf_counter()
        step()
        return (time.perf_counter() - t0) * 1e3, 0.0
    from triton.testing import do_bench

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    extra = (torch.cuda.max_memory_allocated() - base) / 2**30
    return do_bench(step, warmup=5, rep=200, return_mode="median"), extra


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="8192,16384")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--budget-mib", type=int, default=512)
    ap.add_argument("--out", default=None, help="append one JSON row per measurement")
    a = ap.parse_args(argv)
    from core.provenance import environment

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    tokens = [int(x) for x in a.tokens.split(",")]
    H, V = a.hidden, a.vocab
    if not cuda:
        print("head_bench: no CUDA: a tiny shape on the CPU (checks the script, measures nothing)")
        tokens, H, V = [256], 64, 1000
    budget = a.budget_mib * 2**20 if cuda else 2**16
    env = environment()
    rows = []
    for T in tokens:
        h, w, t, dlp = inputs(T, H, V, device)
        for name, compiled in VARIANTS.items():
            ms, extra = measure(h, w, t, dlp, compiled, budget, cuda)
            err = errors(h, w, t, dlp, compiled, budget)
            flops = 4 * 2 * T * H * V  # GEMMs: logits (forward), logits again, grad_h, grad_w (backward)
            row = {"kind": "head_bench", "variant": name, "tokens": T, "hidden": H, "vocab": V,
                   "budget_mib": a.budget_mib, "ms": ms, "gemm_tflops": flops / (ms * 1e-3) / 1e12,
                   "extra_gib": extra, "rel_err": err, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                   "torch": torch.__version__, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "env": env}
            rows.append(row)
            if a.out and cuda:
                append_row(a.out, row)
    print(f"\n{'tokens':>7} {'variant':<9} {'ms':>8} {'GEMM TFLOP/s':>13} {'+GiB':>6}  max rel. error (lp, ent, dh, dw)")
    for r in rows:
        e = r["rel_err"]
        print(f"{r['tokens']:>7} {r['variant']:<9} {r['ms']:8.2f} {r['gemm_tflops']:13.0f} {r['extra_gib']:6.2f}  "
              f"{e['lp']:.1e} {e['entropy']:.1e} {e['grad_h']:.1e} {e['grad_w']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
