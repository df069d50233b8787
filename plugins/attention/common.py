"""Helpers shared by attention backends."""

from __future__ import annotations

import importlib.util

import torch

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
