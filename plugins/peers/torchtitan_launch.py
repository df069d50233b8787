"""The child of ``+peer=torchtitan``: torchtitan's own trainer and command line on a stepbench row.

    torchrun --nproc-per-node=1 torchtitan_launch.py --model.name stepbench_row --model.flavor row ...

torchrun starts this file in the row's work folder (``STEPBENCH_PEER_WORK``, which holds the row's
``spec.json``) with torchtitan's checkout on ``PYTHONPATH``. It imports nothing from stepbench (the
peer's environment may not have it). Before it runs torchtitan's ``torchtitan.train`` as
``__main__`` with its own arguments, it:

- registers a train spec ``stepbench_row``: torchtitan's qwen3 spec, unchanged but for one flavour,
  ``row``, built from the row's transformers config (so a Qwen3-shaped model of any size runs, not
  only torchtitan's named flavours), no tokenizer (nothing is tokenised) and a loader of random token
  ids, ``local_batch_size`` sequences of ``seq_len`` tokens, as prime-rl's bench mode and stepbench's
  rows feed;
- holds SDPA to the row's kernel (``fa2``: the flash kernel alone; ``cudnn``: torchtitan's own order,
  cuDNN first);
- appends each metrics dict torchtitan logs (its own tps, end-to-end step time and peak reserved
  memory, reset after each log) to ``metrics.jsonl`` in the work folder, by wrapping the metric logger
  torchtitan builds;
- gives the modules torchtitan imports but never calls in such a run (the ``datasets`` package of its
  text loader, TensorBoard's writer) a stand-in where they are not installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import runpy
import sys
import types
from pathlib import Path

#: the train spec and flavour this file registers
SPEC_NAME, FLAVOR = "stepbench_row", "row"


def model_kwargs(cfg: dict, seq_len: int) -> dict:
    """torchtitan's ``Qwen3ModelArgs`` fields from a transformers Qwen3 config (dense)."""
    heads = int(cfg["num_attention_heads"])
    rope = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta", 1_000_000))
    return {"dim": int(cfg["hidden_size"]), "n_layers": int(cfg["num_hidden_layers"]), "n_heads": heads,
            "n_kv_heads": int(cfg.get("num_key_value_heads") or heads), "vocab_size": int(cfg["vocab_size"]),
            "head_dim": int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
            "hidden_dim": int(cfg["intermediate_size"]), "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
            "rope_theta": float(theta), "qk_norm": True, "max_seq_len": int(seq_len),
            "enable_weight_tying": bool(cfg.get("tie_word_embeddings", False))}


def _stand_in(name: str, **attrs) -> types.ModuleType:
    """A module for an import torchtitan makes but this run never calls: any other name raises when used."""

    def missing(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def fail(*a, **k):
            raise RuntimeError(f"{name}.{attr} is a stand-in of stepbench's torchtitan peer (the package is not "
                               "installed): this run should never call it")
        return type(attr, (), {"__init__": fail, "__call__": fail})

    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__getattr__ = missing
    mod.__path__ = []  # a package: its submodules resolve to stand-ins too
    return mod


def install_stand_ins() -> list[str]:
    """Stand-ins for ``datasets`` and TensorBoard's writer where they are missing; their names."""
    done = []
    if importlib.util.find_spec("datasets") is None:
        for name in ("datasets", "datasets.distributed"):
            sys.modules[name] = _stand_in(name)
        done.append("datasets")
    if importlib.util.find_spec("tensorboard") is None:
        sys.modules["torch.utils.tensorboard"] = _stand_in("torch.utils.tensorboard")
        done.append("torch.utils.tensorboard")
    return done


def register(spec: dict, metrics_path: Path) -> None:
    """The ``stepbench_row`` train spec, the SDPA kernel and the metrics recorder (see the module doc)."""
    import torch
    from torchtitan.components import metrics
    from torchtitan.components.dataloader import BaseDataLoader
    from torchtitan.models import attention
    from torchtitan.models.qwen3 import Qwen3ModelArgs, get_train_spec
    from torchtitan.protocols.train_spec import register_train_spec

    vocab, seed = int(spec["hf_config"]["vocab_size"]), int(spec["seed"])

    class RandomTokens(BaseDataLoader):
        """``batch`` sequences of ``seq_len`` random ids a step, labels shifted by one, without end."""

        def __init__(self, seq_len: int, batch: int):
            self.seq_len, self.batch = seq_len, batch

        def __iter__(self):
            gen = torch.Generator().manual_seed(seed)
            while True:
                ids = torch.randint(0, vocab, (self.batch, self.seq_len + 1), generator=gen)
                yield {"input": ids[:, :-1]}, ids[:, 1:]

        def state_dict(self):
            return {}

        def load_state_dict(self, state_dict):
            pass

    def build_loader(dp_world_size, dp_rank, tokenizer, job_config, **_):
        return RandomTokens(job_config.training.seq_len, job_config.training.local_batch_size)

    args = Qwen3ModelArgs(**model_kwargs(spec["hf_config"], spec["seq_len"]))
    register_train_spec(SPEC_NAME, dataclasses.replace(get_train_spec(), model_args={FLAVOR: args},
                                                       build_tokenizer_fn=None, build_dataloader_fn=build_loader,
                                                       build_validator_fn=None))
    if spec["attn"] == "fa2":
        from torch.nn.attention import SDPBackend

        attention.ScaledDotProductAttentionWrapper.sdpa_backends = [SDPBackend.FLASH_ATTENTION]

    class Recorder:
        """torchtitan's metric logger, and each logged dict appended to ``metrics.jsonl``."""

        def __init__(self, inner):
            self.inner = inner

        def log(self, values: dict, step: int) -> None:
            row = {"step": step, **{k: float(v) for k, v in values.items() if isinstance(v, (int, float))}}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            self.inner.log(values, step)

        def close(self) -> None:
            self.inner.close()

    build = getattr(metrics, "_build_metric_logger", None) or getattr(metrics, "build_metric_logger", None)
    if build is None:
        raise RuntimeError("this torchtitan has no _build_metric_logger to read its metrics from: the torchtitan "
                           "peer runs torchtitan 0.2.x")
    setattr(metrics, build.__name__, lambda *a, **k: Recorder(build(*a, **k)))


def main() -> None:
    # run as a file, this folder is sys.path[0]: its torchtitan.py (stepbench's peer plugin) would shadow torchtitan
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    work = Path(os.environ["STEPBENCH_PEER_WORK"])
    spec = json.loads((work / "spec.json").read_text())
    stand_ins = install_stand_ins()
    if stand_ins:
        print(f"torchtitan peer: stand-ins for {', '.join(stand_ins)} (not installed; never called here)", flush=True)
    register(spec, work / "metrics.jsonl")
    sys.argv = ["torchtitan.train", *sys.argv[1:]]
    runpy.run_module("torchtitan.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
