"""Write the seeded tiny model's weights through the filesystem sync (for test_sync): under torchrun
the weights are FSDP2 shards that the sync must gather.

    python tests/sync_worker.py OUT_DIR                                   # one process
    python -m torch.distributed.run --nproc-per-node 2 tests/sync_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.models.registry import QWEN3  # noqa: E402
from core.plugins import registry  # noqa: E402
from core.sync import SyncContext  # noqa: E402
from core.trainer import build, init_distributed  # noqa: E402
from plugins.sync.filesystem import Filesystem  # noqa: E402


def main(out: str):
    rank, world = init_distributed("cpu")
    reg = registry()
    b = build(QWEN3["tiny"], reg.get("attn", "sdpa").factory({}), reg.get("ac", "none").factory({}),
              reg.get("adapter", "full").factory({}), torch.device("cpu"), seed=3)
    fs = Filesystem(out, keep=1, cleanup=False)
    fs.setup(b.model, SyncContext(rank, world, "cpu", False, 0, row_id=f"world{world}"))
    fs.after_step(0)
    fs.finish()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    from core.trainer import exit_now

    exit_now(0)
