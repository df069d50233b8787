"""``every_other``: activation checkpointing on every other block.

Blocks 0, 2, 4, ... are checkpointed (non-reentrant ``torch.utils.checkpoint``: only their input is
kept, the block runs again in backward); blocks 1, 3, ... keep every activation. Half the recompute
of ``+ac=recompute`` for about half its memory saving.

What it declares (:class:`core.contracts.ActivationMemory`): ``saved_bytes`` is the input of each
checkpointed block plus the live activations of each other block; ``host_bytes`` is 0.

``recompute`` is the share of the model's forward it runs again: the checkpointed blocks'
(``ceil(n_layers / 2) / n_layers``, attention included), which the FLOP model
(:func:`core.flops.micro_batch_flops`) counts in a row's executed FLOPs, hardware FLOP rate and
step budget. Prime-rl's MFU and the roofline of useful work do not depend on it.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from core.contracts import ActivationMemory, RecomputeFacts


def _recompute_everything(ctx, func, *args, **kwargs):
    return CheckpointPolicy.MUST_RECOMPUTE


class EveryOther(ActivationMemory):
    name = "every_other"
    label = "Every other block"
    #: half the blocks (an even number of them); exact for the model once applied
    recompute = RecomputeFacts(blocks=0.5, attention=0.5)
    leaner = "+ac=recompute"

    def __init__(self, mode: str = "full", inside: bool = True):
        if mode != "full":
            raise ValueError(f"ac.mode={mode} is not for every_other, which recomputes whole blocks: use ac.mode=full "
                             "(or +ac=selective to keep attention outputs in every block)")
        if not isinstance(inside, bool):
            raise ValueError(f"ac.inside must be true or false (got {inside!r}): try ac.inside=true")
        self.inside = inside
        #: the checkpoint sits inside each checkpointed block's forward (compiled with it)
        self.checkpoint_in_block = inside

    @staticmethod
    def checkpointed(n_layers: int) -> list[int]:
        """The indices of the checkpointed blocks."""
        return list(range(0, n_layers, 2))

    def checkpoint_block(self, fn, *args):
        # traced by torch.compile, recompute everything (as +ac=recompute does): the partitioner may
        # otherwise keep what it finds cheap to keep
        kw = {"context_fn": partial(create_selective_checkpoint_contexts, _recompute_everything)} \
            if torch.compiler.is_compiling() else {}
        return checkpoint(fn, *args, use_reentrant=False, **kw)

    def apply(self, model) -> None:
        if getattr(model, "own_checkpointing", False):
            raise ValueError("every_other wraps the model's blocks, and this model checkpoints its own layers "
                             "(model.plain=true): use +ac=recompute or +ac=none")
        chosen = [model.layers[i] for i in self.checkpointed(len(model.layers))]
        share = len(chosen) / len(model.layers)
        self.recompute = RecomputeFacts(blocks=share, attention=share)
        if self.inside:
            for block in chosen:
                block.forward = partial(self.checkpoint_block, block.forward)
            return
        ids = {id(b) for b in chosen}

        def runner(block, x, rope, meta):
            return self.checkpoint_block(block, x, rope, meta) if id(block) in ids else block(x, rope, meta)

        model.block_runner = runner

    def step_context(self):
        return contextlib.nullcontext()

    def describe(self) -> dict:
        return {"ac": self.name, "saved": "inputs of blocks 0, 2, ...; every activation of blocks 1, 3, ...",
                "checkpoint": "inside the block" if self.inside else "around the block's call"}

    def saved_bytes(self, shape) -> float:
        n = shape.args.n_layers
        ckpt = math.ceil(n / 2)
        return ckpt * shape.block_input_bytes + (n - ckpt) * shape.live_block_bytes

    def host_bytes(self, shape) -> float:
        return 0.0
