"""Run a set of benchmark rows, each through ``python -m core.bench``, then print a short table.

    python benchmarks/run_rows.py --results benchmarks/results/h100.jsonl \
        "model=qwen3_0_6b +attn=sdpa +ac=recompute seq_len=8192" \
        "model=qwen3_0_6b task=sft +attn=sdpa +ac=recompute seq_len=8192"

Each argument is one row's overrides. A row that fails is recorded as failed and the set goes on.
The table is printed last (from the rows this invocation wrote), so the end of the output says it all.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.results import append_row, load_rows  # noqa: E402


def table(rows: list[dict]) -> str:
    head = (f"{'model':<16} {'type':<16} {'seq':>6} {'AC':<22} {'attn':<6} {'MFU':>6} {'TPS':>8} "
            f"{'step/mb':>8} {'peak GiB':>8} {'roofl.':>6}")
    out = [head]
    for r in rows:
        if r.get("status") != "ok":
            out.append(f"{r.get('model', '?'):<16} {r.get('type', '?'):<16} {r.get('seq_len', 0):>6} "
                       f"{str(r.get('ac')):<22} {str(r.get('attn')):<6} FAILED: {str(r.get('error'))[:90]}")
            continue
        out.append(f"{r['model']:<16} {r['type']:<16} {r['seq_len']:>6} {r['ac']:<22} {r['attn']:<6} "
                   f"{r['mfu']:5.1f}% {r['tps'] / 1e3:7.2f}k {r['step_time']:7.2f}s {r['peak_mem_gib']:8.1f} "
                   f"{100 * r['roofline_frac']:5.0f}%")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per row")
    ap.add_argument("rows", nargs="+")
    a = ap.parse_args()
    ids = []
    for i, spec in enumerate(a.rows, 1):
        rid = uuid.uuid4().hex
        ids.append(rid)
        cmd = [sys.executable, "-m", "core.bench", *shlex.split(spec), f"results={a.results}"]
        print(f"=== [{i}/{len(a.rows)}] {spec}", flush=True)
        t = time.time()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, STEPBENCH_CHILD_ROW_ID=rid),
                                timeout=a.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"=== rc={rc} in {time.time() - t:.0f}s", flush=True)
        if rc != 0 and not any(r.get("id") == rid for r in load_rows(a.results)):
            append_row(a.results, {"id": rid, "status": "failed", "overrides": spec, "model": spec,
                                   "error": f"core.bench ended with {rc} before writing its row"})
    rows = [r for r in load_rows(a.results) if r.get("id") in set(ids)]
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
