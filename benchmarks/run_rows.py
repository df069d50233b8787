"""Run a set of benchmark rows, each through ``python -m core.bench``, then print a short table.

    python benchmarks/run_rows.py --results benchmarks/results/h100.jsonl \
        "model=qwen3_0_6b +attn=sdpa +ac=recompute seq_len=8192" \
        "model=qwen3_0_6b task=sft +attn=sdpa +ac=recompute seq_len=8192"

Each argument is one row's overrides. A row that fails is recorded as failed and the set goes on.
``--nproc N`` runs each row under torchrun with N ranks (one a GPU: FSDP2 over NCCL; gloo on CPU).
The table is printed last (from the rows this invocation wrote), so the end of the output says it all.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.results import append_row, load_rows  # noqa: E402
from core.sweep import child_error, run_id, stream_child, table  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per row")
    ap.add_argument("--nproc", type=int, default=1, help="ranks per row (torchrun) where more than 1")
    ap.add_argument("rows", nargs="+")
    a = ap.parse_args()
    ids = []
    run_id()  # every row of this set shares one run id (the report's "same call")
    for i, spec in enumerate(a.rows, 1):
        rid = uuid.uuid4().hex
        ids.append(rid)
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.nproc}"] if a.nproc > 1 else []
        cmd = [sys.executable, *launch, "-m", "core.bench", *shlex.split(spec), f"results={a.results}"]
        print(f"=== [{i}/{len(a.rows)}] {spec}", flush=True)
        t = time.time()
        rc, tail = stream_child(cmd, dict(os.environ, STEPBENCH_CHILD_ROW_ID=rid), a.timeout, sys.stdout, "")
        print(f"=== rc={rc} in {time.time() - t:.0f}s", flush=True)
        if rc != 0 and not any(r.get("id") == rid for r in load_rows(a.results)):
            # a row refused before it started (status 2) keeps the bench's one line saying why
            append_row(a.results, {"id": rid, "status": "failed", "overrides": spec, "model": spec,
                                   "error": child_error(rc, tail)})
    rows = [r for r in load_rows(a.results) if r.get("id") in set(ids)]
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
