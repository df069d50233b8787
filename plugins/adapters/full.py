"""``full``: every parameter trains; fp32 master weights and gradients, bf16 compute."""

from __future__ import annotations

import torch

from core import hookimpl


class Full:
    name = "full"
    label = "Full"
    lora = False
    param_dtype = torch.float32  # master weights; compute runs in bf16 (FSDP2 mixed precision)

    def apply(self, model):
        return model

    def counts(self, model) -> dict:
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"trainable": n, "adapter": 0, "fully_trainable": n}


@hookimpl
def stepbench_register_adapters(register):
    register("full", lambda cfg: Full(), doc="full fine-tuning (AdamW, fp32 master weights)")
