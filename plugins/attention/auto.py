"""``auto``: the fastest attention backend that can run here.

CUDA: fa3 where it can run; else cuDNN for micro-batches of one document and fa2 for packed
ones. CPU: sdpa. The row records the provider that ran.
"""

from __future__ import annotations

from core import hookimpl


class Auto:
    name = "auto"

    def __init__(self, ctx):
        from plugins.attention import cudnn, fa2, fa3, sdpa

        self.single = self.packed = None
        if ctx.device != "cuda":
            self.single = self.packed = sdpa.SDPA()
        elif fa3.why_not(ctx) is None:
            self.single = self.packed = fa3.FA3()
        else:
            self.single = cudnn.CuDNN() if cudnn.why_not(ctx) is None else fa2.make(None)
            self.packed = fa2.make(None) if fa2.why_not(ctx) is None else sdpa.SDPA()
        self.used = set()

    @property
    def provider(self):
        return "auto: " + " + ".join(sorted(self.used)) if self.used else "auto"

    def __call__(self, q, k, v, meta):
        b = self.single if len(meta.cu_seqlens_host) == 2 else self.packed
        self.used.add(b.provider)
        return b(q, k, v, meta)


@hookimpl
def stepbench_register_attention(register):
    from core.plugins import RunContext

    register("auto", lambda cfg: Auto(RunContext.detect()), doc="fastest backend that runs here")
