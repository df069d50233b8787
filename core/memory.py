"""Predict a row's peak GPU memory and pinned host memory from its plugins' declarations.

A coarse model (weights, gradients, optimizer state, what the activation strategy keeps, one
block's live activations, the log-prob head's chunk) meant to refuse rows that cannot fit, not to
replace measurement: every row stores the prediction next to the measured peak. The terms that
depend on a plugin come from the plugin (:mod:`core.contracts`): the activation strategy's saved
and host bytes, the adapter's trainable parameters and frozen dtype, the attention kernel's K/V
layout. Nothing here knows a plugin by its name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from core.contracts import Shape
from core.models.common import ModelArgs

GIB = 2**30


def param_count(a: ModelArgs) -> int:
    """Parameters of a model of ``a``: every block (its two norms, q/k norms, attention projections
    and biases, MLP or experts with router and shared experts), the final norm, the embedding and
    an untied head. A family that read its model's module tree gives the exact count (``n_params``)."""
    if a.n_params is not None:
        return int(a.n_params)
    qkv = (a.n_heads + 2 * a.n_kv_heads) * a.head_dim
    attn = a.dim * a.head_dim * (2 * a.n_heads + 2 * a.n_kv_heads) + 2 * a.dim
    attn += (2 * a.head_dim if a.qk_norm else 0) + (qkv if a.attn_bias else 0)
    per_layer = []
    for i in range(a.n_layers):
        if a.is_moe_layer(i):
            mlp = a.n_experts * 3 * a.moe_ffn_dim * a.dim + a.n_experts * a.dim
            mlp += a.n_shared_experts * 3 * a.moe_ffn_dim * a.dim
        else:
            mlp = 3 * a.ffn_dim * a.dim
        per_layer.append(attn + mlp)
    return sum(per_layer) + a.dim + embedding_params(a)


def embedding_params(a: ModelArgs) -> int:
    """The embedding and (untied) LM head parameters."""
    return a.vocab_size * a.dim * (1 if a.tied_embeddings else 2)


def lora_params(a: ModelArgs, rank: int, experts: bool = True, targets=None) -> int:
    """LoRA factors of rank ``rank`` on q/k/v/o and gate/up/down (a shared expert's too, and each
    routed expert's unless ``experts`` is False). From the module tree's targets where the family
    read them (``lora_dims``, ``expert_dims``)."""
    if a.lora_dims is not None:
        linear = sum(n for name, n in a.lora_dims if targets is None or name in targets)
        return rank * (linear + (sum(n for _, n in a.expert_dims or ()) if experts else 0))
    def on(*names) -> int:  # how many of these layers LoRA adapts (``targets``: the names it adapts)
        return sum(1 for n in names if targets is None or n in targets)

    q, kv = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    attn = rank * (on("q_proj") * (a.dim + q) + on("k_proj", "v_proj") * (a.dim + kv) + on("o_proj") * (q + a.dim))
    total = 0
    for i in range(a.n_layers):
        if a.is_moe_layer(i):
            mlp = a.n_experts * rank * 3 * (a.dim + a.moe_ffn_dim) if experts else 0
            if a.n_shared_experts:
                mlp += rank * on("gate_proj", "up_proj", "down_proj") * (a.dim + a.moe_ffn_dim * a.n_shared_experts)
        else:
            mlp = rank * on("gate_proj", "up_proj", "down_proj") * (a.dim + a.ffn_dim)
        total += attn + mlp
    return total


def live_block_bytes(a: ModelArgs, T: int, kv_repeated: bool = False) -> float:
    """One block's bf16 activations during its forward and backward (``kv_repeated``: the kernel
    also holds K, V and their gradients at the query head count)."""
    ffn = a.moe_ffn_dim * a.top_k if a.n_experts else a.ffn_dim
    qkv = (a.n_heads + 2 * a.n_kv_heads) * a.head_dim
    live = 2 * T * (6 * a.dim + 2 * qkv + 2 * a.n_heads * a.head_dim + 4 * ffn)
    if kv_repeated:
        live += 2 * T * 4 * (a.n_heads - a.n_kv_heads) * a.head_dim
    return live


def shape(a: ModelArgs, seq_len: int, kv_repeated: bool = False) -> Shape:
    """What an activation strategy is told of a row to declare its memory."""
    return Shape(a, seq_len, 2.0 * seq_len * a.dim, live_block_bytes(a, seq_len, kv_repeated), kv_repeated)


#: LoRA rows whose checkpoint sits inside a compiled block (``compile=true`` with an activation
#: strategy that declares ``checkpoint_in_block``): their peak was higher than with eager recompute
#: around the compiled block by 0.4-0.65 of a live block with one GEMM per LoRA layer
#: (``fuse=false``; H100: 0.6B/8192 +0.19 GiB, 0.6B/16384 +0.46, 4B/16384 +1.49; full fine-tuning
#: within 0.2 GiB, its peak being elsewhere), and by 0.26 with q/k/v and gate/up fused (``fuse=lora``,
#: the default: 4B/16384 15.4 GiB vs 14.8 around and 16.3 unfused). Empirical: what torch.compile's
#: partitioner keeps is not derived here; tests/test_memory.py pins the model to every committed row.
COMPILED_LORA_EXTRA = 0.65
COMPILED_LORA_EXTRA_FUSED = 0.26


@dataclass(frozen=True)
class Layout:
    """How a row runs, beyond its plugins, where that changes its peak: the checkpoint inside a
    compiled block, K/V repeated by the attention kernel, fused LoRA projections, adapters whole on
    every rank, and the model run without FSDP2 on one GPU."""

    inside_compiled: bool = False
    kv_repeated: bool = False
    lora_fused: bool = False
    lora_replicated: bool = False
    unwrapped: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _fuse_on(fuse) -> bool:
    """Whether the ``fuse=`` option fuses the adapted layers (its values: adapters only, True, False)."""
    return fuse is True or (isinstance(fuse, str) and fuse.lower() not in ("false", "none"))


def layout_of(config: dict, ac, adapter, family, attn_provider: str = "", wrapped: bool | None = None) -> Layout:
    """The layout of a row (``config``: its composed or stored config as a dict) with its plugins
    ``ac`` and ``adapter`` and its model family (None: a family that casts weights and fuses
    projections, as the built-in native ones). ``wrapped``: whether FSDP2 wrapped the row's model
    (its recorded ``fsdp``); None: as :func:`core.trainer.needs_fsdp` decides at world size 1 now
    (rows from before ``fsdp=`` existed ran FSDP2)."""
    casts = getattr(family, "casts_weights", True)
    fuses = getattr(family, "fuses_projections", True)
    if wrapped is None:
        free = not adapter.frozen_base or (adapter.replicate in ("auto", True) and adapter.replicable)
        wrapped = not (config.get("fsdp") == "auto" and casts and free)
    return Layout(inside_compiled=bool(config.get("compile")) and bool(getattr(ac, "checkpoint_in_block", False)),
                  kv_repeated="K/V repeated" in (attn_provider or ""),
                  lora_fused=_fuse_on(config.get("fuse", False)) and fuses,
                  lora_replicated=adapter.replicate is True and adapter.replicable and casts,
                  unwrapped=not wrapped)


def peak_terms(a: ModelArgs, seq_len: int, adapter, ac, world: int = 1, head_budget_mib: int = 512,
               layout: Layout = Layout()) -> dict[str, float]:
    """The peak GPU memory of one rank (of ``world`` under FSDP2), term by term, in bytes.

    states: parameters, gradients and Adam moments, sharded over the ranks (fp32 masters of what
    trains, with fp32 gradients and two moments: 16 bytes each; a frozen base in the adapter's
    ``param_dtype``); blocks in flight: bf16 copies of three blocks (the one running, the
    prefetched one, the one being reduced); root: the embedding and LM head that FSDP2 keeps
    gathered (bf16) for the whole step (a frozen base's weights are used in place on one GPU);
    saved: what the activation strategy declares it keeps (:meth:`ActivationMemory.saved_bytes`);
    live block: one block's activations during its forward/backward; head: the log-prob head's
    chunk budget and its fp32 hidden-state buffers. ``layout.inside_compiled`` with a frozen base
    adds :data:`COMPILED_LORA_EXTRA` (fused: :data:`COMPILED_LORA_EXTRA_FUSED`) of a live block.
    ``layout.unwrapped``: one GPU without FSDP2 (``fsdp=auto``): no unsharded blocks in flight and
    no gathered root."""
    import torch

    n = param_count(a)
    frozen = adapter.frozen_base
    trained = adapter.trainable_params(a)
    itemsize = torch.empty((), dtype=adapter.param_dtype).element_size() if frozen else 0
    states = itemsize * n / world + 16 * trained / (1 if (frozen and layout.lora_replicated) else world)
    sh = shape(a, seq_len, layout.kv_repeated)
    T, live_block = seq_len, sh.live_block_bytes
    saved = float(ac.saved_bytes(sh))
    head = head_budget_mib * 2**20 + T * a.dim * 4 * 2
    frac = COMPILED_LORA_EXTRA_FUSED if layout.lora_fused else COMPILED_LORA_EXTRA
    extra = frac * live_block if (layout.inside_compiled and frozen) else 0.0
    if layout.unwrapped and world == 1 and not frozen:
        # measured without FSDP2 (H100, eef2e08): 0.6B full 8192 10.7 GiB, 16384 11.5 (FSDP2: 11.2, 12.1).
        # Without recompute each layer saves its weight's bf16 cast for backward (FSDP2 would unshard again)
        if not ac.recompute.blocks:
            saved += 2 * (n - embedding_params(a))
        return {"states": states, "blocks_in_flight": 0.0, "root_gathered": 2 * a.vocab_size * a.dim,
                "saved_activations": saved, "live_block": live_block, "head": head, "compiled_lora_extra": extra}
    if layout.unwrapped and world == 1:
        # no FSDP2: no unsharded blocks, and the head's logits and a block's backward do not meet at
        # the peak (the head runs before the blocks' backward; only its fp32 hidden-state buffers
        # stay). Under FSDP2 the sum of both was what fitted: its world-1 extras that the model does
        # not name (a root copy of the embedding, unshard buffers) filled that overlap. Measured
        # without FSDP2 (H100, 9b78c6a): 0.6B LoRA 8192 2.40 GiB, 16384 3.46, 4B 16384 14.34.
        live = live_block + extra + T * a.dim * 4 * 2
        return {"states": states, "blocks_in_flight": 0.0, "root_gathered": 0.0, "saved_activations": saved,
                "live_block": max(live, head) - head, "head": head, "compiled_lora_extra": 0.0}
    root = 0.0 if (frozen and world == 1) else 2 * embedding_params(a)
    return {"states": states, "blocks_in_flight": 3 * 2 * (n / a.n_layers), "root_gathered": root,
            "saved_activations": saved, "live_block": live_block, "head": head, "compiled_lora_extra": extra}


def expected_peak_gib(a: ModelArgs, seq_len: int, adapter, ac, world: int = 1, head_budget_mib: int = 512,
                      layout: Layout = Layout()) -> float:
    """The predicted peak (GiB) without a safety margin: what ``core.predict`` reports."""
    return sum(peak_terms(a, seq_len, adapter, ac, world, head_budget_mib, layout).values()) / GIB


#: the refusal's margin over the expected peak: allocator fragmentation, workspaces, and the
#: spread of measured peaks between runs of one row
REFUSAL_FACTOR, REFUSAL_SLACK_GIB = 1.1, 1.0


def predict_peak_gib(a: ModelArgs, seq_len: int, adapter, ac, world: int = 1, head_budget_mib: int = 512,
                     layout: Layout = Layout()) -> float:
    """Peak GPU memory (GiB) of one rank that a row is refused above: the expected peak with a
    margin, so that a row that fits is never refused for the predictor's error."""
    return expected_peak_gib(a, seq_len, adapter, ac, world, head_budget_mib, layout) * REFUSAL_FACTOR \
        + REFUSAL_SLACK_GIB


def predict_host_gib(a: ModelArgs, seq_len: int, ac, kv_repeated: bool = False) -> float:
    """Pinned host memory (GiB) the activation strategy declares for this row."""
    return float(ac.host_bytes(shape(a, seq_len, kv_repeated))) / GIB


def host_available_gib() -> float | None:
    """MemAvailable of this machine (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        return None
    return None
