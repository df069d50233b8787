"""Building blocks shared by every model family: RMSNorm, RoPE, attention, SwiGLU, the causal LM.

Module and parameter names follow Hugging Face's Qwen3/GLM naming (``self_attn.q_proj``,
``mlp.gate_proj``, ...), so adapters can target them by the usual names. Tensors are packed:
``[total_tokens, hidden]`` with no batch dimension; documents are separated by ``AttnMeta``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from core.data import AttnMeta
from core.kernels import kernels_of, rope
from core.losses import chunked_logprobs
from core.models.fused import linear, project


@dataclass
class ModelArgs:
    """Hyper-parameters of one model flavour (every field has a default)."""

    name: str = "tiny"
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    vocab_size: int = 256
    ffn_dim: int = 128  # dense MLP intermediate size
    tied_embeddings: bool = True
    rope_theta: float = 1e6
    partial_rotary: float = 1.0
    qk_norm: bool = True
    attn_bias: bool = False
    norm_eps: float = 1e-6
    # mixture of experts (n_experts == 0: dense)
    n_experts: int = 0
    top_k: int = 0
    moe_ffn_dim: int = 0
    n_shared_experts: int = 0
    first_dense_layers: int = 0
    router: str = "softmax"  # "softmax" (Qwen3-MoE) or "sigmoid" (GLM-4.5, with correction bias)
    norm_topk: bool = True
    routed_scaling: float = 1.0
    hf_name: str = ""  # the published model this flavour stands for
    #: a Hugging Face config (``config.json`` fields) for families that build ``transformers`` models
    hf_config: dict | None = field(default=None, compare=False, repr=False)
    # facts a family built from a config reads off its module tree (``plugins/models/hf.py``); where
    # None, FLOPs, memory and LoRA sizes come from the fields above (the native families' layout)
    #: per layer, the matmul weights one token goes through (routed experts counted top_k / n_experts)
    layer_mm_params: tuple | None = None
    #: per layer, its sliding window (0: full causal attention)
    windows: tuple | None = None
    #: the features of :data:`core.contracts.ATTN_FEATURES` the model's attention needs
    attn_features: tuple = ()
    #: every parameter of the built model (tied weights once)
    n_params: int | None = None
    #: LoRA targets: ``((leaf name, sum over the layers of in + out features), ...)`` of the linear
    #: layers, and ``((parameter name, sum of experts * (in + out)), ...)`` of 3-D expert weights
    lora_dims: tuple | None = None
    expert_dims: tuple | None = None

    def is_moe_layer(self, i: int) -> bool:
        return self.n_experts > 0 and i >= self.first_dense_layers

    def with_(self, **kw) -> "ModelArgs":
        return replace(self, **kw)


def attention_modules(model: nn.Module):
    """The attention layers of a model whose ``backend`` stepbench binds: the native
    :class:`Attention` and any module marked ``stepbench_attention = True`` (other families)."""
    return [m for m in model.modules() if isinstance(m, Attention) or getattr(m, "stepbench_attention", False)]


class RMSNorm(nn.Module):
    kernels = None  # a kernels provider, bound by the trainer (core.trainer.bind_kernels); None: PyTorch ops

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return kernels_of(self).rms_norm(x, self.weight.to(x.dtype), self.eps)

    def add(self, x, residual):
        """``(norm(x + residual), x + residual)``: the residual add before this norm, fused where the
        provider fuses it (``add_rms_norm``)."""
        return kernels_of(self).add_rms_norm(x, residual, self.weight.to(x.dtype), self.eps)


def rope_inv_freq(rot: int, theta: float, device) -> torch.Tensor:
    """The default RoPE's inverse frequencies (fp32) for ``rot`` rotated dims."""
    half = rot // 2
    return 1.0 / (theta ** (torch.arange(0, half, device=device, dtype=torch.float32) / half))


class Rotary(nn.Module):
    """RoPE tables for the rotated part of each head (``partial_rotary`` of head_dim)."""

    def __init__(self, head_dim: int, theta: float, partial: float):
        super().__init__()
        self.rot = int(head_dim * partial)
        self.theta = theta

    def forward(self, position_ids: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = rope_inv_freq(self.rot, self.theta, position_ids.device)
        freqs = position_ids.float()[:, None] * inv_freq[None]
        emb = torch.cat([freqs, freqs], -1)[:, None, :]  # [T, 1, rot]
        return emb.cos().to(dtype), emb.sin().to(dtype)


apply_rotary = rope  # rotate the first cos.shape[-1] features of each head (rotate-half convention)


class Attention(nn.Module):
    kernels = None  # RoPE's provider (see RMSNorm.kernels)
    #: q, k and v as one GEMM (:func:`core.models.fused.project`, one of its FUSE_MODES); the
    #: trainer sets it per row (fuse=)
    fuse = "lora"

    def __init__(self, a: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = a.n_heads, a.n_kv_heads, a.head_dim
        self.q_proj = nn.Linear(a.dim, a.n_heads * a.head_dim, bias=a.attn_bias)
        self.k_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=a.attn_bias)
        self.v_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=a.attn_bias)
        self.o_proj = nn.Linear(a.n_heads * a.head_dim, a.dim, bias=False)
        self.q_norm = RMSNorm(a.head_dim, a.norm_eps) if a.qk_norm else None
        self.k_norm = RMSNorm(a.head_dim, a.norm_eps) if a.qk_norm else None
        self.backend = None  # bound by the trainer (core.trainer.bind_attention)

    def forward(self, x, rope, meta: AttnMeta):
        T = x.shape[0]
        q, k, v = project(x, (self.q_proj, self.k_proj, self.v_proj), self.fuse, getattr(self, "packed_base", None))
        q, k, v = q.view(T, self.n_heads, self.hd), k.view(T, self.n_kv, self.hd), v.view(T, self.n_kv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope
        kern = kernels_of(self)
        q, k = kern.rope(q, cos, sin), kern.rope(k, cos, sin)
        o = self.backend(q, k, v, meta)
        return linear(o.reshape(T, self.n_heads * self.hd), self.o_proj)


class MLP(nn.Module):
    fuse = "lora"  # gate and up as one GEMM (see Attention.fuse)
    kernels = None  # SwiGLU's provider (see RMSNorm.kernels)

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        g, u = project(x, (self.gate_proj, self.up_proj), self.fuse, getattr(self, "packed_base", None))
        return linear(kernels_of(self).swiglu(g, u), self.down_proj)


class Block(nn.Module):
    def __init__(self, a: ModelArgs, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(a.dim, a.norm_eps)
        self.self_attn = Attention(a)
        self.post_attention_layernorm = RMSNorm(a.dim, a.norm_eps)
        if a.is_moe_layer(layer):
            from core.models.moe import MoE

            self.mlp = MoE(a)
        else:
            self.mlp = MLP(a.dim, a.ffn_dim)

    def forward(self, x, rope, meta):
        y, h = self.post_attention_layernorm.add(self.self_attn(self.input_layernorm(x), rope, meta), x)
        return h + self.mlp(y)


def run_block(block: nn.Module, x, rope, meta):
    """The default block runner: no checkpointing."""
    return block(x, rope, meta)


class CausalLM(nn.Module):
    """Decoder-only LM whose forward returns per-token target log-probabilities and entropies."""

    #: its layers compute peft LoRA factors in the activations' dtype whatever the factors' dtype
    #: (:func:`core.models.fused.linear`), so the adapters may stay out of FSDP2 (adapter.replicate)
    casts_adapters = True
    #: its layers cast every weight to the activations' dtype where used (:func:`core.models.fused.linear`,
    #: RMSNorm, the head, the MoE experts), so fp32 master weights can run without FSDP2's mixed
    #: precision on one GPU (``fsdp=auto``); the trainer sets :attr:`compute_dtype` (bf16), the
    #: activations' dtype from the embedding on (None: the embedding's own dtype)
    casts_weights = True
    compute_dtype = None

    def __init__(self, a: ModelArgs):
        super().__init__()
        self.args = a
        self.embed_tokens = nn.Embedding(a.vocab_size, a.dim)
        self.rotary = Rotary(a.head_dim, a.rope_theta, a.partial_rotary)
        self.layers = nn.ModuleList(Block(a, i) for i in range(a.n_layers))
        self.norm = RMSNorm(a.dim, a.norm_eps)
        self.lm_head = None if a.tied_embeddings else nn.Linear(a.dim, a.vocab_size, bias=False)
        self.block_runner = run_block  # replaced by an activation-memory strategy
        self.head_budget_mib = 512
        self.head_compiled = False  # compile=true: the head's per-chunk work compiled too

    def head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, input_ids, position_ids, meta: AttnMeta):
        h = self.embed_tokens(input_ids)
        if self.compute_dtype is not None:  # fp32 masters without FSDP2: the gathered rows, cast
            h = h.to(self.compute_dtype)
        rope = self.rotary(position_ids, h.dtype)
        for block in self.layers:
            h = self.block_runner(block, h, rope, meta)
        return self.norm(h)

    def forward(self, input_ids, position_ids, meta: AttnMeta, targets):
        h = self.hidden_states(input_ids, position_ids, meta)
        w = self.head_weight()
        return chunked_logprobs(h, w.to(h.dtype), targets, self.head_budget_mib, self.head_compiled)
