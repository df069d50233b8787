"""FSDP2 over 2 processes (gloo, CPU) gives the single-process loss and gradients; rank 0 writes the row."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def why(p) -> str:
    """A failed child's own error lines (torchrun's wrapper lines left out), then its last output."""
    own = [ln for ln in p.stderr.splitlines() if ("Error" in ln or "stepbench:" in ln or "error:" in ln)
           and "elastic" not in ln and "ChildFailedError" not in ln]
    return "\n".join(own[-20:]) + "\n---\n" + p.stderr[-1500:]


def torchrun(*args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--standalone", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("family,adapter,modes", [("qwen3_moe", "full", "auto"), ("qwen3", "lora", "auto,true")])
def test_two_ranks_match_one_process(tmp_path, family, adapter, modes):
    """Full fine-tuning (attention, router, experts) sharded over two ranks; LoRA (the fused q/k/v
    and gate/up adapters, the default; dense MLP) with the adapters sharded with the base weights
    (adapter.replicate=auto over two ranks) and whole on both ranks (true: their gradients
    all-reduced once), against one process (where auto replicates them too)."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    p = subprocess.run([sys.executable, "tests/dist_worker.py", family, str(one), adapter, modes], cwd=ROOT,
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    p = torchrun("tests/dist_worker.py", family, str(two), adapter, modes)
    assert p.returncode == 0, p.stderr[-3000:]
    ones, twos = torch.load(one), torch.load(two)
    assert ones.keys() == twos.keys() == set(modes.split(","))
    for mode in ones:
        a, b = ones[mode], twos[mode]
        assert b["world"] == 2
        torch.testing.assert_close(a["loss"], b["loss"])
        assert a["grads"].keys() == b["grads"].keys() and a["grads"]
        n_lora = sum("lora_" in n for n in a["grads"])
        assert a["replicated"] == (n_lora if adapter == "lora" else 0)
        assert b["replicated"] == (n_lora if mode == "true" else 0)
        if adapter == "lora":
            assert all("lora_" in n for n in a["grads"])
            assert all(a["grads"][n].abs().sum() > 0 for n in a["grads"])  # A's too: B is away from zero
        for n in a["grads"]:
            ga, gb = a["grads"][n].float(), b["grads"][n].float()
            err = ((ga - gb).norm() / ga.norm().clamp(min=1e-12)).item()
            assert err < 1e-2, (mode, n, err)


def test_torchrun_bench_writes_one_row(tmp_path):
    """The CLI under torchrun (2 gloo ranks, FSDP2), with a transformers-built model (the hf family),
    which the native families' 2-rank tests above do not cover."""
    res = tmp_path / "rows.jsonl"
    p = torchrun("-m", "core.bench", "model=hf_qwen3_tiny", "device=cpu", "steps=2", "seq_len=128",
                 f"results={res}")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in res.read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["num_gpus"] == 2 and rows[0]["hardware_label"] == "2xCPU" and rows[0]["status"] == "ok"
    assert rows[0]["family"] == "hf"


@pytest.mark.parametrize("family,adapter", [("gemma3", "lora"), ("gpt_oss", "full")])
def test_torchrun_any_hf_family(tmp_path, family, adapter):
    """Any transformers family (sliding windows, another scale, sinks, experts) under torchrun: 2 gloo
    ranks, FSDP2 over its decoder layers, rank 0 writes the row."""
    from tests.test_hf_families import config

    cfg, res = tmp_path / "config.json", tmp_path / "rows.jsonl"
    cfg.write_text(json.dumps(config(family)))
    p = torchrun("-m", "core.bench", "model=hf", f"model.config={cfg}", f"adapter={adapter}", "device=cpu",
                 "steps=2", "seq_len=128", "+attn=sdpa", f"results={res}")
    assert p.returncode == 0, why(p)
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    assert row["num_gpus"] == 2 and row["status"] == "ok" and row["fsdp"] and row["family"] == "hf"
