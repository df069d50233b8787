"""``ia3``: peft's IA3 (Liu et al. 2022, "(IA)^3"): learned vectors that scale activations.

Each targeted projection gets one trainable vector: the output of ``k_proj`` and ``v_proj`` is
scaled per feature, and the input of ``down_proj`` (a "feedforward" module) per feature. The base
weights are frozen in bf16. Routed experts of MoE layers (3-D parameters, not ``nn.Linear``) are not
adapted; a shared expert's ``down_proj`` is.

How it runs in the native models: their layers call :func:`core.models.fused.linear`, which
computes only vanilla peft *LoRA* layers itself and calls any other module as it is, so peft's IA3
``Linear`` runs its own forward; q/k/v and gate/up are not fused into one GEMM where IA3 wraps
one of them (:func:`core.models.fused.project` falls back to one call per layer). That forward
multiplies in the vector's dtype, so the vectors are not kept out of FSDP2 (``replicate`` and
``replicable`` False): FSDP2's mixed precision hands them to the layers in bf16.

Initialization: IA3's vectors start at 1, so the adapted model starts as the base model
(:meth:`IA3.init_param`, which the trainer's seeded init asks for every parameter).
"""

from __future__ import annotations

import torch

from core.contracts import Adapter

#: peft's IA3 defaults for Llama-like models
DEFAULT_TARGETS = ("k_proj", "v_proj", "down_proj")
DEFAULT_FEEDFORWARD = ("down_proj",)
#: the projections whose sizes :meth:`IA3.trainable_params` knows from the model's shapes
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _names(option: str, value) -> list[str]:
    if isinstance(value, str) or not all(isinstance(v, str) and v in PROJECTIONS for v in value or ()):
        default = DEFAULT_TARGETS if option == "targets" else DEFAULT_FEEDFORWARD
        raise ValueError(f"adapter.{option}={value!r} must be a list of {', '.join(PROJECTIONS)}: try "
                         f"adapter.{option}=[{','.join(default)}]")
    return list(value)


def projection_sizes(args, layer: int) -> dict[str, tuple[int, int]]:
    """``(in_features, out_features)`` of each ``nn.Linear`` projection of block ``layer``: the
    attention's, and the dense MLP's or, in a MoE layer, the shared experts' (if any)."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    sizes = {"q_proj": (args.dim, q), "k_proj": (args.dim, kv), "v_proj": (args.dim, kv), "o_proj": (q, args.dim)}
    ffn = args.ffn_dim if not args.is_moe_layer(layer) else args.moe_ffn_dim * args.n_shared_experts
    if ffn:
        sizes.update(gate_proj=(args.dim, ffn), up_proj=(args.dim, ffn), down_proj=(ffn, args.dim))
    return sizes


class IA3(Adapter):
    name = "ia3"
    label = "IA3"
    frozen_base = True
    param_dtype = torch.bfloat16  # the frozen base weights
    replicate = False  # FSDP2 holds the vectors (its mixed precision casts them for the layers)
    replicable = False

    def __init__(self, targets=DEFAULT_TARGETS, feedforward=DEFAULT_FEEDFORWARD):
        self.targets = _names("targets", targets)
        self.feedforward = _names("feedforward", feedforward)
        if not self.targets:
            raise ValueError("adapter.targets is empty: try adapter.targets=[k_proj,v_proj,down_proj]")
        if not set(self.feedforward) <= set(self.targets):
            raise ValueError(f"adapter.feedforward={self.feedforward} must be among adapter.targets={self.targets}: "
                             "try adapter.feedforward=[down_proj]")

    def apply(self, model):
        from peft import IA3Config, inject_adapter_in_model

        cfg = IA3Config(target_modules=self.targets, feedforward_modules=self.feedforward)
        model = inject_adapter_in_model(cfg, model)
        for n, p in model.named_parameters():
            p.requires_grad_("ia3_" in n)
        return model

    def counts(self, model) -> dict:
        adapter = sum(p.numel() for n, p in model.named_parameters() if "ia3_" in n)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"trainable": trainable, "adapter": adapter, "fully_trainable": trainable - adapter}

    def trainable_params(self, args) -> int:
        """One vector per targeted projection: its input size for a feedforward module, else its
        output size."""
        total = 0
        for layer in range(args.n_layers):
            for name, (fan_in, fan_out) in projection_sizes(args, layer).items():
                if name in self.targets:
                    total += fan_in if name in self.feedforward else fan_out
        return total

    def init_param(self, name: str, shape, generator, device):
        """The IA3 vectors start at one; None for the base weights."""
        return torch.ones(shape, device=device) if "ia3_" in name else None

    def handoff(self, model) -> list:
        """The vectors: inference keeps the frozen base it already has."""
        return [(n, p) for n, p in model.named_parameters() if "ia3_" in n]

    def handoff_params(self, args) -> int:
        return self.trainable_params(args)
