"""Published hyper-parameters of the benchmarked models: facts copied from each model's
``config.json`` on the Hugging Face hub (the repository named in each entry), in the field names
of :class:`core.models.common.ModelArgs`. INTELLECT-3 is a fine-tune of GLM-4.5-Air and keeps
its architecture (zai-org/GLM-4.5-Air config.json)."""

PUBLISHED = {
    # Qwen/Qwen3-0.6B config.json
    ("qwen3", "0.6B"): dict(dim=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128, vocab_size=151936,
                            ffn_dim=3072, tied_embeddings=True, rope_theta=1e6, norm_eps=1e-6, qk_norm=True,
                            attn_bias=False),
    # Qwen/Qwen3-4B-Instruct-2507 config.json
    ("qwen3", "4B"): dict(dim=2560, n_layers=36, n_heads=32, n_kv_heads=8, head_dim=128, vocab_size=151936,
                          ffn_dim=9728, tied_embeddings=True, rope_theta=5e6, norm_eps=1e-6, qk_norm=True,
                          attn_bias=False),
    # Qwen/Qwen3-30B-A3B-Instruct-2507 config.json
    ("qwen3_moe", "30B-A3B"): dict(dim=2048, n_layers=48, n_heads=32, n_kv_heads=4, head_dim=128, vocab_size=151936,
                                   tied_embeddings=False, rope_theta=1e7, norm_eps=1e-6, n_experts=128, top_k=8,
                                   moe_ffn_dim=768, n_shared_experts=0, first_dense_layers=0, norm_topk=True),
    # Qwen/Qwen3-235B-A22B-Instruct-2507 config.json
    ("qwen3_moe", "235B-A22B"): dict(dim=4096, n_layers=94, n_heads=64, n_kv_heads=4, head_dim=128,
                                     vocab_size=151936, tied_embeddings=False, rope_theta=5e6, norm_eps=1e-6,
                                     n_experts=128, top_k=8, moe_ffn_dim=1536, n_shared_experts=0,
                                     first_dense_layers=0, norm_topk=True),
    # zai-org/GLM-4.5-Air config.json (INTELLECT-3's base)
    ("glm4_moe", "air"): dict(dim=4096, n_layers=46, n_heads=96, n_kv_heads=8, head_dim=128, vocab_size=151552,
                              ffn_dim=10944, tied_embeddings=False, rope_theta=1e6, partial_rotary=0.5,
                              norm_eps=1e-5, qk_norm=False, attn_bias=True, n_experts=128, top_k=8,
                              moe_ffn_dim=1408, n_shared_experts=1, first_dense_layers=1, router="sigmoid",
                              norm_topk=True, routed_scaling=1.0),
}
