"""``model=tinyllama``: a model family of Llama-2-shaped decoders, run by stepbench's native blocks.

The Llama 2 architecture differs from Qwen3's in its settings, not its pieces: no RMSNorm on q and
k, an untied LM head, RoPE base 10,000 and RMSNorm epsilon 1e-5. :class:`core.models.common.CausalLM`
builds it from :class:`core.models.common.ModelArgs`, so the family is a flavour table:
``1.1B`` is TinyLlama-1.1B's shapes (github.com/jzhang38/TinyLlama), ``tiny`` a 4-block toy for CPU
runs and tests.
"""

from __future__ import annotations

from core.contracts import ModelFamily
from core.models.common import CausalLM, ModelArgs

LLAMA = dict(tied_embeddings=False, rope_theta=1e4, qk_norm=False, norm_eps=1e-5)

FLAVOURS = {
    "1.1B": ModelArgs("TinyLlama-1.1B", dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, head_dim=64, vocab_size=32000,
                      ffn_dim=5632, hf_name="TinyLlama/TinyLlama_v1.1", **LLAMA),
    "tiny": ModelArgs("tinyllama-tiny", dim=64, n_layers=4, n_heads=4, n_kv_heads=1, head_dim=16, vocab_size=512,
                      ffn_dim=176, **LLAMA),
}

FAMILY = ModelFamily("tinyllama", FLAVOURS, CausalLM, "TinyLlama / Llama 2 shapes (no QK-norm, untied head, GQA), "
                     "native blocks (example plugin)")
