"""Where one profiled step's time goes, from a trace written by ``ops_trace=``.

    python -m core.bench model=qwen3_0_6b +attn=fa3 compile=true ops_trace=runs/trace.json.gz
    python benchmarks/trace_summary.py runs/trace.json.gz

Prints: the step's wall time and the share of it the GPU was busy; for each ``stepbench.*`` range
(micro-batches, clip + optimizer, weight hand-off) the host time, the device time of the kernels
it launched, and the idle device time inside it; device time by kernel kind and the top kernels;
the host operators that launched the most kernels; and the device idle gaps by the host range
running when they began. Reads the Chrome trace format of torch.profiler (``ph: X`` events with
``cat`` kernel / gpu_memcpy / gpu_memset / cpu_op / cuda_runtime / user_annotation).
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.measure import busy_fraction, kernel_kind  # noqa: E402

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_NAMES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                "cudaMemcpyAsync", "cudaMemsetAsync", "cudaGraphLaunch")


def load(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def summarize(events: list[dict], top: int = 15) -> str:
    dev = [e for e in events if e.get("cat") in DEVICE_CATS]
    if not dev:
        return "no device activity in the trace"
    ranges = sorted((e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("stepbench.")),
                    key=lambda e: e["ts"])
    launches = [e for e in events if e.get("cat") == "cuda_runtime"]
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    t0 = min(min(e["ts"] for e in dev), min((e["ts"] for e in ranges), default=float("inf")))
    t1 = max(max(e["ts"] + e["dur"] for e in dev), max((e["ts"] + e["dur"] for e in ranges), default=0))
    wall = t1 - t0
    busy = busy_fraction([(e["ts"], e["ts"] + e["dur"]) for e in dev], int(wall)) if wall > 0 else 0.0
    out = [f"step: {wall / 1e3:.1f} ms wall, GPU busy {busy:.0%} ({len(dev)} device activities, "
           f"{sum(1 for e in launches if e['name'] in LAUNCH_NAMES)} launches/copies from the host)"]

    by_corr = {e["args"].get("correlation"): e for e in dev if "args" in e}
    launch_of = {}  # device event -> the host launch that issued it
    for e in launches:
        k = by_corr.get(e.get("args", {}).get("correlation"))
        if k is not None:
            launch_of[id(k)] = e

    if ranges:
        out.append("\nrange                          host ms   device ms   device span ms   kernels")
        for r in ranges:
            a, b = r["ts"], r["ts"] + r["dur"]
            ks = [k for k in dev if id(k) in launch_of and a <= launch_of[id(k)]["ts"] <= b]
            dt = sum(k["dur"] for k in ks)
            span = (max(k["ts"] + k["dur"] for k in ks) - min(k["ts"] for k in ks)) if ks else 0
            out.append(f"{r['name'][10:]:<30} {r['dur'] / 1e3:8.1f} {dt / 1e3:10.1f} {span / 1e3:15.1f} {len(ks):9d}")

    kinds, names, counts = Counter(), Counter(), Counter()
    for e in dev:
        kinds[kernel_kind(e["name"])] += e["dur"]
        names[e["name"]] += e["dur"]
        counts[e["name"]] += 1
    out.append("\ndevice time by kind (share of wall): " + ", ".join(
        f"{k} {v / 1e3:.1f} ms ({v / wall:.0%})" for k, v in kinds.most_common()))
    out.append(f"\ntop {top} kernels by device time:")
    for n, v in names.most_common(top):
        out.append(f"  {v / 1e3:8.2f} ms  x{counts[n]:<5d} {v / counts[n]:8.1f} us  {n[:110]}")

    # host operators: the innermost cpu_op around each launch (the op that issued the kernel)
    ops.sort(key=lambda e: e["ts"])
    starts = [e["ts"] for e in ops]
    issuer = Counter()
    issuer_dev = Counter()
    for k in dev:
        la = launch_of.get(id(k))
        if la is None:
            continue
        last = bisect.bisect_right(starts, la["ts"]) - 1  # the nearest enclosing op started at or before it
        best = next((o for o in (ops[i] for i in range(last, max(last - 200, -1), -1))
                     if o["ts"] + o["dur"] >= la["ts"] and o.get("tid") == la.get("tid")), None)
        name = best["name"] if best else "(no op)"
        issuer[name] += 1
        issuer_dev[name] += k["dur"]
    out.append(f"\nhost operators by kernels launched (top {top}):")
    for n, c in issuer.most_common(top):
        out.append(f"  {c:6d} launches  {issuer_dev[n] / 1e3:8.2f} ms device  {n[:90]}")

    # device idle gaps, attributed to the stepbench range the host was in when the gap began
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in dev)
    gaps, end = [], spans[0][1]
    for a, b in spans[1:]:
        if a > end:
            gaps.append((end, a - end))
        end = max(end, b)
    by_range = defaultdict(float)
    for g0, g in gaps:
        where = next((r["name"][10:] for r in ranges if r["ts"] <= g0 <= r["ts"] + r["dur"]), "(outside ranges)")
        by_range[where] += g
    big = sum(g for _, g in gaps if g >= 50)
    out.append(f"\ndevice idle: {sum(g for _, g in gaps) / 1e3:.1f} ms in {len(gaps)} gaps "
               f"({big / 1e3:.1f} ms in gaps of 50 us or more); by host range at the gap's start: "
               + ", ".join(f"{k} {v / 1e3:.1f} ms" for k, v in sorted(by_range.items(), key=lambda kv: -kv[1])))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="+", help="trace file(s) written by ops_trace= (.json or .json.gz)")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    for p in a.trace:
        if not Path(p).is_file():
            sys.exit(f"trace_summary: no such file {p}: write one with python -m core.bench ... ops_trace={p}")
        print(f"== {p}")
        print(summarize(load(p), a.top))


if __name__ == "__main__":
    main()
