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
- **weight sync** per step: the bytes the row's hand-off moves (its adapter's declaration: full
  bf16 weights, or the adapter), gathered to rank 0, at the rate fitted on our rows of that Sync
  label (:mod:`core.fits`), for a method that hands weights off at all.

Predictions are written with ``kind: "prediction"``; the report shows them in their own section.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from core.fits import (GB, RESULTS, ROOT, SyncFit, _cached_fits, backend_of, block_params,
                       ceilings, fit_samples, compute_samples, fits_from_rows, pick_fit, sync_fit_for, work)
from core.measure import say
from core.published import section_name
from core.resolve import UserError, first_line


# ------------------------------------------------------------------------------ one prediction
def predict(a, *, seq_len: int, task: str, adapter, ac, attn: str, hw: dict, gpus: int, micro_batches: int = 2,
            head_budget_mib: int = 512, sync_label: str | None = None, fits: dict, sync_fits: dict[str, SyncFit],
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
    sync_fit, sync_note = sync_fit_for(sync_fits, sync_label) if sync_label else (None, "")
    sync_bytes = 2 * adapter.handoff_params(a) if sync_label else 0
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
        "collectives": comm, "sync": sync_label or "-", "sync_bytes": sync_bytes, "sync_s": sync_s,
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
    if p["sync_bytes"]:
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
    kernel: str  #: the attention backend's declared kernel ("" where it picks one when it runs)
    sync_label: str | None  #: the Sync label of a method that hands weights off, else None
    layout: object
    cfg: object


def declare(cfg) -> Declared:
    """The declarations of a composed config's model and plugins, made on a CPU context (the
    plugins' options checked, nothing built); the checkpoint layout as the bench runs it there."""
    from omegaconf import OmegaConf

    from core.contracts import RunContext, SyncContext
    from core.memory import layout_of
    from core.plugins import registry
    from core.resolve import _model_args, make_plugins, model_choice, refuse_unfit

    family, flavour, seq_len, _ = model_choice(cfg, "cuda")
    fam = registry().get("model_family", family).factory
    a = _model_args(cfg, fam, family, flavour)
    ctx = RunContext("cuda", world_size=1)
    p = make_plugins(cfg, ctx)
    # what the bench refuses for the model itself (not for what is installed here) is refused here too
    refuse_unfit(a, p["attn"], p["adapter"], p["ac"], ctx, installed=False)
    if hasattr(p["sync"], "root"):  # a folder of weights: probed, and what the probe made removed again
        from plugins.sync.filesystem import dir_problem

        why = dir_problem(p["sync"].root)
    else:  # a method the row cannot use says so now (sync=auto: the method it picks is not registered)
        try:
            why = p["sync"].check(SyncContext(device="cuda", adapter_only=p["adapter"].frozen_base,
                                              task=cfg.task.name, handoff=p["adapter"].handoff))
        except ValueError as e:
            raise UserError(str(e)) from None
    if why:
        raise UserError(f"sync '{cfg.sync.name}': {why}")
    config = OmegaConf.to_container(cfg, resolve=True)
    if config.get("compile") == "auto":
        config["compile"] = True  # what a GPU row runs
    layout = layout_of(config, p["ac"], p["adapter"], fam)
    layout = type(layout)(**{**layout.as_dict(), "kv_repeated": bool(p["attn"].repeats_kv)})
    return Declared(a, p["adapter"], p["ac"], p["attn"].label, p["attn"].kernel,
                    p["sync"].label if p["sync"].hands_off else None, layout, cfg)


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
            d.sync_label = m.get("sync") if (m.get("sync_info") or {}).get("bytes_per_step") else None
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


def predicted_step_s(cfg) -> float:
    """The predicted seconds of one step of a composed row on this machine's GPU (for a sweep's
    estimate of what is left); raises where it cannot say."""
    import torch

    from core import hardware

    hw = hardware.load(hardware.profile_for(torch.cuda.get_device_name(0) if torch.cuda.is_available() else None))
    _, sync_fits, fits = _cached_fits()
    return predict_config(declare(cfg), hw, 1, fits, sync_fits)["step_s"]


# ------------------------------------------------------------------------------ entry point
#: bench options a prediction does not read (what is measured, where rows go, the machine it runs on)
NOT_PREDICTED = ("steps", "measure_s", "results", "device", "tag", "repeats", "redo", "row_timeout_s",
                 "memory_profile", "ops_profile", "ops_trace", "busy_step", "max_host_gib", "seed",
                 "packing", "hardware_as_label", "max_memory_gib", "adapter.alpha")  # alpha scales, costs nothing


#: options a prediction cannot model: option -> why (its fits are of stepbench's default step)
NOT_MODELLED = {
    "compile": "the fits are of compiled rows, and an eager step is not predicted",
    "compile_head": "the fits are of rows with the compiled head",
    "ac.inside": "the fits are of rows that checkpoint inside each block",
    "attn.via": "the fits are of each backend's default entry point",
    "model.plain": "the predictor models stepbench's own step, not transformers' plain loop",
    "sync.verify": "the fits of the hand-off do not include the receiver's checksum",
}


#: the values of those options that are the fitted step (taken)
MODELLED_VALUES = {"compile": ("auto", "true"), "compile_head": ("true",), "ac.inside": ("true",),
                   "model.plain": ("false",), "attn.via": ("auto",), "sync.verify": ("false",)}


def _gpus(argv: list[str]) -> tuple[int, list[str]]:
    gpus, rest = 1, []
    if sum(a.startswith("gpus=") for a in argv) > 1:
        raise UserError("gpus= is given twice: keep one, e.g. gpus=8")
    for a in argv:
        key = a.split("=", 1)[0].lstrip("+~")
        if key == "gpus" and not a.startswith("gpus="):
            raise UserError(f"{a}: gpus is the predictor's own option: type gpus=N without + or ~ (e.g. gpus=8)")
        if key in NOT_MODELLED and a.split("=", 1)[-1].strip().lower() not in MODELLED_VALUES.get(key, ()):
            raise UserError(f"{a.lstrip('+~')}: {NOT_MODELLED[key]}: leave {key} out")
        if key in NOT_PREDICTED:
            raise UserError(f"{key}= changes nothing in a prediction (it is a measured row's option): leave it out")
        if a.startswith("gpus="):
            v = a.split("=", 1)[1]
            if not v.isascii() or not v.isdigit() or not 1 <= int(v) <= 4096:
                raise UserError(f"gpus={v}: give a whole number of GPUs from 1 to 4096, e.g. gpus=8")
            gpus = int(v)
        elif a.startswith("-"):
            raise UserError(f"unknown flag {a}: a prediction takes overrides, e.g. model=qwen3_4b hardware=h200 "
                            "gpus=8 (or --published [--out FILE.md] [--rows FILE.jsonl])")
        elif "=" not in a:
            raise UserError(f"'{a}' is not an override: type key=value, e.g. model=qwen3_4b hardware=h200 gpus=8")
        else:
            rest.append(a)
    return gpus, rest


#: what ``--published`` takes: each flag and its value
PUBLISHED_FLAGS = ("--out", "--rows")


def _published_inputs() -> list[Path]:
    """The files ``--published`` reads: our rows (and their history), the published tables and their
    configs, and the bench configs."""
    from core.options import conf_dir
    from core.paths import reference_dir

    files = [*RESULTS.glob("*.jsonl"), *(RESULTS / "history").glob("*.jsonl")]
    for folder in (reference_dir(), conf_dir()):
        files += [p for p in Path(folder).rglob("*") if p.is_file()]
    return files


def main(argv: list[str] | None = None) -> int:
    from core.results import PREDICTIONS, ResultsError, check_output, write_all_atomic

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        if "--published" in argv:
            if argv.count("--published") > 1:
                raise UserError("--published is given twice: give it once, e.g. python -m core.predict --published")
            rest = [a for a in argv if a != "--published"]
            out = _opt(rest, "--out", str(ROOT / "benchmarks" / "PREDICTIONS.md"))
            rows_out = _opt(rest, "--rows", str(RESULTS / "predicted" / "published.jsonl"))
            for i, a in enumerate(rest):
                if a not in PUBLISHED_FLAGS and (i == 0 or rest[i - 1] not in PUBLISHED_FLAGS):
                    raise UserError(f"--published takes only --out FILE.md and --rows FILE.jsonl, not {a!r}: "
                                    "e.g. python -m core.predict --published --out benchmarks/PREDICTIONS.md")
            inputs = _published_inputs()
            what = "an input of the prediction (our rows, the published tables or the configs)"
            out = check_output(out, "--out", "benchmarks/PREDICTIONS.md", inputs, what,
                               holds=(lambda line: line == HEADER[0], "a stepbench prediction"))
            rows_out = check_output(rows_out, "--rows", "benchmarks/results/predicted/published.jsonl",
                                    [*inputs, out], what + " or --out", holds=PREDICTIONS)
            for flag, path, kinds, eg in (("--out", out, (".md", ".markdown"), "benchmarks/PREDICTIONS.md"),
                                          ("--rows", rows_out, (".jsonl",), "benchmarks/results/predicted/p.jsonl")):
                if Path(path).suffix.lower() not in kinds:  # the Markdown table and the JSON rows, not swapped
                    what = "the table, Markdown" if flag == "--out" else "the predicted rows, JSON lines"
                    raise UserError(f"{flag} {path}: {flag} takes a {kinds[0]} file ({what}): e.g. {flag} {eg}")
            measured, predicted = RESULTS.resolve(), (RESULTS / "predicted").resolve()
            for flag, path in (("--rows", rows_out), ("--out", out)):  # the report reads measured rows there
                real = Path(path).resolve()
                if real.is_relative_to(measured) and not real.is_relative_to(predicted):
                    raise UserError(f"{flag} {path} is among the measured rows (benchmarks/results/), which the "
                                    "report and the fits read: put predictions under benchmarks/results/predicted/")
            current, sync_fits, fits = fits_from_rows()
            preds, md = predict_published(fits, sync_fits, current)
            try:  # both or neither: the table and its rows never disagree
                write_all_atomic([(out, md + "\n"),
                                  (rows_out, "".join(json.dumps(p, sort_keys=True) + "\n" for p in preds))])
            except OSError as e:
                raise UserError(f"--out {out} and --rows {rows_out} could not be written ({first_line(e)}): neither "
                                "was; free space or pick other paths") from None
            print(md.split("Per hardware", 1)[1].split("Fits used", 1)[0].strip())
            say(f"{len(preds)} predicted rows -> {out} and {rows_out}")
            return 0
        return _one(argv)
    except (UserError, ResultsError) as e:
        say(str(e))
        return 2


def _opt(argv: list[str], flag: str, default: str) -> str:
    if argv.count(flag) > 1:
        raise UserError(f"{flag} is given {argv.count(flag)} times: give it once, e.g. {flag} {default}")
    if flag in argv:
        i = argv.index(flag)
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
            raise UserError(f"{flag} needs a value, e.g. {flag} {default}")
        return argv[i + 1]
    return default


def _one(argv: list[str]) -> int:
    from core import hardware
    from core.bench import check_overrides

    gpus, argv = _gpus(argv)
    if gpus == 1 and any(a.lstrip("+~").startswith("hardware.link_gbps=") for a in argv):
        raise UserError("hardware.link_gbps is the bandwidth between GPUs, and one GPU sends nothing over it: leave it "
                        "out, or predict several GPUs (gpus=8)")
    if any(a.lstrip("+").startswith("sweep=") for a in argv):
        raise UserError("predict makes one row: leave +sweep=... out (python -m core.predict --published predicts "
                        "every published row)")
    from core.hardware import profile_files

    profiles = profile_files()
    for a in argv:  # a hardware name the predictor has no profile for: the ones it has, not every config's
        if a.split("=", 1)[0].lstrip("+~") == "hardware" and "=" in a:
            v = a.split("=", 1)[1]
            if v not in profiles and "," not in v:
                raise UserError(f"unknown hardware '{v}': predict for hardware=h100, h200, b200 or a6000 (with gpus=N)")
    try:
        cfg = check_overrides(argv)
    except UserError:
        raise
    except Exception as e:  # Hydra's own composition errors, reduced to one line
        raise UserError(f"bad override: {first_line(e)}") from None
    from core.resolve import _primary_defaults

    if (cfg.get("peer") or {}).get("name", "none") != _primary_defaults()["peer"]["name"]:
        raise UserError(f"+peer={cfg.peer.name}: the predictor predicts stepbench's own step, not another trainer's: "
                        "leave +peer out")
    if (cfg.get("kernels") or {}).get("name") != _primary_defaults()["kernels"]["name"]:
        raise UserError(f"+kernels={cfg.kernels.name}: the predictor has no fit of that provider's step (its fits are "
                        "of rows with the default kernels): leave +kernels out")
    from core.options import group_schema

    sync = dict(cfg.get("sync") or {})
    defaults = group_schema("sync", str(sync.get("name"))) if sync else {}
    moved = [k for k, v in sync.items() if k != "name" and k in defaults and v != defaults[k]]
    if moved:  # how the hand-off writes, cleans up or gathers: not its bytes, so not the prediction
        v = sync[moved[0]]
        raise UserError(f"sync.{moved[0]}={str(v).lower() if isinstance(v, bool) else v}: the predictor models the "
                        f"hand-off's bytes and time, which sync.{moved[0]} does not change: leave it out")
    if (cfg.get("adapter") or {}).get("replicate", "auto") != "auto":
        raise UserError(f"adapter.replicate={str(cfg.adapter.replicate).lower()}: the predictor models FSDP2's "
                        "sharding of the adapter as auto does: leave it out")
    hw_name = str(cfg.hardware.name).lower()
    if hw_name in ("auto", "cpu"):
        raise UserError("name the hardware to predict for: hardware=h100, h200, b200 or a6000 (with gpus=N)")
    if cfg.model.get("by_device"):
        raise UserError("name the model to predict: model=qwen3_0_6b, qwen3_4b, qwen3_30b_a3b or intellect3")
    d = declare(cfg)
    _, sync_fits, fits = fits_from_rows()
    from omegaconf import OmegaConf

    hw = hardware.resolve(OmegaConf.to_container(cfg.hardware, resolve=True), None)  # with hardware.* overrides
    refuse_a_backend_the_gpu_cannot_run(str(cfg.attn.name), hw, gpus)
    measured = sorted({k[0] for k in fits})
    if backend_of(d.attn) not in measured:
        if d.kernel:  # a named kernel nobody measured: its memory, but nothing to fit its compute on
            p = predict_config(Declared(**{**d.__dict__, "attn": measured[-1]}), hw, gpus, fits, sync_fits)
            label = (f"{d.args.name} {cfg.task.name.upper()} {d.adapter.label} {cfg.seq_len} {d.ac.label} "
                     f"{d.attn} on {gpus}x{hw['label']}")
            print("\n".join(format_prediction(label, p).splitlines()[:2]))
            print(f"  time: not predicted (no measured rows of +attn={cfg.attn.name} to fit its compute on; "
                  f"measured: {', '.join(measured)})")
            return _fits_or_not(p, hw)
        # a backend that picks its kernel when it runs: the fastest measured one
        tried = {k: predict_config(Declared(**{**d.__dict__, "attn": k}), hw, gpus, fits, sync_fits) for k in measured}
        best = max(tried, key=lambda k: tried[k]["tps"])
        p = tried[best]
        p["fit_note"] = "; ".join(x for x in (p["fit_note"], f"+attn={cfg.attn.name} picks its kernel when the row "
                                              f"runs: predicted with the fastest measured one, {best}") if x)
        d.attn = best.upper()
    else:
        p = predict_config(d, hw, gpus, fits, sync_fits)
    family = registry_family(cfg)
    if family.from_config is not None:
        p["fit_note"] = "; ".join(x for x in (p["fit_note"], "efficiency fitted on the native model code's rows, "
                                              "not on rows of this family") if x)
    label = (f"{d.args.name} {cfg.task.name.upper()} {d.adapter.label} {cfg.seq_len} {d.ac.label} {d.attn} "
             f"on {gpus}x{hw['label']}")
    print(format_prediction(label, p))
    return _fits_or_not(p, hw)


def refuse_a_backend_the_gpu_cannot_run(attn: str, hw: dict, gpus: int) -> None:
    """``UserError`` where the attention backend ``attn`` cannot run on the profile's GPU (FA3 on an
    A6000's SM86): its plugin's ``why_not`` asked for the profile's compute capability (not for what is
    installed here), naming the profiles whose GPU it runs on."""
    from core import hardware
    from core.contracts import RunContext
    from core.plugins import registry

    entry = registry().get("attn", attn)

    def why(profile: dict) -> str | None:
        cap = hardware.capability(profile)
        if cap is None:  # a profile that does not say which GPU it is: nothing to check
            return None
        return entry.unavailable(RunContext("cuda", str(profile.get("label")), cap, gpus, hardware=profile,
                                            installed=False))

    try:
        reason = why(hw)
    except ValueError as e:  # hardware.capability=<not MAJOR.MINOR>
        raise UserError(str(e)) from None
    if reason:
        runs = [n for n, prof in hardware.profiles().items() if hardware.capability(prof) and not why(prof)]
        where = f"predict for hardware={' or '.join(runs)}" if runs else "no hardware profile has a GPU it runs on"
        raise UserError(f"+attn={attn} does not run on {hw['label']}: {reason}, or {where}")


def _fits_or_not(p: dict, hw: dict) -> int:
    if p["peak_mem_gib"] > float(hw["memory_gib"]):
        say(f"predicted peak {p['peak_mem_gib']:.1f} GiB per GPU exceeds the {hw['memory_gib']:g} GiB of one "
            f"{hw['label']}: this row would not fit")
    return 0


def registry_family(cfg):
    from core.plugins import registry

    return registry().get("model_family", cfg.model.family).factory


if __name__ == "__main__":
    from core.errors import run_main

    run_main(main, "stepbench")
