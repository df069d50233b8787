"""The ``hf`` family: transformers models run by stepbench agree with the native families."""

import pytest
import torch

from core.data import AttnMeta
from core.losses import rl_loss
from core.models.common import CausalLM
from core.models.flavours import QWEN3, QWEN3_MOE
from core.plugins import registry
from plugins.models import hf

TINY_DENSE = {"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 512,
              "rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "attention_bias": False}
TINY_MOE = {**TINY_DENSE, "model_type": "qwen3_moe", "moe_intermediate_size": 32, "num_experts": 8,
            "num_experts_per_tok": 2, "norm_topk_prob": True, "tie_word_embeddings": False}
PAIRS = {"qwen3": (QWEN3["tiny"], TINY_DENSE), "qwen3_moe": (QWEN3_MOE["tiny"], TINY_MOE)}


def hf_args(d, plain=False):
    return hf.from_config({"model": {"config": d, "flavour": "tiny", "plain": plain},
                           "attn": {"name": "sdpa"}, "ac": {"name": "none"}})


def pair(family):
    """The native model and the hf one with identical fp32 weights, sdpa bound to both."""
    native_args, d = PAIRS[family]
    torch.manual_seed(0)
    native = CausalLM(native_args)
    with torch.no_grad():
        for n, p in native.named_parameters():
            p.copy_(torch.ones_like(p) if n.endswith("norm.weight") else torch.randn_like(p) * 0.05)
    model = hf.build(hf_args(d))
    assert set(native.state_dict()) == set(model.state_dict())  # same names: adapters, init, sync work alike
    model.load_state_dict(native.state_dict())
    sdpa = registry().get("attn", "sdpa").make({})
    for m in (native, model):
        from core.trainer import bind_attention

        bind_attention(m, sdpa)
    return native, model


def run(model, doc_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    T, V = sum(doc_lens), model.args.vocab_size
    ids = torch.randint(0, V, (T,), generator=g)
    targets = torch.randint(0, V, (T,), generator=g)
    pos = torch.cat([torch.arange(n) for n in doc_lens])
    meta = AttnMeta.from_doc_lens(doc_lens, "cpu")
    lp, ent = model(ids, pos, meta, targets)
    old = lp.detach() + 0.1 * torch.randn(T, generator=g)
    adv = torch.randn(T, generator=g)
    loss, _ = rl_loss(lp, old, adv, torch.ones(T, dtype=torch.bool))
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), ent.detach(), loss.detach(), grads


@pytest.mark.parametrize("family", PAIRS)
@pytest.mark.parametrize("doc_lens", [[96], [40, 24, 64]], ids=["one-doc", "packed"])
def test_hf_equals_native_given_identical_weights(family, doc_lens):
    """log-probs, entropy, loss and every gradient within fp32 tolerance, one document and packed ones."""
    native, model = pair(family)
    a, b = run(native, doc_lens), run(model, doc_lens)
    for x, y in zip(a[:3], b[:3]):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
    assert a[3].keys() == b[3].keys()
    for n in a[3]:
        torch.testing.assert_close(b[3][n], a[3][n], rtol=1e-4, atol=1e-6, msg=n)


def test_hf_packed_equals_hf_per_document():
    _, model = pair("qwen3")
    lens = [40, 24, 64]
    packed = run(model, lens)[0]
    g = torch.Generator().manual_seed(0)
    T, V = sum(lens), model.args.vocab_size
    ids, targets = torch.randint(0, V, (T,), generator=g), torch.randint(0, V, (T,), generator=g)
    start, per_doc = 0, []
    for n in lens:  # each document alone through transformers' layers
        meta = AttnMeta.from_doc_lens([n], "cpu")
        lp, _ = model(ids[start:start + n], torch.arange(n), meta, targets[start:start + n])
        per_doc.append(lp.detach())
        start += n
    torch.testing.assert_close(packed, torch.cat(per_doc), rtol=1e-4, atol=1e-5)


def test_plain_hf_equals_the_hf_family_on_one_document():
    """The plain HF loop (transformers' own forward, sdpa, full logits) computes the same
    log-probs as the hf family with stepbench's head."""
    _, model = pair("qwen3")
    plain = hf.build(hf_args(TINY_DENSE, plain=True))
    plain.lm.model.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("lm_head")},
                                   strict=False)
    plain.init_buffers()
    a, b = run(model, [96]), run(plain, [96])
    for x, y in zip(a[:3], b[:3]):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)


def test_plain_hf_held_to_one_kernel_in_forward_and_recompute(monkeypatch):
    """model.plain=true with +attn=fa2 holds transformers' sdpa calls to one kernel, in the forward
    and in the checkpointed layers' recompute during backward (torch's checkpoint context_fn). On
    the CPU torch's flash kernel exists too: held to FLASH_ATTENTION every call (forward and
    recompute, 2 per layer) runs it; held to MATH (what the same hold does with another kernel) none
    does, so the recompute obeys the hold rather than torch's default pick. Values equal sdpa's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from core.trainer import bind_attention

    assert hf.from_config({"model": {"config": TINY_DENSE, "plain": True}, "attn": {"name": "fa2"},
                           "ac": {"name": "recompute"}}).name.endswith("(plain HF)")
    _, native = pair("qwen3")

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.flash = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.flash += "flash_attention" in str(func) and "backward" not in str(func)  # forward calls
            return func(*args, **(kwargs or {}))

    def plain_run(attn):
        torch.manual_seed(0)
        plain = hf.build(hf_args(TINY_DENSE, plain=True))
        plain.lm.model.load_state_dict({k: v for k, v in native.state_dict().items() if not k.startswith("lm_head")},
                                       strict=False)
        plain.init_buffers()
        bind_attention(plain, registry().get("attn", attn).make({}) if attn != "fa2" else type("B", (), {"name": "fa2"})())
        plain.block_runner = None  # as +ac=recompute leaves it: transformers' own checkpointing
        with Count() as c:
            out = run(plain, [96])
        return out, c.flash, plain.attention_provider()

    layers = TINY_DENSE["num_hidden_layers"]
    ref, _, provider = plain_run("sdpa")
    assert "torch's pick" in provider
    got, flash, provider = plain_run("fa2")
    assert flash == 2 * layers and "FLASH_ATTENTION backend only" in provider
    for x, y in zip(ref[:3], got[:3]):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
    monkeypatch.setitem(hf.PLAIN_KERNELS, "fa2", "MATH")
    _, flash, provider = plain_run("fa2")
    assert flash == 0 and "MATH backend only" in provider


@pytest.mark.parametrize("adapter", ["full", "lora"])
@pytest.mark.parametrize("ac,ac_cfg", [("recompute", {}), ("offload", {}), ("offload", {"mode": "attention"})],
                         ids=["recompute", "offload", "offload-attention"])
def test_hf_under_each_strategy_equals_none(dist_group, adapter, ac, ac_cfg):
    from tests.test_models_and_ac import grads_after_step

    args = hf_args(TINY_DENSE)
    reg = registry()

    def make(name, cfg):
        from core.trainer import build

        return build(args, reg.get("attn", "sdpa").make({}), reg.get("ac", name).make(cfg),
                     reg.get("adapter", adapter).make({}), torch.device("cpu"), model_builder=hf.build)

    none = make("none", {})
    assert none.replicated == ()  # adapter.replicate=auto: peft's layers here, the adapters stay in FSDP2
    ref_loss, ref = grads_after_step(none, args)
    loss, got = grads_after_step(make(ac, ac_cfg), args)
    assert torch.equal(loss, ref_loss)
    assert ref.keys() == got.keys() and ref
    for n in ref:
        assert torch.equal(got[n], ref[n]), n


@pytest.mark.parametrize("node,needle", [
    ({"config": None}, "needs a config"),
    ({"config": "/no/such/config.json"}, "no such file"),
    ({"config": {"model_type": "no_such_arch"}}, "cannot build model_type 'no_such_arch'"),
    ({"config": {"model_type": "llama", "hidden_size": 64}}, "has no num_hidden_layers"),
    ({"config": TINY_MOE}, "adapter.experts=peft"),
])
def test_bad_configs_say_what_to_type(node, needle):
    with pytest.raises(ValueError, match=None) as e:
        hf.from_config({"model": node, "attn": {"name": "fa3"}, "ac": {"name": "recompute"},
                        "adapter": {"name": "lora", "experts": "grouped"}})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_tiny_hf_row_runs_through_the_bench(tmp_path):
    import json

    from tests.test_cli import run as cli

    res = tmp_path / "rows.jsonl"
    p = cli("model=hf_qwen3_tiny", "device=cpu", "steps=2", "seq_len=128", "+ac=offload", f"results={res}")
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    assert row["status"] == "ok" and row["family"] == "hf" and row["model"] == "qwen3-tiny (hf)"


def test_report_peers_view_and_hf_rows_stay_out_of_the_headline_views(tmp_path):
    """Native, hf and plain HF rows of one published row: the peers view shows the three side by
    side with the native / plain HF ratio; hf rows get their own sections and enter neither view."""
    from core.published import parse_published
    from core.report import main
    from tests.test_report import h100, ours, write

    published, _, _ = parse_published()
    p = h100(published)  # Qwen3-0.6B RL LoRA 65536 Offload FA3 on 1xH100
    native = ours(p, tps=20000.0, family="qwen3")
    hf_row = ours(p, tps=18000.0, family="hf", model="Qwen3-0.6B (hf)", hf_name="Qwen/Qwen3-0.6B")
    plain = ours(p, tps=8000.0, family="hf", model="Qwen3-0.6B (plain HF)", hf_name="Qwen/Qwen3-0.6B",
                 ac="Recompute", attn="SDPA", time="2026-11-25T00:00:01+00:00")
    same = ours(p, tps=10000.0, family="hf", model="Qwen3-0.6B (plain HF)", hf_name="Qwen/Qwen3-0.6B",
                ac="Recompute", attn="FA3", time="2026-11-25T00:00:02+00:00")  # held to the row's kernel
    res, out = tmp_path / "rows.jsonl", tmp_path / "B.md"
    write(res, [native, hf_row, plain, same])
    assert main(["--results", str(res), "--out", str(out), "--no-plots", "--baseline", "none",
                 "--predictions", "none"]) == 0
    text = out.read_text()
    assert "## Qwen3-0.6B (hf)" in text and "## Qwen3-0.6B (plain HF)" in text
    view_a = text.split("## View (a)")[1].split("## View (b)")[0]
    assert "20.00k" in view_a and "18.00k" not in view_a and "8.00k" not in view_a
    peers = text.split("## Peers")[1]
    line = next(ln for ln in peers.splitlines() if ln.startswith("| Qwen3-0.6B | RL LoRA(r=16) | 65536 | Offload | FA3"))
    assert "20.00k" in line and "18.00k" in line and "8.00k" in line and "[Recompute, SDPA]" in line
    plain_cell, ratio, same_cell, same_ratio = [c.strip() for c in line.strip("| ").split("|")][-4:]
    assert plain_cell.startswith("8.00k") and plain_cell.endswith("[Recompute, SDPA]") and ratio == "2.50x"
    assert same_cell.startswith("10.00k") and same_cell.endswith("[Recompute, FA3]") and same_ratio == "2.00x"
    assert "native / plain HF, 1 row: geomean 2.50x" in peers
    assert "native / plain HF with the same attention kernel, 1 row: geomean 2.00x" in peers


def test_peers_ratio_counts_only_rows_of_one_call(tmp_path):
    """A native / plain HF ratio is counted only for rows of one call (same run id; for rows without
    one, the same commit and GPU within 30 minutes); otherwise shown in parentheses, not summarised."""
    from core.published import parse_published
    from core.report import main
    from core.views import same_call
    from tests.test_report import h100, ours, write

    published, _, _ = parse_published()
    p = h100(published)
    native = ours(p, tps=20000.0, family="qwen3", run_id="a")
    hf_row = ours(p, tps=18000.0, family="hf", model="Qwen3-0.6B (hf)", hf_name="Qwen/Qwen3-0.6B", run_id="c")
    plain = ours(p, tps=8000.0, family="hf", model="Qwen3-0.6B (plain HF)", hf_name="Qwen/Qwen3-0.6B",
                 ac="Recompute", attn="SDPA", run_id="b")
    assert not same_call(native, plain) and same_call(native, {**plain, "run_id": "a"})
    old = {k: v for k, v in native.items() if k != "run_id"}
    assert same_call(old, {**old, "time": "2026-11-25T00:29:00+00:00"})
    assert not same_call(old, {**old, "time": "2026-11-25T00:31:00+00:00"})
    assert not same_call(old, {**old, "env": {**old["env"], "git_commit": "f" * 40}})
    res, out = tmp_path / "rows.jsonl", tmp_path / "B.md"
    write(res, [native, hf_row, plain])
    assert main(["--results", str(res), "--out", str(out), "--no-plots", "--baseline", "none",
                 "--predictions", "none"]) == 0
    peers = out.read_text().split("## Peers")[1]
    assert "(2.50x, not one call)" in peers and "native / plain HF," not in peers
    line = next(ln for ln in peers.splitlines() if ln.startswith("| Qwen3-0.6B | RL LoRA(r=16) | 65536 | Offload | FA3"))
    assert "GiB) (other call) |" in line


def test_peers_view_shows_a_plain_hf_row_that_failed(tmp_path):
    """The plain HF loop out of memory (its full fp32 logits) is a result: the peers cell says so."""
    from core.published import parse_published
    from core.report import main
    from tests.test_report import h100, ours, write

    published, _, _ = parse_published()
    p = h100(published)
    native = ours(p, tps=20000.0, family="qwen3", run_id="a")
    plain = ours(p, tps=0.0, family="hf", model="Qwen3-0.6B (plain HF)", hf_name="Qwen/Qwen3-0.6B",
                 ac="Recompute", attn="sdpa", run_id="a", status="failed",
                 error="OutOfMemoryError: CUDA out of memory. Tried to allocate 37.09 GiB.")
    res, out = tmp_path / "rows.jsonl", tmp_path / "B.md"
    write(res, [native, plain])
    assert main(["--results", str(res), "--out", str(out), "--no-plots", "--baseline", "none",
                 "--predictions", "none"]) == 0
    peers = out.read_text().split("## Peers")[1]
    line = next(ln for ln in peers.splitlines() if ln.startswith("| Qwen3-0.6B | RL LoRA(r=16) | 65536 | Offload | FA3"))
    assert "20.00k" in line and "failed: OutOfMemoryError [Recompute, sdpa]" in line
    assert [c.strip() for c in line.strip("| ").split("|")][-3] == "-"  # no ratio against a failed row


def test_peers_take_the_plain_hf_run_of_the_native_rows_call(tmp_path):
    """Two plain HF runs of one key: the headline keeps their median, but the peers view pairs the
    native row with the run of its own call, so the ratio counts."""
    from core.published import parse_published
    from core.report import main
    from tests.test_report import h100, ours, write

    published, _, _ = parse_published()
    p = h100(published)
    native = ours(p, tps=20000.0, family="qwen3", run_id="a")
    plain = dict(family="hf", model="Qwen3-0.6B (plain HF)", hf_name="Qwen/Qwen3-0.6B", ac="Recompute", attn="SDPA")
    here = ours(p, tps=10000.0, run_id="a", **plain)
    later = ours(p, tps=8000.0, run_id="b", time="2026-11-25T01:00:00+00:00", **plain)
    res, out = tmp_path / "rows.jsonl", tmp_path / "B.md"
    write(res, [native, here, later])
    assert main(["--results", str(res), "--out", str(out), "--no-plots", "--baseline", "none",
                 "--predictions", "none"]) == 0
    peers = out.read_text().split("## Peers")[1]
    line = next(ln for ln in peers.splitlines() if ln.startswith("| Qwen3-0.6B | RL LoRA(r=16) | 65536 | Offload | FA3"))
    assert "10.00k" in line and [c.strip() for c in line.strip("| ").split("|")][-3] == "2.00x"
    assert "native / plain HF, 1 row" in peers


def peer_cells(text: str, line: str) -> dict:
    """A peers-view row's cells by column name (the view's columns depend on the peers present)."""
    head = next(ln for ln in text.split("## Peers")[1].splitlines() if ln.startswith("| Model |"))
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
    return dict(zip(split(head), split(line)))


def test_peers_take_a_native_run_that_has_a_plain_hf_run_in_its_call(tmp_path):
    """The key's median native run has no plain HF run of its own call (an A/B of other rows picked
    it) but another native run has: the peers view pairs that one, so the ratio is of one call."""
    from core.published import parse_published
    from core.report import main
    from tests.test_report import h100, ours, write

    published, _, _ = parse_published()
    p = h100(published)
    natives = [ours(p, tps=30000.0, family="qwen3", run_id="x"),
               ours(p, tps=20000.0, family="qwen3", run_id="a", time="2026-11-25T02:00:00+00:00"),
               ours(p, tps=25000.0, family="qwen3", run_id="y", time="2026-11-25T04:00:00+00:00")]
    plain = ours(p, tps=10000.0, run_id="a", time="2026-11-25T02:00:01+00:00", family="hf",
                 model="Qwen3-0.6B (plain HF)", hf_name="Qwen/Qwen3-0.6B", ac="Recompute", attn="SDPA")
    res, out = tmp_path / "rows.jsonl", tmp_path / "B.md"
    write(res, [*natives, plain])
    assert main(["--results", str(res), "--out", str(out), "--no-plots", "--baseline", "none",
                 "--predictions", "none"]) == 0
    text = out.read_text()
    assert "25.00k" in text.split("## Peers")[0]  # the headline keeps the median run
    line = next(ln for ln in text.split("## Peers")[1].splitlines()
                if ln.startswith("| Qwen3-0.6B | RL LoRA(r=16) | 65536 | Offload | FA3"))
    cells = peer_cells(text, line)
    assert cells["native"].startswith("20.00k") and cells["native / plain HF"] == "2.00x", cells


def test_peers_and_view_a_take_the_default_configuration_not_a_variant(tmp_path):
    """An A/B call measures a variant (``fsdp=true``) beside the default row and the plain HF row:
    the peers view pairs the default row, never the variant, and view (a) shows the default row
    whatever the order of the rows."""
    from core.published import parse_published
    from core.report import main
    from tests.test_report import h100, ours, write

    published, _, _ = parse_published()
    p = h100(published)
    variant = ours(p, tps=16000.0, family="qwen3", run_id="a", variant="fsdp=true")
    native = ours(p, tps=20000.0, family="qwen3", run_id="a", time="2026-11-25T00:00:01+00:00")
    plain = ours(p, tps=10000.0, run_id="a", time="2026-11-25T00:00:02+00:00", family="hf",
                 model="Qwen3-0.6B (plain HF)", hf_name="Qwen/Qwen3-0.6B", ac="Recompute", attn="SDPA")
    res, out = tmp_path / "rows.jsonl", tmp_path / "B.md"
    write(res, [variant, native, plain])
    assert main(["--results", str(res), "--out", str(out), "--no-plots", "--baseline", "none",
                 "--predictions", "none"]) == 0
    text = out.read_text()
    view_a = text.split("## View (a)")[1].split("## View (b)")[0]
    assert "20.00k" in view_a and "16.00k" not in view_a
    line = next(ln for ln in text.split("## Peers")[1].splitlines()
                if ln.startswith("| Qwen3-0.6B | RL LoRA(r=16) | 65536 | Offload | FA3"))
    cells = peer_cells(text, line)
    assert cells["native"].startswith("20.00k") and cells["native / plain HF"] == "2.00x" and "16.00k" not in line


def test_plain_hf_fa3_switches_transformers_attention(monkeypatch):
    """model.plain=true +attn=fa3 runs transformers' flash_attention_3 (bound when the row's
    attention is: the implementation switches, and back for sdpa); the row says so. Where FA3 is
    missing (this CPU) the switch is transformers' own refusal; the fa3 plugin refuses such rows
    before they are built."""
    from core.trainer import bind_attention

    assert hf.from_config({"model": {"config": TINY_DENSE, "plain": True}, "attn": {"name": "fa3"},
                           "ac": {"name": "recompute"}}).name.endswith("(plain HF)")
    with pytest.raises(ValueError, match="use \\+attn=sdpa"):
        hf.from_config({"model": {"config": TINY_DENSE, "plain": True}, "attn": {"name": "flex"}, "ac": {"name": "none"}})
    plain = hf.build(hf_args(TINY_DENSE, plain=True))
    asked = []
    monkeypatch.setattr(plain.lm, "set_attn_implementation",
                        lambda impl: (asked.append(impl), setattr(plain.lm.config, "_attn_implementation", impl)))
    named = lambda n: type("Backend", (), {"name": n})()  # noqa: E731
    bind_attention(plain, named("fa3"))
    assert asked == ["flash_attention_3"] and "flash_attention_3" in plain.attention_provider()
    bind_attention(plain, named("fa2"))  # back to sdpa, held to FA2
    assert asked == ["flash_attention_3", "sdpa"] and "FLASH_ATTENTION backend only" in plain.attention_provider()
    bind_attention(plain, named("sdpa"))
    assert asked == ["flash_attention_3", "sdpa"]  # already sdpa: nothing to switch


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ["fa2", "fa3"])
def test_plain_hf_on_one_kernel_equals_torchs_pick_on_the_gpu(attn):
    """On the GPU (bf16), plain HF held to FA2 or running transformers' flash_attention_3 gives
    torch's pick's log-probs, loss and gradients within bf16 tolerance, through its checkpointed
    recompute."""
    from core.trainer import bind_attention

    _, native = pair("qwen3")

    def go(name):
        plain = hf.build(hf_args(TINY_DENSE, plain=True))
        plain.lm.model.load_state_dict({k: v for k, v in native.state_dict().items()
                                        if not k.startswith("lm_head")}, strict=False)
        plain.init_buffers()
        plain = plain.to("cuda", torch.bfloat16)
        try:
            bind_attention(plain, type("Backend", (), {"name": name})())
        except (ImportError, ValueError) as e:  # this machine has no FA3 for transformers
            pytest.skip(f"{name}: {e}")
        plain.block_runner = None  # transformers' checkpointing, as +ac=recompute
        g = torch.Generator().manual_seed(0)
        T, V = 256, plain.args.vocab_size
        ids, targets = torch.randint(0, V, (T,), generator=g).cuda(), torch.randint(0, V, (T,), generator=g).cuda()
        lp, _ = plain(ids, torch.arange(T, device="cuda"), AttnMeta.from_doc_lens([T], "cuda"), targets)
        adv = torch.randn(T, generator=g).cuda()
        loss, _ = rl_loss(lp, lp.detach() + 0.1, adv, torch.ones(T, dtype=torch.bool, device="cuda"))
        loss.backward()
        return lp.detach().float(), {n: p.grad.float() for n, p in plain.named_parameters() if p.grad is not None}

    ref_lp, ref = go("sdpa")
    lp, got = go(attn)
    torch.testing.assert_close(lp, ref_lp, rtol=2e-2, atol=5e-2)
    assert got.keys() == ref.keys() and ref
    for n in ref:
        err = (got[n] - ref[n]).norm() / ref[n].norm().clamp(min=1e-12)
        assert err < 5e-2, (n, err.item())
