"""``none``: keep every activation on the GPU (fastest, most memory)."""

from __future__ import annotations

import contextlib

from core import hookimpl
from core.contracts import ActivationMemory, RecomputeFacts
from core.models.common import run_block


class NoCheckpointing(ActivationMemory):
    name = "none"
    label = "None"
    recompute = RecomputeFacts(blocks=False, attention=False)
    checkpoint_in_block = False
    leaner = "+ac=recompute"

    def apply(self, model):
        model.block_runner = run_block

    def step_context(self):
        return contextlib.nullcontext()

    def describe(self) -> dict:
        return {"ac": "none", "saved": "every activation"}

    def saved_bytes(self, shape) -> float:
        return shape.args.n_layers * shape.live_block_bytes

    def host_bytes(self, shape) -> float:
        return 0.0


@hookimpl
def stepbench_register_checkpointing(register):
    register("none", lambda options, ctx: NoCheckpointing(), doc="no activation checkpointing")
