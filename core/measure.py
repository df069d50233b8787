"""The measured part of a row: build, warm up, time whole steps, and turn the samples into metrics.

A step is ``micro_batches`` forward/backward passes, the optimizer step and the weight hand-off.
Step 0 is warm-up. At least ``steps - 1`` steps are measured, more until ``measure_s`` seconds of
measured steps. TPS is tokens over the total measured time (not a mean of per-step rates);
``step_time`` is that time per micro-batch (prime-rl's column); the spread of the per-step times
is kept (min, median, max, coefficient of variation).
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import sys
import time
from dataclasses import dataclass, field


def say(msg: str) -> None:
    print(f"stepbench: {msg}", file=sys.stderr, flush=True)


def spread(xs: list[float]) -> dict:
    """min, median, max and coefficient of variation (population std over mean) of samples."""
    if not xs:
        return {"n": 0}
    mean = sum(xs) / len(xs)
    cv = statistics.pstdev(xs) / mean if len(xs) > 1 and mean > 0 else 0.0
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs), "mean": mean, "cv": cv}


def throughput(step_times: list[float], tokens_per_step: int, micro_batches: int) -> tuple[float, float]:
    """(TPS, seconds per micro-batch) from whole-step times: tokens over total time."""
    total = sum(step_times)
    return tokens_per_step * len(step_times) / total, total / (len(step_times) * micro_batches)


def kernel_profiler(host: bool = False):
    """torch.profiler over one step: CUDA activity, and with ``host`` the host's operators and
    ``record_function`` ranges too (``ops_trace=``)."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if host else []))


def busy_fraction(intervals: list[tuple[int, int]], wall_ns: int) -> float:
    """Share of ``wall_ns`` covered by at least one of the (start, end) device intervals
    (kernels and copies; overlapping ones counted once)."""
    if wall_ns <= 0:
        raise ValueError(f"wall time must be positive, got {wall_ns} ns")
    covered, end = 0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            covered += b - a
            end = b
        elif b > end:
            covered += b - end
            end = b
    return min(covered / wall_ns, 1.0)


#: device activity kinds by kernel name (first match wins; lower-case substrings)
KERNEL_KINDS = (
    ("copy", ("memcpy", "memset", "copy_kernel", "cat_", "catarray")),
    ("attention", ("flash", "fmha", "attn", "attention", "cudnn_sdpa")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "wgmma", "matmul", "_mm_", "sm90_", "sm80_")),
    ("reduction", ("reduce", "norm", "softmax", "logsumexp", "sum_", "max_", "triton_per_", "triton_red_")),
)


def kernel_kind(name: str) -> str:
    """matmul | attention | copy | reduction | elementwise (everything else) for a kernel's name."""
    n = name.lower()
    for kind, keys in KERNEL_KINDS:
        if any(k in n for k in keys):
            return kind
    return "elementwise"


def device_events(prof) -> list[tuple[int, int, str]]:
    """(start, end, name) in ns of every device activity (kernel, memcpy, memset) a profiler recorded."""
    from torch.autograd import DeviceType

    return [(e.start_ns(), e.end_ns(), e.name()) for e in prof.profiler.kineto_results.events()
            if e.device_type() != DeviceType.CPU]


def device_time_by_kind(events: list[tuple[int, int, str]], wall_ns: int) -> dict:
    """Device time of each kernel kind as a share of the step's wall time (kinds may overlap in
    time on several streams, so the shares can sum above the busy fraction), and the launch count."""
    out: dict = {}
    for a, b, name in events:
        k = kernel_kind(name)
        out[k] = out.get(k, 0) + (b - a)
    shares = {k: v / wall_ns for k, v in sorted(out.items())}
    return {**shares, "launches": len(events)}


def write_trace(prof, path: str) -> None:
    """Export the profiler's Chrome trace to ``path`` (gzip-compressed when it ends in .gz)."""
    import gzip
    import os
    import shutil
    import tempfile

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not path.endswith(".gz"):
        prof.export_chrome_trace(path)
        return
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        tmp = f.name
    try:
        prof.export_chrome_trace(tmp)
        with open(tmp, "rb") as src, gzip.open(path, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
    finally:
        os.unlink(tmp)


class GCPauses:
    """Seconds the Python garbage collector ran, read per step (``gc.callbacks``): host pauses that
    show up as slow steps in host-bound rows."""

    def __init__(self):
        self.total, self._t = 0.0, None
        gc.callbacks.append(self._cb)

    def _cb(self, phase, info):
        try:
            if phase == "start":
                self._t = self._now()
            elif self._t is not None:
                self.total += self._now() - self._t
                self._t = None
        except KeyboardInterrupt:  # Python ignores what a gc callback raises: a Ctrl-C or SIGTERM that
            import signal  # landed here is raised again from another thread, after the callback returns
            import threading

            threading.Timer(0.01, signal.raise_signal, (signal.SIGINT,)).start()

    _now = staticmethod(time.perf_counter)

    def take(self) -> float:
        t, self.total = self.total, 0.0
        return t

    def close(self) -> None:
        if self._cb in gc.callbacks:
            gc.callbacks.remove(self._cb)


class NonFiniteError(RuntimeError):
    """A step produced a non-finite loss or gradient norm."""


def graph_breaks() -> int:
    """Graph breaks dynamo has reported in this process (compiled code that fell back to eager); 0
    where nothing has imported dynamo (an eager row need not pay seconds to import it)."""
    import sys

    if "torch._dynamo.utils" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


@dataclass
class Samples:
    """What the measured steps left: per-step lists (``step_s``, ``loss``, ``entropy``, ``kept_frac``,
    ``grad_norm``, ``gc_s``) and the document lengths of every measured micro-batch."""

    values: dict = field(default_factory=lambda: {k: [] for k in ("step_s", "loss", "entropy", "kept_frac",
                                                                   "grad_norm", "gc_s")})
    doc_lens: list = field(default_factory=list)
    graph_breaks: int | None = None
    next_step: int = 0  #: the index of the step after the last measured one


def build_row(cfg, r, rank: int, world: int, device, row_id: str):
    """Build the row's model with its plugins (the attention backend prepared on the device first)
    and set up its weight sync. Returns the built model and its parameter counts (summed over ranks)."""
    import torch
    import torch.distributed as dist

    from core.resolve import UserError
    from core.trainer import build

    try:
        r.attention.prepare()  # load kernels, a smoke test: a broken install is one line
        if r.kernels is not None:
            r.kernels.prepare()
    except ValueError as e:
        raise UserError(str(e)) from e
    b = build(r.args, r.attention, r.ac, r.adapter, device, seed=cfg.seed, compile=cfg.compile,
              head_budget_mib=cfg.head_budget_mib, model_builder=r.family_obj.build,
              compile_head=bool(cfg.get("compile_head", True)), fuse=cfg.get("fuse", "lora"),
              fsdp=cfg.get("fsdp", "auto"), kernels=r.kernels)
    r.sync_ctx.rank, r.sync_ctx.world_size, r.sync_ctx.row_id = rank, world, row_id
    r.sync.setup(b.model, r.sync_ctx)
    b.sync = r.sync
    counts = r.adapter.counts(b.model)
    if world > 1:  # parameters are sharded: counts are per rank
        t = torch.tensor([counts["trainable"], counts["adapter"], counts["fully_trainable"]], device=device)
        dist.all_reduce(t)
        counts = dict(zip(("trainable", "adapter", "fully_trainable"), t.tolist()))
    return b, counts


def _check_finite(stats: dict, step: int, r) -> None:
    if not (math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])):
        raise NonFiniteError(
            f"step {step} gave loss {stats['loss']} and grad norm {stats['grad_norm']}: not finite with "
            f"attn '{r.attention.name}' ({r.attention.provider}), ac '{r.ac.name}', adapter '{r.adapter.name}'")


def _step_stats(out: dict) -> dict:
    gn = out["grad_norm"]
    gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
    return dict(loss=out["loss"].mean().item(), entropy=out["entropy"].mean().item(), grad_norm=float(gn),
                kept_frac=(out["kept"].sum() / out["tokens"].sum()).item() if "kept" in out else 1.0)


def timed_steps(cfg, r, b, rank: int, world: int, device) -> Samples:
    """Step 0 (warm-up) and at least ``steps - 1`` measured steps, more until ``measure_s`` seconds
    were measured; each step timed whole, from a drained GPU to a drained GPU. With ``ops_profile``
    the last step runs under the profiler (and ``ops_trace`` writes its trace)."""
    import torch.distributed as dist

    from core.trainer import make_batches, train_step

    cuda = r.ctx.device == "cuda"
    cuda_sync = _cuda_sync(cuda)
    ops_trace = cfg.get("ops_trace") if cuda else None
    ops_profile = (bool(cfg.get("ops_profile", False)) or bool(ops_trace)) and cuda
    mbs, seq_len = cfg.micro_batches, r.seq_len
    tokens_per_step = world * seq_len * mbs
    measure_s = float(cfg.get("measure_s", 0) or 0)
    out_samples, gc_pauses = Samples(), GCPauses()
    breaks0 = graph_breaks()
    step, measured = 0, 0.0
    try:
        while step < cfg.steps or measured < measure_s:
            batches = make_batches(r.args, cfg.task.name, seq_len, mbs, cfg.packing, cfg.seed, step, device, rank)
            lens = [mb.meta.doc_lens for mb in batches]
            cuda_sync()
            if world > 1:
                dist.barrier()
            profiled = ops_profile and step == cfg.steps - 1
            prof = kernel_profiler(host=bool(ops_trace)) if profiled else contextlib.nullcontext()
            gc_pauses.take()
            t = time.perf_counter()
            beat = heartbeat("warm-up" if step == 0 else f"step {step}") if rank == 0 else contextlib.nullcontext()
            with prof, beat:
                out = train_step(b, batches, cfg.task.name, step=step)
                cuda_sync()
            dt = time.perf_counter() - t
            gc_s = gc_pauses.take()
            if profiled and rank == 0:
                _report_profile(prof, ops_trace, step)
            stats = _step_stats(out)
            _check_finite(stats, step, r)
            if rank == 0:
                tag = "warm-up" if step == 0 else f"step {step}"
                say(f"  {tag}: {dt:.3f} s ({dt / mbs:.3f} s/micro-batch, {tokens_per_step / dt / 1e3:.2f}k tok/s), "
                    f"loss {stats['loss']:.4f}")
            if step == 0:
                if cfg.compile and rank == 0 and (n_breaks := graph_breaks() - breaks0):
                    say(f"  compile: {n_breaks} graph breaks (those regions run eagerly; a break "
                        "inside a checkpointed block runs the whole block eagerly): TORCH_LOGS=graph_breaks shows where")
                # what the build and warm-up left (modules, compiled graphs, plugin state) lives as
                # long as the run: out of the collector's reach, so a full collection mid-step walks
                # only what the steps create (as a long-running trainer would do once)
                gc.collect()
                gc.freeze()
            else:
                v = out_samples.values
                v["step_s"].append(dt)
                v["gc_s"].append(gc_s)
                measured += dt
                out_samples.doc_lens += lens
                for k, x in stats.items():
                    v[k].append(x)
            step += 1
    finally:
        gc_pauses.close()
    out_samples.graph_breaks = graph_breaks() - breaks0 if cfg.compile else None
    out_samples.next_step = step
    return out_samples


def _report_profile(prof, ops_trace, step: int) -> None:
    say("time by operator, last step (self device time):\n"
        + prof.key_averages().table(sort_by="self_device_time_total", row_limit=25))
    if ops_trace:
        write_trace(prof, ops_trace)
        say(f"trace of step {step} written to {ops_trace} (host and device; open in ui.perfetto.dev, "
            "or python benchmarks/trace_summary.py " + str(ops_trace) + ")")


#: seconds a step runs before (and between) its "still running" lines
HEARTBEAT_S = 60.0


@contextlib.contextmanager
def heartbeat(tag: str, every: float | None = None):
    """A line every ``every`` seconds (:data:`HEARTBEAT_S`) while a step runs long (a warm-up of many
    micro-batches, a CPU row of a long sequence): a row is never silent for minutes."""
    import threading

    every = HEARTBEAT_S if every is None else every
    stop, start = threading.Event(), time.monotonic()

    def beat():
        while not stop.wait(every):
            say(f"  {tag}: still running ({time.monotonic() - start:.0f} s)")

    thread = threading.Thread(target=beat, name="stepbench-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _cuda_sync(cuda: bool):
    import torch

    return torch.cuda.synchronize if cuda else (lambda: None)


def profiled_step(cfg, r, b, step: int, rank: int, device) -> tuple[float | None, dict | None]:
    """One more step, not measured, under the profiler: the share of its wall time in which the GPU
    ran a kernel or copy, and the device time by kernel kind (host-bound rows show low)."""
    from core.trainer import make_batches, train_step

    batches = make_batches(r.args, cfg.task.name, r.seq_len, cfg.micro_batches, cfg.packing, cfg.seed, step,
                           device, rank)
    cuda_sync = _cuda_sync(True)
    cuda_sync()
    with kernel_profiler() as prof:
        t = time.perf_counter_ns()
        train_step(b, batches, cfg.task.name, step=step)
        cuda_sync()
        wall = time.perf_counter_ns() - t
    try:
        events = device_events(prof)
        busy, by_kind = busy_fraction([(a, e) for a, e, _ in events], wall), device_time_by_kind(events, wall)
    except (AttributeError, RuntimeError, ValueError) as e:  # a profiler without kineto events
        say(f"  busy step: no device activity recorded ({type(e).__name__}: {e}); gpu_busy left empty")
        return None, None
    if rank == 0:
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in by_kind.items() if k != "launches")
        say(f"  busy step: GPU busy {busy:.0%} of {wall / 1e9:.3f} s ({kinds}; {by_kind['launches']} "
            "device activities; profiled, not measured)")
    return busy, by_kind


def metrics(cfg, r, b, counts: dict, s: Samples, world: int) -> dict:
    """The row's figures from its samples: TPS, step time, MFU, executed FLOPs, roofline, the step
    budget and the weight sync's per-step seconds."""
    from core import flops

    mbs, seq_len, a, hw = cfg.micro_batches, r.seq_len, r.args, r.hw
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    tps, step_time = throughput(s.values["step_s"], world * seq_len * mbs, mbs)
    frozen = r.adapter.frozen_base
    fpt = flops.prime_rl_flops_per_token(a, seq_len, counts["adapter"], counts["fully_trainable"], frozen)
    sf = [flops.micro_batch_flops(a, d, frozen, counts["adapter"], r.ac.recompute) for d in s.doc_lens]
    mm_u, at_u = mean([x.mm_useful for x in sf]), mean([x.attn_useful for x in sf])
    ceilings = flops.ceilings(hw, r.attention.kernel, r.attention.provider, seq_len,
                              heads=f"{a.n_heads}/{a.n_kv_heads}")
    roofline_s = mm_u / (ceilings["mm_tflops"] * 1e12) + at_u / (ceilings["attn_tflops"] * 1e12)
    sync_info = r.sync.describe()
    measured_sync = (sync_info.get("sync_s") or [])[1:]  # entry 0 is the warm-up step's hand-off
    exposed = (sync_info.get("sync_exposed_s") or sync_info.get("sync_s") or [])[1:]
    return {
        "mfu": flops.mfu(fpt, tps, hw["peak_flops"], world), "tps": tps, "step_time": step_time,
        "model_tflops": (mm_u + at_u) / step_time / 1e12, "hw_tflops": mean([x.executed for x in sf]) / step_time / 1e12,
        "roofline_frac": roofline_s / step_time, "ceilings": ceilings,
        "step_budget": flops.step_budget(sf, ceilings, step_time, mean(exposed) / mbs if exposed else 0.0),
        "flops_per_token_prime_rl": fpt, "sync_info": sync_info,
        "sync_s_per_step": sum(measured_sync) / len(measured_sync) if measured_sync else 0.0,
        "peak_flops": hw["peak_flops"],
    }


def _peak_gib(cuda: bool, world: int, device) -> float | None:
    import torch
    import torch.distributed as dist

    if not cuda:
        return None
    peak = torch.cuda.max_memory_reserved() / 2**30
    if world > 1:
        t = torch.tensor([peak], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        peak = t.item()
    return peak


def measure(cfg, r, row_id: str = "") -> dict:
    """Build the row, run warm-up and measured steps (and the profiled busy step), and return the
    row's metrics (its labels included)."""
    import torch

    from core.resolve import row_labels
    from core.trainer import init_distributed

    rank, world = init_distributed(r.ctx.device)  # under torchrun this picks the rank's GPU first
    cuda = r.ctx.device == "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for opt in ("memory_profile", "ops_profile", "ops_trace"):
        if cfg.get(opt, False) and not cuda and rank == 0:
            say(f"{opt}={cfg.get(opt)} needs CUDA: ignored on the CPU")
    mem_profile = bool(cfg.get("memory_profile", False)) and cuda
    ops_profile = (bool(cfg.get("ops_profile", False)) or bool(cfg.get("ops_trace"))) and cuda
    if mem_profile:
        from core import memprof

        memprof.start()
    t0 = time.perf_counter()
    try:
        b, counts = build_row(cfg, r, rank, world, device, row_id)
        build_s = time.perf_counter() - t0
        s = timed_steps(cfg, r, b, rank, world, device)
        busy, by_kind = (profiled_step(cfg, r, b, s.next_step, rank, device)
                         if bool(cfg.get("busy_step", True)) and cuda else (None, None))
    finally:
        r.sync.finish()
    peak = _peak_gib(cuda, world, device)
    row = {
        **row_labels(cfg, r, world), "status": "ok", "error": None, **metrics(cfg, r, b, counts, s, world),
        "peak_mem_gib": peak, "predicted_mem_gib": r.predicted_gib, "predicted_host_gib": r.host_gib,
        "gpu_busy": busy, "gpu_time_by_kind": by_kind,
        "steps_measured": len(s.values["step_s"]), "spread": spread(s.values["step_s"]),
        # a model that runs its own attention (the plain HF loop) says what that is
        "attn_provider": b.model.attention_provider() if hasattr(b.model, "attention_provider")
        else r.attention.provider, "attn_kernel": r.attention.kernel, "ac_info": r.ac.describe(),
        "kernels_provider": r.kernels.provider if r.kernels is not None else None,
        "counts": counts, "samples": s.values, "build_s": build_s, "graph_breaks": s.graph_breaks, "fsdp": b.fsdp,
    }
    if mem_profile:
        from core import memprof

        traced, row["memory_profile"] = memprof.peak_breakdown(memprof.stop_and_snapshot())
        if rank == 0:
            say(memprof.format_breakdown(traced, row["memory_profile"]))
    if mem_profile or ops_profile:  # timings include the recording overhead: not for the report
        row["profiled"] = [k for k, on in (("memory", mem_profile), ("ops", ops_profile)) if on]
    return row
