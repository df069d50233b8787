"""Build the model, apply the plugins in one fixed order, and run training steps.

Read ``build`` top to bottom: it is the one place where plugins are applied.
"""

from __future__ import annotations

import os
import sys
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import record_function  # train_step's named ranges in a profiler trace (ops_trace=)

from core.data import MicroBatch, make_micro_batch
from core.losses import rl_loss, sft_loss


@dataclass
class Built:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    params: list
    device: torch.device
    attention: object
    ac: object
    adapter: object
    sync: object = None
    #: trainable parameters kept out of FSDP2 (whole on every rank; adapter.replicate): their
    #: gradients are averaged over the ranks once per step (:func:`reduce_replicated`)
    replicated: tuple = ()
    #: whether FSDP2 wraps the model (:func:`needs_fsdp`)
    fsdp: bool = True


# ------------------------------------------------------------------ distributed
def init_distributed(device_type: str) -> tuple[int, int]:
    """Join torchrun's process group, or make a one-process group; returns (rank, world)."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"  # CPU tensors may meet too
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def exit_now(status: int) -> None:
    """End a torchrun worker without interpreter teardown: gloo's worker threads can still hold
    finished async work (FSDP2's collectives) whose tensors then die during finalization and abort
    the process (pytorch/pytorch#179291). Call it after the process group is destroyed and the
    results are written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# ------------------------------------------------------------------ composition steps
def bind_attention(model: nn.Module, backend) -> None:
    """Point every attention layer at the selected backend."""
    from core.models.common import attention_modules

    for m in attention_modules(model):
        m.backend = backend


def bind_kernels(model: nn.Module, kernels) -> None:
    """Point every module that computes a block operation (a class attribute ``kernels``: the
    native norms, MLPs, experts and attention's RoPE) at the provider; None or ``eager``: PyTorch ops."""
    from core.kernels import Bound

    if kernels is None or getattr(kernels, "torch_ops", False):
        return
    bound = Bound(kernels)
    for m in model.modules():
        if hasattr(type(m), "kernels"):
            m.kernels = bound


def set_fuse(model: nn.Module, on) -> None:
    """Native blocks: q/k/v and gate/up as one GEMM each (:mod:`core.models.fused`): ``"lora"``
    for LoRA layers only, True for plain layers too, False for one GEMM per layer."""
    from core.models.common import MLP, Attention

    for m in model.modules():
        if isinstance(m, (Attention, MLP)):
            m.fuse = on


def apply_compile(model: nn.Module, head: bool = True) -> None:
    """Compile each transformer block (after checkpointing wrapped it) and, with ``head``, the
    log-prob head's per-chunk work (a model that has the chunked head)."""
    for block in model.layers:
        block.compile()
    if head and hasattr(model, "head_compiled"):
        model.head_compiled = True


#: the dtype every layer computes in: FSDP2's mixed-precision parameter dtype where it wraps, the
#: native layers' cast of their weights where it does not (:func:`needs_fsdp`)
COMPUTE_DTYPE = torch.bfloat16


def apply_fsdp(model: nn.Module, device_type: str, ignored=()) -> None:
    """FSDP2: shard each block, then the root; bf16 compute, fp32 gradient reduction. ``ignored``:
    parameters FSDP2 leaves alone (replicated adapters)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=COMPUTE_DTYPE, reduce_dtype=torch.float32)
    kw = {"ignored_params": set(ignored)} if ignored else {}
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp, **kw)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False, **kw)


def needs_fsdp(model: nn.Module, replicated, world: int, fsdp="auto", sharded_adapters: bool = False) -> bool:
    """Whether FSDP2 wraps the model: always over several ranks or with ``fsdp=true``. On one GPU
    (``auto``) FSDP2 shards nothing, and what it still does costs: it copies every parameter on its
    own at every unshard (forward, and again in backward for the recompute; casting fp32 masters to
    bf16 first) and runs its hooks around every block. So it wraps only where it is the one that
    would cast: a model whose layers cast their weights where used (``casts_weights``: the native
    families) runs without it, fp32 masters and all; otherwise (the transformers family) it wraps
    where it holds a trainable parameter not kept out of it (``replicated``) or a frozen one in
    another dtype than bf16. ``sharded_adapters``: adapters that FSDP2 must hold (asked sharded,
    ``adapter.replicate=false``, or peft's expert LoRA, which the model does not cast): it wraps."""
    if fsdp is True or world > 1 or sharded_adapters:
        return True
    if getattr(model, "casts_weights", False):
        return False
    keep = {id(p) for p in replicated}
    if any(p.requires_grad and id(p) not in keep for p in model.parameters()):
        return True
    return any(p.is_floating_point() and not p.requires_grad and p.dtype != COMPUTE_DTYPE
               for p in model.parameters())


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def replicate_refusal(model, family: str, instead: str = "auto") -> str | None:
    """Why ``adapter.replicate=true`` cannot run on ``model`` (an instance or its class), or None:
    its layers must compute the adapter in bf16 themselves (``casts_adapters``)."""
    if getattr(model, "casts_adapters", False):
        return None
    return (f"adapter.replicate=true needs a model whose layers compute the adapter in bf16 (the native "
            f"families); {family} models would run it in fp32: use adapter.replicate={instead}")


def replicated_params(model: nn.Module, adapter, world: int = 1) -> list:
    """The adapter's trainable parameters when it asks to keep them out of FSDP2 (``replicate``:
    True, or "auto" = at world size 1 where the model computes them in bf16 itself), else []. At
    world size 1 FSDP2 copies (and casts) each parameter on its own at every unshard: LoRA's 14
    small tensors a block more than double the block's unshard launches (NOTES.md, session 8).
    Over several ranks "auto" keeps them sharded (one all-gather copies them in; and MoE expert
    adapters are too large to hold whole on every rank)."""
    want = adapter.replicate
    if want == "auto":
        want = getattr(model, "casts_adapters", False) and adapter.replicable and world == 1
    if not want:
        return []
    why = replicate_refusal(model, type(model).__name__, instead="false")
    if why:
        raise ValueError(why)
    return [p for p in model.parameters() if p.requires_grad]


def reduce_replicated(b: Built) -> None:
    """Average the replicated parameters' gradients over the ranks (FSDP2 averages the sharded
    ones): one flat all-reduce per step, nothing at world size 1."""
    world = world_size()
    if world == 1 or not b.replicated:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in b.replicated]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    for p, g in zip(b.replicated, flat.split([g.numel() for g in grads])):
        p.grad = g.view_as(p)


def default_init(name: str, shape, generator, device) -> torch.Tensor:
    """A model weight's initial value: norms at one, biases at zero, else N(0, 0.02)."""
    if name.endswith(("norm.weight", "layernorm.weight")):
        return torch.ones(shape, device=device)
    if name.endswith(".bias"):
        return torch.zeros(shape, device=device)
    return torch.empty(shape, device=device).normal_(0.0, 0.02, generator=generator)


def init_weights(model: nn.Module, seed: int, adapter) -> None:
    """Seeded random init, identical whatever the sharding: each full parameter is drawn from
    a generator seeded by (seed, its name) and each rank keeps its shard. The adapter initializes
    the parameters it added (:meth:`core.contracts.Adapter.init_param`); norms start at one, biases
    at zero, every other weight from N(0, 0.02)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        for name, p in model.named_parameters():
            full_shape = p.shape
            dev = p.device
            base_name = name.replace(".base_layer", "")  # an adapter's wrapping keeps base weights' init
            g = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + zlib.crc32(base_name.encode()))
            full = adapter.init_param(name, full_shape, g, dev)
            if full is None:
                full = default_init(name, full_shape, g, dev)
            full = full.to(p.dtype)
            if isinstance(p, DTensor):
                p.to_local().copy_(distribute_tensor(full, p.device_mesh, p.placements).to_local())
            else:
                p.copy_(full)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.zero_()
    if hasattr(model, "init_buffers"):  # a family's own buffers (e.g. transformers' RoPE tables)
        model.init_buffers()


def set_dtypes(model: nn.Module, adapter) -> None:
    """Frozen weights in the adapter's dtype, trainable weights in fp32 (masters)."""
    for p in model.parameters():
        p.data = p.data.to(torch.float32 if p.requires_grad else adapter.param_dtype)


# ------------------------------------------------------------------ the one place
def build(args, attention, ac, adapter, device: torch.device, seed: int = 0, compile: bool = False,
          head_budget_mib: int = 512, lr: float = 1e-6, model_builder=None, compile_head: bool = True,
          fuse="lora", fsdp="auto", kernels=None) -> Built:
    """Compose a trainable model in one fixed order.

    model on meta -> adapter -> attention binding -> activation checkpointing / offload ->
    torch.compile (optional) -> FSDP2 -> materialize on device + seeded init -> optimizer.
    Checkpointing wraps blocks before compile, and compile happens before FSDP2 so FSDP2's hooks
    stay outside compiled code; ``fsdp`` says whether FSDP2 wraps at all (:func:`needs_fsdp`).
    ``model_builder``: the model family's ``build(args)`` (default: the native
    :class:`core.models.common.CausalLM`).
    """
    from core.models.common import CausalLM

    with torch.device("meta"):
        model = (model_builder or CausalLM)(args)
    model = adapter.apply(model)  # on meta: peft layers are created without memory
    set_dtypes(model, adapter)
    model.compute_dtype = COMPUTE_DTYPE  # wrapped by FSDP2 or not
    set_fuse(model, fuse)
    model.head_budget_mib = head_budget_mib
    bind_attention(model, attention)
    bind_kernels(model, kernels)
    ac.apply(model)
    if compile:
        apply_compile(model, head=compile_head)
    world = world_size()
    replicated = replicated_params(model, adapter, world)
    # adapters asked sharded (replicate=false), or peft's expert LoRA (its fp32 delta is not cast)
    sharded_adapters = adapter.frozen_base and (adapter.replicate is False or not adapter.replicable)
    sharded = needs_fsdp(model, replicated, world, fsdp, sharded_adapters)
    if sharded:
        apply_fsdp(model, device.type, replicated)
    model.to_empty(device=device)
    init_weights(model, seed, adapter)
    if not sharded and fuse is not False:  # LoRA's frozen q/k/v and gate/up weights as one tensor each
        from core.models.fused import pack_frozen_bases

        pack_frozen_bases(model)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.01, fused=fused,
                            foreach=None if fused else True)
    replicated = tuple(p for p in params if replicated and not hasattr(p, "device_mesh"))  # after to_empty
    return Built(model, opt, params, device, attention, ac, adapter, replicated=replicated, fsdp=sharded)


# ------------------------------------------------------------------ data and the step
def make_batches(args, task: str, seq_len: int, micro_batches: int, packing: str, seed: int, step: int,
                 device, rank: int = 0) -> list[MicroBatch]:
    """The micro-batches of one step, on the device (seeded by step, micro-batch and rank)."""
    return [
        make_micro_batch(seq_len, args.vocab_size, task, packing,
                         seed=seed + 1_000_000 * rank + 1000 * step + i).to(device)
        for i in range(micro_batches)
    ]


def forward_backward(b: Built, mb: MicroBatch, task: str, scale: float) -> dict:
    """One micro-batch: forward, loss, backward. Returns device tensors (no host sync)."""
    with b.ac.step_context():
        lp, ent = b.model(mb.input_ids, mb.position_ids, mb.meta, mb.targets)
        if task == "rl":
            loss, info = rl_loss(lp, mb.inference_logprobs, mb.advantages, mb.loss_mask)
        else:
            loss, info = sft_loss(lp, mb.loss_mask)
        (loss * scale).backward()
    m = mb.loss_mask.float()
    info.update(loss=loss.detach(), entropy=(ent * m).sum() / m.sum().clamp(min=1))
    return info


def train_step(b: Built, batches: list[MicroBatch], task: str, max_norm: float = 1.0, step: int = 0) -> dict:
    """micro-batches of forward/backward, gradient clipping, AdamW step, then the weight hand-off
    (``b.sync``). No host sync inside, except what the weight-sync method itself needs."""
    n = len(batches)
    # Gradients are reduced after every micro-batch into the fp32 sharded gradient: accumulation
    # stays in fp32 and no unsharded bf16 gradient outlives its block.
    infos = []
    for i, mb in enumerate(batches):
        with record_function(f"stepbench.micro_batch_{i}"):
            infos.append(forward_backward(b, mb, task, 1.0 / n))
    with record_function("stepbench.clip_optimizer"):
        reduce_replicated(b)
        grad_norm = torch.nn.utils.clip_grad_norm_(b.params, max_norm, foreach=True)
        if b.sync is not None:
            b.sync.before_update()  # an overlapped hand-off must finish reading the weights first
        b.optimizer.step()
        b.optimizer.zero_grad(set_to_none=True)
    if b.sync is not None:
        with record_function("stepbench.weight_sync"):
            b.sync.after_step(step)  # the hand-off to inference is part of the step (as prime-rl)
    out = {k: torch.stack([i[k] for i in infos]) for k in infos[0]}
    out["grad_norm"] = grad_norm
    return out
