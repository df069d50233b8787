"""The fits a prediction rests on, made on our own measured rows (never on published ones): the
executed work of a row (from its plugins' declarations), per attention backend and model kind an
efficiency and a host overhead per micro-batch, and per Sync label the hand-off's fixed cost and
rate. :mod:`core.predict` turns them into predicted rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.published import section_name, sync_per_step
from core.resolve import UserError

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GB = 1e9


# ------------------------------------------------------------------------------ the work of a row
def block_params(a) -> int:
    from core.memory import param_count

    return param_count(a) - a.vocab_size * a.dim * (1 if a.tied_embeddings else 2)


def memory_bound_bytes(a, seq_len: int, recompute) -> float:
    """An estimate of the bytes that memory-bound kernels (norms, RoPE, SwiGLU, residual adds,
    casts, the head's fp32 passes) move in one micro-batch: per token and layer about ten passes
    over the hidden state, three over the MLP width and two over q/k/v in bf16, each done in
    forward, backward (twice) and the recompute; the head reads and writes fp32 logits about
    six times."""
    ffn = a.moe_ffn_dim * a.top_k if a.n_experts else a.ffn_dim
    qkv = (a.n_heads + 2 * a.n_kv_heads) * a.head_dim
    passes = 3 + float(recompute.blocks)
    blocks = seq_len * a.n_layers * (10 * a.dim + 3 * ffn + 2 * qkv) * 2 * passes
    return blocks + seq_len * a.vocab_size * 4 * 6


def ceilings(hw: dict, backend: str) -> tuple[float, float]:
    """(matmul, attention) TFLOP/s of a hardware profile for an attention backend."""
    attn = hw.get(f"attn_tflops_{backend}") or hw["attn_tflops"]
    return float(hw["mm_tflops"]), float(attn)


@dataclass
class Work:
    mm_flops: float       # executed matmul FLOPs per micro-batch (recompute and the head's included)
    attn_flops: float     # executed attention FLOPs per micro-batch
    mem_bytes: float      # estimated bytes of memory-bound work per micro-batch

    def ideal_s(self, hw: dict, backend: str) -> dict:
        mm, at = ceilings(hw, backend)
        return {"matmul": self.mm_flops / (mm * 1e12), "attention": self.attn_flops / (at * 1e12),
                "memory-bound": self.mem_bytes / (float(hw["hbm_tbps"]) * 1e12)}


def work(a, seq_len: int, adapter, ac) -> Work:
    """The executed work of one micro-batch of one document, from the adapter's and the activation
    strategy's declarations."""
    from core import flops

    added = adapter.trainable_params(a) if adapter.frozen_base else 0
    sf = flops.micro_batch_flops(a, [seq_len], adapter.frozen_base, added, ac.recompute)
    return Work(sf.mm_executed, sf.attn_executed, memory_bound_bytes(a, seq_len, ac.recompute))


def backend_of(attn: str) -> str:
    """The fit key of an attention label ("FA3" -> "fa3")."""
    return str(attn).lower()


# ------------------------------------------------------------------------------ fits on our rows
def measured_rows(files: list[Path] | None = None) -> list[dict]:
    """Our measured GPU rows that a fit may use: ok, not profiled, native model code, one packed
    sample per micro-batch, on an H100 or H200, with the config they ran."""
    from core.published import implementation
    from core.results import load_rows

    if files is None:
        files = sorted(RESULTS.glob("*.jsonl")) + sorted((RESULTS / "history").glob("*.jsonl"))
    out = []
    for r in load_rows(*files):
        if r.get("status") != "ok" or "kind" in r or r.get("profiled") or "config" not in r:
            continue
        if implementation(r) != "native":  # the fits describe the native model code
            continue
        if r.get("attn") not in ("FA2", "FA3") or r.get("packing", "single") != "single":
            continue
        if not any(g in str(r.get("hardware_label", "")) for g in ("H100", "H200")) or r.get("num_gpus", 1) != 1:
            continue
        if longer_than_default(r):
            continue
        out.append(r)
    return out


def longer_than_default(r: dict) -> bool:
    """A row measured over more steps than the default (``steps=``, ``measure_s=``): the fits and
    predictions are of the default window (5 measured steps), and a longer run can measure another
    regime (the filesystem hand-off of 8 GB a step slowed from 2 s to 7 s as the page cache filled
    over 10 steps on an H100 host, s21e)."""
    from core.resolve import _primary_defaults

    d, c = _primary_defaults(), r.get("config") or {}
    return (c.get("steps") or d["steps"]) > d["steps"] or (c.get("measure_s") or 0) > (d.get("measure_s") or 0)


@dataclass
class SyncFit:
    fixed_s: float
    gb_per_s: float
    n: int

    def seconds(self, nbytes: float) -> float:
        return self.fixed_s + nbytes / (self.gb_per_s * GB) if nbytes else 0.0

    def describe(self) -> str:
        return f"{self.fixed_s:.3f} s + bytes at {self.gb_per_s:.2f} GB/s (fit on {self.n} rows)"


def fit_sync(rows: list[dict]) -> dict[str, SyncFit]:
    """Hand-off seconds per step against bytes handed off, s = fixed + bytes/rate, one fit per Sync
    label with rows of two sizes (for a writer with variants, the rows of the newest variant where
    they cover two sizes: the mapped writer's files are prepared off the step)."""
    groups: dict = {}
    for r in rows:
        info = r.get("sync_info") or {}
        if info.get("includes_gpu_tail") or not info.get("bytes_per_step") or not (info.get("sync_s") or [])[1:]:
            continue
        groups.setdefault(str(r.get("sync")), []).append(r)
    fits = {}
    for label, rs in groups.items():
        for pick in ([r for r in rs if (r.get("sync_info") or {}).get("writer") == "mapped"], rs):
            pts = [(float(r["sync_info"]["bytes_per_step"]), sync_per_step(r)[0]) for r in pick]
            if len({b for b, _ in pts}) >= 2:
                slope, icpt = _line(pts)
                fits[label] = SyncFit(max(icpt, 0.0), 1.0 / slope / GB, len(pts))
                break
    return fits


def sync_fit_for(fits: dict[str, SyncFit], label: str) -> tuple[SyncFit | None, str]:
    """The hand-off fit of a Sync label, or of the label with the most rows (and a note saying so)."""
    if label in fits:
        return fits[label], ""
    if not fits:
        return None, f"no measured rows of sync {label}: its hand-off is not predicted"
    other = max(fits, key=lambda k: fits[k].n)
    return fits[other], f"no measured rows of sync {label}: the {other} fit"


def _line(pts: list[tuple[float, float]], relative: bool = False) -> tuple[float, float]:
    """Least-squares slope and intercept of y on x; ``relative``: minimise relative errors (each
    point weighted by 1/y^2), so short rows count as much as long ones."""
    w = [1.0 / y**2 if relative else 1.0 for _, y in pts]
    sw = sum(w)
    mx = sum(wi * x for wi, (x, _) in zip(w, pts)) / sw
    my = sum(wi * y for wi, (_, y) in zip(w, pts)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, (x, _) in zip(w, pts))
    sxy = sum(wi * (x - mx) * (y - my) for wi, (x, y) in zip(w, pts))
    slope = sxy / sxx
    return slope, my - slope * mx


@dataclass
class ComputeFit:
    key: tuple[str, str]
    efficiency: float     # ideal time / (measured compute time - overhead)
    overhead_s: float     # per micro-batch
    n: int
    commits: tuple[str, ...]
    residual: float       # worst |measured/fitted - 1| over the fit's rows

    def describe(self) -> str:
        return (f"efficiency {self.efficiency:.2f}, host {self.overhead_s * 1e3:.0f} ms per micro-batch "
                f"(fit on {self.n} {self.key[0]} {self.key[1]} rows of {', '.join(self.commits)}; "
                f"worst residual {100 * self.residual:.0f}%)")


def _row_work(r: dict) -> tuple[object, Work]:
    """A stored row's model shapes and work, from its family and its plugins' declarations."""
    from core.plugins import make
    from core.published import row_args

    c = r["config"]
    a = row_args(r)
    return a, work(a, r["seq_len"], make("adapter", c["adapter"]), make("ac", c["ac"]))


@dataclass
class Sample:
    """One measured row as a compute sample: ideal time ``x`` and measured compute time ``y`` per
    micro-batch, the fit group ``key`` and the row's ``config`` (model, type, seq_len, AC,
    attention, hardware)."""

    key: tuple[str, str]
    x: float
    y: float
    commit: str
    config: tuple


def compute_samples(rows: list[dict], syncs: dict[str, SyncFit]) -> list[Sample]:
    """Our rows as compute samples: the step less the weight hand-off, against the ideal time at the
    ceilings of the hardware they ran on."""
    from core import hardware

    profiles: dict = {}
    out = []
    for r in rows:
        commit = str((r.get("env") or {}).get("git_commit") or "")[:7]
        info = r.get("sync_info") or {}
        tail = bool(info.get("includes_gpu_tail"))
        if not info.get("bytes_per_step"):
            sync_s = 0.0
        elif tail or not (info.get("sync_s") or [])[1:]:
            fit = syncs.get(str(r.get("sync")))
            if fit is None:
                continue  # neither its own figure nor a fit says what it waited for
            sync_s = fit.seconds(info.get("bytes_per_step") or 0)
        else:
            total, exposed = sync_per_step(r)
            sync_s = exposed if (info.get("sync_exposed_s") or [])[1:] else total
        a, w = _row_work(r)
        name = hardware.profile_for(str(r.get("hardware_label", "")))
        if name not in profiles:
            profiles[name] = hardware.load(name)
        hw = profiles[name]
        backend = backend_of(r["attn"])
        mbs = r.get("micro_batches") or r["config"].get("micro_batches", 2)
        out.append(Sample((backend, "moe" if a.n_experts else "dense"), sum(w.ideal_s(hw, backend).values()),
                          r["step_time"] - sync_s / mbs, commit,
                          (section_name(r), r["type"], r["seq_len"], r["ac"], r["attn"], r["hardware_label"])))
    return out


def fit_samples(samples: list[Sample]) -> dict[tuple[str, str], ComputeFit]:
    """Per (attention backend, dense|moe): compute time = ideal time / efficiency + host overhead,
    relative least squares (through the origin where that gives a negative overhead)."""
    groups: dict = {}
    for smp in samples:
        groups.setdefault(smp.key, []).append(smp)
    fits = {}
    for key, ss in groups.items():
        xy = [(t.x, t.y) for t in ss]
        if len({round(x, 6) for x, _ in xy}) >= 2:
            slope, icpt = _line(xy, relative=True)
            if icpt < 0 or slope <= 0:
                slope, icpt = sum(y for _, y in xy) / sum(x for x, _ in xy), 0.0
        else:
            slope, icpt = sum(y for _, y in xy) / sum(x for x, _ in xy), 0.0
        worst = max(abs(y / (x * slope + icpt) - 1) for x, y in xy)
        fits[key] = ComputeFit(key, 1.0 / slope, icpt, len(xy), tuple(sorted({t.commit for t in ss})), worst)
    return fits


def fit_compute(rows: list[dict], sync: SyncFit) -> dict[tuple[str, str], ComputeFit]:
    """The compute fits of our rows (:func:`compute_samples`, :func:`fit_samples`)."""
    return fit_samples(compute_samples(rows, sync))


def pick_fit(fits: dict, backend: str, moe: bool) -> tuple[ComputeFit, str]:
    """The fit for a row, and a note when it comes from another backend or model kind (the other
    kind of the same backend, else the same kind's fit on the most rows)."""
    kind = "moe" if moe else "dense"
    if (backend, kind) in fits:
        return fits[(backend, kind)], ""
    same_kind = sorted((k for k in fits if k[1] == kind), key=lambda k: -fits[k].n)
    for alt in [(backend, "dense" if moe else "moe")] + same_kind:
        if alt in fits:
            return fits[alt], f"no measured {backend} {kind} row: efficiency of {alt[0]} {alt[1]} rows"
    raise UserError(f"no measured rows to fit the {backend} compute efficiency on: run some rows first "
                    "(python -m core.bench +sweep=h100_table)")


def fits_from_rows(folder: Path = RESULTS) -> tuple[list[dict], dict, dict]:
    """Our current rows (``folder/*.jsonl``), the weight-sync fits and the compute fits on them; a
    backend and model kind with no current row is fitted on the rows kept in ``history/`` (older
    commits, named in the fit's description)."""
    current = measured_rows(sorted(folder.glob("*.jsonl")))
    history = measured_rows(sorted((folder / "history").glob("*.jsonl")))
    sync_fits = {**fit_sync(history), **fit_sync(current)}
    fits = fit_compute(current, sync_fits)
    for key, f in fit_compute(history, sync_fits).items():
        fits.setdefault(key, f)
    return current, sync_fits, fits


_FITS: list = []


def _cached_fits():
    if not _FITS:
        _FITS.append(fits_from_rows())
    return _FITS[0]
