"""The native model families as a stepbench plugin: stepbench's own Qwen3, Qwen3-MoE and GLM-4.5
model code (:mod:`core.models`), registered like any third-party family."""

from __future__ import annotations

from core import hookimpl
from core.contracts import ModelFamily
from core.models.common import CausalLM
from core.models.flavours import GLM4_MOE, QWEN3, QWEN3_MOE


def _common(a) -> dict:
    return {"hidden_size": a.dim, "num_hidden_layers": a.n_layers, "num_attention_heads": a.n_heads,
            "num_key_value_heads": a.n_kv_heads, "head_dim": a.head_dim, "vocab_size": a.vocab_size,
            "intermediate_size": a.ffn_dim, "tie_word_embeddings": a.tied_embeddings, "rope_theta": a.rope_theta,
            "rms_norm_eps": a.norm_eps, "attention_bias": a.attn_bias, "hidden_act": "silu",
            "max_position_embeddings": 40960, "attention_dropout": 0.0}


def qwen3_config(a) -> dict:
    """The transformers ``config.json`` of a native Qwen3 flavour (what ``+peer=...`` builds)."""
    return {"model_type": "qwen3", **_common(a)}


def qwen3_moe_config(a) -> dict:
    return {"model_type": "qwen3_moe", **_common(a), "num_experts": a.n_experts, "num_experts_per_tok": a.top_k,
            "moe_intermediate_size": a.moe_ffn_dim, "norm_topk_prob": a.norm_topk, "decoder_sparse_step": 1,
            "mlp_only_layers": [], "output_router_logits": False}


def glm4_moe_config(a) -> dict:
    return {"model_type": "glm4_moe", **_common(a), "partial_rotary_factor": a.partial_rotary,
            "use_qk_norm": a.qk_norm, "n_routed_experts": a.n_experts, "n_shared_experts": a.n_shared_experts,
            "num_experts_per_tok": a.top_k, "moe_intermediate_size": a.moe_ffn_dim,
            "first_k_dense_replace": a.first_dense_layers, "routed_scaling_factor": a.routed_scaling,
            "norm_topk_prob": a.norm_topk, "n_group": 1, "topk_group": 1}


FAMILIES = {
    "qwen3": ModelFamily("qwen3", QWEN3, CausalLM, "Qwen3 dense (QK-norm, GQA, tied embeddings)",
                         hf_config=qwen3_config),
    "qwen3_moe": ModelFamily("qwen3_moe", QWEN3_MOE, CausalLM, "Qwen3-MoE (128 experts, top-8, softmax router)",
                             hf_config=qwen3_moe_config),
    "glm4_moe": ModelFamily("glm4_moe", GLM4_MOE, CausalLM,
                            "GLM-4.5-Air / INTELLECT-3 (dense first layer, sigmoid router, shared expert)",
                            hf_config=glm4_moe_config),
}


@hookimpl
def stepbench_register_models(register):
    for name, fam in FAMILIES.items():
        register(name, fam, doc=fam.doc)
