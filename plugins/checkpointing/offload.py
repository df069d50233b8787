"""``offload``: recompute each block, and keep its input in pinned host memory in between.

What is offloaded: exactly the input of every checkpointed block (``[tokens, hidden]`` bf16) but
the last ``keep_last`` blocks' (their backward comes first, with no time to bring them back).
Everything else a block saves is recomputed in backward, as with ``recompute`` (``mode``:
``full`` or ``selective``).

How: the block input goes to a pinned buffer on a device-to-host stream right after it is
produced, overlapping the block's forward; in backward, fetching block i's input starts the
host-to-device copy of block i-1's input on a second stream, overlapping block i's recompute and
backward.

``mode: attention`` (the label "Offload (attention)") goes further: besides the block input, the
tensors the attention kernel saves for its backward (q, k, v, output, log-sum-exp) go to pinned
host memory too, and in backward the block is recomputed *without* attention: the attention
output comes back from the host, and so do its saved tensors for the kernel's backward (fetched
one block ahead). Speed of selective recompute, GPU memory of offload, host memory of about
``layers * tokens * (2*q_dim + 2*kv_dim) * 2`` bytes more.

Pinned buffers are allocated once (first step) and reused; streams are ordered with events,
never with a host sync, and no device tensor uses ``record_stream`` (every device buffer belongs
to the compute stream, which waits for the copies that touch it). On a CPU the same bookkeeping
runs with plain copies.
"""

from __future__ import annotations

import contextlib

import torch

from core import hookimpl
from core.contracts import ActivationMemory, RecomputeFacts
from plugins.checkpointing.recompute import Recompute, selective_saved_bytes


class _Stashed:
    """One offloaded block input: a host buffer, its copy events, the GPU tensor when resident."""

    __slots__ = ("off", "index", "gpu", "host", "entry", "d2h", "h2d", "shape", "dtype", "device", "keep", "grad")

    def __init__(self, off, index, x, keep):
        self.off, self.index, self.gpu, self.keep = off, index, x, keep
        self.grad = x.requires_grad
        self.host = self.entry = self.d2h = self.h2d = None
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device

    def get(self) -> torch.Tensor:
        """The block input on the device (waits for its copy back, on the compute stream only).

        Runs outside any dispatch mode: in backward it is called from inside the recompute, where a
        selective-checkpoint mode must not see (or cache) the copies.
        """
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():
            return self._get()

    def _get(self) -> torch.Tensor:
        if self.gpu is None:
            self.off.fetch(self)
        x = self.gpu
        if self.h2d is not None:
            torch.cuda.current_stream().wait_event(self.h2d)
        if self.off.in_backward():
            self.off.recomputing = self.index
            self.off.drop_attention(self.index + 1)  # that block's backward is done
            self.off.prefetch(self.index - 1)
            self.gpu = None  # the recomputed block holds what it needs
            if x.requires_grad != self.grad:  # recompute must save what the forward saved
                x = x.detach().requires_grad_(self.grad)
        return x


class HostOffloader:
    """Moves block inputs to reused pinned host buffers and back, on side streams."""

    def __init__(self, keep_last: int = 1):
        self.keep_last = keep_last
        self.cuda = torch.cuda.is_available()
        self.d2h_stream = torch.cuda.Stream() if self.cuda else None
        self.h2d_stream = torch.cuda.Stream() if self.cuda else None
        self.free: dict[tuple, list] = {}
        self.used: list = []
        self.stash_list: list[_Stashed] = []
        self.attn: dict[int, _AttnStash] = {}
        self.recomputing = -1
        self.n_blocks = 0
        self.host_bytes = 0

    # -- per micro-batch
    def begin_step(self, n_blocks):
        self.n_blocks, self.stash_list, self.attn = n_blocks, [], {}

    def end_step(self):
        for key, buf, ev in self.used:
            self.free.setdefault(key, []).append((buf, ev))
        self.used, self.stash_list, self.attn = [], [], {}

    @staticmethod
    def in_backward() -> bool:
        return torch._C._current_graph_task_id() != -1

    # -- buffers
    def _buffer(self, shape, dtype):
        key = (tuple(shape), dtype)
        pool = self.free.get(key)
        if pool:
            buf, ev = pool.pop()
        else:
            buf, ev = torch.empty(shape, dtype=dtype, pin_memory=self.cuda), None
            self.host_bytes += buf.numel() * buf.element_size()
        return key, buf, ev

    # -- copies
    def _to_host(self, t: torch.Tensor):
        """Copy ``t`` into a pooled pinned buffer on the device-to-host stream (after the compute
        queued so far, and after the buffer's last copy back). Returns the buffer's pool entry
        ``[key, buffer, last copy-back event]`` and the copy's event (None on a CPU)."""
        key, buf, last_h2d = self._buffer(t.shape, t.dtype)
        ev = None
        if self.cuda:
            self.d2h_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.d2h_stream):
                if last_h2d is not None:
                    self.d2h_stream.wait_event(last_h2d)
                buf.copy_(t, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(self.d2h_stream)
        else:
            buf.copy_(t)
        entry = [key, buf, None]
        self.used.append(entry)
        return entry, ev

    def _to_device(self, hosts: list, d2h, device, entries: list):
        """Copy pinned buffers back on the host-to-device stream; returns the device tensors and
        the copy's event (None on a CPU), which the buffers' pool entries remember.

        The device tensors are allocated from the compute stream's pool and written once the
        compute work queued so far is done (that memory may have been freed by it); the compute
        stream waits for the copy before use, so they are freed like any other tensor."""
        if not self.cuda:
            return [h.clone() for h in hosts], None
        gpus = [torch.empty(h.shape, dtype=h.dtype, device=device) for h in hosts]
        self.h2d_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.h2d_stream):
            self.h2d_stream.wait_event(d2h)
            for g, h in zip(gpus, hosts):
                g.copy_(h, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.h2d_stream)
        for e in entries:
            e[2] = ev
        return gpus, ev

    def stash(self, x: torch.Tensor) -> _Stashed:
        i = len(self.stash_list)
        s = _Stashed(self, i, x, keep=i >= self.n_blocks - self.keep_last)
        self.stash_list.append(s)
        if not s.keep:
            s.entry, s.d2h = self._to_host(x.detach())
            s.host = s.entry[1]
        return s

    def release(self, s: _Stashed):
        """After the block's forward: drop the device copy of an offloaded input.

        The compute stream first waits for the copy out (it started with the block, so this
        costs nothing); freeing then needs no ``record_stream``, whose deferred frees pile up
        while the host runs blocks ahead of the GPU."""
        if not s.keep:
            if s.d2h is not None:
                torch.cuda.current_stream().wait_event(s.d2h)
            s.gpu = None

    def fetch(self, s: _Stashed):
        if s.gpu is not None or s.host is None:
            return
        (s.gpu,), s.h2d = self._to_device([s.host], s.d2h, s.device, [s.entry])

    def prefetch(self, index: int):
        if 0 <= index < len(self.stash_list):
            self.fetch(self.stash_list[index])
        self.fetch_attention(index)

    # -- attention's saved tensors (mode: attention)
    def current_block(self) -> int:
        return len(self.stash_list) - 1 if not self.in_backward() else self.recomputing

    def pack(self, t: torch.Tensor):
        """saved_tensors_hooks pack: inside a kept block the tensor itself, else a host copy."""
        i = self.current_block()
        st = self.attn.setdefault(i, _AttnStash())
        if i >= self.n_blocks - self.keep_last:
            st.gpu.append(t)
            return (i, len(st.gpu) - 1)
        entry, st.d2h = self._to_host(t)
        st.entries.append(entry)
        st.host.append(entry[1])
        st.gpu.append(t)  # until the copy is done (released with the block)
        st.grads.append(t.requires_grad)
        st.device = t.device
        return (i, len(st.host) - 1)

    def unpack(self, handle) -> torch.Tensor:
        i, j = handle
        st = self.attn[i]
        if not st.host:  # kept on the device
            return st.gpu[j]
        self.fetch_attention(i)
        if st.h2d is not None:
            torch.cuda.current_stream().wait_event(st.h2d)
        return st.back[j]

    def drop_attention(self, i: int):
        st = self.attn.get(i)
        if st is not None:
            st.back, st.gpu, st.done = [], [], True

    def release_attention(self, i: int):
        st = self.attn.get(i)
        if st is None or not st.host:
            return
        if st.d2h is not None:
            torch.cuda.current_stream().wait_event(st.d2h)
        st.gpu = []

    def fetch_attention(self, i: int):
        st = self.attn.get(i)
        if st is None or not st.host or st.back is not None or st.done:
            return
        back, st.h2d = self._to_device(st.host, st.d2h, st.device, st.entries)
        st.back = [b.requires_grad_(rg) if rg else b for b, rg in zip(back, st.grads)]

    def attention_output(self, i: int, out_grad: bool) -> torch.Tensor:
        """In the recompute of block ``i``: its attention output, from the saved tensors."""
        st = self.attn[i]
        if not st.host:
            out = st.gpu[st.out_index]
        else:
            self.fetch_attention(i)
            if st.h2d is not None:
                torch.cuda.current_stream().wait_event(st.h2d)
            out = st.back[st.out_index]
        return out.detach().requires_grad_(out_grad)


class _AttnStash:
    """Attention's saved tensors of one block: host copies, their events, device copies back."""

    __slots__ = ("host", "gpu", "back", "grads", "device", "entries", "d2h", "h2d", "out_index", "out_grad",
                 "done")

    def __init__(self):
        self.host, self.gpu, self.grads, self.entries = [], [], [], []
        self.back = self.d2h = self.h2d = self.device = None
        self.out_index, self.out_grad, self.done = None, False, False


class HostAttention:
    """Wraps a bound attention backend for ``mode: attention``.

    Forward: runs the kernel with its saved tensors packed to the host, and marks which saved
    tensor is the output (the output itself is stashed when the kernel saves a different tensor).
    Recompute in backward: returns the output from there instead of running the kernel.
    """

    def __init__(self, backend, off: HostOffloader):
        self.backend, self.off = backend, off
        self.provider = getattr(backend, "provider", None)
        # never traced by torch.compile (host-side bookkeeping); wrapped here, not with a decorator
        # on the class, so that registering the plugin does not import torch._dynamo (~2 s)
        self._run = torch.compiler.disable(self._call)

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def __call__(self, q, k, v, meta, **features):
        return self._run(q, k, v, meta, **features)

    def _call(self, q, k, v, meta, **features):
        off = self.off
        i = off.current_block()
        if off.in_backward():
            st = off.attn[i]
            return off.attention_output(i, st.out_grad)
        with torch.autograd.graph.saved_tensors_hooks(off.pack, off.unpack):
            out = self.backend(q, k, v, meta, **features)
        st = off.attn.setdefault(i, _AttnStash())
        saved = st.gpu
        idx = next((n for n, t in enumerate(saved) if t.data_ptr() == out.data_ptr() and t.shape == out.shape
                    and t.stride() == out.stride() and t.dtype == out.dtype), None)
        if idx is None:  # the kernel saved no tensor that is its returned output: stash that too
            _, idx = off.pack(out.detach())
        st.out_index, st.out_grad = idx, out.requires_grad
        return out


def _call_block(block, stashed: _Stashed, rope, meta):
    return block(stashed.get(), rope, meta)


class Offload(ActivationMemory):
    name = "offload"
    checkpoint_in_block = False  # the checkpoint wraps the block's call (around the stash)
    leaner = None

    def __init__(self, mode: str = "full", save=("attention",), keep_last: int = 1):
        if mode not in ("full", "selective", "attention"):
            raise ValueError(f"offload mode '{mode}' is unknown: use ac.mode=full, selective or attention")
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
            raise ValueError(f"ac.keep_last must be a whole number of blocks >= 0 (got {keep_last!r}): try ac.keep_last=1")
        self.mode, self.keep_last = mode, keep_last
        if mode == "attention" and [str(x) for x in save] != ["attention"]:
            raise ValueError(f"ac.save={list(save)} names what selective recompute keeps, and ac.mode=attention offloads "
                             "attention's saved tensors and recomputes the rest: leave ac.save out, or use "
                             "ac.mode=selective")
        self.checkpointer = Recompute("full" if mode == "attention" else mode, save)
        self.label = "Offload" + (f" ({mode})" if mode != "full" else "")
        self.recompute = RecomputeFacts(blocks=True, attention=mode == "full")
        self.off = None  # the host offloader (its CUDA streams) is made by apply, not the factory
        self.model = None

    def why_not(self, args) -> str | None:
        if self.keep_last >= args.n_layers:
            return (f"ac.keep_last={self.keep_last} keeps all {args.n_layers} blocks on the GPU, so nothing is offloaded: "
                    f"use ac.keep_last below {args.n_layers} (e.g. ac.keep_last=1), or +ac=recompute")
        return None

    def saved_bytes(self, shape) -> float:
        """Two block inputs stay on the GPU (the one being copied out, the one being fetched), and
        in selective mode attention's outputs."""
        extra = selective_saved_bytes(shape) if self.mode == "selective" else 0.0
        return 2 * shape.block_input_bytes + extra

    def host_bytes(self, shape) -> float:
        """The bf16 input of every block but the last ``keep_last``, and with ``mode: attention`` also
        what the attention kernel saves (q, k, v and the output in bf16, the fp32 log-sum-exp; K/V
        at the query head count where the kernel repeats them). Exact for the kernels measured."""
        a = shape.args
        per_token = 2 * a.dim
        if self.mode == "attention":
            q = a.n_heads * a.head_dim
            kv = (a.n_heads if shape.kv_repeated else a.n_kv_heads) * a.head_dim
            per_token += 2 * (2 * q + 2 * kv) + 4 * a.n_heads
        return max(a.n_layers - self.keep_last, 0) * shape.seq_len * per_token

    def run(self, block, x, rope, meta):
        s = self.off.stash(x)
        y = self.checkpointer.checkpoint_block(_call_block, block, s, rope, meta)
        self.off.release(s)
        self.off.release_attention(s.index)
        return y

    def apply(self, model):
        from core.models.common import attention_modules

        self.model = model
        self.off = HostOffloader(self.keep_last)
        model.block_runner = self.run
        if self.mode == "attention":
            for m in attention_modules(model):
                m.backend = HostAttention(m.backend, self.off)

    @contextlib.contextmanager
    def step_context(self):
        self.off.begin_step(len(self.model.layers))
        try:
            yield
        finally:
            self.off.end_step()

    def describe(self) -> dict:
        return {
            "ac": "offload", "ac_mode": self.mode,
            "saved": f"block inputs{' and attention saved tensors' if self.mode == 'attention' else ''} "
                     f"in pinned host memory (all but the last {self.keep_last} block)",
            "host_offload_gib": round(self.off.host_bytes / 2**30, 3) if self.off else 0.0,
            "host_offload_bytes": self.off.host_bytes if self.off else 0,
        }


@hookimpl
def stepbench_register_checkpointing(register):
    register(
        "offload",
        lambda options, ctx: Offload(options.get("mode", "full"), options.get("save", ["attention"]),
                                     options.get("keep_last", 1)),
        doc="recompute blocks; their inputs wait in pinned host memory, copies overlapped on side streams; "
            "ac.mode=attention (+ac=offload_attention) also keeps attention's saved tensors there",
    )
