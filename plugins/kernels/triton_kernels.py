"""``triton``: stepbench's Triton kernels for RMSNorm (alone and after the residual add), SwiGLU and
RoPE (``triton_ops``).

Runs on a CUDA GPU; on a CPU only under ``TRITON_INTERPRET=1`` (Triton's interpreter: slow, for
the numerics checks). The kernels are torch custom ops with their backward, opaque to
torch.compile, so they compose with compiled blocks, every activation strategy and adapter.
"""

from __future__ import annotations

import os

from core import hookimpl
from core.kernels import LoadedOps


class TritonKernels(LoadedOps):
    name = label = "triton"

    @property
    def provider(self) -> str:
        from plugins.attention.common import package_version

        mode = " (interpreter)" if os.environ.get("TRITON_INTERPRET") == "1" else ""
        return f"triton {package_version('triton')}{mode}: stepbench kernels"

    def load(self) -> dict:
        from plugins.kernels import triton_ops

        return {op: getattr(triton_ops, op) for op in self.ops}

    def prepare(self) -> None:
        try:
            super().prepare()
        except Exception as e:
            from core.errors import first_line

            raise ValueError(f"kernels triton cannot load ({type(e).__name__}: {first_line(e, with_type=False)}): "
                             "use +kernels=eager") from None


def why_not(ctx):
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return "needs the triton package (pip install triton); use +kernels=eager"
    if ctx.device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "needs a CUDA GPU (or TRITON_INTERPRET=1: Triton's interpreter, slow); use +kernels=eager"
    return None


@hookimpl
def stepbench_register_kernels(register):
    register("triton", lambda options, ctx: TritonKernels(), why_not,
             doc="stepbench's Triton kernels: RMSNorm (with the residual add), SwiGLU, RoPE (fwd+bwd, custom ops)")
