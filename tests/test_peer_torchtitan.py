"""``+peer=torchtitan``: its refusals, its command line, the child launcher's wiring (run against a
stand-in of the torchtitan 0.2.x API it uses: train specs, the metric logger, the data loader and
SDPA wrapper) and how the row is read from what torchtitan's metric logger received."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest

from core.contracts import PeerSpec
from plugins.models.native import FAMILIES
from plugins.peers import torchtitan_launch
from plugins.peers.torchtitan import TorchTitan, read_result


def spec(**kw) -> PeerSpec:
    a = FAMILIES["qwen3"].flavours["tiny"]
    base = dict(model=a.name, hf_name="", hf_config=FAMILIES["qwen3"].hf_config(a), task="sft", adapter="full",
                seq_len=64, micro_batches=2, steps=4, attn="cudnn", ac="recompute", compile=True, seed=3,
                device="cuda", handoff=False)
    return PeerSpec(**{**base, **kw})


def checkout(root: Path) -> Path:
    (root / "torchtitan").mkdir(parents=True)
    (root / "torchtitan" / "train.py").write_text("")
    (root / "UPSTREAM_COMMIT").write_text("d" * 40 + "\n")
    return root


def test_refusals_name_what_to_type(tmp_path):
    peer = TorchTitan({"name": "torchtitan", "path": str(checkout(tmp_path / "tt"))})
    assert peer.why_not(spec()) is None
    cases = {"peer.path=": TorchTitan({"name": "torchtitan"}).why_not(spec()),
             "torchtitan/train.py": TorchTitan({"name": "torchtitan", "path": str(tmp_path)}).why_not(spec()),
             "task=sft": peer.why_not(spec(task="rl")),
             "adapter=full": peer.why_not(spec(adapter="lora", lora_rank=16, lora_alpha=32.0)),
             "+attn=cudnn": peer.why_not(spec(attn="fa3")),
             "+ac=recompute": peer.why_not(spec(ac="offload")),
             "steps=3": peer.why_not(spec(steps=2)),
             "CUDA": peer.why_not(spec(device="cpu")),
             "Qwen3": peer.why_not(spec(hf_config={**spec().hf_config, "model_type": "llama"}))}
    for want, line in cases.items():
        assert line and want in line and "\n" not in line, (want, line)


def test_command_is_torchtitans_own_command_line(tmp_path):
    peer = TorchTitan({"name": "torchtitan", "path": str(checkout(tmp_path / "tt")), "pythonpath": "/deps"})
    cmd = peer.command(spec(), str(tmp_path / "w"))
    a = cmd.argv
    assert a[5].endswith("torchtitan_launch.py") and a[a.index("--model.name") + 1] == "stepbench_row"
    assert a[a.index("--training.seq_len") + 1] == "64" and a[a.index("--training.global_batch_size") + 1] == "2"
    assert a[a.index("--training.local_batch_size") + 1] == "1" and a[a.index("--training.steps") + 1] == "4"
    assert a[a.index("--activation_checkpoint.mode") + 1] == "full" and "--compile.enable" in a
    assert "--compile.enable" not in peer.command(spec(compile=False, ac="none"), str(tmp_path / "w")).argv
    assert cmd.env["PYTHONPATH"] == os.pathsep.join([str(tmp_path / "tt"), "/deps"])
    assert cmd.env["STEPBENCH_PEER_WORK"] == str(tmp_path / "w") and cmd.cwd == str(tmp_path / "w")


def test_model_args_are_the_rows_config():
    cfg = FAMILIES["qwen3"].hf_config(FAMILIES["qwen3"].flavours["0.6B"])
    k = torchtitan_launch.model_kwargs(cfg, 8192)
    assert (k["dim"], k["n_layers"], k["n_heads"]) == (cfg["hidden_size"], cfg["num_hidden_layers"],
                                                       cfg["num_attention_heads"])
    assert (k["n_kv_heads"], k["hidden_dim"], k["vocab_size"]) == (cfg["num_key_value_heads"],
                                                                  cfg["intermediate_size"], cfg["vocab_size"])
    assert k["head_dim"] == cfg["head_dim"] and k["max_seq_len"] == 8192 and k["qk_norm"]
    assert k["enable_weight_tying"] == bool(cfg.get("tie_word_embeddings"))


# The parts of torchtitan 0.2.x's API the launcher uses, and a train loop that uses them as its
# Trainer does: the train spec by name, the flavour's args, the loader (input dict, labels), the
# metric logger built by _build_metric_logger and fed a metrics dict a step.
STAND_IN = {
    "torchtitan/__init__.py": "",
    "torchtitan/components/__init__.py": "",
    "torchtitan/models/__init__.py": "",
    "torchtitan/protocols/__init__.py": "",
    "torchtitan/components/dataloader.py": "class BaseDataLoader:\n    pass\n",
    "torchtitan/models/attention.py": "class ScaledDotProductAttentionWrapper:\n    sdpa_backends = []\n",
    "torchtitan/components/metrics.py": """
        class BaseLogger:
            def log(self, metrics, step): pass
            def close(self): pass
        def _build_metric_logger(job_config, parallel_dims, tag=None):
            return BaseLogger()
    """,
    "torchtitan/protocols/train_spec.py": """
        import dataclasses
        @dataclasses.dataclass
        class TrainSpec:
            model_args: dict
            build_dataloader_fn: object
            build_tokenizer_fn: object
            build_validator_fn: object = None
        SPECS = {}
        def register_train_spec(name, spec): SPECS[name] = spec
    """,
    "torchtitan/models/qwen3/__init__.py": """
        import dataclasses
        from torchtitan.protocols.train_spec import TrainSpec
        @dataclasses.dataclass
        class Qwen3ModelArgs:
            dim: int = 0; n_layers: int = 0; n_heads: int = 0; n_kv_heads: int = 0; vocab_size: int = 0
            head_dim: int = 0; hidden_dim: int = 0; norm_eps: float = 0; rope_theta: float = 0
            qk_norm: bool = False; max_seq_len: int = 0; enable_weight_tying: bool = False
        def get_train_spec():
            return TrainSpec(model_args={"0.6B": Qwen3ModelArgs()}, build_dataloader_fn=None,
                             build_tokenizer_fn=object())
    """,
    "torchtitan/train.py": """
        import sys, types
        from torchtitan.components import metrics
        from torchtitan.models.attention import ScaledDotProductAttentionWrapper as W
        from torchtitan.protocols.train_spec import SPECS
        argv = dict(zip(sys.argv[1::2], sys.argv[2::2]))
        spec = SPECS[argv["--model.name"]]
        args = spec.model_args[argv["--model.flavor"]]
        assert spec.build_tokenizer_fn is None and args.dim == 64
        job = types.SimpleNamespace(training=types.SimpleNamespace(seq_len=16, local_batch_size=1))
        loader = iter(spec.build_dataloader_fn(dp_world_size=1, dp_rank=0, tokenizer=None, job_config=job))
        log = metrics._build_metric_logger(job, None)
        for step in (1, 2, 3):
            inputs, labels = next(loader)
            assert inputs["input"].shape == labels.shape == (1, 16) and int(labels.max()) < args.vocab_size
            log.log({"throughput(tps)": 1000.0 * step, "time_metrics/end_to_end(s)": 0.5 / step,
                     "memory/max_reserved(GiB)": 10.0 + step, "loss_metrics/global_avg_loss": 5.0}, step)
        print("backends", [b.name for b in W.sdpa_backends])
    """,
}


def test_launcher_runs_torchtitans_train_with_the_rows_spec(tmp_path):
    """The launcher against the stand-in API: its own folder does not shadow ``torchtitan`` (the plugin
    module beside it has that name), the row's flavour and random loader are registered, SDPA is held to
    the flash kernel for fa2, and each logged dict lands in metrics.jsonl, from which the row is read."""
    root = tmp_path / "tt"
    for rel, body in STAND_IN.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(body))
    work = tmp_path / "w"
    work.mkdir()
    (work / "spec.json").write_text(json.dumps(asdict(spec(attn="fa2"))))
    env = {**os.environ, "PYTHONPATH": str(root), "STEPBENCH_PEER_WORK": str(work)}
    p = subprocess.run([sys.executable, torchtitan_launch.__file__, "--model.name", "stepbench_row",
                        "--model.flavor", "row"], capture_output=True, text=True, env=env, cwd=work, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "backends ['FLASH_ATTENTION']" in p.stdout
    r = read_result(work, str(checkout(tmp_path / "co")))
    assert r.tps == 3000.0 and r.peak_mem_gib == 13.0 and r.step_s == [0.5 / 3]  # steps 1-2 warm up
    assert r.version == "torchtitan " + "d" * 40 + " (exported tree)" and len(r.extra["logged"]) == 3


def test_result_errors_are_one_line(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps(asdict(spec())))
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        read_result(tmp_path, None)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "throughput(tps)": 1.0}) + "\n"
                                                    for i in (1, 2)))
    with pytest.raises(ValueError, match="no timed one"):
        read_result(tmp_path, None)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 3, "throughput(tps)": 1.0}) + "\n")
    with pytest.raises(ValueError, match="end_to_end"):
        read_result(tmp_path, None)
