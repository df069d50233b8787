"""``cudnn``: PyTorch's cuDNN attention (dense causal, GQA).

cuDNN's fast path in torch is dense, not varlen: each document of a micro-batch runs as its own
dense causal call (one launch per document). With one document per micro-batch (prime-rl's RL
rows) that is exactly one call per layer; with many short documents use fa2 or fa3. Documents
shorter than ``MIN_LEN`` tokens, which cuDNN's kernels reject, go to PyTorch's default SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from core import hookimpl
from core.contracts import AttentionBackend
from plugins.attention.common import need_cuda, per_document


MIN_LEN = 16


class CuDNN(AttentionBackend):
    name = label = kernel = "cudnn"
    features = frozenset({"scale"})

    def __init__(self):
        v = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        self.provider = f"torch {torch.__version__} cuDNN {v} SDPA (per document)"

    def __call__(self, q, k, v, meta, scale=None):
        def fn(qi, ki, vi):
            gqa = ki.shape[1] != qi.shape[1]
            if qi.shape[2] < MIN_LEN:
                return F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=gqa)
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=gqa)

        return per_document(fn, q, k, v, meta)


def why_not(ctx):
    if ctx.device != "cuda":
        return need_cuda(ctx)
    if ctx.capability and ctx.capability < (8, 0):
        return "cuDNN attention needs an SM80+ GPU; use +attn=sdpa"
    return None


@hookimpl
def stepbench_register_attention(register):
    register("cudnn", lambda options, ctx: CuDNN(), why_not, doc="cuDNN SDPA, dense causal per document (GPU)")
