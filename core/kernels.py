"""The block operations a kernels provider may replace (:data:`core.contracts.KERNEL_OPS`), as
PyTorch ops: what every model computes when no provider is bound, what the ``eager`` provider runs,
and the reference the conformance kit checks the others against (in float32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.contracts import KERNEL_OPS


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` features of each head (rotate-half convention)."""
    rot = cos.shape[-1]
    xr, xp = (x, None) if rot == x.shape[-1] else (x[..., :rot], x[..., rot:])
    x1, x2 = xr.chunk(2, -1)
    out = xr * cos + torch.cat([-x2, x1], -1) * sin
    return out if xp is None else torch.cat([out, xp], -1)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """A block's residual add and the norm after it: ``(rms_norm(h), h)`` with ``h = x + residual``."""
    h = x + residual
    return rms_norm(h, weight, eps), h


#: every operation of :data:`core.contracts.KERNEL_OPS`, in its order
OPS = tuple(KERNEL_OPS)


class TorchOps:
    """PyTorch ops for every operation (torch.compile fuses them where blocks are compiled): what a
    model computes when no provider is bound; the built-in ``eager`` provider is this."""

    ops = frozenset(OPS)
    torch_ops = True  #: nothing to bind: the models compute these ops anyway
    provider = f"torch {torch.__version__} (PyTorch ops)"

    def prepare(self) -> None:
        pass

    rms_norm = staticmethod(rms_norm)
    swiglu = staticmethod(swiglu)
    rope = staticmethod(rope)
    add_rms_norm = staticmethod(add_rms_norm)


EAGER = TorchOps()


class LoadedOps:
    """A provider whose operation functions are made on first use (``load()`` returns them by
    name: compiled, or imported kernels), so the factory stays cheap and ``prepare()`` loads them."""

    ops = frozenset(OPS)

    def __init__(self):
        self._fns = None

    def load(self) -> dict:
        raise NotImplementedError

    def _get(self, op: str):
        if self._fns is None:
            self._fns = self.load()
        return self._fns[op]

    def prepare(self) -> None:
        self._get(next(iter(self.ops)))

    def rms_norm(self, x, weight, eps):
        return self._get("rms_norm")(x, weight, eps)

    def swiglu(self, gate, up):
        return self._get("swiglu")(gate, up)

    def rope(self, x, cos, sin):
        return self._get("rope")(x, cos, sin)

    def add_rms_norm(self, x, residual, weight, eps):
        self._get("rms_norm")
        if "add_rms_norm" not in self._fns:  # a load() of the three older operations: the add, then its norm
            h = x + residual
            return self._fns["rms_norm"](h, weight, eps), h
        return self._fns["add_rms_norm"](x, residual, weight, eps)


class Bound:
    """A provider with PyTorch ops for what it does not implement (what the trainer binds)."""

    def __init__(self, provider):
        self.provider = provider
        for op in OPS:
            setattr(self, op, getattr(provider, op) if op in provider.ops else getattr(EAGER, op))
        if "add_rms_norm" not in provider.ops and "rms_norm" in provider.ops:
            self.add_rms_norm = self._add_then_norm

    def _add_then_norm(self, x, residual, weight, eps):
        """The residual add as a PyTorch op, then the provider's own norm."""
        h = x + residual
        return self.rms_norm(h, weight, eps), h


def kernels_of(module) -> object:
    """The kernels bound to a module (PyTorch ops where none is)."""
    return getattr(module, "kernels", None) or EAGER
