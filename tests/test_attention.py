"""Every attention backend against a float32 reference: outputs and q/k/v gradients."""

import pytest
import torch

from core.data import AttnMeta
from core.plugins import RunContext, registry

DOCS = [[1, 37, 128, 300, 513], [1000], [257, 64, 1, 190]]
GQA = [(8, 8), (8, 4), (8, 2)]  # ratios 1, 2, 4


from core.testing import reference_attention as reference  # noqa: E402 (float32, per document, GQA)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


def check_backend(name, device, docs, heads, kv, dim=128, tol=2e-2, make=None):
    e = registry().get("attn", name)
    why = e.unavailable(RunContext.detect() if device == "cuda" else RunContext("cpu"))
    if why:
        pytest.skip(why)
    be = make({}) if make else e.make({})
    be.prepare()
    T = sum(docs)
    gen = torch.Generator(device=device).manual_seed(hash((name, T, heads, kv)) % 2**31)
    mk = lambda h: torch.randn(T, h, dim, device=device, generator=gen)  # noqa: E731
    q32, k32, v32 = mk(heads), mk(kv), mk(kv)
    g = torch.randn(T, heads, dim, device=device, generator=gen)
    q, k, v = (t.bfloat16().requires_grad_() for t in (q32, k32, v32))
    meta = AttnMeta.from_doc_lens(docs, device)
    out = torch.full((T, heads, dim), float("nan"), device=device, dtype=torch.bfloat16)
    out = be(q, k, v, meta)
    assert out.shape == (T, heads, dim) and torch.isfinite(out).all()
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), g.bfloat16())
    qr, kr, vr = (t.detach().clone().double().requires_grad_() for t in (q, k, v))
    ref = reference(qr, kr, vr, docs)
    rq, rk, rv = torch.autograd.grad(ref, (qr, kr, vr), g.double())
    for got, want, what in ((out, ref, "out"), (gq, rq, "dq"), (gk, rk, "dk"), (gv, rv, "dv")):
        err = rel(got, want)
        assert err < tol, f"{name} {what}: relative error {err:.2e} (docs {docs}, heads {heads}/{kv})"


@pytest.mark.parametrize("docs", DOCS[:2])
@pytest.mark.parametrize("heads,kv", GQA)
def test_sdpa_cpu(docs, heads, kv):
    check_backend("sdpa", "cpu", docs, heads, kv, dim=32)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sdpa", "fa2", "fa3", "cudnn", "auto"])
@pytest.mark.parametrize("docs", DOCS)
@pytest.mark.parametrize("heads,kv", GQA)
def test_backend_gpu(name, docs, heads, kv):
    check_backend(name, "cuda", docs, heads, kv)


@pytest.mark.gpu
@pytest.mark.parametrize("via_aten", [True, False])
@pytest.mark.parametrize("heads,kv", GQA[1:])
def test_fa2_torch_paths_gpu(via_aten, heads, kv):
    """torch's vendored FA2 through its aten op (native GQA) and through varlen_attn (K/V repeated
    where it lacks enable_gqa) both match the reference."""
    from plugins.attention.fa2 import FA2Torch, has_aten_flash

    if via_aten and not has_aten_flash():
        pytest.skip("this torch has no aten._flash_attention_forward with a backward")
    for docs in DOCS:
        check_backend("fa2", "cuda", docs, heads, kv, make=lambda options: FA2Torch(via_aten=via_aten))


def test_backends_say_which_head_dims_they_cannot_run(monkeypatch):
    """A model whose head_dim the backend has no kernels for is refused before the row, with why."""
    import sys
    import types

    from core.models.flavours import QWEN3
    from plugins.attention import fa2, fa3

    config = types.ModuleType("flash_attn_config")  # a trimmed FA3 build: head_dim 128 only
    config.CONFIG = {"build_flags": {f"FLASHATTENTION_DISABLE_HDIM{d}": d != 128 for d in fa3.HEAD_DIMS}}
    monkeypatch.setitem(sys.modules, "flash_attn_config", config)
    assert fa3.supports(QWEN3["0.6B"]) is None
    why = fa3.supports(QWEN3["0.6B"].with_(head_dim=64))
    assert "head_dim 128" in why and "has 64" in why and "+attn=fa2" in why
    assert fa2.supports(QWEN3["tiny"]) is None and "+attn=sdpa" in fa2.supports(QWEN3["tiny"].with_(head_dim=320))


def test_auto_sends_head_dims_its_fa3_lacks_to_the_other_backend():
    import torch

    from core.data import AttnMeta
    from plugins.attention.auto import Auto

    calls = []

    class Fake:
        def __init__(self, name):
            self.provider = name

        def __call__(self, q, k, v, meta):
            calls.append(self.provider)
            return q

    auto = Auto.__new__(Auto)  # as built on an SM90 GPU with a head_dim-128-only FA3
    auto.single = auto.packed = Fake("fa3")
    auto.other, auto.fa3_dims, auto.used = Fake("fa2"), (128,), {}
    meta = AttnMeta.from_doc_lens([4, 4], "cpu")
    for d in (128, 64):
        q = torch.zeros(8, 2, d)
        auto(q, q, q, meta)
    assert calls == ["fa3", "fa2"] and auto.provider == "auto: fa2 + fa3"


def test_fa2_via_option_says_what_to_type():
    from plugins.attention import fa2

    with pytest.raises(ValueError, match="attn.via=bogus is not one of auto, aten, varlen: try attn.via=auto"):
        fa2.make({"via": "bogus"}, None)
