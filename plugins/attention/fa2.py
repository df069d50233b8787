"""``fa2``: FlashAttention-2 varlen (causal, cu_seqlens).

Provider: the ``flash_attn`` package when installed (native GQA); otherwise PyTorch's vendored
FA2 kernels through ``torch.nn.attention.varlen.varlen_attn`` where this torch takes
``enable_gqa``, else through the aten op that ``varlen_attn`` wraps
(``aten._flash_attention_forward``, which has its own backward and runs GQA natively: the
kernel reads each K/V head for its group of query heads), so K/V are never repeated.
"""

from __future__ import annotations

import inspect

import torch

from core import hookimpl
from core.contracts import AttentionBackend
from plugins.attention.common import has_module, need_cuda, package_version


def supports(args) -> str | None:
    """Why FA2 cannot run this model's attention (None when it can): head dims up to 256, multiples of 8."""
    if args.head_dim > 256 or args.head_dim % 8:
        return f"FlashAttention-2 runs head_dim up to 256 in multiples of 8, the model has {args.head_dim}: use +attn=sdpa"
    return None


def flash_kwargs(features: dict, softcap: bool = True) -> dict:
    """flash-attn's keyword arguments for a model's attention features (causal included)."""
    kw = {"causal": True}
    if features.get("scale") is not None:
        kw["softmax_scale"] = features["scale"]
    if features.get("window") is not None:
        kw["window_size"] = (features["window"] - 1, 0)
    if softcap and features.get("softcap") is not None:
        kw["softcap"] = features["softcap"]
    return kw


class FA2Package(AttentionBackend):
    name, label, kernel = "fa2", "FA2", "fa2"
    repeats_kv = False
    supports = staticmethod(supports)
    features = frozenset({"scale", "window", "softcap"})

    def __init__(self):
        from flash_attn import flash_attn_varlen_func

        self.fn = flash_attn_varlen_func
        self.provider = f"flash_attn {package_version('flash_attn', 'flash-attn')}"

    def __call__(self, q, k, v, meta, **features):
        m = meta.max_seqlen
        return self.fn(q, k, v, meta.cu_seqlens, meta.cu_seqlens, m, m, **flash_kwargs(features))


class FA2Torch(AttentionBackend):
    name, label, kernel = "fa2", "FA2", "fa2"
    supports = staticmethod(supports)
    features = frozenset({"scale", "window"})  # torch's vendored FA2 has no soft-capping

    def __init__(self, via_aten: bool | None = None):
        from torch.nn.attention.varlen import varlen_attn

        self.fn = varlen_attn
        params = inspect.signature(varlen_attn).parameters
        self.native_gqa = "enable_gqa" in params
        self.kw = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
        self.via_aten = (not self.native_gqa and has_aten_flash()) if via_aten is None else via_aten
        self.repeats_kv = not (self.via_aten or self.native_gqa)
        if self.via_aten:
            self.provider = f"torch {torch.__version__} aten._flash_attention_forward (vendored FA2, native GQA)"
        else:
            gqa = "K/V repeated" if self.repeats_kv else "native GQA"
            self.provider = f"torch {torch.__version__} varlen_attn (vendored FA2, {gqa})"

    def __call__(self, q, k, v, meta, **features):
        m = meta.max_seqlen
        scale, window = features.get("scale"), features.get("window")
        if self.via_aten:
            extra = {"window_size_left": window - 1, "window_size_right": 0} if window is not None else {}
            return torch.ops.aten._flash_attention_forward(
                q, k, v, meta.cu_seqlens, meta.cu_seqlens, m, m, 0.0, True, False, scale=scale, **extra)[0]
        kw = dict(self.kw)
        if scale is not None:
            kw["scale"] = scale
        if window is not None:
            kw.pop("is_causal", None)
            kw["window_size"] = (window - 1, 0)
        if k.shape[1] != q.shape[1]:
            if self.repeats_kv:
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            else:
                kw["enable_gqa"] = True
        return self.fn(q, k, v, meta.cu_seqlens, meta.cu_seqlens, m, m, **kw)


def has_aten_flash() -> bool:
    """Whether this torch has the vendored FA2 op with a backward (what ``varlen_attn`` calls)."""
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    return op is not None and torch._C._dispatch_has_kernel_for_dispatch_key("aten::_flash_attention_forward",
                                                                             "Autograd")


VIA = {"auto": None, "aten": True, "varlen": False}


def make(options, ctx):
    via = options.get("via", "auto")
    if via not in VIA:
        raise ValueError(f"attn.via={via} is not one of {', '.join(VIA)}: try attn.via=auto")
    if has_module("flash_attn"):
        return FA2Package()
    if via == "aten" and not has_aten_flash():
        raise ValueError(f"attn.via=aten needs aten._flash_attention_forward, which torch {torch.__version__} "
                         "lacks: use attn.via=auto")
    return FA2Torch(via_aten=VIA[via])


def why_not(ctx):
    if ctx.device != "cuda":
        return need_cuda(ctx)
    if ctx.capability and ctx.capability < (8, 0):
        return "FlashAttention-2 needs an SM80+ GPU; use +attn=sdpa"
    if not ctx.installed:  # a profile predicted for: what is installed here does not count
        return None
    if not has_module("flash_attn") and not has_module("torch.nn.attention.varlen"):
        return "FA2 needs the flash_attn package or torch>=2.10 (torch.nn.attention.varlen)"
    return None


@hookimpl
def stepbench_register_attention(register):
    register("fa2", make, why_not, doc="FlashAttention-2 varlen (flash_attn package, else torch's vendored FA2)")
