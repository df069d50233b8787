"""``full``: every parameter trains; fp32 master weights and gradients, bf16 compute."""

from __future__ import annotations

import torch

from core import hookimpl
from core.contracts import Adapter


class Full(Adapter):
    name = "full"
    label = "Full"
    frozen_base = False
    param_dtype = torch.float32  # master weights; compute runs in bf16 (FSDP2 mixed precision, or the layers' cast)
    replicate = replicable = False  # the trainable weights are the model: FSDP2 holds them where it wraps

    def apply(self, model):
        return model

    def counts(self, model) -> dict:
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"trainable": n, "adapter": 0, "fully_trainable": n}

    def trainable_params(self, args) -> int:
        from core.memory import param_count

        return param_count(args)

    def handoff(self, model) -> list:
        return list(model.named_parameters())

    def handoff_params(self, args) -> int:
        return self.trainable_params(args)


@hookimpl
def stepbench_register_adapters(register):
    register("full", lambda options, ctx: Full(), doc="full fine-tuning (AdamW, fp32 master weights)")
