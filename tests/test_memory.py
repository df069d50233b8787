"""Memory predictions against what was measured."""

import json
from pathlib import Path

import pytest

from core.memory import predict_host_gib
from core.models.registry import QWEN3

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def offload_rows():
    rows = []
    for f in sorted(RESULTS.glob("*.jsonl")) + sorted((RESULTS / "history").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            info = r.get("ac_info") or {}
            if r.get("status") == "ok" and info.get("ac") == "offload" and "host_offload_bytes" in info \
                    and r.get("family") == "qwen3" and r.get("attn") == "FA3":
                rows.append(r)
    return rows


@pytest.mark.parametrize("row", offload_rows(), ids=lambda r: f"{r['model']}-{r['seq_len']}-{r['ac']}")
def test_host_prediction_equals_measured_offload_rows(row):
    """Every committed FA3 offload row (block inputs, and attention's saved tensors in mode=attention):
    the pinned bytes it reported equal the prediction made from its config."""
    cfg = row["config"]
    pred = predict_host_gib(QWEN3[row["flavour"]], row["seq_len"], "offload", cfg["ac"].get("mode", "full"),
                            cfg["ac"].get("keep_last", 1))
    assert pred * 2**30 == pytest.approx(row["ac_info"]["host_offload_bytes"], rel=1e-3)


def test_there_are_measured_rows_of_both_modes():
    modes = {r["config"]["ac"].get("mode", "full") for r in offload_rows()}
    assert {"full", "attention"} <= modes


def test_no_host_memory_without_offload():
    assert predict_host_gib(QWEN3["4B"], 65536, "recompute") == 0.0
