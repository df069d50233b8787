"""``nccl``: broadcast the new weights to a receiver process that stands in for inference workers.

stepbench starts the receiver itself and joins it in a two-process group of its own (a TCP store
on loopback, apart from the trainer's group). ``backend=auto`` uses NCCL when a GPU the trainer
does not use is free for the receiver, and gloo otherwise (the receiver on the CPU, weights sent
from pinned host buffers): NCCL cannot put two ranks on one GPU. The row records the backend that
ran. Each step, rank 0 broadcasts the tensors (all weights in bf16, or the LoRA adapter) in
buckets of ``bucket_mib``; with ``verify=true`` the receiver returns a sha256 of what it got and
the trainer checks it against what it sent. ``overlap=true`` runs the broadcast on a host thread
(gloo) or a side stream (NCCL) while the next step computes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from core import hookimpl
from core.contracts import WeightSync
from core.sync import HostStager, Timed, buckets, device_drain, digest, gather_many

STOP, STEP = 0, 1


def make_group(backend: str, host: str, port: int, rank: int, timeout_s: float = 300.0):
    """A two-process group (trainer rank 0 + receiver rank 1) on its own TCP store."""
    store = dist.TCPStore(host, port, 2, is_master=rank == 0, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    prefixed = dist.PrefixStore("stepbench-sync", store)
    if backend == "nccl":
        pg = dist.ProcessGroupNCCL(prefixed, rank, 2)
    else:
        pg = dist.ProcessGroupGloo(prefixed, rank, 2, timedelta(seconds=timeout_s))
    return store, pg


def broadcast(pg, t: torch.Tensor):
    return pg.broadcast([t], dist.BroadcastOptions())


class Broadcast(WeightSync):
    name = "nccl"

    def __init__(self, backend: str = "auto", bucket_mib: int = 256, overlap: bool = False, verify: bool = False,
                 receiver_device: str = "auto"):
        if backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"sync.backend '{backend}' is unknown: use sync.backend=auto, nccl or gloo")
        if not isinstance(bucket_mib, int) or bucket_mib <= 0:
            raise ValueError(f"sync.bucket_mib must be a positive integer (got {bucket_mib!r}): try sync.bucket_mib=256")
        self.want, self.bucket_bytes, self.overlap, self.verify = backend, bucket_mib * 2**20, bool(overlap), bool(verify)
        import re

        if not re.fullmatch(r"auto|cpu|cuda:\d{1,3}", str(receiver_device)):
            raise ValueError(f"sync.receiver_device={receiver_device} is not a device the receiver can take: use "
                             "sync.receiver_device=auto, cpu or cuda:N (a GPU the trainer does not use)")
        self.receiver_device = receiver_device
        self.timed = Timed()
        self.proc = None
        self.checked = 0
        self.backend = None

    @property
    def label(self) -> str:
        """``nccl``, with the backend where one was asked for and ``overlap``."""
        return " ".join(["nccl"] + ([self.want] if self.want != "auto" else []) + (["overlap"] if self.overlap else []))

    def pick_backend(self, ctx) -> tuple[str, str]:
        """(backend, receiver device): NCCL needs a GPU of its own for the receiver."""
        n_gpus = torch.cuda.device_count() if ctx.device == "cuda" else 0
        free_gpu = n_gpus > ctx.world_size
        dev = self.receiver_device if self.receiver_device != "auto" else (f"cuda:{ctx.world_size}" if free_gpu
                                                                           else "cpu")
        backend = self.want if self.want != "auto" else ("nccl" if dev.startswith("cuda") else "gloo")
        return backend, dev

    def check(self, ctx) -> str | None:
        backend, dev = self.pick_backend(ctx)
        if backend == "nccl" and (ctx.device != "cuda" or not dev.startswith("cuda")):
            return ("sync.backend=nccl needs a GPU for the receiver that the trainer does not use (NCCL cannot "
                    "put two ranks on one GPU): use sync.backend=gloo or sync.backend=auto")
        if dev.startswith("cuda") and int(dev.split(":")[1]) >= torch.cuda.device_count():
            return f"sync.receiver_device={dev} does not exist here: use sync.receiver_device=auto"
        return None

    def setup(self, model, ctx) -> None:
        self.rank = ctx.rank
        self.backend, self.dev = self.pick_backend(ctx)
        self.device = next(model.parameters()).device
        self.timed.drain = device_drain(self.device) or self.timed.drain
        self.params = ctx.tensors(model)
        self.adapter_only = ctx.adapter_only
        self.shapes = [tuple(p.shape) for _, p in self.params]
        self.groups = buckets(self.shapes, 2, self.bucket_bytes)
        self.nbytes = sum(2 * torch.Size(s).numel() for s in self.shapes)
        on_gpu = self.backend == "nccl"
        self.stager = None if on_gpu else HostStager(self.params, torch.bfloat16, ctx.rank, self.device,
                                                     self.overlap)
        if self.rank != 0:
            return
        port = _free_port()
        meta = {"shapes": self.shapes, "groups": self.groups, "verify": self.verify}
        self.proc = subprocess.Popen([*self.receiver, "--port", str(port), "--backend", self.backend,
                                      "--device", self.dev],
                                     env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        self.store, self.pg = self._join(port)
        self.store.set("meta", json.dumps(meta))
        self.stream = torch.cuda.Stream(self.device) if (on_gpu and self.overlap) else None
        self.work_done = None

    #: the receiver's command line (its options are appended)
    receiver = (sys.executable, "-m", "plugins.sync.receiver")

    def _join(self, port: int):
        """The sync group, formed with the receiver; a receiver that exits before it joins ends the
        row within a second, with one line (the group's own wait would last its timeout)."""
        import threading

        out: list = []
        # a daemon thread: one left waiting for a receiver that died does not hold the process at exit
        t = threading.Thread(target=lambda: out.append(make_group(self.backend, "127.0.0.1", port, 0)),
                             name="stepbench-sync-join", daemon=True)
        t.start()
        while t.is_alive():
            t.join(0.2)
            rc = self.proc.poll()
            if t.is_alive() and rc is not None:
                self.proc = None
                from core.errors import RowError

                raise RowError(f"the weight-sync receiver exited with status {rc} before joining the sync "
                                   "group (its output is above): try +sync=host or +sync=filesystem")
        if not out:
            raise RuntimeError("the weight-sync group could not be formed (see the error above)")
        return out[0]

    # -- sending
    def _control(self, code: int, step: int):
        t = torch.tensor([code, step], dtype=torch.int64, device=self.device if self.backend == "nccl" else "cpu")
        broadcast(self.pg, t).wait()

    def _send_gpu(self, step: int) -> None:
        """NCCL: gather, cast and pack each bucket on the GPU, then broadcast it."""
        sent = []
        for g in self.groups:
            whole = gather_many([self.params[i][1] for i in g], torch.bfloat16)  # one collective a bucket
            flat = torch.cat([t.to(torch.bfloat16).reshape(-1) for t in whole])
            if self.rank == 0:
                if self.verify:
                    sent.append(flat.cpu())
                broadcast(self.pg, flat).wait()
        if self.rank == 0 and self.verify:
            self._check_digest(step, sent)

    def _send_host(self, step: int) -> None:
        """gloo: the staged host tensors, one flat bucket at a time."""
        self.stager.wait_ready()
        if self.rank != 0:
            return
        host = list(self.stager.host.values())
        sent = []
        for g in self.groups:
            flat = torch.cat([host[i].reshape(-1) for i in g])
            broadcast(self.pg, flat).wait()
            sent.append(flat)
        if self.verify:
            self._check_digest(step, sent)

    def _check_digest(self, step: int, sent) -> None:
        theirs = self.store.get(f"digest/{step}").decode()
        if theirs != digest(sent):
            raise RuntimeError(f"weight sync: the receiver's weights differ from the trainer's at step {step}")
        self.checked += 1

    def _send(self, step: int):
        try:
            if self.rank == 0:
                self._control(STEP, step)
            if self.backend == "nccl":
                self._send_gpu(step)
            else:
                self._send_host(step)
        except RuntimeError as e:
            if getattr(self, "proc", None) is None:
                raise
            try:  # a closed connection is seen before the receiver's exit is: give it a moment
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                raise e from None
            self.proc = None
            from core.errors import RowError

            raise RowError(f"the weight-sync receiver died (exit status {rc}) during step {step}'s hand-off: the row is "
                           "stopped; try +sync=host or +sync=filesystem") from None

    def before_update(self) -> None:
        if self.stager is not None:
            self.stager.protect()
        if self.stream is not None and self.work_done is not None:
            torch.cuda.current_stream(self.device).wait_event(self.work_done)

    def after_step(self, step: int) -> None:
        if not self.overlap:
            if self.stager is not None:
                self.timed.run_inline(lambda: (self.stager.stage(), self._send(step)))
            else:
                self.timed.run_inline(lambda: (self._send(step), torch.cuda.synchronize(self.device)))
            return
        if self.stager is not None:
            self.timed.run_overlapped(self.stager.stage, lambda: self._send(step))
            return
        # NCCL overlapped: the whole send on a side stream, issued from the host thread
        def stage():
            self.stream.wait_stream(torch.cuda.current_stream(self.device))

        def send():
            with torch.cuda.stream(self.stream):
                self._send(step)
                self.work_done = torch.cuda.Event()
                self.work_done.record()
            self.work_done.synchronize()
        self.timed.run_overlapped(stage, send)

    def finish(self) -> None:
        self.timed.close()
        if self.rank == 0 and self.proc is not None:
            self._control(STOP, -1)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def __del__(self):
        if getattr(self, "proc", None) is not None:
            self.proc.kill()

    def describe(self) -> dict:
        return {"method": "nccl", "backend": self.backend, "receiver_device": getattr(self, "dev", None),
                "overlap": self.overlap, "adapter_only": getattr(self, "adapter_only", None),
                "bytes_per_step": getattr(self, "nbytes", 0), "verified_steps": self.checked,
                **self.timed.describe()}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@hookimpl
def stepbench_register_weight_sync(register):
    register("nccl", lambda o, ctx: Broadcast(o.get("backend", "auto"), o.get("bucket_mib", 256),
                                              o.get("overlap", False), o.get("verify", False),
                                              o.get("receiver_device", "auto")),
             doc="broadcast bf16 weights (LoRA: the adapter) to a receiver process; sync.backend=auto|nccl|gloo")
