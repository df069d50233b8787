"""``flex``: PyTorch FlexAttention over packed documents, with every feature of
:data:`core.contracts.ATTN_FEATURES`.

- documents and causality (and a sliding window) are a block mask, made once per micro-batch and
  window and shared by every layer, so fully masked tiles are skipped;
- the softmax scale is flex's ``scale``; logit soft-capping is a ``score_mod``;
- sink logits (gpt-oss) act on the softmax's denominator only, so they are applied after the
  kernel from the log-sum-exp it returns: with ``L`` the log-sum-exp of a query's scores and ``s``
  its head's sink, the output with the sink is ``out * exp(L) / (exp(L) + exp(s))``, i.e.
  ``out * sigmoid(L - s)``, and gradients reach the sinks, q and k through ``L``.

This is the fast path for models whose attention FA2/FA3 cannot honour (gpt-oss's sinks on head_dim
64, soft-capping where torch's vendored FA2 has none). ``flex_attention`` is compiled once (inductor
writes its Triton kernels); the backend itself is kept out of the blocks' graphs, so the block mask
is made eagerly. GPU only: FlexAttention has no backward on the CPU (its forward logic is checked
there, eagerly, by tests/test_conformance.py::test_flex_forward_cpu).
"""

from __future__ import annotations

import functools

import torch

from core import hookimpl
from core.contracts import AttentionBackend
from plugins.attention.common import need_cuda

@functools.lru_cache(maxsize=1)
def compiled_flex():
    """``torch.compile(flex_attention)``, made once per process (every layer shares its kernels)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class Flex(AttentionBackend):
    name, label = "flex", "Flex"
    kernel = "flex"  # no measured ceilings of its own: the roofline uses the hardware profile's figure
    features = frozenset({"scale", "window", "softcap", "sinks"})

    def __init__(self):
        self.provider = f"torch {torch.__version__} flex_attention (compiled; document block mask)"
        self._masks: dict = {}
        self._masks_of = None

    def block_mask(self, meta, T: int, window: int | None, device):
        from torch.nn.attention.flex_attention import create_block_mask

        key = (tuple(meta.cu_seqlens_host), T, str(device))
        if key != self._masks_of:  # a new micro-batch: drop the last one's masks
            self._masks, self._masks_of = {}, key
        if window not in self._masks:
            doc = torch.repeat_interleave(torch.arange(len(meta.doc_lens), device=device),
                                          torch.tensor(list(meta.doc_lens), device=device))

            if window is None:
                def mask_mod(b, h, q, kv):
                    return (doc[q] == doc[kv]) & (q >= kv)
            else:
                def mask_mod(b, h, q, kv):
                    return (doc[q] == doc[kv]) & (q >= kv) & (q - kv < window)

            self._masks[window] = create_block_mask(mask_mod, None, None, T, T, device=device)
        return self._masks[window]

    @torch.compiler.disable
    def __call__(self, q, k, v, meta, scale=None, window=None, softcap=None, sinks=None):
        from torch.nn.attention.flex_attention import AuxRequest

        T = q.shape[0]
        qb, kb, vb = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        score_mod = None
        if softcap is not None:
            cap = float(softcap)

            def score_mod(score, b, h, qi, kvi):
                return cap * torch.tanh(score / cap)

        kw = {"block_mask": self.block_mask(meta, T, window, q.device), "score_mod": score_mod, "scale": scale,
              "enable_gqa": k.shape[1] != q.shape[1]}
        if sinks is None:
            out = compiled_flex()(qb, kb, vb, **kw)
        else:
            out, aux = compiled_flex()(qb, kb, vb, return_aux=AuxRequest(lse=True), **kw)
            share = torch.sigmoid(aux.lse.float() - sinks.float().view(1, -1, 1))  # [1, heads, T]
            out = (out.float() * share.unsqueeze(-1)).to(q.dtype)
        return out.squeeze(0).transpose(0, 1)


def why_not(ctx):
    return need_cuda(ctx)


@hookimpl
def stepbench_register_attention(register):
    register("flex", lambda options, ctx: Flex(), why_not,
             doc="FlexAttention (compiled): document block mask, windows, soft-capping, sinks (GPU)")
