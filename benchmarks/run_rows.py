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
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.results import load_rows  # noqa: E402
from core.sweep import base_row, run_child, table  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per row")
    ap.add_argument("--nproc", type=int, default=1, help="ranks per row (torchrun) where more than 1")
    ap.add_argument("rows", nargs="+")
    a = ap.parse_args()
    ids = []
    start = time.time()
    for i, spec in enumerate(a.rows, 1):  # every row of this set shares one run id (the report's "same call")
        base = base_row(None, shlex.split(spec))
        ids.append(base["id"])
        print(f"=== [{i}/{len(a.rows)}] {spec}  ({time.time() - start:.0f}s elapsed)", flush=True)
        t = time.time()
        rc, _ = run_child(shlex.split(spec), a.results, a.timeout, base, nproc=a.nproc, out=sys.stdout, prefix="")
        print(f"=== rc={rc} in {time.time() - t:.0f}s", flush=True)
    rows = [r for r in load_rows(a.results) if r.get("id") in set(ids)]
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
