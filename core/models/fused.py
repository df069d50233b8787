"""Linear layers that read the same input, computed as one GEMM (q/k/v; gate/up), LoRA included.

A transformer block applies q, k and v (and gate and up) to the same tensor. As separate layers
that is 3 GEMMs forward and 6 backward for q/k/v (with a LoRA adapter on each: 9 and 15, since
each adapted layer is a base GEMM plus two small ones). :func:`project` computes them together:

    y = x [W_1; ...; W_n]^T + (x [A_1; ...; A_n]^T) diag(s_1 B_1, ..., s_n B_n)^T

one GEMM for the base weights, one for the stacked A factors and one for the block-diagonal B
factors (1 and 3 forward, 2 and 5 backward, whatever n). It is the same function as the separate
layers (the zero blocks add exact zeros). The GEMMs are fewer and wider, and the short rows spend
their host time launching GEMMs (NOTES.md, session 6: 77 per LoRA block and micro-batch).

The weights are concatenated inside a custom autograd function which saves the parameters
themselves, not their concatenation, so nothing weight-sized outlives the forward (without
activation checkpointing the concatenation is rebuilt in backward).

Layers qualify when they are all plain ``nn.Linear`` (biases all present or all absent), or all
peft LoRA ``Linear`` layers in their vanilla form: one active adapter, not merged, no dropout, no
DoRA or other variant, no LoRA bias. Anything else falls back to calling each layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _lora_parts(m: nn.Module):
    """(base Linear, A weight, B weight, scaling) of a vanilla peft LoRA Linear, else None."""
    if not hasattr(m, "lora_A"):  # not a LoRA layer: no need to import peft (seconds, for a full row)
        return None
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft is a dependency; without it nothing is a LoRA layer
        return None
    if type(m) is not LoraLinear or m.merged or m.disable_adapters or getattr(m, "fan_in_fan_out", False):
        return None
    active = m.active_adapters
    if len(active) != 1 or active[0] not in m.lora_A:
        return None
    a = active[0]
    if a in getattr(m, "lora_variant", {}) or not isinstance(m.lora_dropout[a], nn.Identity):
        return None
    if m.lora_B[a].bias is not None or type(m.base_layer) is not nn.Linear:
        return None
    return m.base_layer, m.lora_A[a].weight, m.lora_B[a].weight, m.scaling[a]


def _block_diag(Bs, scales) -> torch.Tensor:
    return torch.block_diag(*(b * s for b, s in zip(Bs, scales)))


class _FusedLinears(torch.autograd.Function):
    """``x [W_i]^T (+ bias) (+ (x [A_i]^T) diag(s_i B_i)^T)`` with the weights passed one by one."""

    @staticmethod
    def forward(ctx, x, n: int, nl: int, scales: tuple, *ts):
        # ts: n weights (one packed weight: n == 1), the bias or None, nl A factors, nl B factors
        Ws, bias = ts[:n], ts[n]
        W = torch.cat(Ws) if n > 1 else Ws[0]
        y = F.linear(x, W, bias)
        low = None
        if nl:
            As, Bs = ts[n + 1:n + 1 + nl], ts[n + 1 + nl:]
            low = F.linear(x, torch.cat(As) if nl > 1 else As[0])
            y = y + F.linear(low, _block_diag(Bs, scales))
        ctx.n, ctx.nl, ctx.scales, ctx.has_bias = n, nl, scales, bias is not None
        ctx.save_for_backward(x, low, *ts)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, low, *ts = ctx.saved_tensors
        n, nl, need = ctx.n, ctx.nl, ctx.needs_input_grad
        Ws, bias = ts[:n], ts[n]
        d2 = dy.reshape(-1, dy.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        grads = [None] * len(ts)
        dx = None
        if need[0]:
            dx = dy @ (torch.cat(Ws) if n > 1 else Ws[0])
        if any(need[4:4 + n]):
            dW = (d2.t() @ x2).split([w.shape[0] for w in Ws])
            grads[:n] = [g if need[4 + i] else None for i, g in enumerate(dW)]
        if bias is not None and need[4 + n]:
            grads[n] = d2.sum(0)
        if nl:
            As, Bs = ts[n + 1:n + 1 + nl], ts[n + 1 + nl:]
            dlow = dy @ _block_diag(Bs, ctx.scales)
            if need[0]:
                dx = dx + dlow @ (torch.cat(As) if nl > 1 else As[0])
            l2, dl2 = low.reshape(-1, low.shape[-1]), dlow.reshape(-1, dlow.shape[-1])
            if any(need[5 + n:5 + n + nl]):
                dA = (dl2.t() @ x2).split([a.shape[0] for a in As])
                for i, g in enumerate(dA):
                    grads[n + 1 + i] = g if need[5 + n + i] else None
            if any(need[5 + n + nl:]):
                dBbd = d2.t() @ l2  # [sum out, sum r]: the diagonal blocks are the B gradients
                o = r = 0
                for i, (b, s) in enumerate(zip(Bs, ctx.scales)):
                    if need[5 + n + nl + i]:
                        grads[n + 1 + nl + i] = dBbd[o:o + b.shape[0], r:r + b.shape[1]] * s
                    o, r = o + b.shape[0], r + b.shape[1]
        return (dx, None, None, None, *grads)


def _plan(layers) -> tuple[str | None, list]:
    """``("linear", [])``, ``("lora", parts)`` (each layer's :func:`_lora_parts`) or ``(None, [])``."""
    if len(layers) < 2:
        return None, []
    if all(type(m) is nn.Linear for m in layers):
        return ("linear" if len({m.bias is None for m in layers}) == 1 else None), []
    parts = [_lora_parts(m) for m in layers]
    if all(p is not None for p in parts) and len({p[0].bias is None for p in parts}) == 1:
        return "lora", parts
    return None, []


def fusable(layers) -> str | None:
    """``"linear"`` or ``"lora"`` where :func:`project` computes ``layers`` as one, else None."""
    return _plan(layers)[0]


#: ``fuse=`` values: which layer groups :func:`project` computes as one. ``lora`` (the default):
#: LoRA layers only. Measured on an H100 (NOTES.md, session 7), fusing the plain layers of full
#: fine-tuning made 0.6B 8192 rows 1-2% slower (the weights' concatenation costs more than the
#: GEMM launches it saves there); fusing LoRA layers kept the speed and lowered the peak
#: (0.6B: 3.0 -> 2.8 GiB; 4B 16384: 16.3 -> 15.4 GiB).
FUSE_MODES = ("lora", True, False)


def _apply(x: torch.Tensor, bases, parts=(), packed=None) -> torch.Tensor:
    """:class:`_FusedLinears` over the Linear layers ``bases``, with LoRA ``parts`` (their
    :func:`_lora_parts`, factors cast to x's dtype) where given; ``packed``: the bases' weights as
    one tensor already (frozen, in x's dtype), used instead of concatenating them."""
    dt = x.dtype
    extra = tuple(p[1].to(dt) for p in parts) + tuple(p[2].to(dt) for p in parts)
    scales = tuple(float(p[3]) for p in parts)
    Ws = [packed] if packed is not None else [m.weight.to(dt) for m in bases]
    bs = [None if m.bias is None else m.bias.to(dt) for m in bases]
    bias = None if bs[0] is None else (bs[0] if len(bs) == 1 else torch.cat(bs))
    return _FusedLinears.apply(x, len(Ws), len(parts), scales, *Ws, bias, *extra)


def linear(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    """``m(x)`` in x's dtype: a plain ``nn.Linear`` whose weight is in another dtype (fp32 masters
    without FSDP2's mixed precision, ``fsdp=auto`` on one GPU) with its weight cast where used, and
    a vanilla peft LoRA layer whose factors are not in x's dtype (adapters kept out of FSDP2,
    ``adapter.replicate``) by :class:`_FusedLinears` with the factors cast, the bf16 compute FSDP2
    gives them otherwise (peft would cast x to fp32 and save that copy for backward)."""
    if type(m) is nn.Linear:
        if m.weight.dtype == x.dtype:
            return m(x)
        return F.linear(x, m.weight.to(x.dtype), None if m.bias is None else m.bias.to(x.dtype))
    parts = _lora_parts(m)
    if parts is None or parts[1].dtype == x.dtype:
        return m(x)
    return _apply(x, [parts[0]], [parts])


def project(x: torch.Tensor, layers, fuse="lora", packed=None) -> list[torch.Tensor]:
    """Each layer applied to ``x`` (outputs are views of one tensor where fused). ``fuse``: one of
    :data:`FUSE_MODES` (True: plain and LoRA layers alike). ``packed``: the LoRA layers' frozen base
    weights as one tensor whose rows their weights view (:func:`pack_frozen_bases`), or None."""
    kind, parts = _plan(layers) if fuse else (None, [])
    if kind is None or (fuse == "lora" and kind == "linear"):
        return [linear(x, m) for m in layers]
    bases = layers if kind == "linear" else [p[0] for p in parts]
    y = _apply(x, bases, parts if kind == "lora" else (),
               packed if kind == "lora" and packed is not None and packed.dtype == x.dtype else None)
    return list(y.split([m.weight.shape[0] for m in bases], -1))


#: the groups of layers that read one input, per module class name: what :func:`project` fuses
PACKED_GROUPS = {"Attention": ("q_proj", "k_proj", "v_proj"), "MLP": ("gate_proj", "up_proj")}


def pack_frozen_bases(model: nn.Module) -> int:
    """Give each fused group of LoRA layers (q/k/v, gate/up) one tensor holding their frozen base
    weights, which the layers' weights then view (no memory added: the separate weights are freed):
    :func:`project` multiplies by it instead of concatenating the weights at every forward,
    recompute and backward (4B: 131 MB a block, three times a micro-batch with recompute). Only
    for frozen, unsharded bases of one dtype without biases; the state dict is unchanged (the
    buffer is not persistent). Returns how many groups were packed."""
    packed = 0
    for m in model.modules():
        names = PACKED_GROUPS.get(type(m).__name__)
        if not names or not all(hasattr(m, k) for k in names) or getattr(m, "fuse", False) is False:
            continue
        kind, parts = _plan([getattr(m, k) for k in names])
        if kind != "lora":
            continue
        bases = [p[0] for p in parts]
        ws = [b.weight for b in bases]
        if any(w.requires_grad or type(w.data) is not torch.Tensor or w.is_meta for w in ws) \
                or len({(w.dtype, w.device, w.shape[1]) for w in ws}) != 1 or any(b.bias is not None for b in bases):
            continue
        whole = torch.cat([w.detach() for w in ws])
        o = 0
        for b, w in zip(bases, ws):
            b.weight = nn.Parameter(whole[o:o + w.shape[0]], requires_grad=False)
            o += w.shape[0]
        m.register_buffer("packed_base", whole, persistent=False)
        packed += 1
    return packed
