"""The chunked logprob head, the SFT loss and prime-rl's RL loss.

The head turns final hidden states into per-token fp32 log-probabilities of the targets (and the
entropy of each token's distribution, without gradient) a chunk of tokens at a time: at most
``[chunk, vocab]`` logits exist at once, never ``[tokens, vocab]``. Backward recomputes each
chunk's logits from the saved hidden states and the log-sum-exp.

With ``compiled=True`` (rows with ``compile=true``) each chunk's work after its GEMM (fp32 cast,
log-sum-exp, target log-prob, entropy; in backward the softmax gradient and its bf16 cast) is one
``torch.compile``-d function: Inductor fuses those passes into a few kernels that read the bf16
logits instead of a dozen fp32 passes over ``[chunk, vocab]``, so chunks can be larger within the
same byte budget. Same arithmetic, same outputs within fp32 rounding.
"""

from __future__ import annotations

import torch

RATIO_LOW, RATIO_HIGH = 0.125, 8.0


def _fwd_chunk(h, w, targets):
    """One token chunk: (target log-probs, entropies, log-sum-exps), fp32 (written for Inductor)."""
    logits = (h @ w.t()).float()
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits - lse[:, None]
    lp = logp.gather(1, targets[:, None]).squeeze(1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent, lse


def _fwd_chunk_eager(h, w, targets):
    """:func:`_fwd_chunk` in eager mode, in place: at most two fp32 ``[chunk, V]`` buffers."""
    logits = (h @ w.t()).float()
    lse = torch.logsumexp(logits, dim=-1)
    logits.sub_(lse[:, None])  # now log-probabilities
    lp = logits.gather(1, targets[:, None]).squeeze(1)
    ent = -logits.exp().mul_(logits).sum(-1)
    return lp, ent, lse


def _bwd_slice(h, wv, lse, g, local):
    """One vocabulary slice: d(sum g * lp)/d logits = g * (onehot - softmax), in the weights' dtype.
    ``local``: the targets' index within the slice (out of range: not in this slice)."""
    p = (h @ wv.t()).float()
    cols = torch.arange(wv.shape[0], device=h.device)
    onehot = (cols[None, :] == local[:, None]).float()
    return (g[:, None] * (onehot - torch.exp(p - lse[:, None]))).to(h.dtype)


def _bwd_slice_eager(h, wv, lse, g, local):
    """:func:`_bwd_slice` in eager mode, in place on one fp32 ``[T, slice]`` buffer."""
    width = wv.shape[0]
    p = (h @ wv.t()).float()
    p.sub_(lse[:, None]).exp_().mul_(-g[:, None])  # -g * softmax
    hit = (local >= 0) & (local < width)
    p.scatter_add_(1, local.clamp(0, width - 1)[:, None], (g * hit)[:, None])  # + g * onehot
    return p.to(h.dtype)


_COMPILED: dict = {}


def _compiled(fn):
    """``fn`` compiled once per process (static shapes: one graph per chunk shape)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


#: bytes per logit each way holds at once: (forward chunk, backward slice)
_BYTES_PER_LOGIT = {False: (12, 8), True: (6, 4)}


class ChunkedLogprobs(torch.autograd.Function):
    """``(h [T, H], w [V, H], targets [T]) -> (logprobs [T] fp32, entropy [T] fp32, no grad)``.

    Forward walks token chunks (``[chunk, V]`` logits at a time) and saves only the per-token
    log-sum-exp. Backward walks vocabulary slices instead: each slice's probabilities for all
    tokens give that slice of the weight gradient in one GEMM (no ``[V, H]`` accumulator) and
    add into a ``[T, H]`` fp32 hidden-state gradient. ``budget`` bounds each chunk's bytes:
    eager, fp32 logits and their exponentials (12 bytes per logit forward, 8 backward); compiled,
    bf16 logits and one fused temporary (6 and 4).
    """

    @staticmethod
    def forward(ctx, h, w, targets, budget: int, compiled: bool = False):
        T, V = h.shape[0], w.shape[0]
        lp = torch.empty(T, dtype=torch.float32, device=h.device)
        ent = torch.empty_like(lp)
        lse = torch.empty_like(lp)
        fwd = _compiled(_fwd_chunk) if compiled else _fwd_chunk_eager
        chunk = max(64, min(T, budget // (_BYTES_PER_LOGIT[compiled][0] * V) // 64 * 64))
        for s in range(0, T, chunk):
            e = min(s + chunk, T)
            lp[s:e], ent[s:e], lse[s:e] = fwd(h[s:e], w, targets[s:e])
        ctx.save_for_backward(h, w, targets, lse)
        ctx.budget, ctx.compiled = budget, compiled
        ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, _g_ent):
        h, w, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        T, V = h.shape[0], w.shape[0]
        g = g_lp.float()
        grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        grad_w = torch.empty_like(w) if need_w else None
        bwd = _compiled(_bwd_slice) if ctx.compiled else _bwd_slice_eager
        vc = max(256, min(V, ctx.budget // (_BYTES_PER_LOGIT[ctx.compiled][1] * T) // 256 * 256))
        for v0 in range(0, V, vc):
            wv = w[v0:v0 + vc]
            gl = bwd(h, wv, lse, g, targets - v0)
            if need_h:
                grad_h += gl @ wv
            if need_w:
                torch.mm(gl.t(), h, out=grad_w[v0:v0 + vc])
        return (grad_h.to(h.dtype) if need_h else None), grad_w, None, None, None


def chunked_logprobs(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, budget_mib: int = 512,
                     compiled: bool = False):
    """Per-token fp32 log-probabilities of ``targets`` (with grad) and entropies (no grad).

    At most about ``budget_mib`` MiB of logits exist at any time; ``compiled``: the per-chunk work
    as ``torch.compile``-d functions (fewer, fused passes).
    """
    return ChunkedLogprobs.apply(h, w, targets, budget_mib * 2**20, compiled)


def naive_logprobs(h, w, targets):
    """Reference: full fp32 logits (for tests only)."""
    logits = (h @ w.t()).float()
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(1, targets[:, None]).squeeze(1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent.detach()


def sft_loss(lp: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean negative log-likelihood over the loss-mask tokens."""
    m = loss_mask.float()
    n = m.sum().clamp(min=1)
    return -(lp * m).sum() / n, {"tokens": n}


def rl_loss(lp, inference_lp, advantages, loss_mask) -> tuple[torch.Tensor, dict]:
    """prime-rl's importance-sampled policy-gradient loss.

    r = exp(lp - lp_inference); tokens with r outside [0.125, 8] are masked;
    loss = -sum(r.detach() * A * lp over kept tokens) / kept tokens.
    """
    r = torch.exp(lp.detach() - inference_lp)
    keep = loss_mask & (r >= RATIO_LOW) & (r <= RATIO_HIGH)
    kf = keep.float()
    kept = kf.sum()
    loss = -(r * advantages * lp * kf).sum() / kept.clamp(min=1)
    return loss, {"kept": kept, "tokens": loss_mask.float().sum()}
