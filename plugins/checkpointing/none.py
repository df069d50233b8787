"""``none``: keep every activation on the GPU (fastest, most memory)."""

from __future__ import annotations

import contextlib

from core import hookimpl
from core.models.common import run_block


class NoCheckpointing:
    name = "none"

    def apply(self, model):
        model.block_runner = run_block

    def step_context(self):
        return contextlib.nullcontext()

    def describe(self) -> dict:
        return {"ac": "none", "saved": "every activation"}


@hookimpl
def stepbench_register_checkpointing(register):
    register("none", lambda cfg: NoCheckpointing(), doc="no activation checkpointing")
