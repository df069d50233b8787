"""The second third-party example package (examples/stepbench-extras), one plugin of every kind:
each passes the conformance kit (core.testing), and a row with all four runs through the CLI."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import testing as kit
from core.memory import shape
from core.models.flavours import GLM4_MOE, QWEN3_MOE
from core.plugins import make, registry

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("stepbench_extras") is None,
                                reason="pip install ./examples/stepbench-extras first (CI does)")
#: the memory model's parameter count leaves out the final norm (tests/test_conformance.py, PARAM_COUNT_GAP)
COUNT_RTOL = 1e-2


def conf(group: str, name: str) -> Path:
    import stepbench_extras

    return Path(stepbench_extras.__file__).parent / "conf" / group / f"{name}.yaml"


def options(group: str, name: str) -> dict:
    return kit.load_options(group, conf(group, name))[-1]


def tinyllama():
    return registry().get("model_family", "tinyllama").factory


# ------------------------------------------------------------------------------------ every_other
@pytest.mark.parametrize("inside", [True, False])
def test_every_other_conforms(dist_group, inside):
    out = kit.check_ac(lambda: make("ac", {**options("ac", "every_other"), "inside": inside}))
    sh = shape(kit.TINY, 128)  # 4 blocks: 0 and 2 checkpointed, 1 and 3 keep everything
    assert out["saved_bytes"] == 2 * sh.block_input_bytes + 2 * sh.live_block_bytes


@pytest.mark.parametrize("inside", [True, False])
def test_every_other_recomputes_blocks_0_and_2(dist_group, inside):
    """Blocks 0, 2 run their forward again in backward; blocks 1, 3 do not."""
    import torch

    from core.trainer import build, forward_backward, make_batches

    b = build(kit.TINY, kit.DocumentSDPA(), make("ac", {**options("ac", "every_other"), "inside": inside}),
              make("adapter", {"name": "full"}), torch.device("cpu"))
    calls = [0] * len(b.model.layers)
    for i, block in enumerate(b.model.layers):
        block.self_attn.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
    forward_backward(b, make_batches(kit.TINY, "rl", 128, 1, "single", 0, 0, "cpu")[0], "rl", 1.0)
    assert calls == [2, 1, 2, 1]


def test_every_other_on_tinyllama_with_ia3(dist_group):
    fam = tinyllama()
    kit.check_ac(lambda: make("ac", options("ac", "every_other")), args=fam.flavours["tiny"],
                 adapter=make("adapter", options("adapter", "ia3")))


# ------------------------------------------------------------------------------------------- ia3
@pytest.mark.parametrize("args", [None, QWEN3_MOE["tiny"], GLM4_MOE["tiny"]], ids=["dense", "moe", "moe-shared-expert"])
def test_ia3_conforms(dist_group, args):
    out = kit.check_adapter(make("adapter", options("adapter", "ia3")), args=args)
    assert out["counts"]["fully_trainable"] == 0 and out["fsdp"]  # FSDP2 holds the vectors


def test_ia3_on_tinyllama(dist_group):
    fam = tinyllama()
    kit.check_adapter(make("adapter", options("adapter", "ia3")), args=fam.flavours["tiny"], family=fam)


# -------------------------------------------------------------------------------------- checksum
@pytest.mark.parametrize("adapter", [None, "ia3"])
def test_checksum_conforms(dist_group, adapter):
    ad = make("adapter", options("adapter", adapter)) if adapter else None
    first, second = (make("sync", options("sync", "checksum")) for _ in range(2))
    out = kit.check_sync(first, adapter=ad)
    assert out["bytes_per_step"] == 2 * out["handed_off_params"] > 0
    kit.check_sync(second, adapter=ad)
    digests = first.describe()["digests"]
    assert len(digests) == 2
    if adapter is None:  # the optimizer step changed the weights (IA3's vectors start at one, where a
        assert digests[0] != digests[1]  # step of lr 1e-6 is below bf16's resolution: same bytes)
    assert second.describe()["digests"] == digests  # same seed, same weights: same digests


# ------------------------------------------------------------------------------------- tinyllama
def test_tinyllama_conforms(dist_group):
    out = kit.check_model_family(tinyllama(), count_rtol=COUNT_RTOL)
    assert set(out["params"]) == {"tiny", "1.1B"} and out["ran"] == "tiny"
    assert 1.0e9 < out["params"]["1.1B"] < 1.2e9  # TinyLlama-1.1B


# --------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("group,name,bad", [
    ("ac", "every_other", {"mode": "selective", "inside": "yes"}),
    ("adapter", "ia3", {"targets": "k_proj", "feedforward": ["q_proj"]}),
    ("sync", "checksum", {"algorithm": "crc32", "gather_mib": -1}),
    ("model_family", "tinyllama", {"flavour": "7B"}),
])
def test_options_roundtrip(group, name, bad):
    out = kit.check_options_roundtrip(group, conf("model" if group == "model_family" else group, name), bad=bad)
    assert set(out["rejected"]) == set(bad)


# ------------------------------------------------------------------------------------------- CLI
def test_one_row_of_every_kind_through_the_cli(tmp_path):
    res = tmp_path / "rows.jsonl"
    p = subprocess.run([sys.executable, "-m", "core.bench", "model=tinyllama", "+ac=every_other", "adapter=ia3",
                        "+sync=checksum", f"results={res}", "steps=2", "seq_len=128"], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    assert row["status"] == "ok", row.get("error")
    assert row["predicted_mem_gib"] is not None and row["predicted_mem_gib"] > 0
    assert (row["model"], row["family"], row["ac"], row["adapter"], row["sync"]) == \
        ("tinyllama-tiny", "tinyllama", "Every other block", "IA3", "checksum")
    assert row["sync_info"]["bytes_per_step"] == 2 * row["counts"]["adapter"] and len(row["sync_info"]["digests"]) == 2
