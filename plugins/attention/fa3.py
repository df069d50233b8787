"""``fa3``: FlashAttention-3 varlen through the installed ``flash_attn_interface`` (SM90 only).

FA3 has no wheel on PyPI: build the ``hopper/`` directory of the flash-attention repository
(github.com/Dao-AILab/flash-attention), which installs the ``flash_attn_3`` distribution and the
``flash_attn_interface`` module. stepbench only imports it.
"""

from __future__ import annotations

from core import hookimpl
from plugins.attention.common import has_module, need_cuda, package_version

WHY_MISSING = "FA3 needs an SM90 GPU and the flash_attn_3 package (flash_attn_interface); use +attn=fa2"


class FA3:
    name = "fa3"

    def __init__(self):
        from flash_attn_interface import flash_attn_varlen_func

        self.fn = flash_attn_varlen_func
        self.provider = f"flash_attn_3 {package_version('flash_attn_3', 'flash-attn-3')}"

    def __call__(self, q, k, v, meta):
        m = meta.max_seqlen
        out = self.fn(q, k, v, meta.cu_seqlens, meta.cu_seqlens, m, m, causal=True)
        return out[0] if isinstance(out, tuple) else out


def why_not(ctx):
    if ctx.device != "cuda":
        return need_cuda(ctx).replace("+attn=sdpa", "+attn=sdpa (FA3 needs an SM90 GPU)")
    if ctx.capability != (9, 0):
        return f"FA3 needs an SM90 GPU (this is SM{ctx.capability[0]}{ctx.capability[1]}); use +attn=fa2"
    if not has_module("flash_attn_interface"):
        return WHY_MISSING
    return None


@hookimpl
def stepbench_register_attention(register):
    register("fa3", lambda cfg: FA3(), why_not, doc="FlashAttention-3 varlen, native GQA (SM90, flash_attn_3)")
