"""The chunked logprob head, the SFT loss and prime-rl's RL loss.

The head turns final hidden states into per-token fp32 log-probabilities of the targets (and the
entropy of each token's distribution, without gradient) a chunk of tokens at a time: at most
``[chunk, vocab]`` logits exist at once, never ``[tokens, vocab]``. Backward recomputes each
chunk's logits from the saved hidden states and the log-sum-exp.
"""

from __future__ import annotations

import torch

RATIO_LOW, RATIO_HIGH = 0.125, 8.0


class ChunkedLogprobs(torch.autograd.Function):
    """``(h [T, H], w [V, H], targets [T]) -> (logprobs [T] fp32, entropy [T] fp32, no grad)``."""

    @staticmethod
    def forward(ctx, h, w, targets, chunk: int):
        T = h.shape[0]
        lp = torch.empty(T, dtype=torch.float32, device=h.device)
        ent = torch.empty_like(lp)
        lse = torch.empty_like(lp)
        for s in range(0, T, chunk):
            e = min(s + chunk, T)
            logits = (h[s:e] @ w.t()).float()
            lse_c = torch.logsumexp(logits, dim=-1)
            logits.sub_(lse_c[:, None])  # now log-probabilities
            lp[s:e] = logits.gather(1, targets[s:e, None]).squeeze(1)
            ent[s:e] = -(logits.exp() * logits).sum(-1)
            lse[s:e] = lse_c
        ctx.save_for_backward(h, w, targets, lse)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, _g_ent):
        h, w, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        T, chunk = h.shape[0], ctx.chunk
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        for s in range(0, T, chunk):
            e = min(s + chunk, T)
            g = g_lp[s:e].float()
            p = (h[s:e] @ w.t()).float()
            p.sub_(lse[s:e, None]).exp_()  # softmax
            p.mul_(-g[:, None])
            p.scatter_add_(1, targets[s:e, None], g[:, None])  # g * (onehot - p)
            gl = p.to(h.dtype)
            del p
            if need_h:
                torch.mm(gl, w, out=grad_h[s:e])
            if need_w:
                grad_w += (gl.t() @ h[s:e]).float()
        return grad_h, (grad_w.to(w.dtype) if need_w else None), None, None


def chunked_logprobs(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int = 1024):
    """Per-token fp32 log-probabilities of ``targets`` (with grad) and entropies (no grad)."""
    return ChunkedLogprobs.apply(h, w, targets, chunk)


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
