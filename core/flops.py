"""FLOP counts: prime-rl's MFU formula (for comparability) and the exact hardware FLOPs.

prime-rl (its ``perf.py``): flops/token = 6*N_mm + 12*L*n_heads*(hidden // n_heads)*seq_len for
full fine-tuning, and 4*N_mm + 2*N_fully_trainable + 6*N_adapter + the same attention term with
an adapter. N_mm counts the attention projections (real head_dim), the dense MLP or the active
routed experts plus the router, and the LM head (also when tied), not the embedding. Like
prime-rl, shared experts are not counted (its check looks for ``num_shared_experts``, a field
GLM-4.5's config does not have). MFU = flops/token * TPS / peak / num_gpus.

The exact count instead follows what runs: causal attention over each document (half the
square), shared experts, backward dX/dW only where gradients are needed, recomputation by the
activation strategy and by the chunked LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.contracts import RecomputeFacts
from core.models.common import ModelArgs


def attn_proj_params(a: ModelArgs) -> int:
    return a.n_layers * a.dim * a.head_dim * (2 * a.n_heads + 2 * a.n_kv_heads)


def mlp_params(a: ModelArgs, count_shared: bool) -> int:
    dense = sum(3 * a.ffn_dim * a.dim for i in range(a.n_layers) if not a.is_moe_layer(i))
    n_moe = sum(1 for i in range(a.n_layers) if a.is_moe_layer(i))
    routed = n_moe * (a.top_k * 3 * a.moe_ffn_dim * a.dim + a.n_experts * a.dim)
    shared = n_moe * a.n_shared_experts * 3 * a.moe_ffn_dim * a.dim if count_shared else 0
    return dense + routed + shared


def block_mm_params(a: ModelArgs, count_shared: bool) -> int:
    """Matmul weights one token goes through in the blocks: read off the module tree where the
    family did (``layer_mm_params``: every linear and expert weight, shared experts included), else
    the attention projections and the MLP or active experts of the native layout."""
    if a.layer_mm_params is not None:
        return int(sum(a.layer_mm_params))
    return attn_proj_params(a) + mlp_params(a, count_shared)


def active_mm_params(a: ModelArgs, count_shared: bool = False) -> int:
    """Parameters per token in matmuls (prime-rl's N_mm when ``count_shared`` is False)."""
    return block_mm_params(a, count_shared) + a.vocab_size * a.dim


def attended_pairs(s: int, window: int = 0) -> float:
    """(query, key) pairs of causal attention over one document of ``s`` tokens, each query seeing
    at most ``window`` keys (itself included) where ``window`` is set."""
    if not window or window >= s:
        return s * (s + 1) / 2
    return window * (window + 1) / 2 + (s - window) * window


def attention_pairs(a: ModelArgs, doc_lens: list[int]) -> float:
    """(query, key) pairs summed over the layers (each layer's sliding window where it has one)."""
    windows = a.windows or (0,) * a.n_layers
    return sum(attended_pairs(s, w) for w in windows for s in doc_lens)


def prime_rl_flops_per_token(a: ModelArgs, seq_len: int, adapter_params: int = 0,
                             fully_trainable: int | None = None, frozen_base: bool = False) -> float:
    """prime-rl's flops/token used for its MFU column (its adapter formula where the base is frozen)."""
    attn = 12 * a.n_layers * a.n_heads * (a.dim // a.n_heads) * seq_len
    n_mm = active_mm_params(a)
    if not frozen_base:
        return 6 * n_mm + attn
    return 4 * n_mm + 2 * (fully_trainable or 0) + 6 * adapter_params + attn


def mfu(flops_per_token: float, tps: float, peak_flops: float, num_gpus: int = 1) -> float:
    """MFU in percent, prime-rl's definition (TPS counts the tokens of all GPUs)."""
    return 100.0 * flops_per_token * tps / peak_flops / num_gpus


@dataclass
class StepFlops:
    """FLOPs of one micro-batch, split into matmul and attention, useful and as executed."""

    mm_useful: float
    attn_useful: float
    mm_executed: float
    attn_executed: float

    @property
    def useful(self) -> float:
        return self.mm_useful + self.attn_useful

    @property
    def executed(self) -> float:
        return self.mm_executed + self.attn_executed


#: the recompute of full activation checkpointing: every block's forward again, attention included
FULL_RECOMPUTE = RecomputeFacts(blocks=True, attention=True)


def micro_batch_flops(a: ModelArgs, doc_lens: list[int], frozen_base: bool, adapter_params: int = 0,
                      recompute: RecomputeFacts = FULL_RECOMPUTE) -> StepFlops:
    """Exact FLOPs of one micro-batch's forward and backward.

    ``frozen_base``: only an adapter trains (no weight gradients of the base); ``recompute``: what
    the activation strategy runs again in backward (its declaration).
    """
    T = sum(doc_lens)
    blocks_mm = 2 * T * block_mm_params(a, count_shared=True)  # forward of blocks
    head_mm = 2 * T * a.vocab_size * a.dim
    attn_fwd = 4 * a.n_heads * a.head_dim * attention_pairs(a, doc_lens)
    bwd_factor = 1.0 if frozen_base else 2.0  # dX (and dW when the weight trains)
    adapters = 2 * T * adapter_params * 3  # fwd + dX + dW of the LoRA factors
    mm_useful = (blocks_mm + head_mm) * (1 + bwd_factor) + adapters
    attn_useful = attn_fwd * 3.5  # FlashAttention backward: 2.5x forward
    rec_mm = (blocks_mm + 2 * T * adapter_params) * float(recompute.blocks)
    rec_attn = attn_fwd * float(recompute.attention)
    mm_exec = mm_useful + rec_mm + head_mm  # the chunked head recomputes logits in backward
    return StepFlops(mm_useful, attn_useful, mm_exec, attn_useful + rec_attn)


def ceilings(hw: dict, kernel: str, provider: str | None, seq_len: int, *, heads: str | None = None) -> dict:
    """Matmul and attention ceilings (TFLOP/s) for the roofline of a row, from the hardware
    profile's ``measured`` entries (``benchmarks/attention_bench.py`` on this GPU, written into
    the profile by ``benchmarks/write_ceilings.py``): the bf16 matmul entries (``--matmul``), and
    the entries of ``kernel`` (the attention backend's declared kernel family) at the document
    length nearest the row's; else the profile's own figures. Among the kernel's entries, those of
    the very kernel that ran (the same ``provider``) and of the row's ``heads`` ("query/KV") are
    preferred where any were measured. Each is the median of the chosen entries' rows, a row counted
    at its entry's median; the source of each is returned with it."""
    import statistics

    measured = hw.get("measured") or []
    median = lambda es: statistics.median([e["tflops"] for e in es for _ in range(e["n"])])  # noqa: E731
    out = {"mm_tflops": hw.get("mm_tflops"), "mm_source": "hardware profile",
           "attn_tflops": hw.get("attn_tflops"), "attn_source": "hardware profile (FA3)"}
    mm = [e for e in measured if e["kernel"] == "matmul"]
    if mm:
        out["mm_tflops"], out["mm_source"] = median(mm), f"attention_bench matmul ({sum(e['n'] for e in mm)} rows)"
    cands = [e for e in measured if e["kernel"] == kernel]
    notes = []
    for note, keep in (("same kernel", lambda e: provider and e["provider"] == provider),
                       (f"heads {heads}", lambda e: heads and e["heads"] == heads)):
        narrowed = [e for e in cands if keep(e)]
        if narrowed:
            cands = narrowed
            notes.append(note)
    if cands:
        best = min({e["doc_len"] for e in cands}, key=lambda d: abs(d - seq_len))
        picked = [e for e in cands if e["doc_len"] == best]
        out["attn_tflops"] = median(picked)
        out["attn_source"] = (f"attention_bench {kernel} 1 doc of {best} ({sum(e['n'] for e in picked)} rows"
                              + "".join(f", {n}" for n in notes) + ")")
    return out


def step_budget(sf: list[StepFlops], ceil: dict, step_s: float, handoff_s: float) -> dict:
    """Where a micro-batch's time goes, as fractions of it (``step_s``: the measured time per
    micro-batch; ``handoff_s``: the exposed weight hand-off per micro-batch): ``useful`` is the
    useful FLOPs at the ceilings (the roofline fraction), ``recompute`` what the configuration runs
    again (activation recompute, the chunked head's logits) at the same ceilings, ``handoff`` the
    hand-off, ``other`` the rest (kernels below their ceilings, memory-bound kernels, idle GPU).
    ``attainable``: the roofline fraction of this configuration with ``other`` at zero."""
    mm, at = ceil["mm_tflops"] * 1e12, ceil["attn_tflops"] * 1e12
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    useful = mean([s.mm_useful / mm + s.attn_useful / at for s in sf])
    executed = mean([s.mm_executed / mm + s.attn_executed / at for s in sf])
    parts = {"useful": useful / step_s, "recompute": (executed - useful) / step_s, "handoff": handoff_s / step_s}
    parts["other"] = 1.0 - sum(parts.values())
    parts["attainable"] = useful / (executed + handoff_s)
    return parts
