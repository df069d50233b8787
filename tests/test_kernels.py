"""The kernels plugin kind: each provider's block operations against float32 PyTorch ops (the
conformance kit), rows through the bench, refusals with one line."""

import json
import os
import subprocess
import sys

import pytest
import torch

from core.plugins import registry
from core.testing import check_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["eager", "inductor"])
def test_torch_providers_pass_the_kit(name):
    r = check_kernels(registry().get("kernels", name).make({}))
    assert set(r["ops"]) == {"rms_norm", "swiglu", "rope", "add_rms_norm"} and len(r["cases"]) == 13


def test_triton_kernels_pass_the_kit_under_the_interpreter():
    """stepbench's Triton kernels run by Triton's interpreter on the CPU (TRITON_INTERPRET=1, set
    before the kernels are defined: hence a process of its own)."""
    pytest.importorskip("triton")
    code = ("from core.plugins import registry; from core.testing import check_kernels; import json; "
            "r = check_kernels(registry().get('kernels', 'triton').make({})); "
            "print(json.dumps({'provider': r['provider'], 'n': len(r['cases']), "
            "'worst': max(max(v.values()) for v in r['cases'].values())}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["n"] == 13 and r["worst"] < 2e-2 and "interpreter" in r["provider"]


def test_the_kit_catches_a_wrong_kernel():
    from core.kernels import EAGER

    class Wrong:
        name = label = "wrong"
        ops = frozenset({"swiglu"})
        provider = "test"

        def prepare(self):
            pass

        def swiglu(self, gate, up):
            return torch.sigmoid(gate) * up  # sigmoid, not silu

        rms_norm, rope = EAGER.rms_norm, EAGER.rope

    with pytest.raises(AssertionError, match="kernels provider 'wrong': swiglu .* differs from float32 PyTorch ops"):
        check_kernels(Wrong())


def test_a_bound_provider_reaches_every_native_module_and_leaves_the_rest_eager():
    """bind_kernels points the norms, MLPs, experts and attention (RoPE) at the provider; operations
    it does not list run as PyTorch ops."""
    from core import kernels
    from core.models.common import CausalLM
    from core.models.flavours import QWEN3_MOE
    from core.trainer import bind_kernels

    calls = []

    class NormOnly:
        name = label = provider = "norm-only"
        ops = frozenset({"rms_norm"})

        def prepare(self):
            pass

        def rms_norm(self, x, w, eps):
            calls.append("rms_norm")
            return kernels.rms_norm(x, w, eps)

    model = CausalLM(QWEN3_MOE["tiny"])
    bind_kernels(model, NormOnly())
    bound = [m for m in model.modules() if getattr(m, "kernels", None) is not None]
    assert {type(m).__name__ for m in bound} >= {"RMSNorm", "Attention", "Experts"}
    assert all(m.kernels.swiglu is kernels.EAGER.swiglu and m.kernels.rope is kernels.EAGER.rope for m in bound)
    from core.data import AttnMeta
    from core.trainer import bind_attention

    bind_attention(model, registry().get("attn", "sdpa").make({}))
    T = 16
    model(torch.randint(0, 100, (T,)), torch.arange(T), AttnMeta.from_doc_lens([T], "cpu"), torch.randint(0, 100, (T,)))
    assert calls.count("rms_norm") == 2 * model.args.n_layers + 2 * model.args.n_layers + 1  # q/k norms too


def test_rows_with_a_provider_and_refusals(tmp_path):
    from tests.test_cli import run as cli

    res = tmp_path / "rows.jsonl"
    p = cli("device=cpu", "steps=2", "seq_len=128", "+kernels=inductor", "compile=false", f"results={res}")
    assert p.returncode == 0, p.stderr[-2000:]
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    assert row["kernels"] == "inductor" and row["variant"] == "kernels=inductor" and "inductor" in row["kernels_provider"]
    for args, needle in (
        (["+kernels=bogus"], "unknown kernels 'bogus': choose one of"),
        (["model=hf_qwen3_tiny", "+kernels=inductor"], "use +kernels=eager"),
    ):
        p = cli("device=cpu", "steps=2", "seq_len=128", *args, f"results={res}")
        assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert len(res.read_text().splitlines()) == 1  # nothing appended for a refused row


def test_eager_rows_keep_their_key():
    """Rows from before the kernels kind (no kernels field) and eager rows share a key and variant."""
    from core.resolve import variant_label

    assert variant_label({"kernels": {"name": "eager"}}) == variant_label({}) == ""
    assert variant_label({"kernels": {"name": "triton"}}) == "kernels=triton"


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["triton", "liger", "inductor"])
def test_providers_on_the_gpu(name):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from core.contracts import RunContext

    e = registry().get("kernels", name)
    why = e.unavailable(RunContext("cuda", torch.cuda.get_device_name(), torch.cuda.get_device_capability(), 1))
    if why:
        pytest.skip(why)
    check_kernels(e.make({}), device="cuda")


@pytest.mark.gpu
def test_triton_kernels_compiled_on_the_gpu():
    """The triton provider's ops inside torch.compile(fullgraph=True), as a compiled block calls
    them (triton_op: inductor launches the kernels from its own code): outputs and gradients against
    float32 PyTorch ops, no graph break."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch._dynamo.reset()
    r = check_kernels(registry().get("kernels", "triton").make({}), device="cuda", compiled=True)
    assert len(r["cases"]) == 10


def test_a_loaded_provider_of_the_three_older_ops_still_adds_then_norms():
    """A LoadedOps subclass whose load() has no add_rms_norm (written before it was in the contract)
    runs the add and then its own norm, not a KeyError at the first block."""
    from core import kernels

    calls = []

    class Old(kernels.LoadedOps):
        def load(self):
            def norm(x, w, eps):
                calls.append("rms_norm")
                return kernels.rms_norm(x, w, eps)

            return {"rms_norm": norm, "swiglu": kernels.swiglu, "rope": kernels.rope}

    x, r, w = torch.randn(5, 8), torch.randn(5, 8), torch.rand(8) + 0.5
    y, h = Old().add_rms_norm(x, r, w, 1e-6)
    want_y, want_h = kernels.add_rms_norm(x, r, w, 1e-6)
    assert calls == ["rms_norm"] and torch.equal(h, want_h) and torch.allclose(y, want_y)
