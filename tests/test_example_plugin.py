"""The third-party example package (examples/stepbench-flex), installed as CI installs it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("stepbench_flex") is None,
                                reason="pip install ./examples/stepbench-flex first (CI does)")


def bench(*args, **env):
    return subprocess.run([sys.executable, "-m", "core.bench", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env), timeout=600)


def test_masked_sdpa_matches_reference():
    from tests.test_attention import check_backend

    check_backend("masked_sdpa", "cpu", [1, 37, 128, 70], 8, 2, dim=32)


def test_tiny_row_through_the_plugin(tmp_path):
    res = tmp_path / "rows.jsonl"
    p = bench("+attn=masked_sdpa", "model=qwen3_tiny", "device=cpu", "steps=2", "seq_len=256", "packing=random",
              f"results={res}")
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    assert row["status"] == "ok" and "dense document mask" in row["attn_provider"]


def test_blocking_the_plugin_by_name():
    p = bench("+attn=masked_sdpa", "device=cpu", STEPBENCH_BLOCK_PLUGINS="flex")
    assert p.returncode == 2
    assert "unknown attn 'masked_sdpa'" in p.stderr


@pytest.mark.gpu
def test_flex_matches_reference_gpu():
    from tests.test_attention import check_backend

    check_backend("flex", "cuda", [1, 37, 128, 300, 513], 8, 2)
