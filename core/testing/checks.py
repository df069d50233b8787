"""The conformance checks of attention backends, activation strategies, adapters, weight syncs and
model families (see :mod:`core.testing`)."""

from __future__ import annotations

import json
import math
from typing import Any, Callable, NamedTuple

from core.contracts import (ActivationMemory, Adapter, AttentionBackend, ModelFamily, RecomputeFacts, RunContext,
                            SyncContext, TrainableModel)
from core.models.flavours import QWEN3

from core.testing.reference import (AC_TOL, ATTENTION_CASES, ATTENTION_TOL, TINY, AttentionCase, DocumentSDPA,
                                    _build, _fail, _json, _KeepAll, _losses_and_grads, _members, _number,
                                    _optional_str, _rel, _same_count, _TrainAll, _whole, reference_attention)


def check_attention(backend, device: str = "cpu", shapes=ATTENTION_CASES, tol: float = ATTENTION_TOL) -> dict:
    """``backend`` (an :class:`core.contracts.AttentionBackend`, made by its factory) against
    :func:`reference_attention`: its output and the q, k, v gradients of random bf16 inputs, on
    each :class:`AttentionCase` of ``shapes`` whose model shapes ``backend.supports`` accepts
    (relative error below ``tol``, :data:`ATTENTION_TOL`). Also checks the contract's members:
    ``name``, ``label``, ``kernel``, ``repeats_kv``, ``provider``, ``supports(args)`` (None or a
    str), ``prepare()``. Returns the errors per case and the cases the backend declined."""
    import torch

    from core.data import AttnMeta

    what = f"attention backend {getattr(backend, 'name', type(backend).__name__)!r}"
    _members(backend, what, {"name": lambda v: isinstance(v, str) and v, "prepare": callable,
                             "supports": callable})
    backend.prepare()
    _members(backend, what, {"label": lambda v: isinstance(v, str) and v, "kernel": str, "repeats_kv": bool,
                             "provider": str})
    cases, declined = [], []
    for i, case in enumerate(shapes):
        case = AttentionCase(*case)
        args = TINY.with_(n_heads=case.heads, n_kv_heads=case.kv_heads, head_dim=case.head_dim,
                          dim=case.heads * case.head_dim)
        why = backend.supports(args)
        if why is not None:
            if not isinstance(why, str) or not why:
                _fail(what, f"supports(args) must return None or a reason (a str), got {why!r}")
            declined.append({"case": case._asdict(), "why": why})
            continue
        T = sum(case.docs)
        gen = torch.Generator(device=device).manual_seed(1234 + i)
        q, k, v = (torch.randn(T, h, case.head_dim, device=device, generator=gen).bfloat16().requires_grad_()
                   for h in (case.heads, case.kv_heads, case.kv_heads))
        g = torch.randn(T, case.heads, case.head_dim, device=device, generator=gen).bfloat16()
        meta = AttnMeta.from_doc_lens(list(case.docs), device)
        out = backend(q, k, v, meta)
        if tuple(out.shape) != (T, case.heads, case.head_dim):
            _fail(what, f"returned shape {tuple(out.shape)} for {case}; expected {(T, case.heads, case.head_dim)}")
        if not torch.isfinite(out).all():
            _fail(what, f"returned non-finite values for {case}")
        grads = torch.autograd.grad(out, (q, k, v), g)
        qr, kr, vr = (t.detach().float().requires_grad_() for t in (q, k, v))
        ref = reference_attention(qr, kr, vr, case.docs)
        refs = torch.autograd.grad(ref, (qr, kr, vr), g.float())
        errs = {}
        for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *refs)):
            errs[name] = _rel(got, want)
            if not errs[name] < tol:
                _fail(what, f"{name} differs from the float32 reference by {errs[name]:.2e} (relative; allowed "
                            f"{tol:.0e}) for documents {list(case.docs)}, heads {case.heads}/{case.kv_heads}, "
                            f"head_dim {case.head_dim}")
        cases.append({"case": case._asdict(), "errors": errs})
    if not cases:
        _fail(what, f"declined every case ({'; '.join(d['why'] for d in declined)}): pass shapes= it supports")
    features = _check_features(backend, what, device, tol)
    _members(backend, what, {"provider": lambda v: isinstance(v, str) and v})  # known once it ran
    return {"name": backend.name, "provider": backend.provider, "kernel": backend.kernel, "cases": cases,
            "declined": declined, "tol": tol, "features": features}


#: the values each declared feature is checked with (:data:`core.contracts.ATTN_FEATURES`)
FEATURE_CASES = {"scale": [{"scale": 0.0625}], "window": [{"window": 2}, {"window": 5}, {"window": 40}],
                 "softcap": [{"softcap": 2.0}], "sinks": [{"sinks": "random"}]}


def _check_features(backend, what: str, device: str, tol: float) -> dict:
    """Each feature the backend declares (``features``), alone and all declared together, against
    :func:`reference_attention` (output and the q, k, v and sink gradients, packed documents)."""
    import torch

    from core.contracts import ATTN_FEATURES
    from core.data import AttnMeta

    declared = set(getattr(backend, "features", ()) or ())
    unknown = declared - set(ATTN_FEATURES)
    if unknown:
        _fail(what, f"declares features {sorted(unknown)} that the contract does not define "
                    f"(known: {', '.join(ATTN_FEATURES)})")
    combos = [c for f in sorted(declared) for c in FEATURE_CASES[f]]
    if len(declared) > 1:
        combos.append({k: v for f in sorted(declared) for k, v in FEATURE_CASES[f][-1].items()})
    docs, heads, kv, hd = (23, 9, 32), 4, 2, 64
    T, out_errs = sum(docs), {}
    for n, feat in enumerate(combos):
        gen = torch.Generator(device=device).manual_seed(4321 + n)
        q, k, v = (torch.randn(T, h, hd, device=device, generator=gen).bfloat16().requires_grad_()
                   for h in (heads, kv, kv))
        kw = dict(feat)
        inputs = [q, k, v]
        if kw.get("sinks") == "random":
            kw["sinks"] = torch.randn(heads, device=device, generator=gen).requires_grad_()
            inputs.append(kw["sinks"])
        g = torch.randn(T, heads, hd, device=device, generator=gen).bfloat16()
        out = backend(q, k, v, AttnMeta.from_doc_lens(list(docs), device), **kw)
        grads = torch.autograd.grad(out, inputs, g)
        refs_in = [t.detach().float().requires_grad_() for t in inputs]
        ref_kw = {**kw, **({"sinks": refs_in[3]} if "sinks" in kw else {})}
        ref = reference_attention(*refs_in[:3], docs, **ref_kw)
        refs = torch.autograd.grad(ref, refs_in, g.float())
        label = ",".join(f"{k}={v if not torch.is_tensor(v) else 'random'}" for k, v in kw.items())
        for name, got, want in zip(("out", "dq", "dk", "dv", "dsinks"), (out, *grads), (ref, *refs)):
            err = _rel(got, want)
            if not err < tol:
                _fail(what, f"with {label}, {name} differs from the float32 reference by {err:.2e} (relative; "
                            f"allowed {tol:.0e}), documents {list(docs)}")
            out_errs.setdefault(label, {})[name] = err
    return out_errs


# ----------------------------------------------------------------------------- activation memory
def check_ac(strategy_factory: Callable[[], Any], args=None, adapter=None, device: str = "cpu", seq_len: int = 128,
             packing: str = "random", tol: float | None = None, attention=None) -> dict:
    """An activation strategy against keeping every activation: ``strategy_factory()`` (a fresh
    :class:`core.contracts.ActivationMemory` each call: ``apply`` binds one to a model) applied to
    a tiny model (``args``, default :data:`TINY`) gives one step's loss and every gradient within
    ``tol`` (:data:`AC_TOL`) of the reference's, with the same seed and micro-batches. Also checks
    the members (``name``, ``label``, ``recompute`` a :class:`RecomputeFacts`, ``leaner``,
    ``checkpoint_in_block``), that ``saved_bytes`` and ``host_bytes`` are non-negative finite
    numbers, that ``describe()`` is JSON, and, on a CPU, where ``describe()`` reports
    ``host_offload_bytes``, that they equal the declared ``host_bytes`` of a one-document
    micro-batch."""
    from core.memory import shape

    args = args or TINY
    tol = AC_TOL.get(device, AC_TOL["cuda"]) if tol is None else tol
    s = strategy_factory()
    what = f"activation strategy {getattr(s, 'name', type(s).__name__)!r}"
    _members(s, what, {"name": lambda v: isinstance(v, str) and v, "label": lambda v: isinstance(v, str) and v,
                       "checkpoint_in_block": bool, "leaner": _optional_str, "apply": callable,
                       "step_context": callable, "describe": callable})
    try:
        facts = s.recompute
    except AttributeError:
        facts = None
    if not isinstance(facts, RecomputeFacts):
        _fail(what, "its recompute member must be a core.contracts.RecomputeFacts (what backward runs again)")
    declared = {}
    for sh in (shape(args, seq_len), shape(args, seq_len, kv_repeated=True), shape(args, 64 * seq_len)):
        for member in ("saved_bytes", "host_bytes"):
            v = getattr(s, member)(sh)
            if not _number(v) or v < 0:
                _fail(what, f"{member}(shape) returned {v!r} for seq_len={sh.seq_len}: it must be a finite number "
                            "of bytes, 0 or more")
            declared.setdefault(member, float(v))
    ref_loss, ref = _losses_and_grads(_build(args, _KeepAll(), adapter or _TrainAll(), attention, device),
                                      args, device, seq_len, packing)
    b = _build(args, s, adapter or _TrainAll(), attention, device)
    loss, got = _losses_and_grads(b, args, device, seq_len, packing)
    loss_err = _rel(loss, ref_loss)
    if not loss_err <= tol:
        _fail(what, f"the loss {loss.tolist()} differs from keeping every activation's {ref_loss.tolist()} "
                    f"(relative {loss_err:.2e}, allowed {tol:.0e})")
    if len(got) != len(ref):
        _fail(what, f"the model has {len(got)} parameters after apply(), {len(ref)} without it")
    worst = 0.0
    for (name, want), (_, g) in zip(ref, got):
        if (want is None) != (g is None):
            _fail(what, f"{name} has {'no' if g is None else 'a'} gradient; keeping every activation, it has "
                        f"{'one' if want is not None else 'none'}")
        if want is None:
            continue
        err = _rel(g, want) if want.norm() > 0 else g.double().norm().item()
        worst = max(worst, err)
        if not err <= tol:
            _fail(what, f"the gradient of {name} differs from keeping every activation's by {err:.2e} "
                        f"(relative; allowed {tol:.0e})")
    info = s.describe()
    if not isinstance(info, dict):
        _fail(what, f"describe() returned {type(info).__name__}, not a dict")
    _json(info, what, "describe()")
    out = {"name": s.name, "label": s.label, "recomputes": s.recompute, "loss_err": loss_err,
           "max_grad_err": worst, **declared}
    if device == "cpu" and "host_offload_bytes" in info:
        fresh = strategy_factory()
        attn = attention or DocumentSDPA()
        b = _build(args, fresh, adapter or _TrainAll(), attn, device)
        _losses_and_grads(b, args, device, seq_len, "single")
        used = fresh.describe()["host_offload_bytes"]
        want = fresh.host_bytes(shape(args, seq_len, bool(getattr(attn, "repeats_kv", False))))
        if used != want:
            _fail(what, f"host_bytes() declares {want:.0f} bytes for a {seq_len}-token micro-batch, but "
                        f"describe() reports {used} host_offload_bytes used")
        out["host_offload_bytes"] = used
    return out


# --------------------------------------------------------------------------------------- adapter
def check_adapter(adapter, args=None, family: ModelFamily | None = None, run_step: bool = True,
                  device: str = "cpu", count_rtol: float = 0.0) -> dict:
    """An adapter against its contract: ``apply`` on a tiny model on the meta device (``args``,
    default :data:`TINY`; ``family``'s ``build``, default the native model) returns the model;
    ``counts(model)`` has ``trainable``, ``adapter`` and ``fully_trainable`` that add up, equal to
    the parameters that require grad, that the adapter added, and that train in the base model;
    ``trainable_params(args)`` predicts the trainable count; ``frozen_base`` says whether base
    weights train; ``handoff(model)`` names parameters of the model, as many as
    ``handoff_params(args)`` predicts (exactly, or within ``count_rtol`` of the built counts). With
    ``run_step``, one training step on the CPU: every trainable weight gets a finite gradient, the
    frozen ones none, and the frozen ones do not move."""
    import torch

    from core.models.common import CausalLM

    args = args or TINY
    what = f"adapter {getattr(adapter, 'name', type(adapter).__name__)!r}"
    _members(adapter, what, {"name": lambda v: isinstance(v, str) and v, "label": lambda v: isinstance(v, str) and v,
                             "param_dtype": torch.dtype, "frozen_base": bool,
                             "replicate": lambda v: v in ("auto", True, False), "replicable": bool})
    with torch.device("meta"):
        base = (family.build if family is not None else CausalLM)(args)
    base_names = {n for n, _ in base.named_parameters()}
    model = adapter.apply(base)
    if not isinstance(model, torch.nn.Module):
        _fail(what, f"apply(model) returned {type(model).__name__}, not the model")
    params = dict(model.named_parameters())
    trains = sum(p.numel() for p in params.values() if p.requires_grad)
    added = {n: p for n, p in params.items() if n.replace(".base_layer", "") not in base_names}
    counts = adapter.counts(model)
    for key in ("trainable", "adapter", "fully_trainable"):
        if not isinstance(counts.get(key), int) or counts[key] < 0:
            _fail(what, f"counts(model)[{key!r}] is {counts.get(key)!r}: it must be a count (an int, 0 or more)")
    if counts["trainable"] != counts["adapter"] + counts["fully_trainable"]:
        _fail(what, f"counts(model): trainable {counts['trainable']} != adapter {counts['adapter']} + "
                    f"fully_trainable {counts['fully_trainable']}")
    if counts["trainable"] != trains:
        _fail(what, f"counts(model)['trainable'] is {counts['trainable']} but {trains} parameters require grad")
    if counts["adapter"] != sum(p.numel() for p in added.values()):
        _fail(what, f"counts(model)['adapter'] is {counts['adapter']} but apply() added "
                    f"{sum(p.numel() for p in added.values())} parameters ({', '.join(list(added)[:3])}, ...)")
    predicted = adapter.trainable_params(args)
    if not _same_count(predicted, trains, count_rtol):
        _fail(what, f"trainable_params(args) predicts {predicted} but the built model trains {trains} parameters")
    base_trains = [n for n, p in params.items() if n not in added and p.requires_grad]
    if adapter.frozen_base and base_trains:
        _fail(what, f"frozen_base is True but base weights train ({', '.join(base_trains[:3])})")
    if not adapter.frozen_base and not base_trains:
        _fail(what, "frozen_base is False but no base weight trains")
    handed = adapter.handoff(model)
    ids = {id(p) for p in params.values()}
    if not isinstance(handed, list) or any(not (isinstance(n, str) and id(p) in ids) for n, p in handed):
        _fail(what, "handoff(model) must be a list of (name, parameter) pairs of the model's own parameters")
    if len({n for n, _ in handed}) != len(handed):
        _fail(what, "handoff(model) names a parameter twice")
    n_handed = sum(p.numel() for _, p in handed)
    if not _same_count(adapter.handoff_params(args), n_handed, count_rtol):
        _fail(what, f"handoff_params(args) predicts {adapter.handoff_params(args)} but handoff(model) hands off "
                    f"{n_handed} parameters")
    out = {"name": adapter.name, "label": adapter.label, "counts": counts, "handoff_params": n_handed}
    if run_step:
        out.update(_adapter_step(adapter, args, family, device, what))
    return out


def _adapter_step(adapter, args, family, device, what) -> dict:
    import torch

    from core.trainer import make_batches, train_step

    b = _build(args, _KeepAll(), adapter, None, device, family)
    frozen = {n: _whole(p).detach().clone() for n, p in b.model.named_parameters() if not p.requires_grad}
    _, grads = _losses_and_grads(b, args, device, 128, "random")
    trainable = {n for n, p in b.model.named_parameters() if p.requires_grad}
    for n, g in grads:
        if n in trainable and (g is None or not torch.isfinite(g).all()):
            _fail(what, f"the trainable weight {n} got {'no' if g is None else 'a non-finite'} gradient")
        if n not in trainable and g is not None:
            _fail(what, f"the frozen weight {n} got a gradient")
    if not any(g is not None and g.abs().sum() > 0 for _, g in grads):
        _fail(what, "every gradient is zero after one step")
    b.optimizer.zero_grad(set_to_none=True)
    out = train_step(b, make_batches(args, "rl", 128, 2, "random", seed=7, step=1, device=device), "rl")
    if not torch.isfinite(out["loss"]).all():
        _fail(what, f"a training step gave the loss {out['loss'].tolist()}")
    for n, p in b.model.named_parameters():
        if n in frozen and not torch.equal(_whole(p).detach(), frozen[n]):
            _fail(what, f"the frozen weight {n} changed in the optimizer step")
    return {"step_loss": out["loss"].mean().item(), "fsdp": b.fsdp}


# ----------------------------------------------------------------------------------- weight sync
def check_sync(sync, adapter=None, args=None, task: str = "rl", steps: int = 2, device: str = "cpu") -> dict:
    """A weight-sync method through a row's life on a tiny model: ``check`` (None, or a reason: a
    failure here), ``setup``, ``steps`` training steps (``before_update`` and ``after_step`` in
    each), ``finish``, then ``describe()``: JSON with ``method`` and ``bytes_per_step``, and
    ``sync_s`` per step where it times them. A method that moves weights (``bytes_per_step`` > 0)
    moves 2 bytes (bf16) per handed-off parameter (``SyncContext.tensors``: ``adapter.handoff``;
    default: every weight)."""
    from core.trainer import make_batches, train_step

    args = args or TINY
    adapter = adapter or _TrainAll()
    what = f"weight sync {getattr(sync, 'name', type(sync).__name__)!r}"
    _members(sync, what, {"name": lambda v: isinstance(v, str) and v, "check": callable, "setup": callable,
                          "before_update": callable, "after_step": callable, "finish": callable, "describe": callable})
    ctx = SyncContext(rank=0, world_size=1, device=device, adapter_only=adapter.frozen_base, task=task,
                      predicted_bytes=2 * adapter.handoff_params(args), row_id="conformance", handoff=adapter.handoff)
    why = sync.check(ctx)
    if why is not None:
        _fail(what, f"check() refused a tiny {device} row: {why}")
    b = _build(args, _KeepAll(), adapter, None, device)
    handed = sum(p.numel() for _, p in ctx.tensors(b.model))
    try:
        sync.setup(b.model, ctx)
        b.sync = sync
        for step in range(steps):
            train_step(b, make_batches(args, task, 128, 2, "random", seed=0, step=step, device=device), task, step=step)
    finally:
        sync.finish()
    info = sync.describe()
    if not isinstance(info, dict):
        _fail(what, f"describe() returned {type(info).__name__}, not a dict")
    _json(info, what, "describe()")
    _members(sync, what, {"label": lambda v: isinstance(v, str) and v})
    if not isinstance(info.get("method"), str) or not info["method"]:
        _fail(what, f"describe() has no 'method' (got {info.get('method')!r})")
    moved = info.get("bytes_per_step")
    if not _number(moved) or moved < 0:
        _fail(what, f"describe()['bytes_per_step'] is {moved!r}: it must be a number of bytes, 0 or more")
    if moved and moved != 2 * handed:
        _fail(what, f"describe() says {moved} bytes per step but {handed} parameters are handed off: "
                    f"{2 * handed} bytes in bf16")
    if "sync_s" in info and len(info["sync_s"]) != steps:
        _fail(what, f"describe()['sync_s'] has {len(info['sync_s'])} entries for {steps} steps (one per step)")
    return {"name": sync.name, "label": sync.label, "method": info["method"], "bytes_per_step": moved,
            "handed_off_params": handed, "sync_s": info.get("sync_s")}


# ---------------------------------------------------------------------------------- model family
def check_model_family(family: ModelFamily, flavours=None, device: str = "cpu", seq_len: int = 128,
                       count_rtol: float = 0.0) -> dict:
    """A model family against :class:`core.contracts.ModelFamily`: each of ``flavours`` (default:
    all) is a :class:`core.models.common.ModelArgs` whose model builds on the meta device, follows
    :class:`core.contracts.TrainableModel`, has attention layers the trainer can bind, and has the
    parameter count the memory model computes from its args (:func:`core.memory.param_count`;
    exactly, or within ``count_rtol``).
    The smallest flavour then runs on ``device``: its forward calls the block runner once per
    block and gives fp32 log-probs (<= 0) and entropies (0 to log(vocab)) of shape ``[tokens]``,
    finite, and a backward that gives finite gradients."""
    import torch

    from core.memory import param_count
    from core.models.common import ModelArgs, attention_modules

    what = f"model family {getattr(family, 'name', type(family).__name__)!r}"
    if not isinstance(family, ModelFamily):
        _fail(what, f"is a {type(family).__name__}; register a core.contracts.ModelFamily")
    _members(family, what, {"name": lambda v: isinstance(v, str) and v, "flavours": dict, "build": callable,
                            "doc": str, "from_config": lambda v: v is None or callable(v), "implementation": callable,
                            "casts_weights": bool, "casts_adapters": bool, "fuses_projections": bool})
    names = list(family.flavours) if flavours is None else list(flavours)
    if not names:
        _fail(what, "has no flavours to check (a from_config family: pass its ModelArgs in a flavours dict)")
    table = family.flavours if flavours is None or not isinstance(flavours, dict) else flavours
    counts = {}
    for name in names:
        args = table[name]
        if not isinstance(args, ModelArgs):
            _fail(what, f"flavour {name!r} is a {type(args).__name__}, not core.models.common.ModelArgs")
        if not isinstance(family.implementation(args), str):
            _fail(what, f"implementation(args) of flavour {name!r} is not a str")
        with torch.device("meta"):
            model = family.build(args)
        if not isinstance(model, TrainableModel):
            missing = [m for m in ("layers", "block_runner", "head_budget_mib", "casts_weights", "casts_adapters",
                                   "forward") if not hasattr(model, m)]
            _fail(what, f"build(args) of flavour {name!r} lacks {', '.join(missing)} (core.contracts.TrainableModel)")
        if len(model.layers) != args.n_layers:
            _fail(what, f"flavour {name!r} has {len(model.layers)} layers, its args say {args.n_layers}")
        if not attention_modules(model):
            _fail(what, f"flavour {name!r} has no attention layer the trainer can bind (core.models.common."
                        "Attention, or a module with stepbench_attention = True and a backend attribute)")
        n = sum(p.numel() for p in model.parameters())
        if not _same_count(param_count(args), n, count_rtol):
            _fail(what, f"flavour {name!r} has {n} parameters; the memory model counts {param_count(args)} from "
                        "its args (core.memory.param_count)")
        counts[name] = n
        del model
    small = min(names, key=lambda k: counts[k])
    args = table[small]
    keep = _KeepAll()
    b = _build(args, keep, _TrainAll(), None, device, family)
    from core.trainer import make_batches

    mb = make_batches(args, "rl", seq_len, 1, "random", seed=3, step=0, device=device)[0]
    lp, ent = b.model(mb.input_ids, mb.position_ids, mb.meta, mb.targets)
    T = mb.num_tokens
    for label, t in (("log-probs", lp), ("entropies", ent)):
        if tuple(t.shape) != (T,) or t.dtype != torch.float32:
            _fail(what, f"forward gave {label} of shape {tuple(t.shape)} ({t.dtype}); expected ({T},) float32")
        if not torch.isfinite(t).all():
            _fail(what, f"forward gave non-finite {label}")
    if (lp > 1e-4).any():
        _fail(what, f"forward gave log-probs above 0 (max {lp.max().item():.3g})")
    if (ent < -1e-4).any() or (ent > math.log(args.vocab_size) + 1e-3).any():
        _fail(what, f"forward gave entropies outside [0, log(vocab)] ({ent.min().item():.3g} to "
                    f"{ent.max().item():.3g})")
    if keep.calls != len(b.model.layers):
        _fail(what, f"forward called the block runner {keep.calls} times for {len(b.model.layers)} blocks: an "
                    "activation strategy replaces model.block_runner, so every block must run through it")
    lp.sum().backward()
    bad = [n for n, p in b.model.named_parameters() if p.grad is not None and not torch.isfinite(_whole(p.grad)).all()]
    if bad:
        _fail(what, f"backward gave non-finite gradients ({', '.join(bad[:3])})")
    return {"name": family.name, "params": counts, "ran": small, "tokens": T,
            "mean_logprob": lp.mean().item(), "mean_entropy": ent.mean().item()}


# ------------------------------------------------------------------------------------ options


# ------------------------------------------------------------------------------------- kernels
#: the tolerance of a kernels provider's bf16 outputs and gradients against float32 PyTorch ops
#: (relative, Frobenius): bf16 rounding of inputs and outputs is ~4e-3
KERNELS_TOL = 2e-2


def _tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check_kernels(provider, device: str = "cpu", tol: float = KERNELS_TOL, compiled: bool = False) -> dict:
    """``provider`` (a :class:`core.contracts.Kernels`, made by its factory) against the float32
    PyTorch ops of :mod:`core.kernels`: each operation it lists in ``ops``, outputs and every input
    gradient of random bf16 inputs, on several shapes (rows that are not a power of two, widths of
    the published models, gate/up as column slices of one fused output, partial rotary). Also checks
    the contract's members. ``compiled``: each operation runs inside ``torch.compile(fullgraph=True)``
    (how a compiled block calls it; a graph break fails). Returns the relative errors per operation
    and shape."""
    import torch

    from core import kernels as ref
    from core.contracts import KERNEL_OPS

    what = f"kernels provider {getattr(provider, 'name', type(provider).__name__)!r}"
    _members(provider, what, {"name": lambda v: isinstance(v, str) and v, "label": lambda v: isinstance(v, str) and v,
                              "ops": lambda v: isinstance(v, (set, frozenset)), "prepare": callable})
    unknown = set(provider.ops) - set(KERNEL_OPS)
    if unknown:
        _fail(what, f"lists operations {sorted(unknown)} the contract does not define (known: {', '.join(KERNEL_OPS)})")
    provider.prepare()
    _members(provider, what, {"provider": lambda v: isinstance(v, str) and v})
    gen = torch.Generator(device=device).manual_seed(99)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, device=device, generator=gen) * scale + shift).bfloat16()

    def compare(op, case, fn, ref_fn, inputs, grad_of):
        """``fn`` on bf16 ``inputs`` against ``ref_fn`` on their float32 copies, output and the
        gradients of the inputs at the positions ``grad_of``."""
        xs = [t.clone().requires_grad_(i in grad_of) for i, t in enumerate(inputs)]
        if compiled:
            fn = torch.compile(fn, fullgraph=True, dynamic=False)
        outs = fn(*xs)  # one tensor, or a tuple (add_rms_norm: the norm and the sum)
        outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
        shapes = [o.shape for o in _tuple(ref_fn(*[t.float() for t in inputs]))]
        if [o.shape for o in outs] != shapes or any(o.dtype != inputs[0].dtype for o in outs):
            _fail(what, f"{op} {case}: returned {[(tuple(o.shape), o.dtype) for o in outs]}; expected "
                        f"{[tuple(x) for x in shapes]} in the input's dtype")
        gs = [torch.randn(o.shape, device=device, generator=gen).bfloat16() for o in outs]
        grads = torch.autograd.grad(outs, [xs[i] for i in grad_of], gs)
        rs = [t.detach().float().requires_grad_(i in grad_of) for i, t in enumerate(inputs)]
        wants_out = _tuple(ref_fn(*rs))
        wants = torch.autograd.grad(wants_out, [rs[i] for i in grad_of], [g.float() for g in gs])
        errs = {}
        names = ["out"] if len(outs) == 1 else [f"out{i}" for i in range(len(outs))]
        for name, got, exp in zip(names + [f"d{i}" for i in grad_of], (*outs, *grads), (*wants_out, *wants)):
            errs[name] = _rel(got, exp)
            if not errs[name] < tol:
                _fail(what, f"{op} {case}: {name} differs from float32 PyTorch ops by {errs[name]:.2e} (relative; "
                            f"allowed {tol:.0e})")
        return errs

    results = {}
    if "rms_norm" in provider.ops:
        for rows, dim in ((37, 96), (130, 1024), (3, 2560)):
            results[f"rms_norm {rows}x{dim}"] = compare(
                "rms_norm", f"[{rows}, {dim}]", lambda x, w: provider.rms_norm(x, w, 1e-6),
                lambda x, w: ref.rms_norm(x, w, 1e-6), [rnd(rows, dim), rnd(dim, scale=0.2, shift=1.0)], (0, 1))
    if "add_rms_norm" in provider.ops:  # both outputs and the three gradients (the reference sums in fp32)
        for rows, dim in ((37, 96), (130, 1024), (3, 2560)):
            results[f"add_rms_norm {rows}x{dim}"] = compare(
                "add_rms_norm", f"[{rows}, {dim}]", lambda x, r, w: provider.add_rms_norm(x, r, w, 1e-6),
                lambda x, r, w: ref.add_rms_norm(x, r, w, 1e-6),
                [rnd(rows, dim), rnd(rows, dim, scale=2.0), rnd(dim, scale=0.2, shift=1.0)], (0, 1, 2))
    if "swiglu" in provider.ops:
        for rows, ffn in ((29, 80), (64, 3072)):
            fused = rnd(rows, 2 * ffn)  # gate and up as the two halves of one GEMM's output (column slices)

            def sliced(f, fn):
                g, u = f.chunk(2, -1)
                return fn(g, u)

            results[f"swiglu {rows}x{ffn} slices"] = compare(
                "swiglu", f"[{rows}, {ffn}] slices of [{rows}, {2 * ffn}]", lambda f: sliced(f, provider.swiglu),
                lambda f: sliced(f, ref.swiglu), [fused], (0,))
            results[f"swiglu {rows}x{ffn}"] = compare(
                "swiglu", f"[{rows}, {ffn}]", provider.swiglu, ref.swiglu, [rnd(rows, ffn), rnd(rows, ffn)], (0, 1))
    if "rope" in provider.ops:
        for tokens, heads, head_dim, rot in ((11, 3, 16, 16), (40, 4, 128, 128), (9, 2, 64, 32)):
            pos = torch.arange(tokens, device=device).float()
            inv = 1.0 / (1e6 ** (torch.arange(0, rot // 2, device=device).float() / (rot // 2)))
            f = pos[:, None] * inv[None]
            emb = torch.cat([f, f], -1)[:, None, :]
            cos, sin = emb.cos().bfloat16(), emb.sin().bfloat16()
            results[f"rope {tokens}x{heads}x{head_dim} rot {rot}"] = compare(
                "rope", f"[{tokens}, {heads}, {head_dim}] rotating {rot}", lambda x: provider.rope(x, cos, sin),
                lambda x: ref.rope(x, cos.to(x.dtype), sin.to(x.dtype)), [rnd(tokens, heads, head_dim)], (0,))
    return {"name": provider.name, "provider": provider.provider, "ops": sorted(provider.ops), "cases": results,
            "tol": tol}


def check_peer(peer, run: bool = True, device: str = "cpu", seq_len: int = 128, timeout_s: float = 300.0) -> dict:
    """``peer`` (a :class:`core.contracts.Peer`, made by its factory) against its contract: its
    members; ``why_not`` of the tiny Qwen3's row (RL full fine-tuning, ``seq_len`` tokens, 2
    micro-batches, 3 steps) is None or one line; a work folder without the peer's output is a
    ``ValueError`` from ``result``; and with ``run`` (where ``why_not`` lets it), the command run as a
    child process exits 0 and ``result`` gives a positive TPS that agrees with its step times where
    it reports them (tokens of the timed steps over their total time), the labels a row needs, and a
    peak memory that is None or positive. Returns what it read."""
    import subprocess
    import sys
    import tempfile
    from dataclasses import asdict
    from pathlib import Path

    from core.contracts import PeerCommand, PeerResult, PeerSpec
    from plugins.models.native import qwen3_config

    what = f"peer {getattr(peer, 'name', type(peer).__name__)!r}"
    _members(peer, what, {"name": lambda v: isinstance(v, str) and v, "label": lambda v: isinstance(v, str) and v,
                          "runs_stepbench": lambda v: isinstance(v, bool), "why_not": callable, "command": callable,
                          "result": callable})
    if peer.runs_stepbench:
        return {"runs_stepbench": True}
    from core.resolve import _primary_defaults

    d = _primary_defaults()  # the default row's plugins (the kit names none itself)
    spec = PeerSpec(model=TINY.name, hf_name="", hf_config=qwen3_config(TINY), task="rl", adapter="full",
                    seq_len=seq_len, micro_batches=2, steps=3, attn=str(d["attn"]["name"]), ac=str(d["ac"]["name"]),
                    compile=False, seed=0, device=device, handoff=True)
    why = peer.why_not(spec)
    if why is not None and (not isinstance(why, str) or not why.strip() or "\n" in why.strip()):
        _fail(what, f"why_not returned {why!r}: None, or one line that says why and what to do instead")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            peer.result(tmp, [])
            _fail(what, "result() of a work folder without the peer's output returned a result: raise ValueError")
        except ValueError:
            pass
        if why is not None or not run:
            return {"why_not": why}
        (Path(tmp) / "spec.json").write_text(json.dumps(asdict(spec)))
        cmd = peer.command(spec, tmp)
        if not isinstance(cmd, PeerCommand) or not cmd.argv or not all(isinstance(a, str) for a in cmd.argv):
            _fail(what, f"command() returned {cmd!r}: a PeerCommand whose argv is a list of strings")
        from core.peers import peer_env

        try:
            p = subprocess.run(cmd.argv, cwd=cmd.cwd, env=peer_env(cmd), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _fail(what, f"its command ran past {timeout_s:g} s on the tiny row")
        if p.returncode != 0:
            _fail(what, f"its command exited with status {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}")
        res = peer.result(tmp, (p.stdout + p.stderr).splitlines()[-50:])
    if not isinstance(res, PeerResult) or not (isinstance(res.tps, (int, float)) and math.isfinite(res.tps)
                                               and res.tps > 0):
        _fail(what, f"result() gave {res!r}: a PeerResult with a positive, finite TPS")
    if res.peak_mem_gib is not None and not res.peak_mem_gib > 0:
        _fail(what, f"peak_mem_gib is {res.peak_mem_gib!r}: None (no GPU) or the peak in GiB")
    if res.step_s:
        want = spec.micro_batches * seq_len * len(res.step_s) / sum(res.step_s)
        if abs(res.tps / want - 1) > 0.05:
            _fail(what, f"its TPS {res.tps:.1f} disagrees with its step times ({want:.1f} tokens/s)")
    for k in ("version", "per_step_work"):
        if not isinstance(getattr(res, k), str) or not getattr(res, k):
            _fail(what, f"result().{k} is {getattr(res, k)!r}: the row needs it (a short text)")
    return {"tps": res.tps, "steps": len(res.step_s), "version": res.version, "python": sys.executable}
