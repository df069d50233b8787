"""q/k/v and gate/up as one GEMM (core.models.fused) against the layers they replace."""

import pytest
import torch
from torch import nn

from core.models.fused import fusable, project
from core.models.flavours import QWEN3, QWEN3_MOE
from tests.test_models_and_ac import FAMILIES, grads_after_step, local, make


def _layers(kind: str, dim: int, outs, bias: bool, seed: int):
    torch.manual_seed(seed)
    layers = [nn.Linear(dim, o, bias=bias, dtype=torch.float64) for o in outs]
    if kind == "linear":
        return nn.ModuleList(layers)
    from peft import LoraConfig, inject_adapter_in_model

    holder = nn.Module()
    for i, m in enumerate(layers):
        setattr(holder, f"p{i}", m)
    holder = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=[f"p{i}" for i in range(len(outs))]),
                                     holder)
    mods = [getattr(holder, f"p{i}") for i in range(len(outs))]
    for i, m in enumerate(mods):
        m.to(torch.float64)
        with torch.no_grad():  # B away from its zero init, so A's gradient is not zero either
            m.lora_B["default"].weight.normal_(0, 0.5)
        m.scaling["default"] = 0.5 + i  # a different scale per layer
        m.base_layer.weight.requires_grad_(False)
    return nn.ModuleList(mods)


@pytest.mark.parametrize("kind", ["linear", "lora"])
@pytest.mark.parametrize("dim,outs,bias,lead", [(16, (8, 4, 4), False, (7,)), (24, (32, 32), True, (5,)),
                                                (12, (6, 10, 3), True, (2, 9))],
                         ids=["qkv", "gate_up_bias", "3d_input"])
def test_project_equals_separate_layers(kind, dim, outs, bias, lead):
    """Outputs and every gradient (input, weights, biases, A and B) equal the separate layers'."""
    layers = _layers(kind, dim, outs, bias, seed=len(outs) + dim)
    assert fusable(list(layers)) == kind
    x = torch.randn(*lead, dim, dtype=torch.float64, requires_grad=True)
    dys = [torch.randn(*lead, o, dtype=torch.float64) for o in outs]

    def run(fuse):
        fuse = fuse and True  # True: plain layers too (the default "lora" leaves them to one GEMM each)
        x.grad = None
        for p in layers.parameters():
            p.grad = None
        ys = project(x, list(layers), fuse)
        sum((y * d).sum() for y, d in zip(ys, dys)).backward()
        return [y.detach() for y in ys], x.grad.clone(), {n: p.grad.clone() for n, p in layers.named_parameters()
                                                          if p.grad is not None}

    ref_y, ref_dx, ref_g = run(False)
    got_y, got_dx, got_g = run(True)
    for a, b in zip(got_y, ref_y):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_dx, ref_dx, rtol=1e-12, atol=1e-12)
    assert got_g.keys() == ref_g.keys() and ref_g
    for n in ref_g:
        assert ref_g[n].abs().sum() > 0, n
        torch.testing.assert_close(got_g[n], ref_g[n], rtol=1e-12, atol=1e-12, msg=n)
    if kind == "lora":
        assert not any("base_layer" in n for n in ref_g)  # frozen: no gradient either way


def test_project_falls_back_where_it_cannot_fuse():
    from peft import LoraConfig, inject_adapter_in_model

    plain = [nn.Linear(8, 4, bias=True), nn.Linear(8, 4, bias=False)]
    assert fusable(plain) is None  # mixed biases
    holder = nn.Module()
    holder.a, holder.b = nn.Linear(8, 4), nn.Linear(8, 4)
    holder = inject_adapter_in_model(LoraConfig(r=2, lora_dropout=0.1, target_modules=["a", "b"]), holder)
    assert fusable([holder.a, holder.b]) is None  # dropout: peft's own forward
    assert fusable([holder.a, nn.Linear(8, 4)]) is None  # a LoRA layer beside a plain one
    assert fusable([nn.Linear(8, 4)]) is None  # nothing to fuse
    x = torch.randn(3, 8)
    holder.eval()
    ys = project(x, [holder.a, holder.b])
    assert torch.equal(ys[0], holder.a(x)) and torch.equal(ys[1], holder.b(x))


def test_default_fuses_lora_layers_only(monkeypatch):
    """fuse="lora" (the default): plain layers keep one GEMM each (measured slower fused)."""
    import core.models.fused as fused

    calls = []
    real = fused._FusedLinears.apply
    monkeypatch.setattr(fused._FusedLinears, "apply", lambda *a: calls.append(a[2] > 0) or real(*a))  # LoRA factors given
    x = torch.randn(3, 16, dtype=torch.float64)
    plain, lora = _layers("linear", 16, (8, 4), False, 0), _layers("lora", 16, (8, 4), False, 0)
    for layers, fuse, want in ((plain, "lora", []), (plain, True, [False]), (lora, "lora", [True]), (lora, False, [])):
        calls.clear()
        project(x, list(layers), fuse)
        assert calls == want, (fuse, calls)


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_fused_model_equals_unfused(dist_group, family, adapter):
    """A whole step (FSDP2, bf16 compute, recompute) with fuse=true against fuse=false: loss and
    every gradient within bf16 tolerance."""
    args = {"qwen3": QWEN3, "qwen3_moe": QWEN3_MOE}[family]["tiny"]

    def step(fuse):
        b = make(args, "recompute", adapter)
        from core.trainer import set_fuse

        set_fuse(b.model, fuse)
        attn = b.model.layers[0].self_attn
        assert fusable([attn.q_proj, attn.k_proj, attn.v_proj]) == ("linear" if adapter == "full" else "lora")
        if adapter == "lora":  # B away from zero, so the adapters' A gradients are checked too
            with torch.no_grad():
                for n, p in b.model.named_parameters():
                    if "lora_B" in n:
                        local(p).normal_(0, 0.02, generator=torch.Generator().manual_seed(len(n)))
        return grads_after_step(b, args)

    ref_loss, ref = step(False)
    loss, got = step(True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-3, atol=1e-4)
    assert ref.keys() == got.keys()
    for n in ref:
        err = (got[n] - ref[n]).float().norm() / ref[n].float().norm().clamp_min(1e-12)
        assert err < 2e-2, (n, err.item())
    if adapter == "lora":
        assert all(ref[n].abs().sum() > 0 for n in ref if "lora_A" in n)


@pytest.mark.gpu
@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_fused_compiled_equals_unfused_cuda(dist_group, adapter):
    """On the GPU, each block compiled with the checkpoint inside (the table's rows), fused
    (fuse=true: plain and LoRA layers), against the eager model with one GEMM per layer: loss
    within bf16 tolerance, and every gradient no further from the eager one than the compiled
    unfused model's own (compiled-vs-eager bf16 noise reached 2% on a LoRA A gradient on an H200,
    so a fixed bound cannot tell it from a fusion error; two compiles per case, ~2 minutes)."""
    from core.plugins import registry
    from core.trainer import build

    args = QWEN3["tiny"]
    reg = registry()

    def step(fuse, compile):
        torch._dynamo.reset()
        b = build(args, reg.get("attn", "sdpa").make({}), reg.get("ac", "recompute").make({}),
                  reg.get("adapter", adapter).make({}), torch.device("cuda"), seed=0, compile=compile, fuse=fuse)
        if adapter == "lora":
            with torch.no_grad():
                for n, p in b.model.named_parameters():
                    if "lora_B" in n:
                        local(p).normal_(0, 0.02, generator=torch.Generator("cuda").manual_seed(len(n)))
        return grads_after_step(b, args, device="cuda")

    def rel(a, b):
        return ((a - b).float().norm() / b.float().norm().clamp_min(1e-12)).item()

    ref_loss, ref = step(False, compile=False)
    base_loss, base = step(False, compile=True)
    loss, got = step(True, compile=True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-2, atol=1e-3)
    assert ref.keys() == got.keys() == base.keys()
    for n in ref:
        noise = rel(base[n], ref[n])
        assert rel(got[n], ref[n]) <= 2 * noise + 5e-3, (n, rel(got[n], ref[n]), noise)


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_replicated_adapters_equal_sharded(dist_group, family):
    """LoRA with the adapters out of FSDP2 (adapter.replicate=auto, the native default: fp32
    factors cast to bf16 where used, o_proj/down_proj included) against the adapters sharded with
    the base weights (FSDP2's bf16 unshard, peft's own forward for o_proj/down_proj): a whole step's
    loss and every adapter gradient within bf16 tolerance."""
    from core.plugins import registry
    from core.trainer import build

    args = {"qwen3": QWEN3, "qwen3_moe": QWEN3_MOE}[family]["tiny"]
    reg = registry()

    def step(replicate):
        b = build(args, reg.get("attn", "sdpa").make({}), reg.get("ac", "recompute").make({}),
                  reg.get("adapter", "lora").make({"replicate": replicate}), torch.device("cpu"), seed=0)
        lora = [p for n, p in b.model.named_parameters() if "lora_" in n]
        assert len(b.replicated) == (len(lora) if replicate == "auto" else 0)
        assert all(not hasattr(p, "device_mesh") for p in b.replicated)
        with torch.no_grad():  # B away from zero, so the adapters' A gradients are checked too
            for n, p in b.model.named_parameters():
                if "lora_B" in n:
                    local(p).normal_(0, 0.02, generator=torch.Generator().manual_seed(len(n)))
        return grads_after_step(b, args)

    ref_loss, ref = step(False)
    loss, got = step("auto")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-3, atol=1e-4)
    assert ref.keys() == got.keys() and all("lora_" in n for n in ref)
    for n in ref:
        assert ref[n].abs().sum() > 0, n
        err = (got[n] - ref[n]).float().norm() / ref[n].float().norm()
        assert err < 2e-2, (n, err.item())


def test_one_gpu_lora_runs_without_fsdp(dist_group, monkeypatch):
    """fsdp=auto at world size 1: a LoRA model with its adapters out of FSDP2 runs unwrapped (its
    frozen bf16 weights used in place) and gives the same loss and adapter gradients, bit for bit,
    as the same model under FSDP2 (fsdp=true), whose unshard copies those weights unchanged.
    Sharded adapters keep FSDP2, and so do frozen weights in fp32 in a model that does not cast them."""
    from torch.distributed.fsdp import FSDPModule

    from core.plugins import registry
    from core.trainer import build, needs_fsdp

    args, reg = QWEN3["tiny"], registry()

    def built(fsdp, adapter="lora", **opts):
        return build(args, reg.get("attn", "sdpa").make({}), reg.get("ac", "recompute").make({}),
                     reg.get("adapter", adapter).make(opts), torch.device("cpu"), seed=0, fsdp=fsdp)

    def step(b):
        with torch.no_grad():  # B away from zero, so the A gradients are checked too
            for n, p in b.model.named_parameters():
                if "lora_B" in n:
                    local(p).normal_(0, 0.02, generator=torch.Generator().manual_seed(len(n)))
        return grads_after_step(b, args)

    bare, wrapped = built("auto"), built(True)
    assert not bare.fsdp and not any(isinstance(m, FSDPModule) for m in bare.model.modules())
    assert wrapped.fsdp and isinstance(wrapped.model, FSDPModule)
    assert {p.dtype for p in bare.model.parameters() if not p.requires_grad} == {torch.bfloat16}
    (loss, got), (ref_loss, ref) = step(bare), step(wrapped)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    assert got.keys() == ref.keys() and ref and all("lora_" in n for n in ref)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=0, msg=n)
    assert built("auto", replicate=False).fsdp  # sharded adapters: FSDP2 holds trainable weights
    m = bare.model
    assert needs_fsdp(m, bare.replicated, world=2)  # several ranks: always
    assert not needs_fsdp(m, bare.replicated, world=1)
    assert needs_fsdp(m, bare.replicated, world=1, sharded_adapters=True)
    monkeypatch.setattr(type(m), "casts_weights", False)  # layers that use weights as they are (transformers')
    assert needs_fsdp(m, (), world=1)  # adapters not replicated
    frozen = next(p for p in m.parameters() if not p.requires_grad)
    frozen.data = frozen.data.float()
    assert needs_fsdp(m, bare.replicated, world=1)  # a frozen fp32 weight needs the cast


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_one_gpu_full_finetuning_runs_without_fsdp(dist_group, family):
    """fsdp=auto at world size 1: full fine-tuning runs unwrapped, its fp32 master weights cast to
    bf16 where each layer uses them (what FSDP2's mixed precision does at every unshard), and one
    step's loss and every gradient equal those under FSDP2 (fsdp=true) bit for bit, except the
    embedding's, which stays fp32 where FSDP2 sums its rows in bf16 (bf16 tolerance); gradients
    and masters are fp32 either way."""
    from torch.distributed.fsdp import FSDPModule

    from core.plugins import registry
    from core.trainer import build

    args, reg = FAMILIES[family], registry()

    def built(fsdp):
        return build(args, reg.get("attn", "sdpa").make({}), reg.get("ac", "recompute").make({}),
                     reg.get("adapter", "full").make({}), torch.device("cpu"), seed=0, fsdp=fsdp)

    bare, wrapped = built("auto"), built(True)
    assert not bare.fsdp and not any(isinstance(m, FSDPModule) for m in bare.model.modules())
    assert wrapped.fsdp and isinstance(wrapped.model, FSDPModule)
    assert {p.dtype for p in bare.model.parameters()} == {torch.float32}
    (loss, got), (ref_loss, ref) = grads_after_step(bare, args), grads_after_step(wrapped, args)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    assert got.keys() == ref.keys() and len(ref) == sum(1 for _ in bare.model.parameters())
    for n in ref:
        assert got[n].dtype == torch.float32, n
        if n.startswith("embed_tokens"):
            err = (got[n] - ref[n]).norm() / ref[n].norm()
            assert err < 1e-2, (n, err.item())
        else:
            torch.testing.assert_close(got[n], ref[n], rtol=0, atol=0, msg=n)


def test_replicate_refused_where_the_model_would_compute_fp32(dist_group):
    """adapter.replicate=true on a model whose layers do not cast the adapter (transformers'
    modules under peft) is refused with what to type instead; auto keeps them in FSDP2 there."""
    from core.trainer import replicated_params
    from plugins.adapters.lora import LoRA

    class Plain(nn.Module):  # no casts_adapters
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(4, 4)

    m = LoRA(4, replicate=True).apply(Plain())
    with pytest.raises(ValueError, match="adapter.replicate=false"):
        replicated_params(m, LoRA(4, replicate=True))
    assert replicated_params(m, LoRA(4)) == []
    m.casts_adapters = True
    assert len(replicated_params(m, LoRA(4))) == 2  # A and B
    assert replicated_params(m, LoRA(4, experts="peft")) == []  # peft's parameter LoRA: fp32 delta
    with pytest.raises(ValueError, match="adapter.replicate=auto"):
        LoRA(4, replicate="yes")
    from hydra import compose, initialize_config_dir

    from core.resolve import UserError, resolve
    from tests.conftest import ROOT

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("bench", overrides=["model=hf_qwen3_tiny", "adapter=lora", "adapter.replicate=true",
                                          "device=cpu"])
    with pytest.raises(UserError, match="hf models would run it in fp32: use adapter.replicate=auto$"):
        resolve(cfg)  # the row is refused before anything is built


def test_lora_frozen_bases_packed_once(dist_group, monkeypatch):
    """Unsharded LoRA (one GPU): each q/k/v and gate/up group's frozen base weights live in one
    tensor that the layers' weights view, so the step multiplies by it instead of concatenating
    the weights at every forward, recompute and backward (no torch.cat of weights in a step); the
    state dict is unchanged. Sharded bases (FSDP2) and fuse=false are left as they were. The step
    itself equals FSDP2's bit for bit (test_one_gpu_lora_runs_without_fsdp)."""
    import core.models.fused as fused
    from core.models.common import MLP, Attention
    from core.plugins import registry
    from core.trainer import build

    args, reg = QWEN3["tiny"], registry()

    def built(fsdp, fuse="lora"):
        return build(args, reg.get("attn", "sdpa").make({}), reg.get("ac", "recompute").make({}),
                     reg.get("adapter", "lora").make({}), torch.device("cpu"), seed=0, fsdp=fsdp, fuse=fuse)

    b = built("auto")
    groups = [m for m in b.model.modules() if isinstance(m, (Attention, MLP))]
    assert groups and all(hasattr(m, "packed_base") for m in groups)
    for m in groups:
        names = fused.PACKED_GROUPS[type(m).__name__]
        ptrs = {getattr(m, k).base_layer.weight.untyped_storage().data_ptr() for k in names}
        assert ptrs == {m.packed_base.untyped_storage().data_ptr()}
        assert torch.equal(torch.cat([getattr(m, k).base_layer.weight for k in names]), m.packed_base)
    assert not any("packed_base" in k for k in b.model.state_dict())
    assert set(b.model.state_dict()) == set(built("auto", fuse=False).model.state_dict())
    assert not any(hasattr(m, "packed_base") for m in built(True).model.modules())  # FSDP2 shards them
    assert not any(hasattr(m, "packed_base") for m in built("auto", fuse=False).model.modules())

    cats = []
    real = torch.cat
    monkeypatch.setattr(torch, "cat", lambda ts, *a, **k: cats.extend(t.untyped_storage().data_ptr() for t in ts)
                        or real(ts, *a, **k))
    grads_after_step(b, args)
    weights = {m.packed_base.untyped_storage().data_ptr() for m in groups}
    assert cats and not weights & set(cats)  # activations' and factors' cats only, never a base weight's
