"""What occupies the GPU at the peak of a row: a breakdown by source line (``memory_profile=true``).

torch's allocator records every allocation and free with its Python stack
(``torch.cuda.memory._record_memory_history``); replaying that trace finds the moment the most
memory was allocated and groups the blocks alive then by where they were allocated (the innermost
stepbench frame, and the innermost frame outside it). Allocations made by the autograd engine in
backward carry the stack of the ``backward()`` call. Recording slows the step: rows measured
with it say so (``profiled`` in the row) and are for reading, not for comparing speed.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
OURS = ("/core/", "/plugins/")


def start(max_entries: int = 2_000_000) -> None:
    import torch

    torch.cuda.memory._record_memory_history(max_entries=max_entries, stacks="python")


def stop_and_snapshot() -> dict:
    import torch

    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    return snap


def where(frames: list[dict]) -> str:
    """``ours:line (outside)`` for a stack given innermost frame first."""
    ours = next((f for f in frames if any(o in f.get("filename", "") for o in OURS)
                 and f.get("filename", "").startswith(ROOT)), None)
    outside = next((f for f in frames if not f.get("filename", "").startswith(ROOT)), None)
    label = (f"{Path(ours['filename']).relative_to(ROOT)}:{ours['line']} {ours['name']}" if ours else "?")
    if outside is not None:
        label += f" <- {Path(outside['filename']).name}:{outside['name']}"
    return label


def peak_breakdown(snapshot: dict, top: int = 12) -> tuple[int, list[dict]]:
    """Replay the allocator trace; return the peak allocated bytes and the blocks alive then,
    grouped by where they were allocated (largest first)."""
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    events = [e for trace in snapshot.get("device_traces", []) for e in trace]
    for e in events:
        action = e.get("action")
        if action == "alloc":
            live[e["addr"]] = (e["size"], where(e.get("frames", [])))
            total += e["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif action == "free_completed" and e["addr"] in live:
            total -= live.pop(e["addr"])[0]
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, label in at_peak.values():
        groups[label][0] += size
        groups[label][1] += 1
    rows = [{"where": k, "gib": v[0] / 2**30, "blocks": v[1]} for k, v in groups.items()]
    rows.sort(key=lambda r: -r["gib"])
    return peak, rows[:top]


def format_breakdown(peak: int, rows: list[dict]) -> str:
    out = [f"allocated at the peak (traced): {peak / 2**30:.2f} GiB"]
    out += [f"  {r['gib']:7.3f} GiB  {r['blocks']:>5} blocks  {r['where']}" for r in rows]
    return "\n".join(out)
