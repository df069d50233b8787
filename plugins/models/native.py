"""The native model families as a stepbench plugin: stepbench's own Qwen3, Qwen3-MoE and GLM-4.5
model code (:mod:`core.models`), registered like any third-party family."""

from __future__ import annotations

from core import hookimpl
from core.contracts import ModelFamily
from core.models.common import CausalLM
from core.models.flavours import GLM4_MOE, QWEN3, QWEN3_MOE

FAMILIES = {
    "qwen3": ModelFamily("qwen3", QWEN3, CausalLM, "Qwen3 dense (QK-norm, GQA, tied embeddings)"),
    "qwen3_moe": ModelFamily("qwen3_moe", QWEN3_MOE, CausalLM, "Qwen3-MoE (128 experts, top-8, softmax router)"),
    "glm4_moe": ModelFamily("glm4_moe", GLM4_MOE, CausalLM,
                            "GLM-4.5-Air / INTELLECT-3 (dense first layer, sigmoid router, shared expert)"),
}


@hookimpl
def stepbench_register_models(register):
    for name, fam in FAMILIES.items():
        register(name, fam, doc=fam.doc)
