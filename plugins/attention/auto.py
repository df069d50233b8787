"""``auto``: the fastest attention backend that can run here.

CUDA: fa3 where it can run (its import and a tiny call are tried once, in :meth:`Auto.prepare`; on
failure auto falls back with one line saying why; head dims the FA3 build has no kernels for go to
fa2); else cuDNN for micro-batches of one document and fa2 for packed ones; attention features those cannot honour (gpt-oss's sinks) go to flex. CPU: sdpa. Only
registered (not blocked) backends are considered. The row records the provider that ran, and its
roofline uses the measured ceilings of the kernel that ran.
"""

from __future__ import annotations

import sys

import torch

from core import hookimpl
from core.errors import first_line
from core.contracts import ATTN_FEATURES, AttentionBackend


def _make(reg, ctx, name):
    """The backend ``name``, prepared, if registered and able to run here, else None."""
    if name not in reg.names("attn"):
        return None
    e = reg.get("attn", name)
    if e.unavailable(ctx):
        return None
    b = e.factory({"name": name}, ctx)
    b.prepare()
    return b


def say(msg: str) -> None:
    print(f"stepbench: attn auto: {msg}", file=sys.stderr, flush=True)


def try_fa3(reg, ctx):
    """FA3 if it imports and runs a tiny call here; else None and one line saying why."""
    import importlib.util

    if "fa3" in reg.names("attn"):
        why = reg.get("attn", "fa3").unavailable(ctx)
        if why and importlib.util.find_spec("flash_attn_interface") is not None:  # a partial install
            say(f"fa3 cannot run ({why.split(':')[0]}); falling back to fa2/cudnn")
            return None
    try:
        return _make(reg, ctx, "fa3")  # prepare runs a tiny call
    except Exception as e:  # a partial install: missing _C or flash_attn_config, a kernel that fails
        first = first_line(e, with_type=False) or type(e).__name__
        say(f"fa3 is installed but does not run ({first}); falling back to fa2/cudnn")
        return None


class Auto(AttentionBackend):
    name = label = "auto"

    def __init__(self, ctx):
        self.ctx = ctx
        self.single = self.packed = self.other = self.fallback = None
        self.fa3_dims = None
        self.used: dict = {}  # provider -> backend, in the order first used

    def prepare(self) -> None:
        from core.plugins import registry

        reg, ctx = registry(), self.ctx
        if ctx.device != "cuda":
            self.single = self.packed = _make(reg, ctx, "sdpa")
        else:
            fa3 = try_fa3(reg, ctx)
            if fa3 is not None:
                from plugins.attention.fa3 import built_head_dims

                self.single = self.packed = fa3
                self.fa3_dims = built_head_dims()  # other head dims go to fa2 (or sdpa)
                self.other = _make(reg, ctx, "fa2") or _make(reg, ctx, "sdpa")
            else:
                fa2 = _make(reg, ctx, "fa2")
                self.packed = fa2 or _make(reg, ctx, "sdpa")
                self.single = _make(reg, ctx, "cudnn") or self.packed
        # every feature: flex (compiled) on a GPU, else sdpa's explicit computation (slowly)
        for name in ("flex", "sdpa") if ctx.device == "cuda" else ("sdpa",):
            if name in reg.names("attn") and not reg.get("attn", name).unavailable(ctx):
                self.fallback = reg.get("attn", name).factory({"name": name}, ctx)
                break
        if self.single is None or self.packed is None:
            raise ValueError("attn auto found no registered attention backend that runs here: "
                             "unblock one (STEPBENCH_BLOCK_PLUGINS) or pick one with +attn=<name>")

    def _chosen(self) -> dict:
        """provider -> backend of the calls made, or, where every call ran compiled (no bookkeeping
        there), of the backends the choice can take: the one-document and the packed one."""
        if self.used:
            return self.used
        return {b.provider: b for b in (self.single, self.packed) if b is not None}

    @property
    def provider(self) -> str:
        chosen = self._chosen()
        return "auto: " + " + ".join(sorted(chosen)) if chosen else "auto"

    @property
    def kernel(self) -> str:
        """The kernel family of the backend that ran (the first one used, where several did)."""
        chosen = self._chosen()
        return next(iter(chosen.values())).kernel if chosen else ""

    @property
    def repeats_kv(self) -> bool:
        return any(getattr(b, "repeats_kv", False) for b in (self.single, self.packed) if b is not None)

    @property
    def features(self) -> frozenset:
        """Every feature some candidate here has (a call that needs one goes to a backend that has it)."""
        out = set()
        for b in (self.single, self.packed, self.other, getattr(self, "fallback", None)):
            out |= set(getattr(b, "features", ()) if b is not None else ())
        return frozenset(out) if self.single is not None else frozenset(ATTN_FEATURES)

    def __call__(self, q, k, v, meta, **features):
        b = self.single if len(meta.cu_seqlens_host) == 2 else self.packed
        if self.fa3_dims is not None and q.shape[-1] not in self.fa3_dims and self.other is not None:
            b = self.other  # a head dim this FA3 build has no kernels for
        if features and not set(features) <= set(getattr(b, "features", ())):  # the next that has them
            b = next((c for c in (self.packed, self.other, getattr(self, "fallback", None))
                      if c is not None and set(features) <= set(getattr(c, "features", ()))), b)
        if not torch.compiler.is_compiling():  # bookkeeping in compiled code would break its graph
            self.used.setdefault(b.provider, b)
        return b(q, k, v, meta, **features)


def why_not(ctx) -> str | None:
    """None where some backend auto picks from is registered and runs here (checked before anything
    is built: a blocklist or a missing package may leave none)."""
    from core.plugins import registry

    reg = registry()
    names = ("fa3", "fa2", "sdpa") if ctx.device == "cuda" else ("sdpa",)
    if any(n in reg.names("attn") and not reg.get("attn", n).unavailable(ctx) for n in names):
        return None
    return (f"none of the backends it picks from ({', '.join(names)}) is registered and runs here: unblock one "
            "(STEPBENCH_BLOCK_PLUGINS) or pick one with +attn=<name> (python -m core.bench --list)")


@hookimpl
def stepbench_register_attention(register):
    register("auto", lambda options, ctx: Auto(ctx), why_not=why_not, doc="fastest backend that runs here")
