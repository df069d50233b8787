"""The filesystem weight hand-off alone: stage the weights to the host and write ``model.safetensors``.

    python benchmarks/sync_bench.py [--models 0.6B:full,0.6B:lora,4B:lora] [--dirs runs/sync-bench,/dev/shm/sync-bench]
                                    [--reps 5] [--out FILE.jsonl]

What an RL row's synchronous hand-off does once per step, for the tensors the row hands over
(full fine-tuning: every weight, from fp32 masters; LoRA: the fp32 adapter), cast to bf16:

- ``stage``: the copy to the pinned host buffer alone (the floor of any writer);
- ``safetensors``: stage, wait, then ``safetensors.torch.save_file`` of the staged tensors (how
  stepbench wrote until this script was added);
- ``write``: ``sync.writer=write`` (``plugins/sync/filesystem.py``): the safetensors header, then
  the pinned buffer itself, each bucket written as soon as its copy lands;
- ``mapped``: ``sync.writer=mapped`` (the default): the step's file was prepared (created at its
  size, zeros written, mapped, each page stored to once) before the timer starts, as a row's host
  thread prepares it while the GPU computes; timed: stage, copy into the map, rename.
  ``mapped_prepare`` times that host thread's work alone (drop the step before the last, which
  frees its pages; create, fill, map and touch the next file), off the step in a row as long as
  the step computes longer; ``mapped_untouched``: ``mapped`` with a file whose pages were not
  stored to through the map (the copy then takes the kernel's write faults: what the touch saves).

Median of ``--reps`` after one warm-up, per model and directory; the files written by both writers
are checked to load back equal. Each write is a row's step: a new step directory, the one
before the last removed (``keep=2``). Rows (``kind: sync_bench``) carry the commit like the bench's rows.
Without CUDA it runs the tiny model on the CPU (checks the script, measures nothing).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.results import append_row  # noqa: E402
from core.sync import HostStager, sync_tensors  # noqa: E402
from plugins.sync.filesystem import WEIGHTS, WRITERS, drop_old, prepare_step, write_step  # noqa: E402


def handed_over(size: str, adapter: str, device: str) -> list[tuple[str, torch.Tensor]]:
    """The tensors an RL row of this model hands over, fp32 on ``device`` (random values)."""
    from core.models.common import CausalLM
    from core.models.flavours import QWEN3
    from core.plugins import registry

    with torch.device("meta"):
        model = CausalLM(QWEN3[size])
    if adapter == "lora":
        model = registry().get("adapter", "lora").factory({"rank": 16, "alpha": 32}).apply(model)
    g = torch.Generator(device=device).manual_seed(0)
    return [(n, torch.randn(tuple(p.shape), device=device, generator=g))
            for n, p in sync_tensors(model, adapter == "lora")]


def timed(fn, device) -> float:
    if hasattr(fn, "before"):
        fn.before()  # untimed: what a row does off the step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def variants(stager: HostStager, out: Path):
    def stage():
        stager.stage()
        stager.wait_ready()

    def writer(how, touch=True):
        steps = iter(range(10**6))
        state = {"step": 0, "prepared": None}
        where = out / (how if touch else f"{how}_untouched")

        def before():
            state["step"] = next(steps)
            if how == "mapped":  # a row's host thread does this while the GPU computes
                drop_old(where, keep=2)
                state["prepared"] = prepare_step(stager, where, state["step"], touch)

        def run():  # as a row's steps: a new step directory each time, the one before the last removed
            stager.stage()
            write_step(stager, where, state["step"], keep=2, fsync=False, how=how, prepared=state["prepared"],
                       cleanup=how != "mapped")
            state["prepared"] = None
        run.before = before
        return run

    prep_steps = iter(range(10**6))

    def prepare_only():  # as the row's host thread: drop the step before the last, prepare the next file
        step = next(prep_steps)
        shutil.rmtree(out / "prepare" / f"step_{step - 2}", ignore_errors=True)
        prepare_step(stager, out / "prepare", step).close()
    return {"stage": stage, **{how: writer(how) for how in WRITERS}, "mapped_untouched": writer("mapped", touch=False),
            "mapped_prepare": prepare_only}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="0.6B:full,0.6B:lora,4B:lora")
    ap.add_argument("--dirs", default="runs/sync-bench,/dev/shm/stepbench-sync-bench")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None, help="append one JSON row per measurement")
    a = ap.parse_args(argv)
    from safetensors.torch import load_file

    from core.provenance import environment

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    models = [tuple(m.split(":")) for m in a.models.split(",")]
    if not cuda:
        print("sync_bench: no CUDA: the tiny model on the CPU (checks the script, measures nothing)")
        models = [("tiny", "full"), ("tiny", "lora")]
    env = environment()
    rows = []
    for size, adapter in models:
        params = handed_over(size, adapter, device)
        stager = HostStager(params, torch.bfloat16, 0, device, side_stream=False)
        for root in a.dirs.split(","):
            out = Path(root)
            shutil.rmtree(out, ignore_errors=True)
            for name, fn in variants(stager, out).items():
                timed(fn, device)  # warm-up (pinned pages, page cache, allocator)
                ts = [timed(fn, device) for _ in range(a.reps)]
                ms = statistics.median(ts) * 1e3
                row = {"kind": "sync_bench", "model": size, "adapter": adapter, "dir": root, "variant": name,
                       "bytes": stager.nbytes, "tensors": len(params), "ms": ms, "ms_all": [t * 1e3 for t in ts],
                       "gb_s": stager.nbytes / (ms * 1e-3) / 1e9,
                       "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                       "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "env": env}
                rows.append(row)
                if a.out and cuda:
                    append_row(a.out, row)
            want = load_file(str(out / "safetensors" / f"step_{a.reps}" / WEIGHTS))
            for how in WRITERS:
                got = load_file(str(out / how / f"step_{a.reps}" / WEIGHTS))
                assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), \
                    f"the {how} writer's file differs from safetensors' own"
            shutil.rmtree(out, ignore_errors=True)
        del stager, params
    print(f"\n{'model':<6} {'adapter':<7} {'MB':>7} {'dir':<32} {'variant':<10} {'ms':>8} {'GB/s':>6}")
    for r in rows:
        print(f"{r['model']:<6} {r['adapter']:<7} {r['bytes'] / 1e6:7.1f} {r['dir']:<32} {r['variant']:<10} "
              f"{r['ms']:8.1f} {r['gb_s']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
