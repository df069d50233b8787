"""The peak breakdown replays an allocator trace (synthetic here: the trace format of
torch.cuda.memory._snapshot) and reports the blocks alive at the peak, grouped by source line."""

from core import memprof


def frame(path, line, name):
    return {"filename": f"{memprof.ROOT}/{path}", "line": line, "name": name}


def test_peak_breakdown_groups_live_blocks_at_the_peak():
    head = [frame("core/losses.py", 10, "forward"), frame("core/trainer.py", 5, "step")]
    mlp = [frame("core/models/common.py", 20, "forward")]
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": mlp},
        {"action": "alloc", "addr": 2, "size": 300, "frames": head},
        {"action": "alloc", "addr": 3, "size": 50, "frames": head},
        {"action": "free_requested", "addr": 2, "size": 300},
        {"action": "free_completed", "addr": 2, "size": 300},  # peak (450) was before this free
        {"action": "alloc", "addr": 4, "size": 200, "frames": mlp},  # 350 live: below the peak
    ]
    peak, rows = memprof.peak_breakdown({"device_traces": [trace]})
    assert peak == 450
    assert [(r["where"], r["blocks"], round(r["gib"] * 2**30)) for r in rows] == [
        ("core/losses.py:10 forward", 2, 350), ("core/models/common.py:20 forward", 1, 100)]
    text = memprof.format_breakdown(peak, rows).splitlines()
    assert len(text) == 3 and text[1].endswith("2 blocks  core/losses.py:10 forward")


def test_where_names_our_frame_and_the_library_frame():
    frames = [{"filename": "/usr/lib/torch/utils/checkpoint.py", "line": 1, "name": "recompute"},
              frame("plugins/checkpointing/recompute.py", 42, "run")]
    assert memprof.where(frames) == "plugins/checkpointing/recompute.py:42 run <- checkpoint.py:recompute"
