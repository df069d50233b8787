"""``+peer=hf_compiled`` / ``hf_eager``: the row run by a transformers training loop
(:mod:`plugins.peers.hf_loop`, a child process that imports nothing from stepbench).

    python -m core.bench +peer=hf_compiled model=qwen3_0_6b +attn=fa3      # the compiled HF loop's row
    python -m core.bench -m +peer=none,hf_compiled,hf_eager +attn=fa3       # stepbench and both loops, one call

``hf_compiled`` compiles each decoder layer's forward (``torch.compile``), ``hf_eager`` runs it as written.
``peer.precision``: ``amp`` (transformers' ``Trainer`` at ``bf16=True``: fp32 master weights, bf16
autocast; the same per-step precision work as stepbench's rows) or ``bf16`` (bf16 weights and
AdamW, lighter; its rows carry ``peer.precision=bf16`` in their variant). ``peer.liger``: ``auto``
uses Liger's kernels where ``liger-kernel`` is installed (and its fused linear cross-entropy for
SFT), ``true`` requires it, ``false`` leaves it out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core import hookimpl
from core.contracts import PeerCommand, PeerResult, PeerSpec
from plugins.peers.hf_loop import ATTENTION, CHECKPOINTS

PRECISIONS = ("amp", "bf16")
#: the attention and AC a row may ask of the loop: the loop's own tables
ATTN_NAMES, AC_NAMES = tuple(ATTENTION), tuple(CHECKPOINTS)


class HFLoop:
    """A transformers loop: its model, attention, checkpointing, loss and optimizer."""

    runs_stepbench = False
    measured_options = ("precision", "liger")  # a row off their defaults is another row (its variant)

    def __init__(self, name: str, compiled: bool, options: dict):
        self.name, self.compiled = name, compiled
        self.precision = options.get("precision", "amp")
        self.liger = options.get("liger", "auto")
        if self.precision not in PRECISIONS:
            raise ValueError(f"peer.precision={self.precision!r} is unknown: use peer.precision=amp (fp32 masters, "
                             "bf16 autocast) or peer.precision=bf16")
        if not (self.liger == "auto" or isinstance(self.liger, bool)):
            raise ValueError(f"peer.liger={self.liger!r} is unknown: use peer.liger=auto, true or false")
        self.label = "HF compiled" if compiled else "HF eager"

    def why_not(self, spec: PeerSpec) -> str | None:
        if spec.attn not in ATTN_NAMES:
            return (f"the HF loop runs transformers' attention implementations, none of which is '{spec.attn}': "
                    f"use +attn={' or +attn='.join(a for a in ATTN_NAMES if a != 'auto')}")
        if spec.ac not in AC_NAMES or spec.ac_mode != "full":
            what = spec.ac if spec.ac_mode == "full" else f"{spec.ac} (mode {spec.ac_mode})"
            return (f"the HF loop has no '{what}' activation memory (transformers checkpoints whole layers): use "
                    "+ac=recompute, +ac=offload or +ac=none")
        try:
            import transformers  # noqa: F401
        except ImportError:
            return "transformers is not installed: pip install transformers"
        if spec.ac == "offload":
            import inspect

            from transformers import PreTrainedModel

            enable = getattr(PreTrainedModel, "activation_checkpointing_enable", None)
            if enable is None or "offload" not in inspect.signature(enable).parameters:
                return ("this transformers has no activation offload (activation_checkpointing_enable(offload=True), "
                        "transformers 5.25 or later): use +ac=recompute")
        if spec.attn == "fa3":
            try:
                import flash_attn_interface  # noqa: F401
            except ImportError:
                return "transformers' flash_attention_3 needs FA3 (python -m core.fa3_build): use +attn=sdpa or fa2"
        if self.liger is True:
            try:
                from liger_kernel.transformers import monkey_patch  # noqa: F401
            except ImportError as e:
                return (f"peer.liger=true but Liger's transformers patches do not import here ({e}): install a "
                        "liger-kernel release for this transformers, or use peer.liger=auto")
        if spec.adapter not in ("full", "lora"):
            return f"the HF loop runs full fine-tuning or LoRA (peft), not adapter '{spec.adapter}'"
        return None

    def command(self, spec: PeerSpec, workdir: str) -> PeerCommand:
        return PeerCommand(argv=[sys.executable, "-m", "plugins.peers.hf_loop", workdir,
                                 "--compile" if self.compiled else "--eager"])

    def result(self, workdir: str, log: list) -> PeerResult:
        path = Path(workdir) / "result.json"
        if not path.exists():
            raise ValueError("the HF loop exited without writing its result.json")
        d = json.loads(path.read_text())
        return PeerResult(
            tps=d["tps"], peak_mem_gib=d["peak_mem_gib"], step_s=d["step_s"], version=d["version"],
            attn_provider=d["attn_provider"],
            per_step_work=d["per_step_work"], precision=d["precision"], compiled=d["compiled_layers"],
            extra={k: d.get(k) for k in ("loss_head", "checkpointing", "compiled_layers", "liger", "peak_alloc_gib",
                                         "losses", "tokens_per_step", "dynamo", "tps_definition")})


@hookimpl
def stepbench_register_peers(register):
    register("hf_compiled", lambda options, ctx: HFLoop("hf_compiled", True, options),
             doc="a transformers loop, each decoder layer torch.compile'd (Trainer's bf16 recipe; Liger if installed)")
    register("hf_eager", lambda options, ctx: HFLoop("hf_eager", False, options),
             doc="the same transformers loop, uncompiled")
