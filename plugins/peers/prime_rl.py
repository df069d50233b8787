"""``+peer=prime_rl peer.path=CHECKOUT``: the row run by prime-rl's own trainer in its bench mode.

    python -m core.bench +peer=prime_rl peer.path=/opt/prime-rl model=qwen3_4b adapter=lora seq_len=16384 +attn=fa3

prime-rl is never vendored: ``peer.path`` is a checkout of it (bench mode exists up to commit
d8f290ef0, the code path of the published table) whose dependencies are importable by
``peer.python`` (default: this interpreter), with ``peer.pythonpath`` added (e.g. a folder of
stand-in modules for what bench mode imports but never calls). The child is
``torchrun --nproc-per-node=1 src/prime_rl/trainer/{rl,sft}/train.py`` with the row's model (a
local folder: the row's ``config.json``, a tiny tokenizer, ``--model.debug.random-init``), sequence
length, attention (``--model.attn flash_attention_3|flash_attention_2|sdpa``), ``--model.compile``,
``--model.ac`` (``+ac=offload``: ``--model.ac-offloading``), LoRA (``--model.lora.rank``,
``--max-concurrent-runs 4`` as its nightly benchmark) and ``micro_batches`` sequences a step
(RL: ``--data.fake.batch-size``; SFT: ``--data.type fake --data.batch-size``), and
``--bench.output-json``. The row keeps prime-rl's own figures from that file: its throughput (a
running mean from the end of step 0, so it includes what runs between steps) and its peak
(``max_memory_reserved``, averaged over the timed steps), its MFU and step times beside them.

What prime-rl's bench mode does per step (its code at d8f290ef0): RL full fine-tuning gathers the
bf16 weights on the host and writes no file (no run is registered); RL LoRA hands nothing off and
takes no optimizer step (its multi-LoRA optimizer has no registered run); SFT takes its AdamW step.
Step 0 is dropped and three steps are timed (bench mode fixes four steps).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core import hookimpl
from core.contracts import PeerCommand, PeerResult, PeerSpec
from core.peers import CheckoutPeer, checkout_commit

ATTN = {"fa3": "flash_attention_3", "fa2": "flash_attention_2", "sdpa": "sdpa"}
AC_NAMES = ("none", "recompute", "offload")
#: what bench mode runs at d8f290ef0
BENCH_STEPS = 4
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                    "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 1 << 20}


def write_tokenizer(folder: Path) -> None:
    """A tiny word-level tokenizer (no download): bench mode loads one but feeds random token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "<s>", "</s>", "a", "b"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))


def model_folder(spec: PeerSpec, folder: Path, tokenizer: str | None) -> Path:
    """The row's model as a local folder: its ``config.json`` (with the architecture transformers maps
    its type to) and a tokenizer (``peer.tokenizer``'s files, else a tiny one)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(spec.hf_config)
    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(cfg["model_type"])
    cfg.update(architectures=[arch] if arch else [], torch_dtype="bfloat16")
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    if tokenizer:
        for f in Path(tokenizer).expanduser().iterdir():
            if f.is_file() and (f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "vocab.json",
                                                                              "merges.txt")):
                (folder / f.name).write_bytes(f.read_bytes())
    else:
        write_tokenizer(folder)
    return folder


class PrimeRL(CheckoutPeer):
    name, label, runs_stepbench = "prime_rl", "prime-rl", False
    measured_options = ()  # where its checkout and environment are changes nothing measured
    path_options, example = (*CheckoutPeer.path_options, "tokenizer"), "/opt/prime-rl"

    def __init__(self, options: dict):
        super().__init__(options)
        self.tokenizer = self.absolute(options.get("tokenizer"))

    def script(self, spec: PeerSpec) -> Path:
        return Path(self.path).expanduser() / "src" / "prime_rl" / "trainer" / spec.task / "train.py"

    def why_not(self, spec: PeerSpec) -> str | None:
        if not self.path:
            return ("peer prime_rl runs a prime-rl checkout you point at: add peer.path=/path/to/prime-rl (its bench "
                    "mode: git checkout d8f290ef0)")
        if not Path(self.path).expanduser().is_dir():
            return f"peer.path={self.path} is not a folder: point it at a prime-rl checkout"
        if not self.script(spec).is_file():
            return (f"peer.path={self.path} has no src/prime_rl/trainer/{spec.task}/train.py: point it at a prime-rl "
                    "checkout (bench mode: commit d8f290ef0)")
        if spec.attn not in ATTN:
            return f"prime-rl runs attention {', '.join(ATTN)}, not '{spec.attn}': use +attn={' or +attn='.join(ATTN)}"
        if spec.ac not in AC_NAMES or spec.ac_mode != "full":
            what = spec.ac if spec.ac_mode == "full" else f"{spec.ac} (mode {spec.ac_mode})"
            return f"prime-rl has no '{what}' activation memory: use +ac=recompute, +ac=offload or +ac=none"
        if spec.adapter not in ("full", "lora"):
            return f"prime-rl runs full fine-tuning or LoRA, not adapter '{spec.adapter}'"
        if spec.task == "sft" and spec.adapter == "lora":
            return "prime-rl's SFT bench rows are full fine-tuning: use adapter=full"
        from core.resolve import _primary_defaults

        for key in ("steps", "seed"):  # bench mode fixes both: a row's other value would be stored, not run
            if getattr(spec, key) != _primary_defaults()[key]:
                return (f"{key}={getattr(spec, key)} changes nothing for +peer=prime_rl: its bench mode runs "
                        f"{BENCH_STEPS} steps ({BENCH_STEPS - 1} timed) from its own seed: leave {key} out")
        if spec.device != "cuda":
            return "prime-rl's trainer needs a CUDA GPU (it initialises NCCL): run this row on a GPU machine"
        if self.tokenizer and not Path(self.tokenizer).expanduser().is_dir():
            return f"peer.tokenizer={self.tokenizer} is not a folder: name the folder of the model's tokenizer files"
        return self.python_missing()

    def command(self, spec: PeerSpec, workdir: str) -> PeerCommand:
        work = Path(workdir)
        model = model_folder(spec, work / "model", self.tokenizer)
        argv = [self.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", str(self.script(spec)),
                "--model.name", str(model), "--model.attn", ATTN[spec.attn], "--model.debug.random-init",
                "--bench.output-json", str(work / "bench.json"), "--output-dir", str(work / "outputs")]
        if spec.compile:
            argv.append("--model.compile")
        if spec.ac == "recompute":
            argv.append("--model.ac")
        elif spec.ac == "offload":
            argv.append("--model.ac-offloading")
        if spec.task == "rl":
            argv += ["--model.seq-len", str(spec.seq_len), "--data.fake.batch-size", str(spec.micro_batches)]
            if spec.adapter == "lora":
                argv += ["--model.lora.rank", str(spec.lora_rank), "--model.lora.alpha", str(spec.lora_alpha),
                         "--max-concurrent-runs", "4"]
        else:
            argv += ["--data.type", "fake", "--data.batch-size", str(spec.micro_batches), "--data.seq-len",
                     str(spec.seq_len), "--data.micro-batch-size", "1"]
        src = str(Path(self.path).expanduser() / "src")
        path = os.pathsep.join(filter(None, [src, self.pythonpath]))
        # PRIME_* variables of this environment would configure the child: it gets none
        env = {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
        # PRIME_* variables of this shell would configure the child (pydantic-settings' env prefix)
        return PeerCommand(argv=argv, cwd=str(Path(self.path).expanduser()), env=env, unset_env=("PRIME_*",))

    def result(self, workdir: str, log: list) -> PeerResult:
        path = Path(workdir) / "bench.json"
        if not path.exists():
            raise ValueError("prime-rl exited without writing its --bench.output-json file")
        d = json.loads(path.read_text())
        d = d.get("metrics", d)
        try:
            tps, peak = float(d["throughput"]["mean"]), float(d["peak_memory"]["gib"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"prime-rl's bench file has no throughput.mean and peak_memory.gib: {sorted(d)}") from None
        spec = json.loads((Path(workdir) / "spec.json").read_text())
        if spec["task"] == "rl" and spec["adapter"] == "full":
            work = "bf16 weights gathered to the host every step (no file written: bench mode registers no run)"
        elif spec["task"] == "rl":
            work = "no hand-off and no optimizer step (bench mode's multi-LoRA optimizer has no registered run)"
        else:
            work = "AdamW step"
        return PeerResult(
            tps=tps, peak_mem_gib=peak, version=f"prime-rl {checkout_commit(Path(self.path).expanduser())}",
            attn_provider=f"prime-rl --model.attn {ATTN[spec['attn']]}", per_step_work=work, precision="prime-rl's FSDP2 mixed precision",
            compiled=bool(spec["compile"]),
            extra={"tps_definition": "prime-rl's --bench.output-json throughput.mean: the mean over steps 1-3 of its "
                                     "running throughput from the end of step 0 (what runs between steps included); "
                                     "peak: peak_memory.gib, max_memory_reserved reset each step, averaged over "
                                     "steps 1-3; bench mode runs 4 steps whatever the row's steps",
                   "mfu": d.get("mfu"), "step_time": d.get("step_time"), "throughput": d.get("throughput"),
                   "peak_memory": d.get("peak_memory"), "steps": BENCH_STEPS, "timed_steps": BENCH_STEPS - 1})


@hookimpl
def stepbench_register_peers(register):
    register("prime_rl", lambda options, ctx: PrimeRL(options),
             doc="prime-rl's trainer in its bench mode, from a checkout (peer.path=...)")
