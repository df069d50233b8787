"""``+peer=torchtitan peer.path=CHECKOUT``: the row run by torchtitan's own trainer (SFT rows).

    python -m core.bench +peer=torchtitan peer.path=/opt/torchtitan model=qwen3_0_6b task=sft seq_len=8192 +attn=cudnn

torchtitan is never vendored: ``peer.path`` is a checkout of it (0.2.x; 0.2.2 runs on torch 2.11)
whose dependencies (torchdata, tyro, tokenizers) are importable by ``peer.python`` (default: this
interpreter), with ``peer.pythonpath`` added. The child is ``torchrun --nproc-per-node=1`` of
:mod:`plugins.peers.torchtitan_launch`, which runs ``torchtitan.train`` with torchtitan's own command
line: the row's model as a flavour built from its transformers config (Qwen3, dense), random token
ids, ``--training.seq_len``, ``--training.local_batch_size 1`` and ``--training.global_batch_size``
= the row's micro-batches (gradient accumulation, one optimizer step a step), ``--training.steps``,
``--activation_checkpoint.mode full|none``, ``--compile.enable`` (its per-block compile and the
loss) where the row compiles, and SDPA held to the row's kernel.

What torchtitan does per step on one GPU: next-token cross-entropy on full logits, its fused AdamW
step; fp32 master weights with bf16 autocast (no FSDP on one device: its AMP path). The row keeps
torchtitan's own figures, as its metric logger received them: the mean of its logged ``tps`` over
the timed steps (its first two steps left out: step 1 compiles, and on the H100 step 2 still took
three times a later step's time), its end-to-end step times, and the largest of its per-step peaks
of reserved memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core import hookimpl
from core.contracts import PeerCommand, PeerResult, PeerSpec
from core.peers import CheckoutPeer, checkout_commit

#: SDPA kernels torchtitan's attention can be held to (+attn=cudnn: its own order, cuDNN first)
ATTN = {"cudnn": "SDPA, cuDNN first (torchtitan's order)", "fa2": "SDPA flash kernel (FA2)"}
AC = {"none": "none", "recompute": "full"}
#: torchtitan's logged steps left out of the row: step 1 compiles; step 2 took 0.95 s against 0.31-0.33 s
#: for steps 3-6 on the H100 (0.6B SFT 8192, rows of 3abe842)
WARMUP_STEPS = 2


class TorchTitan(CheckoutPeer):
    name, label, runs_stepbench = "torchtitan", "torchtitan", False
    measured_options = ()  # where its checkout and environment are changes nothing measured
    example = "/opt/torchtitan"

    def why_not(self, spec: PeerSpec) -> str | None:
        if not self.path:
            return "peer torchtitan runs a torchtitan checkout you point at: add peer.path=/path/to/torchtitan (0.2.x)"
        if not (Path(self.path) / "torchtitan" / "train.py").is_file():
            return (f"peer.path={self.path} has no torchtitan/train.py: point it at a torchtitan checkout "
                    "(git checkout v0.2.2)")
        if spec.task != "sft":
            return "torchtitan trains with next-token cross-entropy, not an RL loss: use task=sft"
        if spec.adapter != "full":
            return f"torchtitan has no '{spec.adapter}' adapter: use adapter=full"
        cfg = spec.hf_config
        if cfg.get("model_type") != "qwen3":
            return (f"the torchtitan peer builds dense Qwen3 models, not model_type '{cfg.get('model_type')}': pick a "
                    "Qwen3 model (model=qwen3_0_6b, model=qwen3_4b, ...)")
        if spec.device != "cuda":  # before the kernels: none of them runs on a CPU
            return ("torchtitan's trainer needs a CUDA GPU (it sets a CUDA device and initialises NCCL): run this row "
                    "on a GPU machine")
        if spec.attn not in ATTN:
            return f"torchtitan runs SDPA here, not '{spec.attn}': use +attn=cudnn (its default order) or +attn=fa2"
        if spec.ac not in AC or spec.ac_mode != "full":
            what = spec.ac if spec.ac_mode == "full" else f"{spec.ac} (mode {spec.ac_mode})"
            return f"the torchtitan peer runs full recompute or none, not '{what}': use +ac=recompute or +ac=none"
        if spec.steps <= WARMUP_STEPS:
            return (f"steps={spec.steps}: torchtitan's first {WARMUP_STEPS} steps warm up and are not timed: give the row "
                    f"steps={WARMUP_STEPS + 1} or more")
        return self.python_missing()

    def command(self, spec: PeerSpec, workdir: str) -> PeerCommand:
        work = Path(workdir)
        launch = Path(__file__).with_name("torchtitan_launch.py")
        argv = [self.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", str(launch),
                "--model.name", "stepbench_row", "--model.flavor", "row",
                "--training.seq_len", str(spec.seq_len), "--training.local_batch_size", "1",
                "--training.global_batch_size", str(spec.micro_batches), "--training.steps", str(spec.steps),
                "--activation_checkpoint.mode", AC[spec.ac], "--metrics.log_freq", "1",
                "--metrics.disable_color_printing", "--job.dump_folder", str(work / "outputs"),
                "--debug.seed", str(spec.seed)]
        if spec.compile:
            argv.append("--compile.enable")
        path = os.pathsep.join(filter(None, [self.path, self.pythonpath]))
        env = {"PYTHONPATH": path, "STEPBENCH_PEER_WORK": str(work), "HF_HUB_OFFLINE": "1"}
        return PeerCommand(argv=argv, cwd=str(work), env=env)

    def result(self, workdir: str, log: list) -> PeerResult:
        return read_result(Path(workdir), self.path)


def read_result(work: Path, checkout: str | None) -> PeerResult:
    """The row's figures from what torchtitan's metric logger received (``metrics.jsonl``)."""
    path = work / "metrics.jsonl"
    if not path.exists():
        raise ValueError("torchtitan exited without logging a step's metrics (no metrics.jsonl in its work folder)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"torchtitan's metrics.jsonl line {n} is not JSON") from None
    timed = [r for r in rows if r.get("step", 0) > WARMUP_STEPS]
    try:
        tps = [float(r["throughput(tps)"]) for r in timed]
        step_s = [float(r["time_metrics/end_to_end(s)"]) for r in timed]
        peak = max(float(r["memory/max_reserved(GiB)"]) for r in timed) if timed else None
    except KeyError as e:
        raise ValueError(f"torchtitan's logged metrics have no {e.args[0]!r}: the peer reads torchtitan 0.2.x") from None
    if not tps:
        raise ValueError(f"torchtitan logged {len(rows)} step(s) and no timed one: give the row steps={WARMUP_STEPS + 1} or more")
    spec = json.loads((work / "spec.json").read_text())
    return PeerResult(
        tps=sum(tps) / len(tps), peak_mem_gib=peak, step_s=step_s,
        version=f"torchtitan {checkout_commit(Path(checkout)) if checkout else 'unknown'}",
        attn_provider=f"torchtitan {ATTN[spec['attn']]}",
        per_step_work="next-token cross-entropy on full logits; fused AdamW step",
        precision="fp32 master weights, bf16 autocast (torchtitan's single-device AMP)",
        compiled=bool(spec["compile"]),
        extra={"tps_definition": "the mean of torchtitan's logged tps (tokens over the wall time since the last log, "
                                 f"one step a log) over steps {WARMUP_STEPS + 1} and on (the first {WARMUP_STEPS} warm up); peak: the "
                                 "largest of its per-step max_reserved (reset after each log)",
               "logged": rows})


@hookimpl
def stepbench_register_peers(register):
    register("torchtitan", lambda options, ctx: TorchTitan(options),
             doc="torchtitan's trainer, from a checkout (peer.path=...): SFT rows of dense Qwen3 models")
