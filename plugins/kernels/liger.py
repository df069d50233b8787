"""``liger``: Liger-Kernel's Triton kernels for RMSNorm (alone and fused with the residual add before
it) and SwiGLU, where the liger-kernel package is
installed (an optional dependency, registered like a third-party plugin: the ``why_not`` says how
to get it). RoPE runs as PyTorch ops (Liger's RoPE takes another layout)."""

from __future__ import annotations

from core import hookimpl


class LigerKernels:
    name = label = "liger"
    ops = frozenset({"rms_norm", "swiglu", "add_rms_norm"})

    @property
    def provider(self) -> str:
        from plugins.attention.common import package_version

        return f"liger-kernel {package_version('liger-kernel', 'liger_kernel')}"

    def prepare(self) -> None:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        try:  # liger-kernel 0.6 and later
            from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
        except ImportError:
            LigerFusedAddRMSNormFunction = None
        self._rms, self._swiglu, self._add_rms = LigerRMSNormFunction, LigerSiLUMulFunction, LigerFusedAddRMSNormFunction
        if self._add_rms is None:  # the add as a PyTorch op, then Liger's norm (core.kernels.Bound)
            self.ops = self.ops - {"add_rms_norm"}

    def rms_norm(self, x, weight, eps):
        return self._rms.apply(x, weight, eps, 0.0, "llama")

    def swiglu(self, gate, up):
        return self._swiglu.apply(gate, up)

    def add_rms_norm(self, x, residual, weight, eps):
        return self._add_rms.apply(x, residual, weight, eps, 0.0, "llama", False)

    def rope(self, x, cos, sin):
        from core.kernels import rope

        return rope(x, cos, sin)


def why_not(ctx):
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        return "needs the liger-kernel package (pip install liger-kernel); use +kernels=triton or +kernels=eager"
    if ctx.device != "cuda":
        return "needs a CUDA GPU; use +kernels=eager"
    return None


@hookimpl
def stepbench_register_kernels(register):
    register("liger", lambda options, ctx: LigerKernels(), why_not,
             doc="Liger-Kernel's RMSNorm (also fused with the residual add) and SwiGLU (needs pip install liger-kernel)")
