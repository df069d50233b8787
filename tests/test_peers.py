"""Peers (``+peer=...``): the native families' transformers configs build the same model, the HF
loop's losses are stepbench's, its rows land in stepbench's format, and prime-rl's command and
bench file are read as its bench mode writes them."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from core.contracts import Peer, PeerSpec
from core.data import AttnMeta
from core.losses import rl_loss, sft_loss
from core.plugins import make, registry
from plugins.models import hf
from plugins.models.native import FAMILIES
from plugins.peers import hf_loop
from plugins.peers.prime_rl import PrimeRL

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_native_hf_config_builds_the_same_model(family):
    """Each native family's ``hf_config`` is the model a peer builds: transformers' model from it,
    given the native model's weights (the same parameter names under ``model.``), computes the same
    fp32 log-probabilities."""
    from transformers import AutoModelForCausalLM

    from core.models.common import CausalLM
    from core.trainer import bind_attention

    fam = FAMILIES[family]
    a = fam.flavours["tiny"]
    torch.manual_seed(0)
    native = CausalLM(a).float()
    with torch.no_grad():
        for p in native.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        for name, b in native.named_buffers():
            if "bias" in name:  # GLM's router correction bias
                b.copy_(torch.randn_like(b) * 0.1)
    bind_attention(native, make("attn", {"name": "sdpa"}))
    ref = AutoModelForCausalLM.from_config(hf.hf_config(fam.hf_config(a)), attn_implementation="eager",
                                           dtype=torch.float32)
    state = {k if k.startswith("lm_head.") else f"model.{k}": v for k, v in native.state_dict().items()}
    if a.tied_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = set(ref.state_dict()) - set(state)
    assert not missing, f"transformers' model has weights the native one lacks: {sorted(missing)[:5]}"
    ref.load_state_dict(state)
    T = 40
    ids = torch.randint(0, a.vocab_size, (T,), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(ids, -1)
    lp, _ = native(ids, torch.arange(T), AttnMeta.from_doc_lens([T], "cpu"), targets)
    logits = ref(input_ids=ids[None], position_ids=torch.arange(T)[None]).logits[0]
    want = hf_loop.token_logprobs(logits, targets)
    torch.testing.assert_close(lp, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("T", [7, 64])
def test_hf_loop_losses_are_stepbenchs(T):
    """The loop's RL and SFT losses (it imports nothing from stepbench) equal core.losses', value and
    gradient, with tokens both inside and outside the importance-ratio mask."""
    g = torch.Generator().manual_seed(T)
    lp = (torch.randn(T, generator=g) - 5).requires_grad_()
    inf = lp.detach() + 3 * torch.randn(T, generator=g)  # some ratios outside [1/8, 8]
    adv, mask = torch.randn(T, generator=g), torch.rand(T, generator=g) > 0.2
    for ours, theirs in ((lambda x: hf_loop.rl_loss(x, inf, adv, mask), lambda x: rl_loss(x, inf, adv, mask)[0]),
                         (lambda x: hf_loop.sft_loss(x, mask), lambda x: sft_loss(x, mask)[0])):
        a, = torch.autograd.grad(ours(lp), lp)
        b, = torch.autograd.grad(theirs(lp), lp)
        torch.testing.assert_close(ours(lp), theirs(lp))
        torch.testing.assert_close(a, b)


def test_peers_registered_and_conform():
    """Every registered peer passes the conformance kit; the HF loop runs the tiny row on the CPU
    (prime-rl without a checkout, or on a CPU, says why in one line)."""
    from core.testing import check_peer

    reg = registry()
    assert {"none", "hf_compiled", "hf_eager", "prime_rl", "torchtitan"} <= set(reg.names("peer"))
    for name in reg.names("peer"):
        p = reg.get("peer", name).factory({"name": name}, None)
        assert isinstance(p, Peer) and p.name == name and p.label
        out = check_peer(p, run=name == "hf_eager")
        if name == "hf_eager":
            assert out["tps"] > 0 and out["steps"] == 2
        if name in ("prime_rl", "torchtitan"):
            assert "peer.path=" in out["why_not"]
    assert make("peer", {"name": "none"}).runs_stepbench
    assert not make("peer", {"name": "hf_eager"}).runs_stepbench


def bench(tmp_path, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "core.bench", *args, f"results={tmp_path / 'rows.jsonl'}"],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


@pytest.mark.parametrize("task,adapter", [("rl", "full"), ("sft", "lora")])
def test_hf_peer_row(tmp_path, task, adapter):
    """A row measured by the HF loop: stepbench's row format, the peer's own figures and labels, its
    work folder with the spec it was given."""
    p = bench(tmp_path, "+peer=hf_eager", "model=qwen3_tiny", "seq_len=128", "steps=3", f"task={task}",
              f"adapter={adapter}", "device=cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    row = json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[-1])
    assert row["status"] == "ok" and row["impl"] == "HF eager" and row["own_loop"] is True
    assert row["model"] == "qwen3-tiny (HF eager)" and row["compile"] is False
    assert row["steps_measured"] == 2 and len(row["samples"]["step_s"]) == 2
    assert row["tps"] == pytest.approx(2 * 128 * 2 / sum(row["samples"]["step_s"]))
    assert "transformers" in row["peer"]["version"] and row["peer"]["precision"].startswith("fp32 master")
    assert ("pinned host" in row["peer"]["per_step_work"]) == (task == "rl" and adapter == "full")
    spec = json.loads((Path(row["peer"]["workdir"]) / "spec.json").read_text())
    assert spec["seq_len"] == 128 and spec["adapter"] == adapter
    if adapter == "lora":
        assert spec["lora_rank"] == 16 and "q_proj" in spec["lora_targets"]
    assert "measured by" not in p.stdout or row["peak_mem_gib"] is not None  # CPU rows print RSS, not a peer label


def test_peer_refusal_end_to_end(tmp_path):
    """A refused peer row through ``python -m core.bench``: status 2, one line, nothing written (the
    other refusals are cases of tests/test_hostile.py, checked in process)."""
    p = bench(tmp_path, "+peer=prime_rl", "model=qwen3_tiny", "device=cpu", timeout=120)
    assert p.returncode == 2, p.stderr[-1500:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "add peer.path=" in lines[0], p.stderr[-1500:]
    assert not (tmp_path / "rows.jsonl").exists()


def spec(**kw) -> PeerSpec:
    a = FAMILIES["qwen3"].flavours["tiny"]
    base = dict(model=a.name, hf_name="", hf_config=FAMILIES["qwen3"].hf_config(a), task="rl", adapter="lora",
                lora_rank=16, lora_alpha=32.0, lora_targets=("q_proj",), seq_len=16384, micro_batches=2, steps=6,
                attn="fa3", ac="offload", compile=True, seed=0, device="cuda", handoff=False)
    return PeerSpec(**{**base, **kw})


def fake_checkout(root: Path) -> Path:
    for task in ("rl", "sft"):
        d = root / "src" / "prime_rl" / "trainer" / task
        d.mkdir(parents=True)
        (d / "train.py").write_text("")
    return root


def test_prime_rl_command(tmp_path):
    """The command of prime-rl's nightly benchmark, from the row: RL LoRA with offload and FA3, and
    SFT full fine-tuning; the model folder holds the row's config.json and a tokenizer that loads."""
    from transformers import AutoTokenizer

    peer = PrimeRL({"name": "prime_rl", "path": str(fake_checkout(tmp_path / "prime-rl")), "pythonpath": "/stubs"})
    s = spec()
    assert peer.why_not(s) is None
    cmd = peer.command(s, str(tmp_path / "w"))
    a = cmd.argv
    assert a[a.index("--model.attn") + 1] == "flash_attention_3" and "--model.ac-offloading" in a
    assert a[a.index("--model.seq-len") + 1] == "16384" and a[a.index("--data.fake.batch-size") + 1] == "2"
    assert a[a.index("--model.lora.rank") + 1] == "16" and a[a.index("--max-concurrent-runs") + 1] == "4"
    assert "--model.compile" in a and "--model.debug.random-init" in a and a[a.index("--bench.output-json") + 1]
    assert cmd.env["PYTHONPATH"].endswith("/stubs") and cmd.env["HF_HUB_OFFLINE"] == "1"
    model = Path(a[a.index("--model.name") + 1])
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["hidden_size"] == 64
    assert AutoTokenizer.from_pretrained(str(model)).eos_token == "</s>"
    sft = peer.command(spec(task="sft", adapter="full", ac="recompute", attn="fa2"), str(tmp_path / "w2")).argv
    assert sft[5].endswith("sft/train.py") and "--model.ac" in sft and "--model.lora.rank" not in sft
    assert sft[sft.index("--data.seq-len") + 1] == "16384" and sft[sft.index("--data.type") + 1] == "fake"
    assert "flash_attention_2" in sft
    assert "adapter=full" in peer.why_not(spec(task="sft"))
    assert "CUDA" in peer.why_not(spec(device="cpu"))
    assert "+attn=fa3" in peer.why_not(spec(attn="cudnn"))


def test_prime_rl_result(tmp_path):
    """prime-rl's bench file (as its export writes it, or nested under ``metrics`` as its CI wrapper
    does): its throughput and peak are the row's; a file without them is one line."""
    peer = PrimeRL({"name": "prime_rl", "path": str(tmp_path)})
    (tmp_path / "spec.json").write_text(json.dumps(asdict(spec())))
    stats = lambda m: {"mean": m, "std": 0.1, "min": m - 1, "max": m + 1}  # noqa: E731
    bench_file = {"mfu": stats(20.0), "throughput": stats(5860.0), "step_time": stats(5.5),
                  "peak_memory": {"gib": 23.3, "pct": 29.4}}
    for body in (bench_file, {"config": {}, "metrics": bench_file}):
        (tmp_path / "bench.json").write_text(json.dumps(body))
        r = peer.result(str(tmp_path), [])
        assert (r.tps, r.peak_mem_gib) == (5860.0, 23.3)
        assert "no optimizer step" in r.per_step_work and r.extra["mfu"]["mean"] == 20.0
    (tmp_path / "bench.json").write_text(json.dumps({"mfu": stats(1.0)}))
    with pytest.raises(ValueError, match="throughput.mean"):
        peer.result(str(tmp_path), [])


def test_report_shows_peer_rows_beside_native(tmp_path):
    """Rows measured by peers (no roofline of ours, the peer's own figures) enter the peers view
    beside the native row of their call, with the ratio, and stay out of the headline views."""
    from core.published import parse_published
    from core.report import main
    from tests.test_report import h100, ours, write

    published, _, _ = parse_published()
    p = h100(published, "RL Full", 8192, "Recompute", "FA2")
    native = ours(p, tps=40000.0, family="qwen3", run_id="a", sync="host")
    peer = dict(family="qwen3", own_loop=True, run_id="a", sync="host", roofline_frac=None)
    hf_c = ours(p, tps=20000.0, impl="HF compiled", model="Qwen3-0.6B (HF compiled)", hf_name="Qwen/Qwen3-0.6B",
                peer={"name": "hf_compiled", "label": "HF compiled", "per_step_work": "x"}, **peer)
    prl = ours(p, tps=8000.0, impl="prime-rl", model="Qwen3-0.6B (prime-rl)", hf_name="Qwen/Qwen3-0.6B",
               peer={"name": "prime_rl", "label": "prime-rl", "per_step_work": "y"}, **peer)
    for r in (hf_c, prl):
        del r["roofline_frac"]
    res, out = tmp_path / "rows.jsonl", tmp_path / "B.md"
    write(res, [native, hf_c, prl])
    assert main(["--results", str(res), "--out", str(out), "--baseline", "none",
                 "--predictions", "none"]) == 0
    text = out.read_text()
    view_a = text.split("## View (a)")[1].split("## View (b)")[0]
    assert "40.00k" in view_a and "20.00k" not in view_a and "8.00k" not in view_a
    assert "## Peers" not in text  # no in-harness peer rows: the legacy view is left out
    peers = text.split("## Other trainers, in the same call")[1]
    same = peers.split("### Same configuration")[1].split("###")[0]
    lines = [ln for ln in same.splitlines() if ln.startswith("| Qwen3-0.6B | RL Full | 8192 | Recompute | FA2")]
    assert len(lines) == 2 and all("40.00k" in ln for ln in lines)
    assert any("| HF compiled | yes | 20.00k" in ln and ln.endswith("| 2.00x |") for ln in lines)
    assert any("| prime-rl | yes | 8.00k" in ln and ln.endswith("| 5.00x |") for ln in lines)
    assert "stepbench / HF compiled, same configuration and call, 1 row: geomean 2.00x" in peers
    assert "stepbench / prime-rl, same configuration and call, 1 row: geomean 5.00x" in peers
    best = peers.split("### Each side's fastest within the published row's memory")[1]
    assert "stepbench / prime-rl, fastest within the published memory, 1 row: geomean 5.00x" in best
    assert "- **native**, RL Full: AdamW step on fp32 master weights; weight hand-off: host" in peers and "- **HF compiled**, RL Full: x" in peers and "- **prime-rl**, RL Full: y" in peers


def test_failures_view_sets_our_run_beside_the_published_failure(tmp_path):
    """0.6B SFT Full 65536 failed three times on one H100 in the published table (37.09 GiB of fp32
    logits): the report sets stepbench's run of it beside that, and a peer's failure too."""
    from core.published import parse_published
    from core.report import main
    from tests.test_report import h100, ours, write

    published, _, _ = parse_published()
    p = {**h100(published, "SFT Full", 16384, "Recompute", "FA2"), "seq_len": 65536}
    native = ours(p, tps=30000.0, family="qwen3", ac="Recompute", attn="FA3", peak_mem_gib=20.5)
    oom = ours(p, tps=0.0, family="qwen3", impl="HF compiled", own_loop=True, model="Qwen3-0.6B (HF compiled)",
               hf_name="Qwen/Qwen3-0.6B", status="failed", error="OutOfMemoryError: CUDA out of memory.")
    res, out = tmp_path / "rows.jsonl", tmp_path / "B.md"
    write(res, [native, oom])
    assert main(["--results", str(res), "--out", str(out), "--no-plots", "--baseline", "none",
                 "--predictions", "none"]) == 0
    view = out.read_text().split("## The published failures, run here")[1]
    line = next(ln for ln in view.splitlines() if ln.startswith("| Qwen3-0.6B | SFT Full | 65536 | 1xH100 HBM3"))
    assert "failed (3x): out of memory on 37.09 GiB" in line
    assert "native: 30.00k (20.5 GiB) [Recompute, FA3]" in line
    assert "HF compiled: failed: OutOfMemoryError" in line


def test_a_failed_peer_keeps_its_own_error_line():
    from core.peers import peer_error

    tail = ["Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 37.09 GiB.",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "  error_file: <N/A>"]
    assert peer_error(1, tail) == "OutOfMemoryError: CUDA out of memory. Tried to allocate 37.09 GiB."
    assert peer_error(-1, ["TimeoutError: the row exceeded 5 s"]) == "TimeoutError: the row exceeded 5 s"
    assert "status 3" in peer_error(3, ["nothing useful"])


class _FakePeer:
    """A peer whose child writes a result file; ``tps_factor`` misreports its TPS."""

    name, label, runs_stepbench = "fake", "Fake", False

    def __init__(self, tps_factor=1.0, why=None):
        self.tps_factor, self.why = tps_factor, why

    def why_not(self, spec):
        return self.why

    def command(self, spec, workdir):
        from core.contracts import PeerCommand

        code = f"import json; json.dump({{'step_s': [0.5, 0.5]}}, open({workdir + '/out.json'!r}, 'w'))"
        return PeerCommand(argv=[sys.executable, "-c", code])

    def result(self, workdir, log):
        from core.contracts import PeerResult

        path = Path(workdir) / "out.json"
        if not path.exists():
            raise ValueError("no out.json")
        step_s = json.loads(path.read_text())["step_s"]
        tps = 2 * 128 * len(step_s) / sum(step_s) * self.tps_factor
        return PeerResult(tps=tps, peak_mem_gib=None, step_s=step_s, version="1",
                          per_step_work="AdamW step")


def test_peer_conformance_kit_fails_what_breaks_the_contract():
    from core.testing import check_peer

    assert check_peer(_FakePeer())["tps"] == pytest.approx(512)  # 2 x 128 tokens a step, 0.5 s a step
    with pytest.raises(AssertionError, match="disagrees with its step times"):
        check_peer(_FakePeer(tps_factor=1.5))
    with pytest.raises(AssertionError, match="one line"):
        check_peer(_FakePeer(why="no\nGPU"))
    assert check_peer(_FakePeer(why="needs a GPU"))["why_not"] == "needs a GPU"


def test_a_sweep_over_peers_runs_each_and_resumes(tmp_path):
    """``-m +peer=none,hf_eager``: stepbench's row and the peer's row are different rows (the peer's
    model label carries it), so both run; the same command again skips both."""
    args = ["-m", "+peer=none,hf_eager", "model=qwen3_tiny", "seq_len=128", "steps=2", "device=cpu"]
    p = bench(tmp_path, *args)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert sorted(r["impl"] for r in rows) == ["HF eager", "native"] and all(r["status"] == "ok" for r in rows)
    p = bench(tmp_path, *args)
    assert p.returncode == 0 and p.stderr.count("skipped: already in results") == 2, p.stderr[-2000:]
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2


def test_a_peer_that_fails_is_a_failed_row_of_that_peer(tmp_path):
    """Past peer.timeout_s the child is killed: one line, status 1, no traceback, and the failed row
    is the peer's (its label, impl and model label), so the report's peers view shows it."""
    p = bench(tmp_path, "+peer=hf_eager", "peer.timeout_s=1", "model=qwen3_tiny", "seq_len=128", "steps=50",
              "device=cpu")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    row = json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[-1])
    assert row["status"] == "failed" and "raise peer.timeout_s" in row["error"]
    assert "raise peer.timeout_s" in p.stderr.strip().splitlines()[-1]
    assert (row["impl"], row["model"], row["peer"]["label"]) == ("HF eager", "qwen3-tiny (HF eager)", "HF eager")


def test_hf_compiled_compiles_inside_the_checkpoint(tmp_path):
    """``hf_compiled`` with recompute: each decoder layer's forward is one compiled graph with no
    graph break (compiling the layer's call instead traced transformers' checkpointing wrapper and
    built nothing), and the row says what dynamo built."""
    p = bench(tmp_path, "+peer=hf_compiled", "model=qwen3_tiny", "seq_len=128", "steps=3", "device=cpu",
              "+ac=recompute")
    assert p.returncode == 0, p.stderr[-2000:]
    row = json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[-1])
    dyn = row["peer"]["reported"]["dynamo"]
    assert dyn["graphs"] >= 1 and dyn["graph_breaks"] == 0 and row["compile"] is True, dyn
    assert dyn["break_reasons"] == [] and row["peer"]["reported"]["loss_head"].endswith("(compiled)")
    assert dyn["recompile_limit_hits"] == 0 and row["peer"]["reported"]["compiled_layers"] is True


def test_hf_loop_counts_dynamo_recompile_limit_hits():
    """A compiled function past dynamo's recompile limit runs eager: the HF loop's watch counts the
    warning, so the row says its compiled loop was not wholly compiled (it happened to transformers'
    flash attention, which reads each layer's index as a static int)."""
    import logging

    import torch

    from plugins.peers.hf_loop import RecompileWatch

    class M(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x):
            return x * self.k

    watch = RecompileWatch()
    logging.getLogger("torch._dynamo").addHandler(watch)
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(recompile_limit=1, allow_unspec_int_on_nn_module=False):
            fwd = torch.compile(M.forward, backend="eager")
            for k in range(3):
                m = M(k)
                fwd(m, torch.ones(2))
    finally:
        logging.getLogger("torch._dynamo").removeHandler(watch)
        torch._dynamo.reset()
    assert watch.hits, "the recompile-limit warning was not seen"
