"""``lora``: LoRA adapters built with peft on q/k/v/o, gate/up/down and the routed experts.

Dense projections get peft's ``lora.Linear``; routed experts, stored as 3-D parameters, get
peft's parameter-targeting LoRA (``target_parameters``). Base weights are frozen in bf16; the
adapter weights are fp32 masters (computed in bf16 under FSDP2 mixed precision).
"""

from __future__ import annotations

import math

import torch

from core import hookimpl

DENSE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EXPERT_TARGETS = ["experts.gate_up_proj", "experts.down_proj"]


class LoRA:
    name = "lora"
    lora = True
    param_dtype = torch.bfloat16  # frozen base weights

    def __init__(self, rank: int = 16, alpha: int = 32, targets=None, experts: bool = True):
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}: try adapter.rank=16")
        self.rank, self.alpha = rank, alpha
        self.targets = list(targets or DENSE_TARGETS)
        self.experts = experts
        self.label = f"LoRA(r={rank})"

    def config(self, model):
        from peft import LoraConfig

        has_experts = any(n.endswith("experts.gate_up_proj") for n, _ in model.named_parameters())
        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=self.targets,
            target_parameters=EXPERT_TARGETS if (self.experts and has_experts) else None,
        )

    def apply(self, model):
        from peft import inject_adapter_in_model

        model = inject_adapter_in_model(self.config(model), model)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        return model

    def init_parameters(self, model):
        """peft's default init: A ~ kaiming-uniform(a=sqrt(5)), B = 0."""
        for n, p in model.named_parameters():
            if "lora_A" in n:
                torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            elif "lora_B" in n:
                torch.nn.init.zeros_(p)

    def counts(self, model) -> dict:
        adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"trainable": trainable, "adapter": adapter, "fully_trainable": trainable - adapter}


@hookimpl
def stepbench_register_adapters(register):
    register(
        "lora",
        lambda cfg: LoRA(cfg.get("rank", 16), cfg.get("alpha", 32), cfg.get("targets"), cfg.get("experts", True)),
        doc="LoRA via peft (r=16, alpha=32 by default), base weights frozen in bf16",
    )
