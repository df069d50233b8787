"""``python -m core.bench``: one benchmark row, or a sweep of rows with ``-m``.

    python -m core.bench +attn=fa3 +ac=offload model=qwen3_4b     # one row
    python -m core.bench -m +attn=fa2,fa3 +ac=recompute,offload   # a sweep = a table
    python -m core.bench --list                                   # plugins and config options

A single row runs in this process. In a sweep each row runs in a fresh child process (clean CUDA
context, true peak memory; a crash, OOM or timeout becomes a failed row) and the sweep goes on.
Rows are appended to ``results`` (JSON lines). Bad input exits with status 2 and one line that
says what to type instead.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import sys
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("model", "task", "adapter", "hardware", "attn", "ac", "sweep")
CHILD_ENV = "STEPBENCH_CHILD_ROW_ID"
SEQ_MULTIPLE = 128


class UserError(Exception):
    """Bad input: reported as one line, exit status 2."""


def say(msg: str) -> None:
    print(f"stepbench: {msg}", file=sys.stderr, flush=True)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(e, UserError) else f"{type(e).__name__}: {first}".strip()


# ----------------------------------------------------------------------------- resolution
def resolve(cfg, world: int = 1) -> dict:
    """Check a composed config and resolve it to plugins, model args and hardware. Allocates nothing."""
    import torch

    from core import hardware
    from core.memory import host_available_gib
    from core.plugins import PluginError, RunContext, registry

    reg = registry()
    want = cfg.device
    if want not in ("auto", "cuda", "cpu"):
        raise UserError(f"device '{want}' is unknown: use device=auto, device=cuda or device=cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible: use device=cpu (or device=auto)")
    ctx = RunContext.detect(world) if want != "cpu" else RunContext("cpu", world_size=world)
    notes = []
    family, flavour = cfg.model.family, str(cfg.model.flavour)
    seq_len = cfg.seq_len
    if not isinstance(seq_len, int) or seq_len <= 0 or seq_len % SEQ_MULTIPLE:
        good = max(SEQ_MULTIPLE, round((seq_len if isinstance(seq_len, int) else 0) / SEQ_MULTIPLE) * SEQ_MULTIPLE)
        raise UserError(f"seq_len must be a positive multiple of {SEQ_MULTIPLE} (got {seq_len}): "
                        f"try seq_len={good}")
    if family == "auto":
        if ctx.device == "cuda":
            family, flavour = "qwen3", "0.6B"
        else:
            family, flavour, seq_len = "qwen3", "tiny", min(seq_len, 512)
            notes.append(f"no CUDA GPU: running the tiny Qwen3 on the CPU at seq_len={seq_len} "
                         "(on a GPU machine the default is Qwen3-0.6B; pick one with model=...)")
    try:
        fam = reg.get("model_family", family).factory
        attn_e = reg.get("attn", cfg.attn.name)
        ac_e = reg.get("ac", cfg.ac.name)
        ad_e = reg.get("adapter", cfg.adapter.name)
    except PluginError as e:
        raise UserError(str(e)) from None
    if flavour not in fam.flavours:
        raise UserError(f"model family '{family}' has no flavour '{flavour}': choose one of "
                        f"{', '.join(fam.flavours)}")
    if cfg.task.name not in ("rl", "sft"):
        raise UserError(f"task '{cfg.task.name}' is unknown: use task=rl or task=sft")
    if not isinstance(cfg.micro_batches, int) or cfg.micro_batches <= 0:
        raise UserError(f"micro_batches must be a positive integer (got {cfg.micro_batches}): try micro_batches=2")
    if not isinstance(cfg.steps, int) or cfg.steps < 2:
        raise UserError(f"steps must be at least 2 (step 0 is warm-up; got {cfg.steps}): try steps=4")
    for e in (attn_e, ac_e, ad_e):
        why = e.unavailable(ctx)
        if why:
            raise UserError(f"{e.kind} '{e.name}' cannot run here: {why}")
    try:
        hw = hardware.resolve(dict(cfg.hardware), ctx.gpu_name)
    except ValueError as e:
        raise UserError(str(e)) from None
    args = fam.flavours[flavour]
    host = predicted_host_gib(cfg, args, seq_len)
    limit = cfg.get("max_host_gib") or host_available_gib()
    if host and limit and host > limit:
        instead = "+ac=offload (block inputs only)" if cfg.ac.get("mode") == "attention" else "+ac=recompute"
        raise UserError(f"offload would pin {host:.3g} GiB of host memory but {limit:.3g} GiB is available: "
                        f"try {instead} or a shorter seq_len")
    return dict(ctx=ctx, args=args, family=family, flavour=flavour, seq_len=seq_len, attn=attn_e,
                ac=ac_e, adapter=ad_e, hw=hw, notes=notes, host_gib=host)


def predicted_host_gib(cfg, args, seq_len: int) -> float:
    """Pinned host memory the row's activation strategy will use (0 without offload)."""
    from core.memory import predict_host_gib
    from plugins.attention.fa2 import repeats_kv

    repeated = cfg.attn.name == "fa2" and repeats_kv()
    return predict_host_gib(args, seq_len, cfg.ac.name, cfg.ac.get("mode", "full"), cfg.ac.get("keep_last", 1),
                            kv_repeated=repeated)


def config_adapter_label(cfg) -> str:
    """The Type column's adapter text from the config alone (for rows that built no adapter)."""
    return f"LoRA(r={cfg.adapter.get('rank')})" if cfg.adapter.name == "lora" else cfg.adapter.name.capitalize()


def row_labels(cfg, r: dict, adapter_label: str, world: int) -> dict:
    ac_names = {"none": "None", "recompute": "Recompute", "offload": "Offload"}
    ac = ac_names.get(cfg.ac.name, cfg.ac.name)
    mode = cfg.ac.get("mode", "full")
    if mode and mode != "full" and cfg.ac.name != "none":
        ac += f" ({mode})"
    attn = cfg.attn.name.upper() if cfg.attn.name in ("fa2", "fa3") else cfg.attn.name
    return {
        "model": r["args"].name, "hf_name": r["args"].hf_name, "family": r["family"], "flavour": r["flavour"],
        "task": cfg.task.name.upper(), "adapter": adapter_label, "type": f"{cfg.task.name.upper()} {adapter_label}",
        "seq_len": r["seq_len"], "ac": ac, "attn": attn, "hardware": r["hw"]["label"], "num_gpus": world,
        "hardware_label": f"{world}x{r['hw']['label']}",
    }


def environment() -> dict:
    import torch

    from plugins.attention.common import package_version

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "host": platform.node()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            env["driver"] = None
    for pkg in ("triton", "peft", "flash_attn_3", "flash_attn", "hydra-core", "pluggy"):
        v = package_version(pkg)
        if v != "unknown":
            env[pkg] = v
    env["git_commit"] = os.environ.get("STEPBENCH_GIT_COMMIT") or git_commit()  # device copies set it
    return env


def git_commit() -> str | None:
    """HEAD of the checkout this runs from, ``-dirty`` when tracked files changed."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def kernel_profiler():
    """torch.profiler over one step, CUDA activity only (``ops_profile=true``)."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CUDA])


# ----------------------------------------------------------------------------- one row
def measure(cfg, r: dict) -> dict:
    """Build the model, run warm-up + measured steps, and return the row's metrics."""
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from core import flops
    from core.memory import predict_peak_gib
    from core.trainer import build, init_distributed, make_batches, train_step

    ctx = r["ctx"]
    rank, world = init_distributed(ctx.device)  # under torchrun this picks the rank's GPU first
    device = torch.device("cpu")
    if ctx.device == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.reset_peak_memory_stats()
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    try:  # a plugin that rejects its options says what to type instead
        attention = r["attn"].factory(plain(cfg.attn))
        ac = r["ac"].factory(plain(cfg.ac))
        adapter = r["adapter"].factory(plain(cfg.adapter))
    except ValueError as e:
        raise UserError(str(e)) from e
    labels = row_labels(cfg, r, adapter.label, world)
    args, seq_len, task, mbs = r["args"], r["seq_len"], cfg.task.name, cfg.micro_batches
    predicted = predict_peak_gib(args, seq_len, getattr(adapter, "rank", None) if adapter.lora else None,
                                 cfg.ac.name, world, cfg.head_budget_mib)
    ops_profile = bool(cfg.get("ops_profile", False)) and ctx.device == "cuda"
    profile = bool(cfg.get("memory_profile", False)) and ctx.device == "cuda"
    for opt in ("memory_profile", "ops_profile"):
        if cfg.get(opt, False) and ctx.device != "cuda" and rank == 0:
            say(f"{opt}=true needs CUDA: ignored on the CPU")
    if profile:
        from core import memprof

        memprof.start()
    t0 = time.perf_counter()
    b = build(args, attention, ac, adapter, device, seed=cfg.seed, compile=cfg.compile,
              head_budget_mib=cfg.head_budget_mib)
    counts = adapter.counts(b.model)
    if world > 1:  # parameters are sharded: counts are per rank
        t = torch.tensor([counts["trainable"], counts["adapter"], counts["fully_trainable"]], device=device)
        dist.all_reduce(t)
        counts = dict(zip(("trainable", "adapter", "fully_trainable"), t.tolist()))
    build_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if ctx.device == "cuda" else (lambda: None)
    samples = {k: [] for k in ("step_time", "tps", "loss", "entropy", "kept_frac", "grad_norm")}
    doc_lens = []
    for step in range(cfg.steps):
        batches = make_batches(args, task, seq_len, mbs, cfg.packing, cfg.seed, step, device, rank)
        doc_lens += [mb.meta.doc_lens for mb in batches]
        sync()
        if world > 1:
            dist.barrier()
        profiled_step = ops_profile and step == cfg.steps - 1
        prof = kernel_profiler() if profiled_step else contextlib.nullcontext()
        t = time.perf_counter()
        with prof:
            out = train_step(b, batches, task)
            sync()
        dt = time.perf_counter() - t
        if profiled_step and rank == 0:
            ops_table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=25)
            say("time by operator, last step (self device time):\n" + ops_table)
        gn = out["grad_norm"]
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        per_mb = dt / mbs
        stats = dict(loss=out["loss"].mean().item(), entropy=out["entropy"].mean().item(), grad_norm=float(gn),
                     kept_frac=(out["kept"].sum() / out["tokens"].sum()).item() if "kept" in out else 1.0)
        tag = "warm-up" if step == 0 else f"step {step}/{cfg.steps - 1}"
        if rank == 0:
            say(f"  {tag}: {per_mb:.3f} s/micro-batch, {world * seq_len / per_mb / 1e3:.2f}k tok/s, "
                f"loss {stats['loss']:.4f}")
        if step == 0:
            continue
        samples["step_time"].append(per_mb)
        samples["tps"].append(world * seq_len / per_mb)
        for k, v in stats.items():
            samples[k].append(v)
    peak = torch.cuda.max_memory_reserved() / 2**30 if ctx.device == "cuda" else float("nan")
    breakdown = None
    if profile:
        traced, breakdown = memprof.peak_breakdown(memprof.stop_and_snapshot())
        if rank == 0:
            say(memprof.format_breakdown(traced, breakdown))
    if world > 1 and ctx.device == "cuda":
        t = torch.tensor([peak], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        peak = t.item()
    hw = r["hw"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    step_time, tps = mean(samples["step_time"]), mean(samples["tps"])
    fpt = flops.prime_rl_flops_per_token(args, seq_len, counts["adapter"], counts["fully_trainable"], adapter.lora)
    mode = cfg.ac.get("mode", "full") if cfg.ac.name != "none" else "none"
    sf = [flops.micro_batch_flops(args, d, adapter.lora, counts["adapter"], mode) for d in doc_lens[mbs:]]
    mm_u, at_u = mean([s.mm_useful for s in sf]), mean([s.attn_useful for s in sf])
    executed = mean([s.executed for s in sf])
    roofline_s = mm_u / (hw["mm_tflops"] * 1e12) + at_u / (hw["attn_tflops"] * 1e12)
    row = {
        **labels,
        "status": "ok", "error": None,
        "mfu": flops.mfu(fpt, tps, hw["peak_flops"], world),
        "tps": tps, "step_time": step_time, "peak_mem_gib": peak, "predicted_mem_gib": predicted,
        "predicted_host_gib": r.get("host_gib", 0.0),
        "model_tflops": (mm_u + at_u) / step_time / 1e12,
        "hw_tflops": executed / step_time / 1e12,
        "roofline_frac": roofline_s / step_time,
        "flops_per_token_prime_rl": fpt,
        "micro_batches": mbs, "steps_measured": cfg.steps - 1, "packing": cfg.packing,
        "attn_provider": getattr(attention, "provider", None), "ac_info": ac.describe(),
        "counts": counts, "samples": samples, "build_s": build_s,
        "peak_flops": hw["peak_flops"],
    }
    if breakdown is not None:
        row["memory_profile"] = breakdown
    if profile or ops_profile:  # timings include the recording overhead: not for the report
        row["profiled"] = [k for k, on in (("memory", profile), ("ops", ops_profile)) if on]
    return row


def run_row(cfg) -> int:
    """Resolve, run and write one row. Returns the exit status."""
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from core.plugins import notify_row
    from core.results import append_row

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        r = resolve(cfg, world)
    except UserError as e:
        say(str(e))
        return 2
    for n in r["notes"]:
        if rank == 0:
            say(n)
    base = {"id": os.environ.get(CHILD_ENV) or uuid.uuid4().hex, "schema": 1,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tag": cfg.tag,
            "config": OmegaConf.to_container(cfg, resolve=True)}
    if rank == 0:
        say(f"row: {r['args'].name} {cfg.task.name} {cfg.adapter.name} seq_len={r['seq_len']} "
            f"attn={cfg.attn.name} ac={cfg.ac.name} on {world}x{r['hw']['label']} ({r['ctx'].device})")
    status = 0
    try:
        row = {**base, **measure(cfg, r), "env": environment()}
    except Exception as e:  # a failed row keeps the first line of its error
        status = 2 if isinstance(e, UserError) else 1
        if status == 1:
            traceback.print_exc()
        labels = row_labels(cfg, r, config_adapter_label(cfg), world)
        row = {**base, **labels, "status": "failed", "error": first_line(e), "env": environment()}
    if rank == 0:
        append_row(cfg.results, row)
        notify_row(row)
        print(format_row(row), flush=True)
    if dist.is_initialized():
        dist.barrier()  # rank 0 has written the row; no rank tears down while another works
        dist.destroy_process_group()
    return status


def format_row(row: dict) -> str:
    if row.get("status") != "ok":
        return f"FAILED {row.get('model')} {row.get('type')} {row.get('seq_len')}: {row.get('error')}"
    return (f"{row['model']} | {row['type']} | {row['seq_len']} | {row['ac']} | {row['attn']} | "
            f"{row['hardware_label']} | MFU {row['mfu']:.1f}% | TPS {row['tps'] / 1e3:.2f}k | "
            f"step {row['step_time']:.2f}s | peak {row['peak_mem_gib']:.1f} GiB | "
            f"roofline {100 * row['roofline_frac']:.0f}% | {row['attn_provider']}")


# ----------------------------------------------------------------------------- sweeps
_SWEEP = {"done": 0, "failed": 0, "skipped": 0, "start": None}


def run_sweep_config(cfg, base_overrides: list[str]) -> None:
    """``+sweep=<name>``: run the rows listed in ``conf/sweep/<name>.yaml`` as a sweep."""
    import shlex

    from hydra import compose

    rows = list(cfg.sweep.rows)
    extra = [o for o in base_overrides if not o.lstrip("+").startswith("sweep=")]
    say(f"sweep '{cfg.sweep.get('name', '?')}': {len(rows)} rows -> {cfg.results}")
    for i, spec in enumerate(rows, 1):
        overrides = shlex.split(spec) + extra
        row_cfg = compose("bench", overrides=overrides)
        sweep_row(row_cfg, overrides, total=len(rows))
    say(f"sweep done: {_SWEEP['done']} done, {_SWEEP['failed']} failed, {_SWEEP['skipped']} skipped")


def sweep_row(cfg, overrides: list[str], total: int | None = None) -> int:
    """One row of a sweep, in a fresh child process; refusals and crashes become failed rows."""
    from core.memory import predict_peak_gib
    from core.results import append_row, done_keys, row_key

    if _SWEEP["start"] is None:
        _SWEEP["start"] = time.time()
    n = sum(_SWEEP[k] for k in ("done", "failed", "skipped")) + 1
    elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - _SWEEP["start"]))
    of = f"/{total}" if total else ""
    say(f"[row {n}{of}] {' '.join(overrides)}  (done {_SWEEP['done']}, failed {_SWEEP['failed']}, "
        f"skipped {_SWEEP['skipped']}, {elapsed} elapsed)")
    base = {"id": uuid.uuid4().hex, "schema": 1, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tag": cfg.tag, "overrides": overrides}
    try:
        r = resolve(cfg)
    except UserError as e:
        _SWEEP["failed"] += 1
        row = {**base, "status": "failed", "error": f"refused: {e}", "model": cfg.model.family,
               "type": f"{cfg.task.name.upper()} {cfg.adapter.name}", "seq_len": cfg.seq_len, "attn": cfg.attn.name,
               "ac": cfg.ac.name}
        append_row(cfg.results, row)
        say(f"  refused: {e}")
        return 0
    labels = row_labels(cfg, r, config_adapter_label(cfg), 1)
    if not cfg.redo and row_key(labels) in done_keys(cfg.results):
        _SWEEP["skipped"] += 1
        say("  skipped: already in results (redo=true runs it again)")
        return 0
    limit = cfg.max_memory_gib or r["hw"]["memory_gib"]
    pred = predict_peak_gib(r["args"], r["seq_len"], cfg.adapter.get("rank") if cfg.adapter.name == "lora" else None,
                            cfg.ac.name, 1, cfg.head_budget_mib)
    if pred > limit:
        _SWEEP["failed"] += 1
        err = f"refused: predicted peak memory {pred:.1f} GiB exceeds {limit:.1f} GiB"
        append_row(cfg.results, {**base, **labels, "status": "failed", "error": err, "predicted_mem_gib": pred})
        say(f"  {err}")
        return 0
    cmd = [sys.executable, "-m", "core.bench", *overrides]
    env = dict(os.environ, **{CHILD_ENV: base["id"]})
    tail: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + cfg.row_timeout_s
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if time.time() > deadline:
                proc.kill()
                proc.wait()
                raise TimeoutError(f"row exceeded row_timeout_s={cfg.row_timeout_s}")
            if sel.select(timeout=1.0):
                line = proc.stdout.readline()
                if not line:
                    break
                sys.stderr.write("    " + line)
                tail = (tail + [line.rstrip()])[-50:]
        rc = proc.wait()
    except TimeoutError as e:
        rc, tail = -1, tail + [f"TimeoutError: {e}"]
    from core.results import load_rows

    written = any(x.get("id") == base["id"] for x in load_rows(cfg.results))
    if rc == 0 and written:
        _SWEEP["done"] += 1
        return 0
    _SWEEP["failed"] += 1
    if not written:
        err = next((ln for ln in reversed(tail) if "Error" in ln or "error" in ln), None)
        err = err or (f"child exited with status {rc}" + (f" (signal {-rc})" if rc < 0 else ""))
        append_row(cfg.results, {**base, **labels, "status": "failed", "error": err.strip()})
    return 0


# ----------------------------------------------------------------------------- entry points
def _hydra_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if cfg.get("sweep") is not None:
        run_sweep_config(cfg, list(hc.overrides.task))
        return
    if hc.mode == RunMode.MULTIRUN:
        sweep_row(cfg, list(hc.overrides.task))
        return
    status = run_row(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a torchrun worker: the row is written
        from core.trainer import exit_now

        exit_now(status)
    if status:
        sys.exit(status)


def list_plugins() -> None:
    from core.plugins import registry

    reg = registry()
    for kind in ("attn", "ac", "adapter", "model_family"):
        print(f"{kind}:")
        for name in reg.names(kind):
            e = reg.get(kind, name)
            print(f"  {name:<12} {e.doc}  [{e.provider}]")
    for name, err in reg.broken:
        print(f"broken plugin {name}: {err}")


def check_overrides(argv: list[str]) -> None:
    """Refuse unknown group options with one line (before Hydra prints its multi-line error)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.startswith("hydra.")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise UserError(f"cannot parse overrides: {first_line(e)}") from None
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for o in parsed:
            group = o.key_or_group
            if group not in GROUPS:
                continue
            options = loader.get_group_options(group)
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for v in values:
                if v not in options:
                    plus = "+" if group in ("attn", "ac") else ""
                    raise UserError(f"unknown {group} '{v}': choose one of {', '.join(options)} "
                                    f"(e.g. {plus}{group}={options[0]})")
            if group in ("attn", "ac") and o.input_line.startswith(group):
                raise UserError(f"'{group}' is an appended group: type +{o.input_line}")
        compose("bench", overrides=[x for x in overrides if not OverridesParser.create().parse_override(x)
                                    .is_sweep_override()])
    GlobalHydra.instance().clear()


def main() -> None:
    # fewer reserved-but-unused bytes (the peak-memory column is max_memory_reserved)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import hydra

    argv = sys.argv[1:]
    if "--list" in argv:
        list_plugins()
        return
    if not any(a in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info") for a in argv):
        try:
            check_overrides(argv)
        except UserError as e:
            say(str(e))
            sys.exit(2)
        except Exception as e:  # Hydra's own composition errors, reduced to one line
            say(f"bad override: {first_line(e)}")
            sys.exit(2)
    sys.path.insert(0, str(ROOT))
    hydra.main(config_path=str(ROOT / "conf"), config_name="bench", version_base="1.3")(_hydra_task)()


if __name__ == "__main__":
    main()
