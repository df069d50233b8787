"""The plots: one PNG per published model and hardware, rendered on CPU from the committed rows."""

import struct
import sys
from pathlib import Path

import pytest

from core.plots import _bars, config_key, figure_groups, plots
from core.report import parse_published
from core.results import load_rows

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def committed_rows() -> list[dict]:
    """Our successful training rows from the committed results files."""
    return [r for r in load_rows(*sorted(RESULTS.glob("*.jsonl"))) if "kind" not in r and r.get("status") == "ok"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, from its header (which must be a PNG's)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_figures_keep_models_and_hardware_apart():
    rows, published = committed_rows(), parse_published()[0]
    assert any(r["hardware_label"] == "2xH200" for r in rows)  # committed rows that must not leak into H100 figures
    groups = figure_groups(rows, published)
    assert {("Qwen3-0.6B", "1xH100 HBM3"), ("Qwen3-4B-Instruct-2507", "1xH100 HBM3")} <= set(groups)
    for (model, hw), (pubs, mine) in groups.items():
        assert pubs and mine
        assert {(config_key(p)[0], p["hardware_label"]) for p in pubs} == {(model, hw)}
        assert {r["hardware_label"] for r in mine} == {hw}
        assert {r["hf_name"].split("/")[-1] for r in mine} == {model}
    # a published 2xH200 configuration gets a figure of its own
    extra = dict(published[0], model="Qwen3-0.6B", hf_name="Qwen3-0.6B", hardware_label="2xH200")
    groups = figure_groups(rows, published + [extra])
    assert groups[("Qwen3-0.6B", "2xH200")][0] == [extra]
    assert "2xH200" not in {r["hardware_label"] for r in groups[("Qwen3-0.6B", "1xH100 HBM3")][1]}


def test_bars_match_peers_and_span_repeats():
    p = {"model": "M", "hf_name": "M", "type": "RL Full", "seq_len": 8192, "ac": "Recompute", "attn": "FA2",
         "hardware_label": "1xH100 HBM3", "tps": 9000.0, "peak_mem_gib": 11.8}
    base = {k: p[k] for k in ("type", "seq_len", "ac", "attn", "hardware_label")}
    env = {"env": {"git_commit": "a" * 40}}
    mine = [{**base, **env, "model": "M", "hf_name": "org/M", "family": "qwen3", "tps": t, "peak_mem_gib": 10.0}
            for t in (30e3, 32e3, 34e3)]
    mine.append({**base, **env, "model": "M", "hf_name": "org/M", "family": "qwen3", "tps": 50e3, "attn": "FA3"})
    mine.append({**base, **env, "model": "M (plain HF)", "hf_name": "org/M", "family": "hf", "impl": "plain HF", "tps": 18e3,
                 "attn": "sdpa", "peak_mem_gib": 31.0})
    bars = _bars([p], mine, None)
    assert set(bars) == {"published", "same", "plain HF"}  # no best without views, no hf peer measured
    assert bars["same"] == [(34e3, 10.0, 30e3, 34e3, False)]  # fastest with the published AC and attention
    assert bars["plain HF"] == [(18e3, 31.0, 18e3, 18e3, True)]  # another attention: drawn hatched
    bars = _bars([p], mine, {config_key(p): {"same": mine[0], "best": dict(mine[3], runs_tps=[48e3, 50e3])}})
    assert bars["same"][0][0] == 30e3 and bars["best"] == [(50e3, None, 48e3, 50e3, True)]


def test_plots_render_committed_rows(tmp_path):
    pytest.importorskip("matplotlib")
    rows, published = committed_rows(), parse_published()[0]
    paths = plots(rows, published, tmp_path, "BENCHMARKS")
    assert len(paths) == len(figure_groups(rows, published))
    names = {p.name for p in paths}
    assert {"BENCHMARKS-plot-Qwen3-0.6B-1xH100_HBM3.png",
            "BENCHMARKS-plot-Qwen3-4B-Instruct-2507-1xH100_HBM3.png"} <= names
    for path in paths:
        width, height = png_size(path)
        assert 20_000 < path.stat().st_size < 2_000_000 and 800 <= width <= 4000 and 600 <= height <= 1500


def test_no_matplotlib_no_plots(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plots(committed_rows(), parse_published()[0], tmp_path, "X") == []
    assert not list(tmp_path.iterdir())
