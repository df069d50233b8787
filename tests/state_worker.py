"""Bytes of the training state each rank holds under FSDP2 (for test_memory): parameters,
gradients and AdamW moments, summed over the local shards, after one micro-batch and one
optimizer step of the tiny Qwen3, full fine-tuning and LoRA (adapters sharded, the default over
several ranks, and replicated: adapter.replicate=true).

    python tests/state_worker.py OUT.json                                  # one process
    python -m torch.distributed.run --nproc-per-node 2 tests/state_worker.py OUT.json
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.models.flavours import QWEN3  # noqa: E402
from core.plugins import registry  # noqa: E402
from core.trainer import build, forward_backward, init_distributed, make_batches  # noqa: E402


def local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def main(out: str):
    rank, world = init_distributed("cpu")
    reg = registry()
    args = QWEN3["tiny"]
    result = {"world": world}
    for name in ("full", "lora", "lora_whole"):  # lora_whole: adapter.replicate=true
        adapter = reg.get("adapter", name.split("_")[0]).make({"replicate": True} if name == "lora_whole" else {})
        b = build(args, reg.get("attn", "sdpa").make({}), reg.get("ac", "recompute").make({}),
                  adapter, torch.device("cpu"), seed=0)
        (mb,) = make_batches(args, "rl", 64, 1, "single", seed=1, step=0, device="cpu", rank=rank)
        forward_backward(b, mb, "rl", 1.0)
        params = sum(local_bytes(p) for p in b.model.parameters())
        grads = sum(local_bytes(p.grad) for p in b.model.parameters() if p.grad is not None)
        b.optimizer.step()
        moments = sum(local_bytes(v) for st in b.optimizer.state.values() for k, v in st.items()
                      if torch.is_tensor(v) and k != "step")
        t = torch.tensor([params + grads + moments], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the largest rank's share (shards can differ by a row)
        result[name] = {"max_rank_bytes": t.item(), "rank0": {"params": params, "grads": grads, "moments": moments}}
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    from core.trainer import exit_now

    exit_now(0)
