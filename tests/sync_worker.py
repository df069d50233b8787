"""Write the seeded tiny model's weights (full, and its LoRA adapters) through the filesystem sync
(for test_sync): under torchrun the weights are FSDP2 shards that the sync must gather. Under
torchrun it also checks the batched gather (``core.sync.gather_many``) against ``full_tensor`` one by
one on shards of uneven and empty rows, in fp32 and bf16.

    python tests/sync_worker.py OUT_DIR                                   # one process
    python -m torch.distributed.run --nproc-per-node 2 tests/sync_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.models.flavours import QWEN3  # noqa: E402
from core.plugins import registry  # noqa: E402
from core.contracts import SyncContext  # noqa: E402
from core.trainer import build, init_distributed  # noqa: E402
from plugins.sync.filesystem import Filesystem  # noqa: E402


def check_gather_many(world: int):
    """Shapes whose rows do not split evenly (5 over 2 ranks), one with fewer rows than ranks (an
    empty shard), a vector, and a tensor that is not sharded, in one call."""
    from torch.distributed.fsdp import fully_shard

    from core.sync import full_tensor, gather_many

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 1), torch.nn.Linear(1, 4))
    fully_shard(m)
    ps = [p for _, p in m.named_parameters()] + [torch.randn(2, 3)]
    for dtype in (torch.float32, torch.bfloat16):
        got = gather_many(ps, dtype)
        for p, g in zip(ps, got):
            want = full_tensor(p)
            assert g.shape == want.shape and torch.equal(g.to(dtype), want.to(dtype)), (world, dtype, tuple(p.shape))


def main(out: str):
    rank, world = init_distributed("cpu")
    reg = registry()
    for adapter, tag in (("full", ""), ("lora", "-lora")):
        b = build(QWEN3["tiny"], reg.get("attn", "sdpa").make({}), reg.get("ac", "none").make({}),
                  reg.get("adapter", adapter).make({"rank": 4} if adapter == "lora" else {}),
                  torch.device("cpu"), seed=3)
        fs = Filesystem(out, keep=1, cleanup=False)
        fs.setup(b.model, SyncContext(rank=rank, world_size=world, device="cpu", adapter_only=adapter == "lora", row_id=f"world{world}{tag}", handoff=b.adapter.handoff))
        fs.after_step(0)
        fs.finish()
    if world > 1:
        check_gather_many(world)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    from core.trainer import exit_now

    exit_now(0)
