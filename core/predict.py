"""``python -m core.predict``: a predicted row for hardware and GPU counts that cannot run here.

    python -m core.predict model=qwen3_4b +attn=fa3 +ac=recompute seq_len=65536 hardware=h200 gpus=8
    python -m core.predict --published      # every published row: predicted against published

Same overrides as ``core.bench`` (checked the same way), plus ``gpus=N``; ``hardware=`` must name
a profile (``conf/hardware/``). The prediction is of *stepbench's* step on that hardware, built
from terms, each printed with where it came from:

- **memory** per GPU: :func:`core.memory.peak_terms` at N ranks (FSDP2 shards parameters,
  gradients and optimizer states; activations and the head are per rank);
- **compute** per micro-batch: the executed matmul and attention FLOPs of the row
  (:func:`core.flops.micro_batch_flops`) at the profile's ceilings for the backend, plus an
  estimate of the bytes of memory-bound work at the profile's memory bandwidth, divided by an
  efficiency and plus a per-micro-batch host overhead, both fitted by least squares on our own
  measured rows of the same attention backend and model kind (dense or MoE), never on published
  rows;
- **collectives** per micro-batch (N > 1): FSDP2's all-gathers (bf16 blocks in forward and again
  in backward, the root once) and reduce-scatters (fp32 gradients of what trains) at the
  profile's link bandwidth, hidden behind compute except what exceeds it and the first block's
  gather;
- **weight sync** per step (RL): the bytes the filesystem hand-off writes (full bf16 weights, or
  the adapter), gathered to rank 0, at a write rate fitted on our rows.

Predictions are written with ``kind: "prediction"``; the report shows them in their own section.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from core.measure import say
from core.published import section_name, sync_per_step
from core.resolve import UserError, first_line

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
    passes = 4 if recompute.blocks else 3
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
def _short(commit: str | None) -> str:
    return (commit or "")[:7]


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
        out.append(r)
    return out


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
        commit = _short((r.get("env") or {}).get("git_commit"))
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


# ------------------------------------------------------------------------------ one prediction
def predict(a, *, seq_len: int, task: str, adapter, ac, attn: str, hw: dict, gpus: int, micro_batches: int = 2,
            head_budget_mib: int = 512, sync_label: str = "none", fits: dict, sync_fits: dict[str, SyncFit],
            layout) -> dict:
    """A predicted row (with its terms) of stepbench's step on ``gpus`` GPUs of ``hw``, from the
    row's plugins' declarations (``adapter``, ``ac``), its attention label ``attn`` (the compute
    fit's key), its Sync label and its :class:`core.memory.Layout`."""
    from core import flops
    from core.memory import GIB, param_count, peak_terms

    backend = backend_of(attn)
    mem_terms = peak_terms(a, seq_len, adapter, ac, gpus, head_budget_mib, layout)
    peak = sum(mem_terms.values()) / GIB
    w = work(a, seq_len, adapter, ac)
    ideal = w.ideal_s(hw, backend)
    fit, fit_note = pick_fit(fits, backend, bool(a.n_experts))
    compute = sum(ideal.values()) / fit.efficiency + fit.overhead_s
    n = param_count(a)
    trainable = adapter.trainable_params(a)
    comm = {"all_gather_gb": 0.0, "reduce_scatter_gb": 0.0, "seconds": 0.0, "exposed_s": 0.0}
    if gpus > 1:
        frac = (gpus - 1) / gpus
        blocks = 2 * block_params(a)
        root = 2 * (n - block_params(a))
        ag, rs = 2 * blocks + root, 4 * trainable
        t = (ag + rs) * frac / (float(hw["link_gbps"]) * GB)
        first = blocks / a.n_layers * frac / (float(hw["link_gbps"]) * GB)
        comm = {"all_gather_gb": ag / GB, "reduce_scatter_gb": rs / GB, "seconds": t,
                "exposed_s": max(0.0, t - compute) + first}
    sync_fit, sync_note = sync_fit_for(sync_fits, sync_label) if sync_label != "none" else (None, "")
    sync_bytes = 2 * adapter.handoff_params(a) if sync_label != "none" else 0
    sync_s = sync_fit.seconds(sync_bytes) if sync_fit else 0.0
    if sync_bytes and gpus > 1:  # the shards are gathered to rank 0 first
        sync_s += sync_bytes * (gpus - 1) / gpus / (float(hw["link_gbps"]) * GB)
    per_mb = compute + comm["exposed_s"]
    step = micro_batches * per_mb + sync_s
    tps = gpus * seq_len * micro_batches / step
    added = trainable if adapter.frozen_base else 0
    fpt = flops.prime_rl_flops_per_token(a, seq_len, added, 0, adapter.frozen_base)
    return {
        "kind": "prediction", "gpus": gpus, "hardware": hw["name"], "seq_len": seq_len, "task": task,
        "peak_mem_gib": peak, "memory_terms_gib": {k: v / GIB for k, v in mem_terms.items()},
        "compute_s": compute, "ideal_s": ideal, "fit": fit.describe(), "fit_note": fit_note,
        "efficiency": fit.efficiency, "overhead_s": fit.overhead_s,
        "collectives": comm, "sync": sync_label, "sync_bytes": sync_bytes, "sync_s": sync_s,
        "sync_fit": (sync_fit.describe() if sync_fit else "-") + (f"; {sync_note}" if sync_note else ""),
        "step_s": step, "step_time": step / micro_batches, "tps": tps,
        "mfu": flops.mfu(fpt, tps, hw["peak_flops"], gpus),
        "ceilings_tflops": dict(zip(("matmul", "attention"), ceilings(hw, backend))),
        "hbm_tbps": hw["hbm_tbps"], "link_gbps": hw["link_gbps"],
    }


def format_prediction(label: str, p: dict) -> str:
    m = p["memory_terms_gib"]
    i = p["ideal_s"]
    c = p["collectives"]
    lines = [
        f"predicted (not measured): {label}",
        f"  peak memory per GPU {p['peak_mem_gib']:.1f} GiB = "
        + " + ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in m.items()),
        f"  compute per micro-batch {p['compute_s']:.3f} s = (matmul {i['matmul']:.3f} s at "
        f"{p['ceilings_tflops']['matmul']:g} TFLOP/s + attention {i['attention']:.3f} s at "
        f"{p['ceilings_tflops']['attention']:g} + memory-bound {i['memory-bound']:.3f} s at {p['hbm_tbps']:g} TB/s)"
        f" / efficiency {p['efficiency']:.2f} + host {p['overhead_s']:.3f} s",
        f"    {p['fit']}" + (f"; {p['fit_note']}" if p["fit_note"] else ""),
    ]
    if p["gpus"] > 1:
        lines.append(f"  collectives per micro-batch: all-gather {c['all_gather_gb']:.2f} GB + reduce-scatter "
                     f"{c['reduce_scatter_gb']:.2f} GB at {p['link_gbps']:g} GB/s = {c['seconds']:.3f} s, "
                     f"exposed {c['exposed_s']:.3f} s")
    if p["sync"] != "none":
        lines.append(f"  weight sync per step ({p['sync']}): {p['sync_bytes'] / GB:.3f} GB in {p['sync_s']:.3f} s "
                     f"({p['sync_fit']}" + (", gathered to rank 0 first)" if p["gpus"] > 1 else ")"))
    lines.append(f"  step {p['step_s']:.2f} s ({p['step_time']:.2f} s per micro-batch) -> TPS "
                 f"{p['tps'] / 1e3:.2f}k, MFU {p['mfu']:.1f}%")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ published rows
HEADER = ["# Predicted rows (not measured)", "",
          "`python -m core.predict --published` predicts stepbench's step for every row of prime-rl's "
          "published table (`benchmarks/reference/prime-rl-benchmarks-2026-01.md`; each row composed from "
          "its cells' overrides, `prime-rl-configs.yaml`) from terms: memory per GPU under FSDP2, compute "
          "at each hardware profile's ceilings divided by an efficiency fitted on our own measured "
          "H100/H200 rows (never on published ones), FSDP2's collectives at the profile's link bandwidth, "
          "and the weight hand-off the row does by default. These are predictions, not measurements; the "
          "ratios to prime-rl's rows mix the predictor's error with the difference between stepbench and "
          "prime-rl (on the 1xH100 rows, where both were measured, the measured ratio is shown beside it).", ""]


def _ratio_stats(xs: list[float]) -> tuple[float, float]:
    """(median ratio, worst ratio by |log|)."""
    return statistics.median(xs), max(xs, key=lambda x: abs(math.log(x)))


@dataclass
class Declared:
    """A composed row's shapes, plugins and layout: what a prediction needs (nothing built)."""

    args: object
    adapter: object
    ac: object
    attn: str  #: the row's attention label (the compute fit's key)
    sync_label: str
    layout: object
    cfg: object


def declare(cfg) -> Declared:
    """The declarations of a composed config's model and plugins, made on a CPU context (the
    plugins' options checked, nothing built); the checkpoint layout as the bench runs it there."""
    from omegaconf import OmegaConf

    from core.contracts import RunContext, SyncContext
    from core.memory import layout_of
    from core.plugins import registry
    from core.resolve import _model_args, make_plugins, model_choice

    family, flavour, seq_len, _ = model_choice(cfg, "cuda")
    fam = registry().get("model_family", family).factory
    a = _model_args(cfg, fam, family, flavour)
    p = make_plugins(cfg, RunContext("cuda", world_size=1))
    p["sync"].check(SyncContext(0, 1, "cuda", p["adapter"].frozen_base, cfg.task.name, 0,
                                handoff=p["adapter"].handoff))  # a method chosen by the row says so now
    config = OmegaConf.to_container(cfg, resolve=True)
    if config.get("compile") == "auto":
        config["compile"] = True  # what a GPU row runs
    layout = layout_of(config, p["ac"], p["adapter"], fam)
    layout = type(layout)(**{**layout.as_dict(), "kv_repeated": bool(p["attn"].repeats_kv)})
    return Declared(a, p["adapter"], p["ac"], p["attn"].label, p["sync"].label, layout, cfg)


def compose(overrides: list[str]):
    """The bench config of ``overrides`` (Hydra compose of conf/bench.yaml)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from core.options import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("bench", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def predict_config(d: Declared, hw: dict, gpus: int, fits: dict, sync_fits: dict) -> dict:
    """:func:`predict` of a declared row."""
    c = d.cfg
    return predict(d.args, seq_len=c.seq_len, task=c.task.name, adapter=d.adapter, ac=d.ac, attn=d.attn, hw=hw,
                   gpus=gpus, micro_batches=c.micro_batches, head_budget_mib=c.head_budget_mib,
                   sync_label=d.sync_label, fits=fits, sync_fits=sync_fits, layout=d.layout)


def predict_published(fits: dict, sync_fits: dict, measured: list[dict]) -> tuple[list[dict], str]:
    """Predicted rows for every published row, and the markdown comparison. Where one of our
    ``measured`` rows has the published configuration, it is also predicted *leave-one-out*: with
    the compute fits refitted on the other rows (every row of that configuration left out, whatever
    its hand-off method), an out-of-sample check of the predictor."""
    from core import hardware
    from core.memory import layout_of
    from core.plugins import make, registry
    from core.published import configs, overrides_of, parse_published, same_work

    published, _, _ = parse_published()
    samples = compute_samples(measured, sync_fits)
    ours = {}
    for r in sorted(measured, key=lambda r: str(r.get("time", ""))):  # at the published work; newest wins
        if same_work(r, {"type": r["type"]}):
            ours[(section_name(r), r["type"], r["seq_len"], r["ac"], r["attn"], r["hardware_label"])] = r
    out, lines = [], []
    for p in published:
        d = declare(compose(overrides_of(p)))
        hw = hardware.load(configs()["hardware"][p["hardware"]].split("=", 1)[1])
        config = (p["model"], p["type"], p["seq_len"], p["ac"], p["attn"], p["hardware_label"])
        m = ours.get(config)
        if m:  # where we measured the row, predict it in the measured row's layout and hand-off
            mc = m.get("config") or {}
            fam = registry().get("model_family", m["family"]).factory
            d.layout = layout_of(mc, make("ac", mc["ac"]), make("adapter", mc["adapter"]), fam,
                                 m.get("attn_provider", ""), m.get("fsdp"))
            d.sync_label = m.get("sync") or d.sync_label
        pred = predict_config(d, hw, p["num_gpus"], fits, sync_fits)
        loo = None
        if m:  # refitted without every sample of this configuration
            loo_fits = {**fits, **fit_samples([t for t in samples if t.config != config])}
            loo = predict_config(d, hw, p["num_gpus"], loo_fits, sync_fits)["tps"]
        pred.update(model=p["model"], type=p["type"], ac=p["ac"], attn=p["attn"],
                    hardware_label=p["hardware_label"], num_gpus=p["num_gpus"],
                    published_tps=p["tps"], published_mem_gib=p["peak_mem_gib"],
                    measured_tps=m["tps"] if m else None, measured_mem_gib=m["peak_mem_gib"] if m else None,
                    loo_tps=loo)
        out.append(pred)
    lines += HEADER + [
        "| Model | Type | SeqLen | AC | Attn | Hardware | TPS pred / published | ratio "
        "| measured (ours) | pred / measured | leave-one-out / measured | Mem pred / published | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for q in out:
        meas = f"{q['measured_tps'] / 1e3:.2f}k" if q["measured_tps"] else "-"
        pm = f"{q['tps'] / q['measured_tps']:.2f}x" if q["measured_tps"] else "-"
        lm = f"{q['loo_tps'] / q['measured_tps']:.2f}x" if q.get("loo_tps") else "-"
        lines.append(f"| {q['model']} | {q['type']} | {q['seq_len']} | {q['ac']} | {q['attn']} | {q['hardware_label']} "
                     f"| {q['tps'] / 1e3:.2f}k / {q['published_tps'] / 1e3:.2f}k | {q['tps'] / q['published_tps']:.2f}x "
                     f"| {meas} | {pm} | {lm} | {q['peak_mem_gib']:.1f} / {q['published_mem_gib']:.1f} GiB "
                     f"| {q['peak_mem_gib'] / q['published_mem_gib']:.2f}x |")
    lines += ["", "Per hardware (ratio = predicted / published; worst = furthest from 1):", "",
              "| Hardware | rows | TPS median | TPS worst | Mem median | Mem worst | pred / measured (ours) |",
              "|---|---|---|---|---|---|---|"]
    for hl in sorted({q["hardware_label"] for q in out}):
        qs = [q for q in out if q["hardware_label"] == hl]
        tm, tw = _ratio_stats([q["tps"] / q["published_tps"] for q in qs])
        mm, mw = _ratio_stats([q["peak_mem_gib"] / q["published_mem_gib"] for q in qs])
        own = [q["tps"] / q["measured_tps"] for q in qs if q["measured_tps"]]
        loo = [q["loo_tps"] / q["measured_tps"] for q in qs if q.get("loo_tps")]
        own_s = (f"TPS median {_ratio_stats(own)[0]:.2f}x, worst {_ratio_stats(own)[1]:.2f}x ({len(own)} rows); "
                 f"leave-one-out median {_ratio_stats(loo)[0]:.2f}x, worst {_ratio_stats(loo)[1]:.2f}x") if own else "-"
        lines.append(f"| {hl} | {len(qs)} | {tm:.2f}x | {tw:.2f}x | {mm:.2f}x | {mw:.2f}x | {own_s} |")
    lines += ["", "Fits used:", ""]
    lines += [f"- {f.key[0]} {f.key[1]}: {f.describe()}" for f in fits.values()]
    lines += [f"- weight sync ({label}): {f.describe()}" for label, f in sorted(sync_fits.items())] + [""]
    return out, "\n".join(lines)


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


def predicted_step_s(cfg) -> float:
    """The predicted seconds of one step of a composed row on this machine's GPU (for a sweep's
    estimate of what is left); raises where it cannot say."""
    import torch

    from core import hardware

    hw = hardware.load(hardware.profile_for(torch.cuda.get_device_name(0) if torch.cuda.is_available() else None))
    _, sync_fits, fits = _cached_fits()
    return predict_config(declare(cfg), hw, 1, fits, sync_fits)["step_s"]


_FITS: list = []


def _cached_fits():
    if not _FITS:
        _FITS.append(fits_from_rows())
    return _FITS[0]


# ------------------------------------------------------------------------------ entry point
def _gpus(argv: list[str]) -> tuple[int, list[str]]:
    gpus, rest = 1, []
    for a in argv:
        if a.startswith("gpus="):
            v = a.split("=", 1)[1]
            if not v.isdigit() or not 1 <= int(v) <= 4096:
                raise UserError(f"gpus={v}: give a whole number of GPUs from 1 to 4096, e.g. gpus=8")
            gpus = int(v)
        else:
            rest.append(a)
    return gpus, rest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if "--published" in argv:
            out = Path(_opt(argv, "--out", str(ROOT / "benchmarks" / "PREDICTIONS.md")))
            rows_out = Path(_opt(argv, "--rows", str(RESULTS / "predicted" / "published.jsonl")))
            current, sync_fits, fits = fits_from_rows()
            preds, md = predict_published(fits, sync_fits, current)
            out.write_text(md + "\n", encoding="utf-8")
            rows_out.parent.mkdir(parents=True, exist_ok=True)
            rows_out.write_text("".join(json.dumps(p, sort_keys=True) + "\n" for p in preds), encoding="utf-8")
            print(md.split("Per hardware", 1)[1].split("Fits used", 1)[0].strip())
            say(f"{len(preds)} predicted rows -> {out} and {rows_out}")
            return 0
        return _one(argv)
    except UserError as e:
        say(str(e))
        return 2


def _opt(argv: list[str], flag: str, default: str) -> str:
    if flag in argv:
        i = argv.index(flag)
        if i + 1 >= len(argv):
            raise UserError(f"{flag} needs a value, e.g. {flag} {default}")
        return argv[i + 1]
    return default


def _one(argv: list[str]) -> int:
    from core import hardware
    from core.bench import check_overrides

    gpus, argv = _gpus(argv)
    try:
        cfg = check_overrides(argv)
    except UserError:
        raise
    except Exception as e:  # Hydra's own composition errors, reduced to one line
        raise UserError(f"bad override: {first_line(e)}") from None
    hw_name = str(cfg.hardware.name).lower()
    if hw_name in ("auto", "cpu"):
        raise UserError("name the hardware to predict for: hardware=h100, h200, b200 or a6000 (with gpus=N)")
    if cfg.model.get("by_device"):
        raise UserError("name the model to predict: model=qwen3_0_6b, qwen3_4b, qwen3_30b_a3b or intellect3")
    d = declare(cfg)
    if not d.args or not backend_of(d.attn) or d.attn == cfg.attn.name and not _has_fit_key(d.attn):
        raise UserError(f"+attn={cfg.attn.name} picks its kernel when the row runs: name the attention to "
                        "predict, e.g. +attn=fa3")
    _, sync_fits, fits = fits_from_rows()
    p = predict_config(d, hardware.load(hw_name), gpus, fits, sync_fits)
    family = registry_family(cfg)
    if family.from_config is not None:
        p["fit_note"] = "; ".join(x for x in (p["fit_note"], "efficiency fitted on the native model code's rows, "
                                              "not on rows of this family") if x)
    hw = hardware.load(hw_name)
    label = (f"{d.args.name} {cfg.task.name.upper()} {d.adapter.label} {cfg.seq_len} {d.ac.label} {d.attn} "
             f"on {gpus}x{hw['label']}")
    print(format_prediction(label, p))
    if p["peak_mem_gib"] > float(hw["memory_gib"]):
        say(f"predicted peak {p['peak_mem_gib']:.1f} GiB per GPU exceeds the {hw['memory_gib']:g} GiB of one "
            f"{hw['label']}: this row would not fit")
    return 0


def _has_fit_key(attn_label: str) -> bool:
    """Whether any measured row ran this attention label (a backend that picks at run time has none)."""
    return any(backend_of(r.get("attn")) == backend_of(attn_label) for r in measured_rows())


def registry_family(cfg):
    from core.plugins import registry

    return registry().get("model_family", cfg.model.family).factory


if __name__ == "__main__":
    sys.exit(main())
