"""``recompute``: per-block activation checkpointing (non-reentrant torch.utils.checkpoint).

``mode: full`` keeps only each block's input and recomputes the whole block in backward (what
prime-rl's Recompute rows do). ``mode: selective`` also keeps the outputs of the ops named by
``save`` (default: the attention kernel, its output and log-sum-exp), so backward does not run
attention forward again; everything else in the block is recomputed.

The checkpoint sits inside each block's ``forward`` (as torchtitan wraps blocks): FSDP2's hooks
stay on the block's call, outside the checkpointed region, so the recompute runs no FSDP2 hook,
and with ``compile=true`` the compiled block contains the checkpoint, so its compiled backward
recomputes the block itself instead of calling the compiled forward again (one compiled region per
block and direction instead of three). ``inside=false`` puts the checkpoint around the block's
call instead (the layout before; kept for comparison). A model that checkpoints its own layers
(``own_checkpointing``, the plain HF loop) only learns that recompute was asked for.
"""

from __future__ import annotations

import contextlib
import re
from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from core import hookimpl
from core.contracts import ActivationMemory, RecomputeFacts

#: op-name patterns that ``save`` entries stand for
SAVE_PATTERNS = {
    "attention": r"(flash|attention|attn)(?!.*(backward|bwd))",
    "matmul": r"^aten\.(mm|addmm|_grouped_mm)\.",
}


def save_policy(patterns: list[str]):
    """A selective-checkpoint policy that saves the outputs of ops whose name matches."""
    rx = re.compile("|".join(f"(?:{SAVE_PATTERNS.get(p, p)})" for p in patterns))

    def policy(ctx, func, *args, **kwargs):
        if rx.search(str(func)):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def op_names() -> list[str]:
    """Every operator registered with the dispatcher now, as ``str(op)`` spells its default overload
    (``aten.mm.default``): what a ``save`` pattern is matched against."""
    try:
        names = torch._C._dispatch_get_all_op_names()
    except AttributeError:  # a torch without it: nothing to check against
        return []
    return [n.replace("::", ".") + ("" if "." in n.split("::", 1)[-1] else ".default") for n in names]


def check_save(save: list) -> None:
    """``ac.save`` names what selective recompute keeps: a kind (``attention``, ``matmul``) or a
    pattern over operator names. An empty list would save nothing but the block inputs (``+ac=recompute``);
    a pattern that matches no registered operator saves nothing it names."""
    if not save:
        raise ValueError("ac.save=[] keeps nothing beyond the block inputs, which is +ac=recompute: use "
                         "+ac=recompute, or name what to keep, e.g. ac.save=[attention]")
    names = None
    for p in save:
        p = str(p)
        if p in SAVE_PATTERNS:
            continue
        names = op_names() if names is None else names
        rx = re.compile(p)
        hits = [n for n in names if rx.search(n)] if names else None
        if names and not hits:
            raise ValueError(f"ac.save: {p!r} matches no operator (kinds: {', '.join(SAVE_PATTERNS)}; or a pattern "
                             "over names such as aten.mm.default): e.g. ac.save=[attention]")
        inplace = [n for n in hits or () if n.split(".")[1].endswith("_")]  # aten.add_.Tensor: writes its input
        if inplace:
            raise ValueError(f"ac.save: {p!r} matches in-place operators (e.g. {inplace[0]}), whose outputs are "
                             "their inputs, changed later, so they cannot be kept: narrow it, e.g. ac.save=[matmul]")


def _recompute(ctx, func, *args, **kwargs):
    return CheckpointPolicy.MUST_RECOMPUTE


#: full recompute spelled as a selective policy (what torch.compile's partitioner obeys)
RECOMPUTE_ALL = partial(create_selective_checkpoint_contexts, _recompute)


def selective_saved_bytes(shape) -> float:
    """What selective recompute keeps beyond the block inputs: each layer's attention output (bf16)
    and log-sum-exp (fp32)."""
    a = shape.args
    return a.n_layers * shape.seq_len * (2 * a.n_heads * a.head_dim + 4 * a.n_heads)


class Recompute(ActivationMemory):
    name = "recompute"
    leaner = "+ac=offload"

    def __init__(self, mode: str = "full", save=("attention",), inside: bool = True):
        if mode not in ("full", "selective"):
            raise ValueError(f"recompute mode '{mode}' is unknown: use ac.mode=full or ac.mode=selective")
        self.mode, self.save, self.inside = mode, list(save), bool(inside)
        if mode == "selective":
            check_save(self.save)
        elif [str(x) for x in self.save] != ["attention"]:  # the default, set by selective's yaml
            raise ValueError(f"ac.save={self.save} names what selective recompute keeps, and ac.mode={mode} keeps "
                             "none of it: leave ac.save out, or use ac.mode=selective")
        self.context_fn = (
            partial(create_selective_checkpoint_contexts, save_policy(self.save)) if mode == "selective" else None
        )
        self.label = "Recompute" + (f" ({mode})" if mode != "full" else "")
        self.recompute = RecomputeFacts(blocks=True, attention=mode == "full")
        self.checkpoint_in_block = self.inside

    def saved_bytes(self, shape) -> float:
        """Every block's input, and in selective mode attention's outputs."""
        extra = selective_saved_bytes(shape) if self.mode == "selective" else 0.0
        return shape.args.n_layers * shape.block_input_bytes + extra

    def host_bytes(self, shape) -> float:
        return 0.0

    def checkpoint_block(self, fn, *args):
        context_fn = self.context_fn
        if context_fn is None and torch.compiler.is_compiling():
            # traced by torch.compile: the partitioner may otherwise save what it finds cheap to keep
            # (it kept attention outputs: +0.7 GiB at 0.6B/8192); full mode keeps block inputs only
            context_fn = RECOMPUTE_ALL
        kw = {"context_fn": context_fn} if context_fn else {}
        return checkpoint(fn, *args, use_reentrant=False, **kw)

    def apply(self, model):
        if getattr(model, "own_checkpointing", False) or not self.inside:
            model.block_runner = lambda block, x, rope, meta: self.checkpoint_block(block, x, rope, meta)
            return
        for block in model.layers:  # the block runner stays a plain call: each block checkpoints itself
            block.forward = partial(self.checkpoint_block, block.forward)

    def step_context(self):
        return contextlib.nullcontext()

    def describe(self) -> dict:
        kept = "block inputs" + (f" + outputs of {', '.join(self.save)} ops" if self.mode == "selective" else "")
        return {"ac": "recompute", "ac_mode": self.mode, "saved": kept,
                "checkpoint": "inside the block" if self.inside else "around the block's call"}


@hookimpl
def stepbench_register_checkpointing(register):
    register(
        "recompute",
        lambda options, ctx: Recompute(options.get("mode", "full"), options.get("save", ["attention"]),
                                       options.get("inside", True)),
        doc="per-block checkpointing; ac.mode=selective keeps attention outputs",
    )
