"""``filesystem``: each step writes the weights inference needs as safetensors (prime-rl's default).

Full fine-tuning writes every weight in bf16; LoRA writes only the adapter. The file is the
safetensors format written straight from the pinned host buffer the weights are staged in (a
header, then that buffer, each bucket written as soon as its copy from the GPU lands): no
serialized copy of the weights on the host, and the disk write overlaps the copy. Each step goes to
``<dir>/step_<n>/model.safetensors`` (written under a temporary name, then renamed) and is marked
complete by ``<dir>/step_<n>/COMPLETE``, created last by an atomic rename: a crash mid-write never
leaves a step marked complete. Only the newest ``keep`` complete steps are kept. ``dir`` may be
on disk or in ``/dev/shm``. ``overlap=true`` copies on a side stream and writes on a host thread
while the next step computes; the row records how much of the hand-off stayed exposed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from core import hookimpl
from core.sync import HostStager, Timed, device_drain, sync_tensors

MARKER = "COMPLETE"
WEIGHTS = "model.safetensors"


SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def safetensors_header(stager: HostStager, metadata: dict) -> bytes:
    """The safetensors header for the stager's flat buffer: each tensor at its byte range, back to
    back in staging order (the file's data section is the flat buffer itself)."""
    head: dict = {"__metadata__": metadata}
    for (n, p), off in zip(stager.params, stager.offsets):
        a = off * stager.itemsize
        head[n] = {"dtype": SAFETENSORS_DTYPES[stager.dtype], "shape": list(p.shape),
                   "data_offsets": [a, a + p.numel() * stager.itemsize]}
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


#: how the file reaches the page cache: ``write``: the header, then the pinned buffer itself, one
#: staged bucket at a time as each copy from the GPU lands (no serialized copy of the weights);
#: ``safetensors``: the library's ``save_file`` of the staged tensors once all have landed (the
#: reference). On the lent H100 both write ~3 GB/s into the page cache, disk or /dev/shm alike (the
#: kernel's page allocation bounds it: a thread pool or an mmap copy was no faster, sync_bench.py);
#: ``write`` halves the hand-off of a LoRA adapter (20 MB: 12 vs 21 ms)
WRITERS = ("write", "safetensors")


def write_file(path: Path, stager: HostStager, metadata: dict, fsync: bool, how: str = "write") -> None:
    """The safetensors file of the staged tensors at ``path`` (``how``: one of :data:`WRITERS`)."""
    if how == "safetensors":
        from safetensors.torch import save_file

        stager.wait_ready()
        save_file(stager.host, str(path), metadata=metadata)
        if fsync:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        return
    data = memoryview(stager.flat.view(torch.uint8).numpy()) if stager.numel else memoryview(b"")
    with open(path, "wb", buffering=0) as f:
        def write_all(v: memoryview) -> None:
            while len(v):
                v = v[f.write(v):]

        write_all(memoryview(safetensors_header(stager, metadata)))
        start = 0
        for end in stager.ready_chunks():  # each bucket as soon as its copy has landed
            write_all(data[start * stager.itemsize:end * stager.itemsize])
            start = end
        if fsync:
            os.fsync(f.fileno())


def write_step(stager: HostStager, out: Path, step: int, keep: int, fsync: bool, how: str = "write") -> None:
    """Write one step's tensors as ``model.safetensors`` and mark the step complete; drop steps
    older than ``keep``."""
    d = out / f"step_{step}"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (WEIGHTS + ".tmp")
    write_file(tmp, stager, {"step": str(step), "format": "pt"}, fsync, how)
    os.replace(tmp, d / WEIGHTS)
    marker_tmp = d / (MARKER + ".tmp")
    marker_tmp.write_text(f"{step}\n")
    os.replace(marker_tmp, d / MARKER)
    done = sorted((int(p.name.split("_", 1)[1]) for p in out.glob("step_*") if p.name.split("_", 1)[1].isdigit()))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(out / f"step_{old}", ignore_errors=True)


def complete_steps(out: str | Path) -> list[int]:
    """Steps under ``out`` that are marked complete (what an inference server may load)."""
    out = Path(out)
    return sorted(int(p.parent.name.split("_", 1)[1]) for p in out.glob(f"step_*/{MARKER}"))


class Filesystem:
    name = "filesystem"

    def __init__(self, dir: str = "runs/weights", keep: int = 2, overlap: bool = False, fsync: bool = False,
                 cleanup: bool = True, writer: str = "write"):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"sync.keep must be a positive integer (got {keep!r}): try sync.keep=2")
        if writer not in WRITERS:
            raise ValueError(f"sync.writer={writer} is not one of {', '.join(WRITERS)}: try sync.writer=write")
        self.writer = writer
        self.root, self.keep, self.overlap, self.fsync = Path(dir), keep, bool(overlap), bool(fsync)
        self.cleanup = bool(cleanup)
        self.out = None
        self.timed = Timed()
        self.stager = None

    def check(self, ctx) -> str | None:
        """Refuse before the row starts: an unwritable directory, or too little free space."""
        if ctx.rank != 0:
            return None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root):
                pass
        except OSError as e:
            return f"cannot write weights to sync.dir={self.root} ({e.strerror}): pick another, e.g. " \
                   "sync.dir=/dev/shm/stepbench-weights or +sync=none"
        need = ctx.predicted_bytes * (self.keep + 1)
        free = shutil.disk_usage(self.root).free
        if need > free:
            return (f"sync.dir={self.root} has {free / 2**30:.2f} GiB free but keeping {self.keep} steps of "
                    f"{ctx.predicted_bytes / 2**30:.2f} GiB needs {need / 2**30:.2f} GiB: free space, "
                    "lower sync.keep, or pick another sync.dir")
        return None

    def setup(self, model, ctx) -> None:
        self.rank, self.lora = ctx.rank, ctx.lora
        self.out = self.root / (ctx.row_id or "row")
        if self.rank == 0:
            shutil.rmtree(self.out, ignore_errors=True)
            self.out.mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        self.timed.drain = device_drain(device) or self.timed.drain
        self.stager = HostStager(sync_tensors(model, ctx.lora), torch.bfloat16, ctx.rank, device, self.overlap)

    def before_update(self) -> None:
        if self.stager is not None:
            self.stager.protect()

    def _write(self, step: int):
        def write():
            if self.rank == 0:
                write_step(self.stager, self.out, step, self.keep, self.fsync, self.writer)
            else:
                self.stager.wait_ready()
        return write

    def after_step(self, step: int) -> None:
        if self.overlap:
            self.timed.run_overlapped(self.stager.stage, self._write(step))
        else:
            self.timed.run_inline(lambda: (self.stager.stage(), self._write(step)()))

    def finish(self) -> None:
        self.timed.close()
        if self.cleanup and self.out is not None and self.rank == 0:
            shutil.rmtree(self.out, ignore_errors=True)  # a benchmark leaves no weights behind

    def describe(self) -> dict:
        return {"method": "filesystem", "dir": str(self.out), "overlap": self.overlap, "keep": self.keep,
                "writer": self.writer,
                "adapter_only": self.lora, "bytes_per_step": self.stager.nbytes if self.stager else 0,
                **self.timed.describe()}


@hookimpl
def stepbench_register_weight_sync(register):
    register("filesystem", lambda cfg: Filesystem(cfg.get("dir", "runs/weights"), cfg.get("keep", 2),
                                                  cfg.get("overlap", False), cfg.get("fsync", False),
                                                  cfg.get("cleanup", True), cfg.get("writer", "write")),
             doc="write bf16 weights (LoRA: the adapter) as safetensors each step; sync.dir, sync.overlap")
