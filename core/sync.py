"""What every weight-sync method shares: which tensors inference needs, gathering them from the
FSDP2 shards into host buffers (optionally on a side stream), and timing the hand-off.

The trainer calls ``before_update()`` just before each optimizer step (an overlapped copy of the
previous step's weights must finish reading them first) and ``after_step(step)`` right after it,
inside the timed step, as prime-rl's trainer hands weights to inference at every step.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch


@dataclass
class SyncContext:
    """What a weight-sync method may know about the row."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    lora: bool = False
    predicted_bytes: int = 0  # bytes handed over per step (bf16), predicted from the config
    row_id: str = ""


def sync_tensors(model, lora: bool) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters inference needs: every weight for full fine-tuning, the adapter for LoRA."""
    return [(n, p) for n, p in model.named_parameters() if (not lora or "lora_" in n)]


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP2-sharded) parameter; a collective on every rank with
    more than one rank (with one, the local shard is the whole tensor: no collective)."""
    t = p.detach()
    if not hasattr(t, "full_tensor"):
        return t
    return t.to_local() if t.device_mesh.size() == 1 else t.full_tensor()


def digest(tensors) -> str:
    """sha256 of the tensors' bytes in order (what the receiver must reproduce bit for bit)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.device.type == "cpu"
                 else t.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


#: elements cast and copied to the host at once by :class:`HostStager` (16 Mi: 32 MiB in bf16)
STAGE_CHUNK = 1 << 24


class HostStager:
    """Copies the sync tensors, cast to ``dtype``, into one flat host buffer allocated once (pinned
    on CUDA); ``host`` maps each name to its view of it, in order, back to back (the layout of a
    safetensors data section). Every rank joins the gathers; rank 0 keeps the bytes.

    The flat buffer is filled in buckets of ``chunk`` elements: on CUDA each bucket's slices are
    cast into one device buffer by a single foreach copy and copied to the host at once, and an
    event marks the bucket done, so a writer can start on the first bucket while the rest are still
    in flight (:meth:`ready_chunks`). With ``side_stream`` the copies run on a side stream that
    waits for the optimizer step."""

    def __init__(self, params, dtype: torch.dtype, rank: int, device: torch.device, side_stream: bool,
                 chunk: int | None = None):
        self.params, self.dtype, self.rank, self.device = params, dtype, rank, device
        cuda = device.type == "cuda"
        sizes = [p.numel() for _, p in params]
        self.numel = sum(sizes)
        self.itemsize = torch.finfo(dtype).bits // 8
        self.nbytes = self.numel * self.itemsize
        self.flat = torch.empty(self.numel, dtype=dtype, pin_memory=cuda) if rank == 0 else None
        self.host, self.offsets = {}, []
        off = 0
        for (n, p), k in zip(params, sizes):
            self.offsets.append(off)
            if rank == 0:
                self.host[n] = self.flat[off:off + k].view(tuple(p.shape))
            off += k
        # bucket b covers flat elements [b * chunk, min((b + 1) * chunk, numel)); its segments are
        # (param index, first and last element of the param, first element in the bucket)
        self.chunk = max(1, min(chunk or STAGE_CHUNK, self.numel))
        self.buckets: list[list[tuple[int, int, int, int]]] = []
        for i, (o, k) in enumerate(zip(self.offsets, sizes)):
            a = 0
            while a < k:
                b_idx, in_b = divmod(o + a, self.chunk)
                take = min(k - a, self.chunk - in_b)
                while len(self.buckets) <= b_idx:
                    self.buckets.append([])
                self.buckets[b_idx].append((i, a, a + take, in_b))
                a += take
        self.stream = torch.cuda.Stream(device) if (cuda and side_stream) else None
        self.marks: list[tuple[int, object]] = []  # (end element, event or None) per bucket
        self.ready = None

    def _sources(self):
        """Each param's whole tensor, flattened, gathered once and dropped once its last bucket is
        staged (with several ranks only one gathered parameter is held at a time)."""
        held: dict[int, torch.Tensor] = {}

        def get(i: int) -> torch.Tensor:
            if i not in held:
                held.clear()
                held[i] = full_tensor(self.params[i][1]).reshape(-1)
            return held[i]
        return get

    def stage(self) -> None:
        cuda = self.device.type == "cuda"
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        marks = []
        with ctx:
            get = self._sources()
            buf = torch.empty(self.chunk, dtype=self.dtype, device=self.device) if (cuda and self.rank == 0) else None
            for b, segs in enumerate(self.buckets):
                srcs = [get(i)[a:e] for i, a, e, _ in segs]
                start = b * self.chunk
                end = start + sum(e - a for _, a, e, _ in segs)
                if self.rank != 0:
                    continue
                if buf is None:  # host tensors: cast straight into the flat buffer
                    torch._foreach_copy_([self.flat[start + d:start + d + e - a] for _, a, e, d in segs], srcs)
                    marks.append((end, None))
                    continue
                torch._foreach_copy_([buf[d:d + e - a] for _, a, e, d in segs], srcs)
                self.flat[start:end].copy_(buf[:end - start], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record()
                marks.append((end, ev))
            if cuda:
                self.ready = torch.cuda.Event()
                self.ready.record()
        self.marks = marks

    def ready_chunks(self):
        """Yields the end (in elements) of each staged bucket, in order, once its bytes are on the host."""
        for end, ev in self.marks:
            if ev is not None:
                ev.synchronize()
            yield end

    def wait_ready(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()

    def protect(self) -> None:
        """Make the compute stream wait until the side stream has read the weights."""
        if self.stream is not None and self.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(self.ready)


class Timed:
    """Per-step sync timing: total seconds of the hand-off and the part the step waited for.

    ``drain`` (a device synchronize on CUDA) runs before each timer starts: the host runs ahead of
    the GPU, so without it the hand-off's time would include the tail of the step's own compute.
    The step time is the same either way (the bench synchronizes at the end of every step)."""

    def __init__(self, drain=None):
        self.drain = drain or (lambda: None)
        self.total: list[float] = []
        self.exposed: list[float] = []
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="stepbench-sync")
        self.pending: Future | None = None

    def run_inline(self, fn) -> None:
        self.drain()
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        self.total.append(dt)
        self.exposed.append(dt)

    def wait_pending(self) -> float:
        """Wait for the overlapped hand-off in flight; returns the seconds waited."""
        if self.pending is None:
            return 0.0
        t = time.perf_counter()
        self.total.append(self.pending.result())
        self.pending = None
        return time.perf_counter() - t


    def run_overlapped(self, stage, write) -> None:
        """Stage now (exposed), write on the host thread; the wait for the previous one is exposed too."""
        self.drain()
        t = time.perf_counter()
        waited = self.wait_pending()
        stage()
        staged = time.perf_counter() - t

        def job():
            t0 = time.perf_counter()
            write()
            return staged - waited + time.perf_counter() - t0

        self.pending = self.pool.submit(job)
        self.exposed.append(time.perf_counter() - t)

    def close(self) -> None:
        self.wait_pending()
        self.pool.shutdown(wait=True)

    def describe(self) -> dict:
        """Per-step lists, warm-up step first (means are taken over the measured steps by the caller)."""
        return {"sync_s": self.total, "sync_exposed_s": self.exposed}


def device_drain(device: torch.device):
    """What :class:`Timed` runs before timing a hand-off on ``device``."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
