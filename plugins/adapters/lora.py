"""``lora``: LoRA adapters on q/k/v/o, gate/up/down and the routed experts.

Dense projections get peft's ``lora.Linear``. Routed experts (3-D parameters) get, by default
(``adapter.experts=grouped``), one LoRA pair per expert and per projection (gate, up, down, as
prime-rl adapts them), computed as grouped GEMMs next to the frozen base GEMM:
``y_e = x_e W_e^T + s * (x_e A_e^T) B_e^T``. No per-expert delta weight is formed and the
backward pass never forms a gradient of the frozen ``[E, out, in]`` weights.
``adapter.experts=peft`` uses peft's parameter-targeting LoRA (``target_parameters``) instead,
which adds ``B @ A`` to the fused expert weights in every forward and therefore computes the full
expert weight gradient in backward (kept for comparison); ``adapter.experts=none`` leaves the
experts frozen. Base weights are frozen in bf16; adapter weights are fp32 masters computed in bf16.

``adapter.replicate``: ``true`` keeps the adapter weights out of FSDP2, whole on every rank, their
gradients averaged over the ranks once per step; the model's layers cast them to bf16 where they
use them (the native families do; the ``hf`` family's peft layers would compute in fp32, and
``adapter.experts=peft`` adds an fp32 delta, so neither can). ``auto`` (the default) does so at
world size 1 where it can: there FSDP2 copies each of a block's 14 small adapter tensors on its own
at every unshard, forward and backward, and whole or sharded states are the same bytes; over
several ranks it shards them (MoE expert adapters are too large to hold whole on every rank).
``false``: always sharded by FSDP2 with the base weights (bf16 by its mixed precision).
"""

from __future__ import annotations

import torch
from torch import nn

from core import hookimpl
from core.contracts import Adapter
from core.kernels import kernels_of
from core.models.moe import Experts, grouped_linear

DENSE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EXPERT_TARGETS = ["experts.gate_up_proj", "experts.down_proj"]
EXPERT_MODES = ("grouped", "peft", "none")
#: the largest LoRA alpha taken (the update is scaled by alpha / rank; larger ones are typos)
ALPHA_MAX = 65536


class GroupedLoRAExperts(nn.Module):
    """Routed experts with per-expert LoRA on gate, up and down, as grouped GEMMs.

    ``lora_A_*`` are ``[E, r, in]`` and ``lora_B_*`` are ``[E, out, r]`` (nn.Linear layout per
    expert); gate and up share one grouped GEMM for their A factors (concatenated, which is the
    same function as two separate ones).
    """

    def __init__(self, base: Experts, rank: int, alpha: float):
        super().__init__()
        self.base_layer = base
        self.scaling = alpha / rank
        E, two_i, H = base.gate_up_proj.shape
        I = two_i // 2
        dev = base.gate_up_proj.device
        for name, shape in (("gate", (I, H)), ("up", (I, H)), ("down", (H, I))):
            out_f, in_f = shape
            self.register_parameter(f"lora_A_{name}", nn.Parameter(torch.empty(E, rank, in_f, device=dev)))
            self.register_parameter(f"lora_B_{name}", nn.Parameter(torch.empty(E, out_f, rank, device=dev)))

    def forward(self, xs: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        dt, s = xs.dtype, self.scaling
        gu = grouped_linear(xs, self.base_layer.gate_up_proj.to(dt), offs)
        a = grouped_linear(xs, torch.cat([self.lora_A_gate, self.lora_A_up], 1).to(dt), offs)  # [N, 2r]
        gu = gu + s * grouped_linear(a, self._gate_up_B(dt), offs)
        g, u = gu.chunk(2, -1)
        h = kernels_of(self.base_layer).swiglu(g, u)
        out = grouped_linear(h, self.base_layer.down_proj.to(dt), offs)
        low = grouped_linear(h, self.lora_A_down.to(dt), offs)
        return out + s * grouped_linear(low, self.lora_B_down.to(dt), offs)

    def _gate_up_B(self, dt) -> torch.Tensor:
        """``[E, 2I, 2r]`` block-diagonal ``diag(B_gate, B_up)``: both B factors in one grouped
        GEMM whose output adds to the fused gate/up output at once (the same function as two)."""
        bg, bu = self.lora_B_gate.to(dt), self.lora_B_up.to(dt)
        zg, zu = bg.new_zeros(bg.shape), bu.new_zeros(bu.shape)
        return torch.cat([torch.cat([bg, zg], -1), torch.cat([zu, bu], -1)], 1)


class LoRA(Adapter):
    name = "lora"
    frozen_base = True
    param_dtype = torch.bfloat16  # frozen base weights

    def __init__(self, rank: int = 16, alpha: int = 32, targets=None, experts="grouped", replicate="auto"):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}: try adapter.rank=16")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= ALPHA_MAX:
            raise ValueError(f"adapter.alpha must be a number above 0 and at most {ALPHA_MAX} (got {alpha!r}): try "
                             "adapter.alpha=32")
        if replicate not in ("auto", True, False):
            raise ValueError(f"adapter.replicate={replicate!r} is not auto, true or false: try adapter.replicate=auto")
        self.replicate = replicate
        experts = {True: "grouped", False: "none"}.get(experts, experts)
        if experts not in EXPERT_MODES:
            raise ValueError(f"adapter.experts={experts!r} is not one of {', '.join(EXPERT_MODES)}: "
                             "try adapter.experts=grouped")
        if targets is not None and (isinstance(targets, (str, bytes)) or not isinstance(targets, (list, tuple))
                                    or not targets or not all(isinstance(t, str) and t.strip() for t in targets)):
            raise ValueError(f"adapter.targets={targets!r} is not a list of layer names: e.g. "
                             "adapter.targets=[q_proj,v_proj], or leave it out (every linear layer of the blocks)")
        if targets is not None and len(set(targets)) < len(targets):  # the same adapter, keyed as another row
            twice = next(t for i, t in enumerate(targets) if t in targets[:i])
            raise ValueError(f"adapter.targets lists {twice} twice: give each once, e.g. "
                             f"adapter.targets=[{','.join(dict.fromkeys(targets))}]")
        self.rank, self.alpha = rank, alpha
        self.chosen = list(targets) if targets else None  # adapter.targets=[...]: the user's, else the model's
        self.targets = list(targets or DENSE_TARGETS)
        self.experts = experts
        self.replicable = experts != "peft"  # peft's parameter LoRA would add an fp32 delta
        self.label = f"LoRA(r={rank})"

    def supports(self, args) -> str | None:
        """Why this LoRA cannot adapt the model (None when it can): a rank above the model's width is
        not low-rank; an expert mode on a model without experts does nothing."""
        if self.rank > args.dim:
            return (f"adapter.rank={self.rank} exceeds the model's hidden size ({args.dim}), so it is not low-rank: "
                    f"try adapter.rank={min(16, args.dim)}")
        if self.experts != EXPERT_MODES[0] and not args.n_experts:
            return f"adapter.experts={self.experts} applies to models with routed experts; {args.name} has none: leave it out"
        if self.chosen:
            known = ([n for n, _ in args.lora_dims] if getattr(args, "lora_dims", None) is not None
                     else list(DENSE_TARGETS))
            unknown = [t for t in self.chosen if t not in known]
            if unknown:
                return (f"adapter.targets names {', '.join(unknown)}, which {args.name} has no linear layer of: choose "
                        f"from {', '.join(known)}")
        return None

    def model_targets(self, args) -> tuple[list, list]:
        """The linear layers and 3-D expert weights to adapt: ``adapter.targets`` where given, else
        what the model's family found in its module tree (``lora_dims``, ``expert_dims``), else
        q/k/v/o, gate/up/down and the native experts."""
        linear = self.chosen or ([n for n, _ in args.lora_dims] if getattr(args, "lora_dims", None) is not None
                                 else DENSE_TARGETS)
        experts = [n for n, _ in args.expert_dims] if getattr(args, "expert_dims", None) is not None else EXPERT_TARGETS
        return linear, experts

    def config(self, model):
        from peft import LoraConfig

        self.targets, experts = self.model_targets(getattr(model, "args", None))
        names = {n for n, _ in model.named_parameters()}
        found = [t for t in experts if any(n.endswith(t) for n in names)]
        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=self.targets,
            target_parameters=found if (self.experts == "peft" and found) else None,
        )

    def apply(self, model):
        from peft import inject_adapter_in_model

        cfg = self.config(model)
        dense_hit = any(n.rsplit(".", 1)[-1] in self.targets for n, _ in model.named_modules())
        if dense_hit or cfg.target_parameters:
            model = inject_adapter_in_model(cfg, model)
        if self.experts == "grouped":
            for parent in list(model.modules()):
                if isinstance(getattr(parent, "experts", None), Experts):
                    parent.experts = GroupedLoRAExperts(parent.experts, self.rank, self.alpha)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        return model

    def counts(self, model) -> dict:
        adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"trainable": trainable, "adapter": adapter, "fully_trainable": trainable - adapter}

    def peer_fields(self, args) -> dict:
        """What a peer trainer needs to build this adapter (``core.contracts.PeerSpec``'s LoRA fields):
        rank, alpha, the linear layers and, unless ``experts=none``, the routed experts' weights."""
        linear, experts = self.model_targets(args)
        if not args.n_experts or self.experts == "none":
            experts = []
        return {"lora_rank": int(self.rank), "lora_alpha": float(self.alpha), "lora_targets": tuple(linear),
                "lora_expert_targets": tuple(experts)}

    def trainable_params(self, args) -> int:
        """The LoRA factors on q/k/v/o and gate/up/down, and on the routed experts unless
        ``experts=none`` leaves them frozen."""
        from core.memory import lora_params

        return lora_params(args, self.rank, experts=self.experts != "none", targets=self.chosen)

    def init_param(self, name: str, shape, generator, device):
        """A factors from U(-1/sqrt(in), 1/sqrt(in)), B factors zero (the adapter starts as the
        identity); None for the base weights."""
        if "lora_B" in name:
            return torch.zeros(shape, device=device)
        if "lora_A" in name:
            bound = 1.0 / (shape[-1] ** 0.5)
            return torch.empty(shape, device=device).uniform_(-bound, bound, generator=generator)
        return None

    def handoff(self, model) -> list:
        """The adapter: inference keeps the frozen base it already has."""
        return [(n, p) for n, p in model.named_parameters() if "lora_" in n]

    def handoff_params(self, args) -> int:
        return self.trainable_params(args)


@hookimpl
def stepbench_register_adapters(register):
    register(
        "lora",
        lambda options, ctx: LoRA(options.get("rank", 16), options.get("alpha", 32), options.get("targets"),
                                  options.get("experts", "grouped"), options.get("replicate", "auto")),
        doc="LoRA (r=16, alpha=32 by default): peft on dense projections, grouped per-expert LoRA on "
            "routed experts (adapter.experts=grouped|peft|none); base weights frozen in bf16; adapters "
            "out of FSDP2 at world size 1 where the model casts them (adapter.replicate=auto|true|false)",
    )
