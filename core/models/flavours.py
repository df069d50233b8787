"""Flavours of the native model code: the published models' hyper-parameters and tiny ones for tests."""

from __future__ import annotations

from core.models.common import ModelArgs

V_QWEN, V_GLM = 151936, 151552

QWEN3 = {
    "0.6B": ModelArgs("Qwen3-0.6B", 1024, 28, 16, 8, 128, V_QWEN, 3072, True, 1e6, hf_name="Qwen/Qwen3-0.6B"),
    "4B": ModelArgs("Qwen3-4B", 2560, 36, 32, 8, 128, V_QWEN, 9728, True, 5e6,
                    hf_name="Qwen/Qwen3-4B-Instruct-2507"),
    "tiny": ModelArgs("qwen3-tiny", 64, 2, 4, 2, 16, 512, 128, True),
}

QWEN3_MOE = {
    "30B-A3B": ModelArgs("Qwen3-30B-A3B", 2048, 48, 32, 4, 128, V_QWEN, 6144, False, 1e7, n_experts=128,
                         top_k=8, moe_ffn_dim=768, hf_name="Qwen/Qwen3-30B-A3B-Instruct-2507"),
    "235B-A22B": ModelArgs("Qwen3-235B-A22B", 4096, 94, 64, 4, 128, V_QWEN, 12288, False, 5e6, n_experts=128,
                           top_k=8, moe_ffn_dim=1536, hf_name="Qwen/Qwen3-235B-A22B-Instruct-2507"),
    "tiny": ModelArgs("qwen3-moe-tiny", 64, 2, 4, 2, 16, 512, 128, False, n_experts=8, top_k=2, moe_ffn_dim=32),
}

GLM4_MOE = {
    "air": ModelArgs("INTELLECT-3", 4096, 46, 96, 8, 128, V_GLM, 10944, False, 1e6, partial_rotary=0.5,
                     qk_norm=False, attn_bias=True, norm_eps=1e-5, n_experts=128, top_k=8, moe_ffn_dim=1408,
                     n_shared_experts=1, first_dense_layers=1, router="sigmoid",
                     hf_name="PrimeIntellect/INTELLECT-3"),
    "tiny": ModelArgs("glm4-moe-tiny", 64, 3, 4, 2, 16, 512, 128, False, partial_rotary=0.5, qk_norm=False,
                      attn_bias=True, norm_eps=1e-5, n_experts=8, top_k=2, moe_ffn_dim=32, n_shared_experts=1,
                      first_dense_layers=1, router="sigmoid"),
}
