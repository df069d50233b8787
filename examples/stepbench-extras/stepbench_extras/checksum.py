"""``checksum``: every step, gather the weights inference needs to the host and hash them.

A weight-sync method that moves what a real hand-off moves (the bf16 tensors the adapter declares,
:meth:`core.contracts.Adapter.handoff`: every weight for full fine-tuning, only the adapter's
otherwise), through the same gather and pinned host buffer as ``+sync=host``
(:class:`core.sync.HostStager`), then computes a digest of the bytes (``sync.algorithm``, sha256 by
default) on rank 0. The digests are stored in the row (``sync_info.digests``): two rows of the same
seed and configuration hand off the same weights exactly when their digests agree.
"""

from __future__ import annotations

import hashlib

import torch

from core.contracts import WeightSync
from core.sync import HostStager, Timed, device_drain

#: hashlib's algorithms with a fixed digest size (the shake ones need a length)
ALGORITHMS = sorted(a for a in hashlib.algorithms_guaranteed if not a.startswith("shake"))


class Checksum(WeightSync):
    name = label = "checksum"

    def __init__(self, algorithm: str = "sha256", gather_mib: int = 128):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"sync.algorithm={algorithm} is not one of {', '.join(ALGORITHMS)}: "
                             "try sync.algorithm=sha256")
        if not isinstance(gather_mib, int) or isinstance(gather_mib, bool) or gather_mib < 0:
            raise ValueError(f"sync.gather_mib must be a whole number of MiB, 0 or more (got {gather_mib!r}): "
                             "try sync.gather_mib=128")
        self.algorithm, self.gather_mib = algorithm, gather_mib
        self.timed, self.stager, self.rank = Timed(), None, 0
        self.digests: list[str] = []

    def check(self, ctx) -> str | None:
        from core.memory import GIB, host_available_gib

        avail = host_available_gib()
        if ctx.rank == 0 and avail is not None and ctx.predicted_bytes / GIB > avail:
            return (f"the checksum needs {ctx.predicted_bytes / GIB:.2f} GiB of host memory but {avail:.2f} GiB is "
                    "available: use +sync=none or an adapter")
        return None

    def setup(self, model, ctx) -> None:
        device = next(model.parameters()).device
        self.rank = ctx.rank
        self.timed.drain = device_drain(device) or self.timed.drain
        self.stager = HostStager(ctx.tensors(model), torch.bfloat16, ctx.rank, device, side_stream=False,
                                 gather_mib=self.gather_mib)

    def before_update(self) -> None:
        pass

    def _hand_off(self) -> None:
        self.stager.stage()
        self.stager.wait_ready()
        if self.rank == 0:
            h = hashlib.new(self.algorithm)
            if self.stager.numel:
                h.update(memoryview(self.stager.flat.view(torch.uint8).numpy()))
            self.digests.append(h.hexdigest())

    def after_step(self, step: int) -> None:
        self.timed.run_inline(self._hand_off)

    def finish(self) -> None:
        self.timed.close()

    def describe(self) -> dict:
        return {"method": self.name, "algorithm": self.algorithm, "digests": self.digests,
                "bytes_per_step": self.stager.nbytes if self.stager else 0, **self.timed.describe()}
