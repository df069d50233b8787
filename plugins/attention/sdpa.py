"""``sdpa``: the reference backend (PyTorch scaled_dot_product_attention, per document, native GQA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core import hookimpl
from core.contracts import AttentionBackend
from plugins.attention.common import dense_attention, per_document


class SDPA(AttentionBackend):
    name = label = kernel = "sdpa"
    #: every feature: torch's SDPA takes a scale and a mask; soft-capping and sinks run as the
    #: explicit computation (the reference, not a fast path)
    features = frozenset({"scale", "window", "softcap", "sinks"})

    def __init__(self):
        self.provider = f"torch {torch.__version__} scaled_dot_product_attention (per document)"

    def __call__(self, q, k, v, meta, **features):
        if features:
            return per_document(lambda qi, ki, vi: dense_attention(qi, ki, vi, **features), q, k, v, meta)

        def fn(qi, ki, vi):
            return F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, enable_gqa=ki.shape[1] != qi.shape[1])

        return per_document(fn, q, k, v, meta)


@hookimpl
def stepbench_register_attention(register):
    register("sdpa", lambda options, ctx: SDPA(), doc="reference: PyTorch SDPA on each document (CPU and GPU)")
