"""Mixture-of-experts layer: router, grouped experts, optional shared experts.

Experts are stored as 3-D parameters in nn.Linear layout, ``gate_up_proj [E, 2*I, H]`` and
``down_proj [E, H, I]``. Tokens are sorted by expert once per layer and every expert runs in one
grouped GEMM (``torch._grouped_mm``, offsets on the device: no host sync). Where grouped GEMM is
unavailable a per-expert loop computes the same function. The token dispatch is isolated in
``dispatch``/``combine`` so that expert parallelism (all-to-all between them) can be added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.kernels import kernels_of
from core.models.common import MLP, ModelArgs

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


def grouped_linear(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``x [N, in]`` rows grouped by expert (group ends ``offs``) times ``w [E, out, in]``^T."""
    if _HAS_GROUPED_MM and x.dtype == torch.bfloat16:
        return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    out, start = [], 0
    for e, end in enumerate(offs.tolist()):  # fallback (host sync): CPU fp32 and old torch only
        out.append(x[start:end] @ w[e].t())
        start = end
    return torch.cat(out)


class Router(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.kind, self.top_k, self.norm_topk, self.scale = a.router, a.top_k, a.norm_topk, a.routed_scaling
        self.weight = nn.Parameter(torch.empty(a.n_experts, a.dim))
        if a.router == "sigmoid":  # GLM-4.5: fp32 correction bias, used only to choose experts
            self.register_buffer("e_score_correction_bias", torch.zeros(a.n_experts, dtype=torch.float32))

    def forward(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        # the weight as the layers compute with it (bf16, whether FSDP2 or the model cast it), then fp32
        logits = F.linear(x.float(), self.weight.to(x.dtype).float())
        if self.kind == "softmax":
            probs = logits.softmax(-1)
            w, idx = probs.topk(self.top_k, -1)
        else:
            scores = logits.sigmoid()
            idx = (scores + self.e_score_correction_bias).topk(self.top_k, -1).indices
            w = scores.gather(1, idx)
        if self.norm_topk:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return w * self.scale, idx


class Experts(nn.Module):
    kernels = None  # SwiGLU's provider (see core.models.common.RMSNorm.kernels)

    def __init__(self, a: ModelArgs):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(a.n_experts, 2 * a.moe_ffn_dim, a.dim))
        self.down_proj = nn.Parameter(torch.empty(a.n_experts, a.dim, a.moe_ffn_dim))

    def forward(self, xs: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        gu = grouped_linear(xs, self.gate_up_proj.to(xs.dtype), offs)
        g, u = gu.chunk(2, -1)
        return grouped_linear(kernels_of(self).swiglu(g, u), self.down_proj.to(xs.dtype), offs)


class MoE(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.top_k, self.n_experts = a.top_k, a.n_experts
        self.gate = Router(a)
        self.experts = Experts(a)
        self.shared_experts = MLP(a.dim, a.moe_ffn_dim * a.n_shared_experts) if a.n_shared_experts else None

    def dispatch(self, x, idx):
        """Sort token copies by expert: returns the copies, their token index and group ends.

        The group sizes come from a scatter-add (``bincount`` on CUDA reads the maximum back to
        the host), so routing never waits for the GPU."""
        flat = idx.flatten()
        order = flat.argsort(stable=True)
        counts = flat.new_zeros(self.n_experts).scatter_add_(0, flat, torch.ones_like(flat))
        offs = counts.cumsum(0).to(torch.int32)
        token = order // self.top_k
        return x[token], token, order, offs

    def combine(self, y, token, order, w, T):
        """Un-sort the expert outputs to ``[T, top_k, H]`` and take the routing-weighted sum
        (deterministic: no atomic adds)."""
        yk = y.new_empty(y.shape).index_copy_(0, order, y).view(T, self.top_k, y.shape[-1])
        return torch.einsum("tkh,tk->th", yk, w.to(y.dtype))

    def forward(self, x):
        w, idx = self.gate(x)
        xs, token, order, offs = self.dispatch(x, idx)
        out = self.combine(self.experts(xs, offs), token, order, w, x.shape[0])
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out
