"""The third-party example package (examples/stepbench-flex), installed as CI installs it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import testing as kit
from core.contracts import RunContext
from core.plugins import make, registry

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("stepbench_flex") is None,
                                reason="pip install ./examples/stepbench-flex first (CI does)")


def bench(*args, **env):
    return subprocess.run([sys.executable, "-m", "core.bench", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env), timeout=600)


def conf(name: str) -> Path:
    import stepbench_flex

    return Path(stepbench_flex.__file__).parent / "conf" / "attn" / f"{name}.yaml"


def test_masked_sdpa_conforms():
    out = kit.check_attention(make("attn", {"name": "masked_sdpa"}))
    assert out["provider"].endswith("dense document mask") and not out["declined"]


@pytest.mark.parametrize("name", ["doc_flex", "masked_sdpa"])
def test_options_roundtrip(name):
    assert kit.check_options_roundtrip("attn", conf(name))["name"] == name


def test_tiny_row_through_the_plugin(tmp_path):
    res = tmp_path / "rows.jsonl"
    p = bench("+attn=masked_sdpa", "model=qwen3_tiny", "device=cpu", "steps=2", "seq_len=256", "packing=random",
              f"results={res}")
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    assert row["status"] == "ok" and "dense document mask" in row["attn_provider"] and row["attn"] == "masked SDPA"


def test_blocking_the_plugin_by_name():
    p = bench("+attn=masked_sdpa", "device=cpu", STEPBENCH_BLOCK_PLUGINS="flex")
    assert p.returncode == 2
    assert "unknown attn 'masked_sdpa'" in p.stderr


@pytest.mark.gpu
def test_flex_conforms_gpu():
    ctx = RunContext.detect()
    why = registry().get("attn", "doc_flex").unavailable(ctx)
    if why:
        pytest.skip(why)
    kit.check_attention(make("attn", {"name": "doc_flex"}, ctx), device="cuda")
