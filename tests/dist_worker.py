"""Run one tiny training micro-step per rank and save losses and full gradients (for test_distributed).

    python tests/dist_worker.py FAMILY OUT.pt [ADAPTER]                  # one process, both ranks' data
    python -m torch.distributed.run --nproc-per-node 2 tests/dist_worker.py FAMILY OUT.pt [ADAPTER]

ADAPTER: full (default) or lora, then optionally lora's replicate modes, comma-separated (auto, true,
false; one result per mode; its B factors set away from their zero init, seeded by name, so
every adapter gradient is non-zero; the q/k/v and gate/up adapters run fused, the default).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.models.flavours import GLM4_MOE, QWEN3, QWEN3_MOE  # noqa: E402
from core.plugins import registry  # noqa: E402
from core.trainer import build, forward_backward, init_distributed, make_batches, reduce_replicated  # noqa: E402

FAMILIES = {"qwen3": QWEN3["tiny"], "qwen3_moe": QWEN3_MOE["tiny"], "glm4_moe": GLM4_MOE["tiny"]}


def run(family: str, adapter: str, replicate: str, rank: int, world: int) -> dict:
    args = FAMILIES[family]
    reg = registry()
    opts = {} if adapter == "full" else {"replicate": {"true": True, "false": False}.get(replicate, replicate)}
    b = build(args, reg.get("attn", "sdpa").make({}), reg.get("ac", "recompute").make({}),
              reg.get("adapter", adapter).make(opts), torch.device("cpu"), seed=0)
    if adapter == "lora":
        from torch.distributed.tensor import distribute_tensor

        with torch.no_grad():
            for n, p in b.model.named_parameters():
                if "lora_B" in n:
                    full = torch.empty(p.shape).normal_(0, 0.02, generator=torch.Generator().manual_seed(len(n)))
                    if hasattr(p, "device_mesh"):  # sharded with the base weights
                        p.to_local().copy_(distribute_tensor(full, p.device_mesh, p.placements).to_local())
                    else:  # replicated: whole on every rank
                        p.copy_(full)
    ranks = [rank] if world > 1 else [0, 1]  # the single process does both ranks' micro-batches
    losses = []
    for r in ranks:
        (mb,) = make_batches(args, "rl", 128, 1, "random", seed=5, step=0, device="cpu", rank=r)
        losses.append(forward_backward(b, mb, "rl", 1.0 / len(ranks))["loss"])
    loss = torch.stack(losses)
    if world > 1:
        gathered = [torch.zeros_like(loss) for _ in range(world)]
        dist.all_gather(gathered, loss)
        loss = torch.cat(gathered)
    reduce_replicated(b)  # train_step does this before clipping
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad)
             for n, p in b.model.named_parameters() if p.grad is not None}
    return {"loss": loss, "grads": grads, "world": world, "replicated": len(b.replicated)}


def main(family: str, out: str, adapter: str = "full", replicate: str = "auto"):
    """``replicate``: one mode or several, comma-separated (each builds its own model; one launch)."""
    rank, world = init_distributed("cpu")
    results = {mode: run(family, adapter, mode, rank, world) for mode in replicate.split(",")}
    if rank == 0:
        torch.save(results, out)
    dist.barrier()  # no rank tears gloo down while another is still working
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
    from core.trainer import exit_now

    exit_now(0)
