"""The Hugging Face peer: a transformers training loop as its users write it, run as a child process.

    python -m plugins.peers.hf_loop WORKDIR --compile|--eager   # reads WORKDIR/spec.json, writes WORKDIR/result.json

It imports nothing from stepbench (torch, transformers, peft, and Liger where installed), so what it
measures is what a transformers user gets, not stepbench's code under another name:

* the model: ``AutoModelForCausalLM.from_config`` of the row's ``config.json`` (random weights),
  attention through transformers' own implementations (``flash_attention_3`` for ``fa3``; ``sdpa``
  otherwise, held to one torch kernel where the row names one: ``fa2`` -> torch's FlashAttention-2,
  ``cudnn`` -> cuDNN attention; ``sdpa`` -> torch's pick; ``flex`` -> transformers' ``flex_attention``,
  the one fast implementation of gpt-oss's sinks);
* precision ``amp`` (the default): transformers' ``Trainer`` at ``bf16=True``: fp32 weights and
  fp32 AdamW, the step under bf16 autocast; LoRA: the frozen base in bf16, peft's fp32 adapters.
  ``bf16``: bf16 weights and a bf16 AdamW (a lighter recipe, labelled as such);
* activation checkpointing: transformers' ``activation_checkpointing_enable`` (non-reentrant), with
  ``offload=True`` for ``+ac=offload`` (the checkpoints in pinned host memory, transformers >= 5.25);
* ``--compile``: each decoder layer's forward ``torch.compile``-d (inside its checkpoint; dynamo's
  graphs and graph breaks are reported, and no graph at all is an error); ``--eager``: none;
* flash attention (``fa3``): the document's boundaries passed as transformers' varlen kwargs
  (``cu_seq_lens_q/k``, ``max_length_q/k``, as ``DataCollatorWithFlattening`` gives them), so no
  layer inspects ``position_ids`` (a data-dependent check that breaks the compiled graph);
* the loss: full logits, fp32 log-softmax (compiled with ``--compile``; SFT with Liger installed:
  Liger's fused linear cross-entropy, which never forms the logits); RL: the same importance-sampled policy-gradient
  loss as stepbench's rows (prime-rl's); SFT: mean token NLL;
* per step: ``micro_batches`` sequences of ``seq_len`` tokens (one document each), gradient
  clipping at 1.0, AdamW (fused on a GPU), and for RL full fine-tuning where stepbench's row hands
  off (``handoff``) the bf16 weights copied into pinned host memory (the published rows' per-step work).

Step 0 is warm-up (compilation); the rest are timed with a device synchronisation at each end.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

RATIO_LOW, RATIO_HIGH = 0.125, 8.0  # prime-rl's importance-ratio mask (the same as stepbench's rows)
#: the row's attention -> (transformers implementation, the torch sdpa kernel it is held to or None)
ATTENTION = {"fa3": ("flash_attention_3", None), "fa2": ("sdpa", "FLASH_ATTENTION"),
             "cudnn": ("sdpa", "CUDNN_ATTENTION"), "sdpa": ("sdpa", None), "auto": ("sdpa", None),
             "flex": ("flex_attention", None)}
#: the row's AC -> whether the loop checkpoints its decoder layers (``offload``: transformers' checkpointing
#: with the saved inputs in pinned host memory, ``activation_checkpointing_enable(offload=True)``)
CHECKPOINTS = {"none": False, "recompute": True, "offload": True}


def say(msg: str) -> None:
    print(f"hf_loop: {msg}", flush=True)


def rl_loss(lp, inference_lp, advantages, loss_mask):
    """Importance-sampled policy gradient: r = exp(lp - lp_inference), tokens with r outside
    [0.125, 8] masked, loss = -sum(r * A * lp) / kept tokens."""
    r = torch.exp(lp.detach() - inference_lp)
    keep = (loss_mask & (r >= RATIO_LOW) & (r <= RATIO_HIGH)).float()
    return -(r * advantages * lp * keep).sum() / keep.sum().clamp(min=1)


def sft_loss(lp, loss_mask):
    m = loss_mask.float()
    return -(lp * m).sum() / m.sum().clamp(min=1)


def token_logprobs(logits, targets):
    """Per-token fp32 log-probabilities of ``targets`` from full logits ``[T, V]``."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)


def batch(spec: dict, step: int, i: int, device) -> dict:
    """One micro-batch: a document of ``seq_len`` random tokens (seeded by step and index), its
    next-token targets, and the RL fields (advantages ~ N(0, 1); inference log-probs near a fresh
    model's)."""
    g = torch.Generator().manual_seed(spec["seed"] * 1_000_003 + 1000 * step + i)
    T, V = spec["seq_len"], spec["hf_config"]["vocab_size"]
    ids = torch.randint(0, V, (T,), generator=g)
    mask = torch.ones(T, dtype=torch.bool)
    mask[-1] = False
    mb = {"input_ids": ids, "position_ids": torch.arange(T), "targets": torch.roll(ids, -1), "loss_mask": mask,
          "advantages": torch.randn(T, generator=g), "inference_lp": -math.log(V) + 0.1 * torch.randn(T, generator=g)}
    return {k: v.to(device) for k, v in mb.items()}


def liger_patch(model_type: str, use: str, cuda: bool):
    """Liger's RMSNorm, SwiGLU and RoPE kernels patched into transformers' module for this model
    type (before the model is built), where Liger is installed, ``use`` allows it and a GPU runs.
    Returns Liger's version, or "" where not used."""
    if use is False or not cuda:
        return ""
    try:
        from liger_kernel.transformers import monkey_patch
    except ImportError as e:  # not installed, or a release that does not import under this transformers
        if use is True:
            raise SystemExit(f"hf_loop: ImportError: peer.liger=true but Liger's transformers patches do not import "
                             f"({e}): install a liger-kernel release for this transformers, or use peer.liger=auto") \
                from None
        say(f"Liger not used: {e}")
        return ""
    patch = getattr(monkey_patch, f"apply_liger_kernel_to_{model_type}", None)
    if patch is None:
        return ""
    patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    from importlib.metadata import version

    return version("liger-kernel")


def build(spec: dict, device):
    from transformers import AutoConfig, AutoModelForCausalLM

    opts = spec.get("options") or {}
    precision = opts.get("precision", "amp")
    cfg = dict(spec["hf_config"])
    model_type = cfg.pop("model_type")
    impl, kernel = ATTENTION.get(spec["attn"], ("sdpa", None))
    config = AutoConfig.for_model(model_type, **cfg)
    lora = spec["adapter"] == "lora"
    # amp: fp32 masters (full fine-tuning); a LoRA base is frozen, so it is held in bf16 as users load it
    dtype = torch.bfloat16 if precision == "bf16" or lora else torch.float32
    torch.manual_seed(spec["seed"])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=impl)
    if lora:
        from peft import LoraConfig, get_peft_model

        experts = list(spec.get("lora_expert_targets") or [])  # routed experts' 3-D weights (peft >= 0.17)
        model = get_peft_model(model, LoraConfig(r=spec["lora_rank"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                                                 target_modules=list(spec["lora_targets"]),
                                                 target_parameters=experts or None),
                               autocast_adapter_dtype=precision != "bf16")
    if spec["ac"] == "offload":  # transformers' own: the recompute's saved inputs in pinned host memory
        model.activation_checkpointing_enable({"use_reentrant": False}, offload=True)
    elif CHECKPOINTS[spec["ac"]]:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable({"use_reentrant": False})
        else:  # transformers before activation_checkpointing_enable
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if spec["compile"]:
        # transformers' layers set a context variable (its output capture) in forward: under activation
        # checkpointing dynamo refuses that side effect (a graph break: nothing compiled) unless told the
        # forward's side effects need no replay in the recompute, which holds for this one
        torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
        # transformers' flash attention reads each layer's ``layer_idx`` (an int attribute dynamo takes as
        # static: one recompile per layer, and past the recompile limit (8) the later layers ran eager).
        # Taken as dynamic, one graph serves every layer; the limit is raised to the layer count besides,
        # and a hit is still counted (RecompileWatch) and reported
        torch._dynamo.config.allow_unspec_int_on_nn_module = True
        n_layers = len(decoder_base(model).layers)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, n_layers + 2)
        # each layer's forward compiled, so the compiled code runs inside the checkpoint (compiling the
        # layer's call instead would trace transformers' checkpointing wrapper, which breaks the graph)
        compiled = torch.compile(type(decoder_base(model).layers[0]).forward)
        for layer in decoder_base(model).layers:
            layer.forward = compiled.__get__(layer)
    return model, impl, kernel, precision


class RecompileWatch(logging.Handler):
    """Counts dynamo's "hit config.recompile_limit" warnings: a function past the limit runs eager."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "recompile_limit" in msg or "cache_size_limit" in msg:
            self.hits.append(msg.splitlines()[0][:200])


def decoder_base(model):
    """The decoder (the module holding ``layers`` and the final norm) under the causal LM and peft."""
    base = model
    while not hasattr(base, "layers"):
        base = getattr(base, "model", None) or getattr(base, "base_model", None)
        if base is None:
            raise SystemExit("hf_loop: the model has no decoder layers (model.layers)")
    return base


def attention_provider(impl: str, kernel: str | None) -> str:
    if impl == "flash_attention_3":
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("flash_attn_3")
        except PackageNotFoundError:
            v = "?"
        return f"transformers flash_attention_3 -> flash_attn_interface (flash_attn_3 {v})"
    return (f"transformers sdpa -> torch {torch.__version__} scaled_dot_product_attention"
            + (f" ({kernel} only)" if kernel else " (torch's pick of kernel)"))


def main(workdir: str, compiled: bool) -> None:
    import contextlib

    import transformers

    spec = json.loads((Path(workdir) / "spec.json").read_text())
    spec["compile"] = compiled
    opts = spec.get("options") or {}
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model_type = spec["hf_config"]["model_type"]
    liger = liger_patch(model_type, opts.get("liger", "auto"), cuda)
    watch = RecompileWatch()
    logging.getLogger("torch._dynamo").addHandler(watch)
    model, impl, kernel, precision = build(spec, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), weight_decay=0.01, fused=cuda,
                            foreach=None if cuda else True)
    flce = None
    if liger and spec["task"] == "sft":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss()
    handoff = bool(spec["handoff"])  # stepbench's row hands off (RL full fine-tuning at the default)
    host = {}
    if handoff:  # one pinned buffer per weight, the bf16 copy prime-rl's bench mode gathers every step
        host = {n: torch.empty(p.shape, dtype=torch.bfloat16, pin_memory=cuda) for n, p in model.named_parameters()}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "amp"
                else contextlib.nullcontext())
    if kernel:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        held = lambda: sdpa_kernel(getattr(SDPBackend, kernel))  # noqa: E731
    else:
        held = contextlib.nullcontext
    mbs, steps = spec["micro_batches"], spec["steps"]
    step_s, losses = [], []
    head, base = model.get_output_embeddings(), decoder_base(model)
    # compiled: the log-softmax and gather fused (the fp32 [T, V] log-probs never stored whole)
    logprobs = torch.compile(token_logprobs) if spec["compile"] else token_logprobs
    varlen = {}
    if impl.startswith("flash_attention"):  # one document a micro-batch: its boundaries, given, not inferred
        T = spec["seq_len"]
        cu = torch.tensor([0, T], dtype=torch.int32, device=device)
        varlen = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": T, "max_length_k": T}
    for step in range(steps):
        batches = [batch(spec, step, i, device) for i in range(mbs)]
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        total = 0.0
        for mb in batches:
            with autocast, held():
                if flce is not None:  # Liger: the final hidden states and the head's weight, never the logits
                    h = base(input_ids=mb["input_ids"][None], position_ids=mb["position_ids"][None],
                             **varlen).last_hidden_state[0]
                    keep = mb["loss_mask"]
                    loss = flce(head.weight, h[keep], mb["targets"][keep])
                else:
                    logits = model(input_ids=mb["input_ids"][None], position_ids=mb["position_ids"][None],
                                   **varlen).logits[0]
                    lp = logprobs(logits, mb["targets"])
                    del logits
                    loss = (rl_loss(lp, mb["inference_lp"], mb["advantages"], mb["loss_mask"])
                            if spec["task"] == "rl" else sft_loss(lp, mb["loss_mask"]))
            (loss / mbs).backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if handoff:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    host[n].copy_(p.detach().to(torch.bfloat16), non_blocking=cuda)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        loss_v = float(total / mbs)
        if not math.isfinite(loss_v):
            raise SystemExit(f"hf_loop: FloatingPointError: loss is {loss_v} at step {step}")
        losses.append(loss_v)
        if step:
            step_s.append(dt)
        tokens = mbs * spec["seq_len"]
        say(f"step {step}{' (warm-up)' if not step else ''}: {dt:.3f} s, {tokens / dt / 1e3:.2f}k tok/s, "
            f"loss {loss_v:.4f}")
    from torch._dynamo.utils import counters

    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    if spec["compile"] and not graphs:
        raise SystemExit(f"hf_loop: RuntimeError: --compile built no graph ({breaks} graph breaks: "
                         f"{'; '.join(k.splitlines()[0] for k in counters['graph_break'])[:300]})")
    peak = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    tokens = mbs * spec["seq_len"]
    opt_dtype = str(params[0].dtype).removeprefix("torch.")  # what AdamW updates (fp32 masters or bf16)
    work = ["forward and backward of each micro-batch", "gradient clipping", f"AdamW step ({opt_dtype} weights)"]
    if handoff:
        work.append("bf16 weights copied to pinned host memory")
    import peft

    result = {
        "tps": tokens * len(step_s) / sum(step_s), "step_s": step_s, "tokens_per_step": tokens,
        "peak_mem_gib": peak, "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "losses": losses, "attn_provider": attention_provider(impl, kernel),
        "version": f"transformers {transformers.__version__}, torch {torch.__version__}, peft {peft.__version__}"
                   + (f", liger-kernel {liger}" if liger else ""),
        "precision": ("fp32 master weights, bf16 autocast" if precision == "amp" else "bf16 weights and AdamW")
                     + (f"; LoRA base frozen in bf16, {opt_dtype} adapters" if spec["adapter"] == "lora" else ""),
        "tps_definition": "micro_batches x seq_len tokens a step over the summed time of the timed steps (step 0, "
                          "the warm-up, left out; the device synchronised at each step's ends); peak: "
                          "max_memory_reserved over the whole run",
        "per_step_work": "; ".join(work),
        "loss_head": ("Liger fused linear cross-entropy" if flce is not None else
                      "full logits, fp32 log-softmax" + (" (compiled)" if spec["compile"] else "")),
        "checkpointing": spec["ac"], "compiled_layers": bool(spec["compile"] and graphs and not watch.hits),
        "dynamo": {"graphs": graphs, "graph_breaks": breaks, "recompile_limit_hits": len(watch.hits),
                   "break_reasons": [k.splitlines()[0][:200] for k in list(counters["graph_break"])[:8]]},
        "liger": liger or None,
    }
    (Path(workdir) / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("--compile", "--eager"):
        raise SystemExit("usage: python -m plugins.peers.hf_loop WORKDIR --compile|--eager (with WORKDIR/spec.json)")
    main(sys.argv[1], sys.argv[2] == "--compile")
