"""Helpers shared by attention backends."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from core.data import AttnMeta


def need_cuda(ctx) -> str | None:
    return None if ctx.device == "cuda" else "needs a CUDA GPU; on this machine use +attn=sdpa"


def per_document(fn, q, k, v, meta: AttnMeta) -> torch.Tensor:
    """Run dense causal attention ``fn(q, k, v)`` ([1, H, s, D] layout) on each document.

    Document bounds come from the host copy of cu_seqlens, so no device sync is needed. With many
    documents this is many small launches: prefer a varlen kernel (fa2, fa3) for such batches.
    """
    outs = []
    c = meta.cu_seqlens_host
    for i in range(len(c) - 1):
        s, e = c[i], c[i + 1]
        qi, ki, vi = (t[s:e].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        outs.append(fn(qi, ki, vi).squeeze(0).transpose(0, 1))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def package_version(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for n in names:
        try:
            return version(n)
        except PackageNotFoundError:
            continue
    return "unknown"


def causal_mask(s: int, window: int | None, device) -> torch.Tensor:
    """``[s, s]`` boolean: query i sees key j where j <= i (and i - j < window with a window)."""
    i = torch.arange(s, device=device)
    keep = i[:, None] >= i[None, :]
    if window is not None:
        keep &= (i[:, None] - i[None, :]) < window
    return keep


def dense_attention(q, k, v, scale=None, window=None, softcap=None, sinks=None):
    """Causal attention of one document (``[1, heads, s, head_dim]``) with any of the features of
    :data:`core.contracts.ATTN_FEATURES`: torch's SDPA where it can (scale, window), the explicit
    computation (scores, soft-capping, mask, sink column, softmax) where it cannot. The reference the
    other backends' features are checked against."""
    gqa = k.shape[1] != q.shape[1]
    if softcap is None and sinks is None:
        if window is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        mask = causal_mask(q.shape[2], window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    if gqa:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~causal_mask(q.shape[2], window, q.device), float("-inf"))
    if sinks is not None:
        sink = sinks.to(scores.dtype).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, sink], -1)
        scores = scores - scores.amax(-1, keepdim=True)
        probs = torch.softmax(scores, -1)[..., :-1]
    else:
        probs = torch.softmax(scores, -1)
    return torch.matmul(probs.to(v.dtype), v)
