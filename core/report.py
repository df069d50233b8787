"""``python -m core.report``: rows -> BENCHMARKS.md (prime-rl's published format) and PNG plots.

    python -m core.report                      # benchmarks/results/*.jsonl -> benchmarks/BENCHMARKS.md
    python -m core.report --save-baseline      # store the current rows as the baseline
    python -m core.report --results F.jsonl --out X.md --baseline B.jsonl

One section per model, columns Type | SeqLen | AC | Attn | Hardware | MFU | TPS | Step Time |
Peak Mem, rows ordered by type then sequence length (otherwise in run order). Against the
baseline, MFU and TPS show their relative change when it is at least 1% and a :warning: when
they fall more than 5%. Failed rows are listed last. A second table puts each row beside the
published prime-rl row with the same key.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.results import append_row, load_rows, row_key  # noqa: E402

PUBLISHED = ROOT / "benchmarks" / "reference" / "prime-rl-benchmarks-2026-01.md"
DIFF_MIN, REGRESSION = 1.0, 5.0
HEADER = """# Performance Benchmarks

Automated benchmark results for stepbench (`python -m core.bench`), in prime-rl's `--bench` format.

**Last Updated:** {updated}  
**Commit:** `{commit}`  
**Rows:** {nrows} successful, {nfailed} failed, from {sources}

> :warning: indicates regression > 5% from baseline
> diffs shown when abs(change) >= 1.0% (except regressions, which always show diffs)

> :clock10: The Step Time shown is the time taken per micro batch. This differs from what gets displayed in the bench table which is the total step time.
"""
COLUMNS = "| Type | SeqLen | AC | Attn | Hardware | MFU | TPS | Step Time | Peak Mem |\n" \
          "|------|--------|----|----|----------|-----|-----|-----------|----------|"


def section_name(row: dict) -> str:
    """Published section names: the Hugging Face repo name of the model."""
    hf = row.get("hf_name") or ""
    return hf.split("/")[-1] if hf else str(row.get("model"))


def fmt_change(value: float, base: float | None) -> str:
    if not base:
        return ""
    change = 100.0 * (value - base) / base
    if change < -REGRESSION:
        return f" :warning: ({change:+.1f}%)"
    return f" ({change:+.1f}%)" if abs(change) >= DIFF_MIN - 1e-9 else ""


def table_line(r: dict, base: dict | None) -> str:
    mfu = f"{r['mfu']:.1f}%" + fmt_change(r["mfu"], base and base.get("mfu"))
    tps = f"{r['tps'] / 1e3:.2f}k" + fmt_change(r["tps"], base and base.get("tps"))
    return (f"| {r['type']} | {r['seq_len']} | {r['ac']} | {r['attn']} | {r['hardware_label']} | {mfu} | {tps} "
            f"| {r['step_time']:.2f}s | {r['peak_mem_gib']:.1f} GiB |")


def latest_ok(rows: list[dict]) -> list[dict]:
    """The newest (by its ``time``) successful row of each key, in the order keys first appeared."""
    by_key: dict = {}
    for r in sorted(rows, key=lambda r: str(r.get("time", ""))):
        if r.get("status") == "ok":
            by_key[row_key(r)] = r
    return list(by_key.values())


def render(rows: list[dict], baseline: list[dict] = (), failed: list[dict] = (), commit: str = "unknown",
           sources: str = "", updated: str | None = None) -> str:
    """The markdown report (sections in first-appearance order, rows sorted by type and seq_len)."""
    base = {row_key(b): b for b in baseline}
    sections: dict[str, list[dict]] = {}
    for r in rows:
        sections.setdefault(section_name(r), []).append(r)
    updated = updated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [HEADER.format(updated=updated, commit=commit, nrows=len(rows), nfailed=len(failed),
                         sources=sources or "-")]
    for name, rs in sections.items():
        rs = sorted(rs, key=lambda r: (r["type"], int(r["seq_len"])))
        out.append(f"## {name}\n\n{COLUMNS}")
        out += [table_line(r, base.get(row_key(r))) for r in rs]
        out.append("")
    if failed:
        out.append("## Failed Benchmarks\n")
        for f in failed:
            who = f.get("hf_name") or f.get("model")
            out.append(f"- **{who}** ({f.get('type')}) on {f.get('hardware_label', '?')}: {f.get('error')}")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------- the published file
_NUM = re.compile(r"([-+]?[0-9.]+)")


def _value_and_change(cell: str) -> tuple[float, float | None]:
    nums = _NUM.findall(cell)
    return float(nums[0]), (float(nums[1]) if len(nums) > 1 else None)


def parse_published(path: Path = PUBLISHED) -> tuple[list[dict], list[dict], list[dict]]:
    """Rows, baseline rows (undoing the shown changes) and failed rows of a published report."""
    rows, baseline, failed, section = [], [], [], None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if line.startswith("- **"):
            m = re.match(r"- \*\*(.+?)\*\* \((.+?)\) on (.+?): (.*)$", line)
            if m:
                failed.append({"hf_name": m[1], "type": m[2], "hardware_label": m[3], "error": m[4],
                               "status": "failed"})
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 9 or not cells[1].isdigit():
            continue
        mfu, mfu_d = _value_and_change(cells[5])
        tps, tps_d = _value_and_change(cells[6])
        hw = cells[4]
        r = {"hf_name": section, "model": section, "type": cells[0], "seq_len": int(cells[1]), "ac": cells[2],
             "attn": cells[3], "hardware_label": hw, "num_gpus": int(hw.split("x", 1)[0]),
             "hardware": hw.split("x", 1)[1], "mfu": mfu, "tps": tps * 1e3,
             "step_time": float(cells[7].rstrip("s")), "peak_mem_gib": float(cells[8].split()[0]), "status": "ok"}
        rows.append(r)
        b = dict(r)
        if mfu_d is not None:
            b["mfu"] = mfu / (1 + mfu_d / 100)
        if tps_d is not None:
            b["tps"] = r["tps"] / (1 + tps_d / 100)
        baseline.append(b)
    return rows, baseline, failed


def versus_published(rows: list[dict], published: list[dict]) -> str:
    """Each row beside the published prime-rl row with the same key."""
    pub = {(section_name(p), p["type"], p["seq_len"], p["ac"], p["attn"], p["hardware_label"]): p for p in published}
    lines = ["## Against prime-rl's published rows\n",
             "| Model | Type | SeqLen | AC | Attn | Hardware | TPS (ours / prime-rl) | ratio | Peak Mem (ours / prime-rl) |"
             " diff |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = pub.get((section_name(r), r["type"], r["seq_len"], r["ac"], r["attn"], r["hardware_label"]))
        if not p:
            continue
        lines.append(f"| {section_name(r)} | {r['type']} | {r['seq_len']} | {r['ac']} | {r['attn']} | "
                     f"{r['hardware_label']} | {r['tps'] / 1e3:.2f}k / {p['tps'] / 1e3:.2f}k | "
                     f"{r['tps'] / p['tps']:.2f}x | {r['peak_mem_gib']:.1f} / {p['peak_mem_gib']:.1f} GiB | "
                     f"{r['peak_mem_gib'] - p['peak_mem_gib']:+.1f} GiB |")
    return "\n".join(lines) + "\n"


def best_at_no_more_memory(rows: list[dict], published: list[dict]) -> str:
    """For each published row on hardware we measured: our fastest row of the same model, type,
    sequence length and hardware, any AC or attention, whose peak memory is not above it."""
    lines = ["## Fastest stepbench configuration at no more memory than each published row\n",
             "Any AC and attention backend of ours counts, as long as its peak memory is at most the "
             "published row's.\n",
             "| Model | Type | SeqLen | Hardware | prime-rl (AC, Attn) | TPS | Peak Mem | stepbench (AC, Attn) | TPS "
             "| Peak Mem | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    hw = {r["hardware_label"] for r in rows}
    for p in published:
        if p["hardware_label"] not in hw:
            continue
        cands = [r for r in rows if (section_name(r), r["type"], r["seq_len"], r["hardware_label"])
                 == (section_name(p), p["type"], p["seq_len"], p["hardware_label"])
                 and r["peak_mem_gib"] <= p["peak_mem_gib"]]
        if not cands:
            continue
        b = max(cands, key=lambda r: r["tps"])
        lines.append(f"| {section_name(p)} | {p['type']} | {p['seq_len']} | {p['hardware_label']} | "
                     f"{p['ac']}, {p['attn']} | {p['tps'] / 1e3:.2f}k | {p['peak_mem_gib']:.1f} GiB | "
                     f"{b['ac']}, {b['attn']} | {b['tps'] / 1e3:.2f}k | {b['peak_mem_gib']:.1f} GiB | "
                     f"{b['tps'] / p['tps']:.2f}x |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out_dir: Path) -> list[Path]:
    """PNG charts of TPS and MFU against sequence length, one per model, a line per configuration."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(section_name(r), []).append(r)
    for model, rs in by_model.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        series: dict[str, list[dict]] = {}
        for r in rs:
            series.setdefault(f"{r['type']} {r['ac']} {r['attn']} {r['hardware_label']}", []).append(r)
        for label, pts in sorted(series.items()):
            pts = sorted(pts, key=lambda r: r["seq_len"])
            xs = [p["seq_len"] for p in pts]
            axes[0].plot(xs, [p["tps"] / 1e3 for p in pts], marker="o", label=label)
            axes[1].plot(xs, [p["mfu"] for p in pts], marker="o", label=label)
        for ax, yl in zip(axes, ("TPS (k tokens/s)", "MFU (%)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length")
            ax.set_ylabel(yl)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=6, loc="best")
        fig.suptitle(model)
        fig.tight_layout()
        path = out_dir / f"plot-{re.sub(r'[^A-Za-z0-9.-]+', '_', model)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", nargs="+", default=[str(ROOT / "benchmarks" / "results")])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "BENCHMARKS.md"))
    ap.add_argument("--baseline", default=str(ROOT / "benchmarks" / "baseline.jsonl"))
    ap.add_argument("--save-baseline", action="store_true", help="store the current rows as the baseline")
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args(argv)
    all_rows = load_rows(*a.results)
    all_rows = [r for r in all_rows if not r.get("profiled") and "memory_profile" not in r]  # slowed by tracing
    rows = [r for r in latest_ok(all_rows) if "type" in r and "mfu" in r]
    ok_keys = {row_key(r) for r in rows}
    failed = [r for r in all_rows if r.get("status") == "failed" and row_key(r) not in ok_keys and r.get("type")]
    if a.save_baseline:
        Path(a.baseline).unlink(missing_ok=True)
        for r in rows:
            append_row(a.baseline, {k: r[k] for k in ("model", "hf_name", "type", "seq_len", "ac", "attn",
                                                      "hardware_label", "mfu", "tps", "step_time", "peak_mem_gib")})
        print(f"baseline: {len(rows)} rows -> {a.baseline}")
        return
    commits = sorted({c for r in rows if (c := (r.get("env") or {}).get("git_commit")) and c != "HEAD"}) or ["unknown"]
    text = render(rows, load_rows(a.baseline), failed, commit=", ".join(c[:12] for c in commits),
                  sources=", ".join(Path(p).name for p in a.results))
    published, _, _ = parse_published()
    text += "\n" + versus_published(rows, published)
    text += "\n" + best_at_no_more_memory(rows, published)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not a.no_plots:
        pngs = plots(rows, out.parent)
        if pngs:
            text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    out.write_text(text, encoding="utf-8")
    print(f"{len(rows)} rows, {len(failed)} failed -> {out}")


if __name__ == "__main__":
    main()
