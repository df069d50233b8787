"""Predict a row's peak GPU memory from its config, before anything is allocated.

A coarse model (weights, gradients, optimizer state, saved activations, one block's live
activations, the logprob head's chunk) meant to refuse rows that cannot fit, not to replace
measurement: every row stores the prediction next to the measured peak.
"""

from __future__ import annotations

from core.models.common import ModelArgs

GIB = 2**30


def param_count(a: ModelArgs) -> int:
    attn = a.dim * a.head_dim * (2 * a.n_heads + 2 * a.n_kv_heads) + 2 * a.dim
    per_layer = []
    for i in range(a.n_layers):
        if a.is_moe_layer(i):
            mlp = a.n_experts * 3 * a.moe_ffn_dim * a.dim + a.n_experts * a.dim
            mlp += a.n_shared_experts * 3 * a.moe_ffn_dim * a.dim
        else:
            mlp = 3 * a.ffn_dim * a.dim
        per_layer.append(attn + mlp)
    emb = a.vocab_size * a.dim * (1 if a.tied_embeddings else 2)
    return sum(per_layer) + emb


def lora_params(a: ModelArgs, rank: int) -> int:
    attn = rank * (2 * a.dim + 2 * a.n_heads * a.head_dim + 2 * (a.dim + a.n_kv_heads * a.head_dim))
    total = 0
    for i in range(a.n_layers):
        if a.is_moe_layer(i):
            mlp = a.n_experts * rank * 3 * (a.dim + a.moe_ffn_dim)
        else:
            mlp = rank * 3 * (a.dim + a.ffn_dim)
        total += attn + mlp
    return total


#: LoRA rows with the checkpoint inside a compiled block (``compile=true``, ``ac.inside=true``, the
#: default): their peak was higher than with eager recompute around the compiled block by 0.4-0.65
#: of a live block with one GEMM per LoRA layer (``fuse=false``; measured on the H100: 0.6B/8192
#: +0.19 GiB, 0.6B/16384 +0.46, 4B/16384 +1.49; full fine-tuning within 0.2 GiB, its peak being
#: elsewhere), and by 0.26 with q/k/v and gate/up fused (``fuse=lora``, the default: 4B/16384
#: 15.4 GiB vs 14.8 around and 16.3 unfused, NOTES.md session 7). Empirical, not derived: the model
#: carries the largest measured fraction of each.
COMPILED_LORA_EXTRA = 0.65
COMPILED_LORA_EXTRA_FUSED = 0.26


def row_layout(config: dict, attn_provider: str = "", wrapped: bool | None = None) -> dict:
    """The layout facts of a measured row that change its peak: the checkpoint inside a compiled
    block, K/V repeated by the attention kernel (from the row's provider string), LoRA layers fused,
    the model run without FSDP2. ``wrapped``: whether FSDP2 wrapped the row's model (its ``fsdp``
    field, recorded since fsdp= exists); None: as the config says a row would run now."""
    ac, adapter = config.get("ac") or {}, config.get("adapter") or {}
    native = (config.get("model") or {}).get("family") != "hf"  # the hf family runs transformers' layers
    lora = adapter.get("name") == "lora"
    if wrapped is None:  # core.trainer.needs_fsdp at world size 1 (rows from before fsdp= ran FSDP2)
        wrapped = not (config.get("fsdp") == "auto" and native and (not lora or (
            adapter.get("replicate", "auto") in ("auto", True) and adapter.get("experts", "grouped") != "peft")))
    return {"inside_compiled": bool(config.get("compile")) and ac.get("name") == "recompute"
            and bool(ac.get("inside", False)),
            "kv_repeated": "K/V repeated" in (attn_provider or ""),
            # native models only; rows from before fuse= existed ran one GEMM per layer
            "lora_fused": config.get("fuse", False) in ("lora", True) and native,
            # adapters whole on every rank (adapter.replicate=true; auto replicates only at world
            # size 1, where whole and sharded states are the same bytes; older rows sharded them)
            "lora_replicated": adapter.get("replicate", False) is True and native
            and adapter.get("experts", "grouped") != "peft",
            # one GPU without FSDP2 (fsdp=auto): no unsharded block copies, no gathered root
            "unwrapped": not wrapped}


def peak_terms(a: ModelArgs, seq_len: int, lora_rank: int | None, ac: str, world: int = 1,
               head_budget_mib: int = 512, mode: str = "full", kv_repeated: bool = False,
               inside_compiled: bool = False, lora_fused: bool = False,
               lora_replicated: bool = False, unwrapped: bool = False) -> dict[str, float]:
    """The peak GPU memory of one rank (of ``world`` under FSDP2), term by term, in bytes.

    states: parameters, gradients and Adam moments, sharded over the ranks (fp32 masters; LoRA: the
    frozen bf16 base and the fp32 adapters with their grads and moments); blocks in flight:
    bf16 copies of three blocks (the one running, the prefetched one, the one being reduced);
    root: the embedding and LM head that FSDP2 keeps gathered (bf16) for the whole step (full
    fine-tuning; frozen bf16 weights are used as they are on one GPU); saved: what the activation
    strategy keeps for backward (every block's input, the last two with offload; with
    ``mode="selective"`` also each layer's attention output and log-sum-exp); live block: one
    block's activations during its forward/backward; head: the log-prob head's chunk budget and
    its fp32 hidden-state buffers. ``kv_repeated``: the kernel needs K and V at the full head count
    (the vendored FA2 path), so the live block also holds the repeated K, V and their gradients.
    ``inside_compiled``: the checkpoint sits inside a compiled block; with LoRA and recompute that
    adds :data:`COMPILED_LORA_EXTRA` of a live block, :data:`COMPILED_LORA_EXTRA_FUSED` with
    ``lora_fused`` (measured, not derived). ``lora_replicated``: the adapters' states are whole on
    every rank (adapter.replicate), not sharded. ``unwrapped``: a row that runs without FSDP2 on one
    GPU (``fsdp=auto``, :func:`core.trainer.needs_fsdp`): no unsharded block copies in flight (LoRA's
    blocks use the frozen weights in place; full fine-tuning's layers cast their fp32 masters where
    used, one block's weights at a time) and no gathered root (full fine-tuning: only the head's bf16
    copy of its weight, saved from the head's forward to its backward)."""
    n = param_count(a)
    if lora_rank:
        adapters = 16 * lora_params(a, lora_rank)
        states = 2 * n / world + (adapters if lora_replicated else adapters / world)
    else:
        states = 16 * n / world
    block_unsharded = 2 * n / a.n_layers
    gathered_root = 0.0 if (lora_rank and world == 1) else 2 * a.vocab_size * a.dim * (1 if a.tied_embeddings else 2)
    T, h = seq_len, a.dim
    ffn = a.moe_ffn_dim * a.top_k if a.n_experts else a.ffn_dim
    qkv = (a.n_heads + 2 * a.n_kv_heads) * a.head_dim
    live_block = 2 * T * (6 * h + 2 * qkv + 2 * a.n_heads * a.head_dim + 4 * ffn)  # bf16 activations
    if kv_repeated:
        live_block += 2 * T * 4 * (a.n_heads - a.n_kv_heads) * a.head_dim  # K, V, dK, dV repeated
    if ac == "none":
        saved = a.n_layers * live_block
    elif ac == "offload":
        saved = 2 * 2 * T * h
    else:
        saved = a.n_layers * 2 * T * h
    if ac != "none" and mode == "selective":
        saved += a.n_layers * T * (2 * a.n_heads * a.head_dim + 4 * a.n_heads)
    head = head_budget_mib * 2**20 + T * h * 4 * 2
    frac = COMPILED_LORA_EXTRA_FUSED if lora_fused else COMPILED_LORA_EXTRA
    extra = frac * live_block if (inside_compiled and lora_rank and ac == "recompute") else 0.0
    if unwrapped and world == 1 and not lora_rank:
        # measured without FSDP2 (H100, eef2e08): 0.6B full 8192 10.7 GiB, 16384 11.5 (FSDP2: 11.2, 12.1).
        # Without AC each layer saves its weight's bf16 cast for backward (FSDP2 would unshard again)
        if ac == "none":
            saved += 2 * (n - a.vocab_size * a.dim * (1 if a.tied_embeddings else 2))
        return {"states": states, "blocks_in_flight": 0.0, "root_gathered": 2 * a.vocab_size * a.dim,
                "saved_activations": saved, "live_block": live_block, "head": head, "compiled_lora_extra": extra}
    if unwrapped and world == 1:
        # no FSDP2: no unsharded blocks, and the head's logits and a block's backward do not meet at
        # the peak (the head runs before the blocks' backward; only its fp32 hidden-state buffers
        # stay). Under FSDP2 the sum of both was what fitted: its world-1 extras that the model does
        # not name (a root copy of the embedding, unshard buffers: 0.26-0.28 GiB more than the
        # blocks term in the one-call A/B of session 11) filled that overlap. Measured without FSDP2
        # (H100, 9b78c6a): 0.6B LoRA 8192 2.40 GiB, 16384 3.46, 4B 16384 14.34.
        live = live_block + extra + T * h * 4 * 2
        return {"states": states, "blocks_in_flight": 0.0, "root_gathered": 0.0, "saved_activations": saved,
                "live_block": max(live, head) - head, "head": head, "compiled_lora_extra": 0.0}
    return {"states": states, "blocks_in_flight": 3 * block_unsharded, "root_gathered": gathered_root,
            "saved_activations": saved, "live_block": live_block, "head": head, "compiled_lora_extra": extra}


def expected_peak_gib(a: ModelArgs, seq_len: int, lora_rank: int | None, ac: str, world: int = 1,
                      head_budget_mib: int = 512, mode: str = "full", kv_repeated: bool = False,
                      inside_compiled: bool = False, lora_fused: bool = False,
                      lora_replicated: bool = False, unwrapped: bool = False) -> float:
    """The predicted peak (GiB) without a safety margin: what ``core.predict`` reports."""
    return sum(peak_terms(a, seq_len, lora_rank, ac, world, head_budget_mib, mode, kv_repeated,
                          inside_compiled, lora_fused, lora_replicated, unwrapped).values()) / GIB


#: the refusal's margin over the expected peak: allocator fragmentation, workspaces, and the
#: spread of measured peaks between runs of one row
REFUSAL_FACTOR, REFUSAL_SLACK_GIB = 1.1, 1.0


def predict_peak_gib(a: ModelArgs, seq_len: int, lora_rank: int | None, ac: str, world: int = 1,
                     head_budget_mib: int = 512, mode: str = "full", kv_repeated: bool = False,
                     inside_compiled: bool = False, lora_fused: bool = False,
                     lora_replicated: bool = False, unwrapped: bool = False) -> float:
    """Peak GPU memory (GiB) of one rank that a row is refused above: the expected peak with a
    margin, so that a row that fits is never refused for the predictor's error."""
    return expected_peak_gib(a, seq_len, lora_rank, ac, world, head_budget_mib, mode, kv_repeated,
                             inside_compiled, lora_fused, lora_replicated, unwrapped) * REFUSAL_FACTOR \
        + REFUSAL_SLACK_GIB


def predict_host_gib(a: ModelArgs, seq_len: int, ac: str, mode: str = "full", keep_last: int = 1,
                     kv_repeated: bool = False) -> float:
    """Pinned host memory (GiB) that ``offload`` uses: the bf16 input of every block but the last
    ``keep_last``, and with ``mode: attention`` also what the attention kernel saves (q, k, v and
    the output in bf16, the fp32 log-sum-exp; K/V at full head count where the kernel needs them
    repeated). Exact for the kernels measured (FA3), not an estimate of fragmentation."""
    if ac != "offload":
        return 0.0
    blocks = max(a.n_layers - keep_last, 0)
    per_token = 2 * a.dim
    if mode == "attention":
        q = a.n_heads * a.head_dim
        kv = (a.n_heads if kv_repeated else a.n_kv_heads) * a.head_dim
        per_token += 2 * (2 * q + 2 * kv) + 4 * a.n_heads
    return blocks * seq_len * per_token / GIB


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
