"""``host``: gather the bf16 weights (an adapter's: only its own) into pinned host memory every step.

What prime-rl's trainer did in the bench mode that wrote the published RL Full rows: after each
optimizer step the full weights are gathered from the FSDP2 shards and copied, cast to bf16, into
host memory, where an inference server in the same process tree would read them; no file is
written. The buffer is pinned and allocated once, so every step copies the same bytes to the same
pages (a file written every step instead grows the page cache: the filesystem hand-off of 4B
full fine-tuning, 8 GB a step, slowed step over step). ``sync.overlap=true`` copies on a side stream
while the next step computes.
"""

from __future__ import annotations

from core import hookimpl
from core.contracts import WeightSync
from core.sync import GATHER_MIB, HostStager, Timed, device_drain


class Host(WeightSync):
    name = "host"

    def __init__(self, overlap: bool = False, gather_mib: int = GATHER_MIB):
        if not isinstance(gather_mib, int) or isinstance(gather_mib, bool) or gather_mib < 0:
            raise ValueError(f"sync.gather_mib must be a whole number of MiB, 0 or more (got {gather_mib!r}): "
                             f"try sync.gather_mib={GATHER_MIB}")
        self.overlap, self.gather_mib = bool(overlap), gather_mib
        self.timed, self.stager, self.adapter_only = Timed(), None, False

    @property
    def label(self) -> str:
        return "host" + (" overlap" if self.overlap else "")

    def check(self, ctx) -> str | None:
        from core.memory import GIB, host_available_gib

        if self.overlap and ctx.device != "cuda":  # the overlap is a CUDA side stream's copy
            return ("sync.overlap copies the weights on a CUDA side stream beside the step, and this row runs on the "
                    "CPU, where the copy is inline: leave sync.overlap out")
        avail = host_available_gib()
        if ctx.rank == 0 and avail is not None and ctx.predicted_bytes / GIB > avail:
            return (f"the hand-off needs {ctx.predicted_bytes / GIB:.2f} GiB of pinned host memory but "
                    f"{avail:.2f} GiB is available: use +sync=none or an adapter")
        return None

    def setup(self, model, ctx) -> None:
        device = next(model.parameters()).device
        self.adapter_only = ctx.adapter_only
        self.timed.drain = device_drain(device) or self.timed.drain
        import torch

        self.stager = HostStager(ctx.tensors(model), torch.bfloat16, ctx.rank, device, self.overlap,
                                 gather_mib=self.gather_mib)

    def before_update(self) -> None:
        if self.stager is not None:
            self.stager.protect()

    def after_step(self, step: int) -> None:
        if self.overlap:
            self.timed.run_overlapped(self.stager.stage, self.stager.wait_ready)
        else:
            self.timed.run_inline(lambda: (self.stager.stage(), self.stager.wait_ready()))

    def finish(self) -> None:
        self.timed.close()

    def describe(self) -> dict:
        return {"method": "host", "overlap": self.overlap, "adapter_only": self.adapter_only,
                "bytes_per_step": self.stager.nbytes if self.stager else 0, **self.timed.describe()}


@hookimpl
def stepbench_register_weight_sync(register):
    register("host", lambda o, ctx: Host(o.get("overlap", False), o.get("gather_mib", GATHER_MIB)),
             doc="gather bf16 weights (an adapter: its own) into pinned host memory every step, no file "
                 "(prime-rl's bench RL Full rows)")
