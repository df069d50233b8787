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


def predict_peak_gib(a: ModelArgs, seq_len: int, lora_rank: int | None, ac: str, world: int = 1,
                     head_budget_mib: int = 512, mode: str = "full") -> float:
    """Predicted peak GPU memory (GiB) of one rank. ``mode="selective"`` (recompute or offload)
    also keeps every layer's attention output (bf16) and log-sum-exp (fp32) on the GPU."""
    n = param_count(a)
    if lora_rank:
        states = 2 * n / world + 16 * lora_params(a, lora_rank)  # bf16 frozen + fp32 adapters, grads, Adam
    else:
        states = 16 * n / world  # fp32 master, fp32 grad, two Adam moments
    block_unsharded = 2 * n / a.n_layers  # one block gathered in bf16
    T, h = seq_len, a.dim
    ffn = a.moe_ffn_dim * a.top_k if a.n_experts else a.ffn_dim
    qkv = (a.n_heads + 2 * a.n_kv_heads) * a.head_dim
    live_block = 2 * T * (6 * h + 2 * qkv + 2 * a.n_heads * a.head_dim + 4 * ffn)  # bf16 activations
    if ac == "none":
        saved = a.n_layers * live_block
    elif ac == "offload":
        saved = 2 * 2 * T * h
    else:
        saved = a.n_layers * 2 * T * h
    if ac != "none" and mode == "selective":
        saved += a.n_layers * T * (2 * a.n_heads * a.head_dim + 4 * a.n_heads)
    head = head_budget_mib * 2**20 * 1.5 + T * h * 4 * 2
    return (states + 3 * block_unsharded + saved + live_block + head) / GIB * 1.1 + 1.0


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
