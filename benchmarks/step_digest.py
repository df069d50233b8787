"""One CPU training step of the tiny models (dense, MoE, GLM) with full fine-tuning and LoRA under
each activation strategy: the loss and a digest of every parameter after the optimizer step, as JSON,
to compare two source trees bit for bit (run it with each tree first on PYTHONPATH):

    PYTHONPATH=OLD_TREE python benchmarks/step_digest.py > old.json
    PYTHONPATH=. python benchmarks/step_digest.py > new.json      # then compare the two files
"""
import hashlib
import json

import torch
from core.plugins import registry
from core.trainer import build, init_distributed, make_batches, train_step
try:
    from core.models.flavours import QWEN3, QWEN3_MOE, GLM4_MOE
except ImportError:  # the old tree
    from core.models.registry import QWEN3, QWEN3_MOE, GLM4_MOE
init_distributed("cpu")
reg = registry()
def mk(kind, name, opts):
    e = reg.get(kind, name)
    try:
        return e.factory({"name": name, **opts}, None)   # new: (options, ctx)
    except TypeError:
        return e.factory({"name": name, **opts})         # old: (cfg)
out = {}
for fam, a in (("qwen3", QWEN3["tiny"]), ("qwen3_moe", QWEN3_MOE["tiny"]), ("glm4_moe", GLM4_MOE["tiny"])):
    for adapter, aopts in (("full", {}), ("lora", {"rank": 8})):
        for ac, acopts in (("none", {}), ("recompute", {}), ("offload", {}), ("recompute", {"mode": "selective"})):
            torch.manual_seed(0)
            b = build(a, mk("attn", "sdpa", {}), mk("ac", ac, acopts), mk("adapter", adapter, aopts), torch.device("cpu"), seed=0)
            batches = make_batches(a, "rl", 128, 2, "random", 0, 0, torch.device("cpu"))
            o = train_step(b, batches, "rl", step=0)
            h = hashlib.sha256()
            for n, p in sorted(b.model.named_parameters()):
                h.update(n.encode()); h.update(p.detach().float().numpy().tobytes())
            out[f"{fam}/{adapter}/{ac}{acopts.get('mode','')}"] = [o["loss"].tolist(), h.hexdigest()[:16]]
print(json.dumps(out, sort_keys=True))
