"""What the conformance checks compare against: the tiny model, tolerances, the float32 reference
attention, and plugins that keep and train everything (the references of the AC and adapter checks)."""

from __future__ import annotations

import json
import math
from typing import Any, Callable, NamedTuple

from core.contracts import (ActivationMemory, Adapter, AttentionBackend, ModelFamily, RecomputeFacts, RunContext,
                            SyncContext, TrainableModel)
from core.models.flavours import QWEN3


#: the tiny model the checks build: Qwen3's tiny flavour with 4 blocks (so that a strategy that
#: treats blocks differently, or keeps the last ones, has several of each)
TINY = QWEN3["tiny"].with_(n_layers=4)
#: relative error (Frobenius norm) allowed for a bf16 attention kernel against the float32
#: reference computed from the same bf16 inputs: bf16 rounds each value by up to 2**-8 (0.4%);
#: PyTorch's SDPA measures 0.2-0.5% here, SDPA ignoring the document bounds 69%, a 10% wrong scale 9%
ATTENTION_TOL = 2e-2
#: relative error allowed between a strategy's loss and gradients and those of keeping everything:
#: on a CPU the same ops run in the same order (the built-in strategies are bitwise equal); on a GPU
#: atomics in backward kernels reorder bf16 sums
AC_TOL = {"cpu": 1e-4, "cuda": 1e-2}


class AttentionCase(NamedTuple):
    """One packed micro-batch of :func:`check_attention`: document lengths, query and K/V heads, head dim."""

    docs: tuple
    heads: int
    kv_heads: int
    head_dim: int


#: the default cases: one document (MHA), packed documents with a one-token document (GQA 4), and
#: packed documents at head dim 64 (GQA 2); at most 128 tokens, so that a CPU runs them in a second
ATTENTION_CASES = (
    AttentionCase((128,), 8, 8, 128),
    AttentionCase((1, 37, 90), 8, 2, 128),
    AttentionCase((5, 64, 17, 42), 8, 4, 64),
)


def _fail(what: str, msg: str):
    raise AssertionError(f"{what}: {msg}")


def _rel(got, want) -> float:
    """Relative error ``|got - want| / |want|`` in float64 (Frobenius norms)."""
    g, w = got.double(), want.double()
    return ((g - w).norm() / w.norm().clamp(min=1e-30)).item()


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _members(obj, what: str, spec: dict) -> None:
    """Each member of ``spec`` present with a value of its type (a tuple of types, or a predicate)."""
    for member, ok in spec.items():
        if not hasattr(obj, member):
            _fail(what, f"has no '{member}' (see core.contracts)")
        value = getattr(obj, member)
        good = ok(value) if callable(ok) and not isinstance(ok, (type, tuple)) else isinstance(value, ok)
        if not good:
            _fail(what, f"'{member}' is {value!r}, which the contract does not allow (see core.contracts)")


def _optional_str(v) -> bool:
    return v is None or isinstance(v, str)


def _json(d: dict, what: str, member: str) -> None:
    try:
        json.dumps(d)
    except (TypeError, ValueError) as e:
        _fail(what, f"{member} must be JSON-serializable (it is stored in the row): {e}")


# ------------------------------------------------------------------------------------ references
def reference_attention(q, k, v, doc_lens, scale=None, window=None, softcap=None, sinks=None):
    """float32 causal attention within each document, softmax scale ``head_dim ** -0.5``, GQA by
    head groups (query head h reads K/V head ``h // (heads // kv_heads)``), with the features of
    :data:`core.contracts.ATTN_FEATURES` where given: another ``scale``, a sliding ``window`` (query
    i sees keys i-window+1 .. i), logit ``softcap`` (``c * tanh(s / c)``), per-head ``sinks`` (a
    logit added to each softmax's denominator, its value dropped)."""
    import torch

    rep = q.shape[1] // k.shape[1]
    q, k, v = q.float(), k.float().repeat_interleave(rep, 1), v.float().repeat_interleave(rep, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    outs, s = [], 0
    for n in doc_lens:
        qi, ki, vi = (t[s:s + n].transpose(0, 1) for t in (q, k, v))
        att = (qi @ ki.transpose(-1, -2)) * scale
        if softcap is not None:
            att = softcap * torch.tanh(att / softcap)
        i = torch.arange(n, device=q.device)
        hidden = i[None, :] > i[:, None]
        if window is not None:
            hidden |= (i[:, None] - i[None, :]) >= window
        att = att.masked_fill(hidden, float("-inf"))
        if sinks is not None:
            att = torch.cat([att, sinks.float().view(-1, 1, 1).expand(att.shape[0], n, 1)], -1)
            p = att.softmax(-1)[..., :-1]
        else:
            p = att.softmax(-1)
        outs.append((p @ vi).transpose(0, 1))
        s += n
    return torch.cat(outs)


class DocumentSDPA(AttentionBackend):
    """The attention the checks bind to the models they build: PyTorch's SDPA on each document
    (a fused kernel that saves q, k, v, its output and log-sum-exp, as the GPU kernels do)."""

    name = label = "conformance"
    kernel = ""
    provider = "core.testing: torch scaled_dot_product_attention per document"

    def __call__(self, q, k, v, meta):
        import torch
        import torch.nn.functional as F

        outs, c = [], meta.cu_seqlens_host
        for i in range(len(c) - 1):
            qi, ki, vi = (t[c[i]:c[i + 1]].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, enable_gqa=ki.shape[1] != qi.shape[1])
            outs.append(o.squeeze(0).transpose(0, 1))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


class _KeepAll(ActivationMemory):
    """The reference activation strategy: every block runs as it is (no checkpointing); counts
    the block runner's calls."""

    name = label = "conformance-keep-all"
    recompute = RecomputeFacts()

    def __init__(self):
        self.calls = 0

    def apply(self, model) -> None:
        from core.models.common import run_block

        def runner(block, x, rope, meta):
            self.calls += 1
            return run_block(block, x, rope, meta)

        model.block_runner = runner

    def step_context(self):
        import contextlib

        return contextlib.nullcontext()

    def describe(self) -> dict:
        return {}

    def saved_bytes(self, shape) -> float:
        return shape.args.n_layers * shape.live_block_bytes

    def host_bytes(self, shape) -> float:
        return 0.0


class _TrainAll(Adapter):
    """The reference adapter: every weight trains (fp32 masters), every weight is handed off."""

    name = label = "conformance-train-all"
    frozen_base = False
    replicate, replicable = "auto", True

    def __init__(self):
        import torch

        self.param_dtype = torch.float32

    def apply(self, model):
        return model

    def counts(self, model) -> dict:
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"trainable": n, "adapter": 0, "fully_trainable": n}

    def trainable_params(self, args) -> int:
        import torch

        from core.models.common import CausalLM

        with torch.device("meta"):
            return sum(p.numel() for p in CausalLM(args).parameters())

    def handoff(self, model) -> list:
        return list(model.named_parameters())

    def handoff_params(self, args) -> int:
        return self.trainable_params(args)


def _same_count(predicted, built, rtol: float) -> bool:
    """Whether a predicted parameter count is the built one (within ``rtol`` of it)."""
    return predicted == built if not rtol else abs(predicted - built) <= rtol * max(built, 1)


def _build(args, ac, adapter, attention=None, device: str = "cpu", family: ModelFamily | None = None, seed: int = 0):
    """A tiny model composed by the trainer (:func:`core.trainer.build`), with a process group."""
    import torch
    import torch.distributed as dist

    from core.trainer import build, init_distributed

    if not dist.is_initialized():  # FSDP2 wraps where an adapter's weights need it; it needs a group
        init_distributed(device)
    return build(args, attention or DocumentSDPA(), ac, adapter, torch.device(device), seed=seed,
                 model_builder=family.build if family is not None else None)


def _whole(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _losses_and_grads(b, args, device, seq_len, packing, task="rl"):
    """One step's micro-batches (2) through forward and backward: their losses and the gradients."""
    import torch

    from core.trainer import forward_backward, make_batches

    batches = make_batches(args, task, seq_len, 2, packing, seed=7, step=0, device=device)
    losses = torch.stack([forward_backward(b, mb, task, 0.5)["loss"] for mb in batches])
    grads = [(n, None if p.grad is None else _whole(p.grad).detach().clone()) for n, p in b.model.named_parameters()]
    return losses, grads


# ------------------------------------------------------------------------------------- attention
