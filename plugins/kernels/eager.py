"""``eager`` and ``inductor``: the block operations as PyTorch ops.

``eager`` (the default) is what the models compute with no provider bound: PyTorch ops, which
torch.compile fuses where the blocks are compiled (``compile=true``, the default on a GPU).
``inductor`` compiles each operation on its own (``torch.compile`` of the op's function, forward
and backward), so an uncompiled block (``compile=false``) still runs each one as a fused kernel;
inside a compiled block it is traced like the eager ops.
"""

from __future__ import annotations

from core import hookimpl
from core.kernels import LoadedOps, TorchOps


class Eager(TorchOps):
    name = label = "eager"


class Compiled(LoadedOps):
    name = label = "inductor"

    @property
    def provider(self) -> str:
        import torch

        return f"torch {torch.__version__} inductor (torch.compile per operation)"

    def load(self) -> dict:
        import torch

        from core import kernels

        return {op: torch.compile(getattr(kernels, op), dynamic=True) for op in self.ops}


@hookimpl
def stepbench_register_kernels(register):
    register("eager", lambda options, ctx: Eager(),
             doc="block operations as PyTorch ops (fused by torch.compile where blocks are compiled)")
    register("inductor", lambda options, ctx: Compiled(),
             doc="each block operation compiled on its own (torch.compile), also in uncompiled blocks")
