"""What every weight-sync method shares: gathering the tensors inference needs (the adapter
declares which: :meth:`core.contracts.Adapter.handoff`) from the FSDP2 shards into host buffers
(optionally on a side stream), and timing the hand-off.

The trainer calls ``before_update()`` just before each optimizer step (an overlapped copy of the
previous step's weights must finish reading them first) and ``after_step(step)`` right after it,
inside the timed step, as prime-rl's trainer hands weights to inference at every step.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP2-sharded) parameter; a collective on every rank with
    more than one rank (with one, the local shard is the whole tensor: no collective)."""
    t = p.detach()
    if not hasattr(t, "full_tensor"):
        return t
    return t.to_local() if t.device_mesh.size() == 1 else t.full_tensor()


#: MiB of whole tensors (in the staged dtype) gathered by one collective at world size > 1
GATHER_MIB = 128


def buckets(shapes: list[tuple], itemsize: int, bucket_bytes: int) -> list[list[int]]:
    """Indices of tensors grouped so that each group holds at most ``bucket_bytes`` (one tensor per
    group when it alone is larger)."""
    out, cur, size = [], [], 0
    for i, s in enumerate(shapes):
        n = itemsize * int(torch.Size(s).numel())
        if cur and size + n > bucket_bytes:
            out.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += n
    if cur:
        out.append(cur)
    return out


def _dim0_sharded(t: torch.Tensor):
    """The 1-D mesh of a DTensor sharded on dim 0 over several ranks (FSDP2's layout), else None."""
    from torch.distributed.tensor.placement_types import Shard

    mesh = getattr(t, "device_mesh", None)
    if mesh is None or mesh.ndim != 1 or mesh.size() == 1 or tuple(t.placements) != (Shard(0),) or t.dim() == 0:
        return None
    return mesh


def gather_many(params: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """The whole tensors of several parameters, as :func:`full_tensor` gives them one by one, but
    with one all-gather for all those sharded on dim 0 over the same ranks (one collective per
    parameter pays its latency hundreds of times a step: LoRA has 14 tensors a block). Those are
    gathered in ``dtype``: each rank casts its shard and pads it to ``ceil(dim0 / ranks)`` rows (the
    rows FSDP2 and ``torch.chunk`` give every rank but the last ones); rank r holds rows
    ``[r * c, r * c + rows_r)``, so dropping each slot's tail of padding leaves the tensor, and the
    cast commutes with the gather: the values are those of ``full_tensor(p).to(dtype)``. Tensors
    that need no gather (one rank, not sharded) come back as they are, in their own dtype. A
    collective on every rank when any tensor is sharded."""
    import math

    import torch.distributed as dist

    ts = [p.detach() for p in params]
    out: list[torch.Tensor | None] = [None] * len(ts)
    meshes = [_dim0_sharded(t) for t in ts]
    mesh = next((m for m in meshes if m is not None), None)
    batch = [i for i, m in enumerate(meshes) if m is not None and m == mesh]
    batched = set(batch)
    for i, t in enumerate(ts):
        if i not in batched:
            out[i] = full_tensor(t)
    if batch:
        world = mesh.size()
        rows = {i: math.ceil(ts[i].shape[0] / world) for i in batch}
        inner = {i: math.prod(ts[i].shape[1:]) for i in batch}
        per = sum(rows[i] * inner[i] for i in batch)
        device = ts[batch[0]].to_local().device
        send = torch.zeros(per, dtype=dtype, device=device)
        off = 0
        for i in batch:
            loc = ts[i].to_local().reshape(-1)
            send[off:off + loc.numel()].copy_(loc)
            off += rows[i] * inner[i]
        recv = torch.empty(world * per, dtype=dtype, device=device)
        dist.all_gather_into_tensor(recv, send, group=mesh.get_group())
        recv, off = recv.view(world, per), 0
        for i in batch:
            c, k = rows[i], inner[i]
            out[i] = recv[:, off:off + c * k].reshape(world * c, k)[:ts[i].shape[0]].reshape(ts[i].shape)
            off += c * k
    return out


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
    waits for the optimizer step. ``gather_mib``: with several ranks, tensors are gathered up to
    that many MiB at a time by one collective (:func:`gather_many`); 0 gathers each tensor by its
    own collective (``full_tensor``)."""

    def __init__(self, params, dtype: torch.dtype, rank: int, device: torch.device, side_stream: bool,
                 chunk: int | None = None, gather_mib: int = GATHER_MIB):
        self.params, self.dtype, self.rank, self.device = params, dtype, rank, device
        self.gather_mib = gather_mib
        cuda = device.type == "cuda"
        sizes = [p.numel() for _, p in params]
        self.numel = sum(sizes)
        self.itemsize = torch.finfo(dtype).bits // 8
        # gather groups: consecutive params of up to gather_mib MiB (one param each with 0)
        self.gather_group_of = {i: g for g in buckets([tuple(p.shape) for _, p in params], self.itemsize,
                                                      gather_mib * 2**20) for i in g}
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
        staged. The params are gathered a group at a time (consecutive params of up to
        ``gather_mib`` MiB in the staged dtype, one collective: :func:`gather_many`; one param a
        group with ``gather_mib=0``), and only that group is held."""
        held: dict[int, torch.Tensor] = {}

        def get(i: int) -> torch.Tensor:
            if i not in held:
                held.clear()
                idx = self.gather_group_of[i]
                whole = (gather_many([self.params[j][1] for j in idx], self.dtype) if self.gather_mib
                         else [full_tensor(self.params[i][1])])
                for j, t in zip(idx, whole):
                    held[j] = t.reshape(-1)
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
