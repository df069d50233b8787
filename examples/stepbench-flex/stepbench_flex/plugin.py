"""Two attention backends from a third-party package.

``doc_flex``: FlexAttention over packed documents (block mask: same document and causal); its
backward needs a GPU. (stepbench's built-in ``flex`` does the same with every attention feature;
this one stays as the example of a backend from another package.) ``masked_sdpa``: one SDPA call per micro-batch with a dense
document-causal mask (CPU and GPU; memory grows with tokens^2, for small batches).

Both follow :class:`core.contracts.AttentionBackend`; :func:`core.testing.check_attention`
checks them against the float32 reference (tests/test_example_plugin.py).
"""

from __future__ import annotations

import torch

from core import hookimpl
from core.contracts import AttentionBackend


class Flex(AttentionBackend):
    name, label = "doc_flex", "Flex (example)"
    kernel = "flex"  # no measured ceilings of its own: the roofline uses the hardware profile's figure

    def __init__(self):
        from torch.nn.attention import flex_attention as fa

        self.fa = fa
        self.provider = f"torch {torch.__version__} flex_attention (document mask)"
        self._mask_key, self._mask = None, None

    def block_mask(self, meta, T, device):
        key = (meta.cu_seqlens_host, str(device))
        if key != self._mask_key:  # one mask per micro-batch, shared by every layer
            doc = torch.repeat_interleave(torch.arange(len(meta.doc_lens), device=device),
                                          torch.tensor(meta.doc_lens, device=device))

            def mask_mod(b, h, q, kv):
                return (doc[q] == doc[kv]) & (q >= kv)

            self._mask = self.fa.create_block_mask(mask_mod, None, None, T, T, device=device)
            self._mask_key = key
        return self._mask

    def __call__(self, q, k, v, meta):
        T = q.shape[0]
        qb, kb, vb = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out = self.fa.flex_attention(qb, kb, vb, block_mask=self.block_mask(meta, T, q.device),
                                     enable_gqa=k.shape[1] != q.shape[1])
        return out.squeeze(0).transpose(0, 1)


class MaskedSDPA(AttentionBackend):
    name, label = "masked_sdpa", "masked SDPA"
    kernel = ""  # torch picks the SDPA kernel: the hardware profile's nominal attention ceiling

    def __init__(self):
        self.provider = f"torch {torch.__version__} SDPA with a dense document mask"

    def __call__(self, q, k, v, meta):
        T = q.shape[0]
        doc = torch.repeat_interleave(torch.arange(len(meta.doc_lens), device=q.device),
                                      torch.tensor(meta.doc_lens, device=q.device))
        pos = torch.arange(T, device=q.device)
        mask = (doc[:, None] == doc[None, :]) & (pos[:, None] >= pos[None, :])
        qb, kb, vb = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask,
                                                               enable_gqa=k.shape[1] != q.shape[1])
        return out.squeeze(0).transpose(0, 1)


def flex_why_not(ctx):
    return None if ctx.device == "cuda" else "FlexAttention's backward needs a GPU; use +attn=masked_sdpa"


@hookimpl
def stepbench_register_attention(register):
    register("doc_flex", lambda options, ctx: Flex(), flex_why_not,
             doc="FlexAttention with a document mask (example plugin)")
    register("masked_sdpa", lambda options, ctx: MaskedSDPA(), doc="SDPA with a dense document mask (example plugin)")
