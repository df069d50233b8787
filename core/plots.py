"""Grouped-bar PNGs, one per published model and hardware: for each published configuration,
prime-rl's published TPS beside stepbench's (same configuration, best at no more memory) and its
peers' (every other implementation of the rows: ``impl``, as each model family declares it, e.g.
the plain Hugging Face loop), with whiskers from repeated runs, and a second panel of peak GPU
memory for the same bars."""

from __future__ import annotations

import glob
import re
import sys
from pathlib import Path

from core.published import implementation, model_name
from core.results import row_key, write_atomic

#: (series, legend label, colour): Okabe-Ito, a colour-blind safe palette; peers get the rest in turn
SERIES = (("published", "prime-rl, published", "#E69F00"),
          ("same", "stepbench, same config", "#0072B2"),
          ("best", "stepbench, best at no more memory", "#009E73"))
PEER_COLOURS = ("#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")
NATIVE = "native"


def section(row: dict) -> str:
    """The published section a row stands for (the Hugging Face repo name, else the model)."""
    return model_name(row)


def config_key(p: dict) -> tuple:
    """What identifies a published configuration (the key of ``views``)."""
    return section(p), p["type"], p["seq_len"], p["ac"], p["attn"], p["hardware_label"]


def figure_groups(rows: list[dict], published: list[dict]) -> dict[tuple, tuple[list[dict], list[dict]]]:
    """(section, hardware) -> (its published rows, our training rows of that model and hardware), for
    every published model and hardware that at least one of our rows measured."""
    ours = [r for r in rows if "kind" not in r and r.get("status", "ok") == "ok"]
    out: dict[tuple, tuple[list[dict], list[dict]]] = {}
    for p in published:
        fig = (section(p), p["hardware_label"])
        mine = [r for r in ours if (section(r), r.get("hardware_label")) == fig]
        if mine:
            out.setdefault(fig, ([], mine))[0].append(p)
    return out


def _fastest(rows: list[dict], p: dict, impl: str, exact: bool) -> dict | None:
    """Our fastest row of implementation ``impl`` for published row ``p``: same model, type, sequence
    length, hardware, AC and attention backend; unless ``exact``, any AC and attention where no row
    has the published ones."""
    want = config_key(p)
    cands = [r for r in rows if implementation(r) == impl and (section(r), r["type"], r["seq_len"]) == want[:3]
             and r["hardware_label"] == want[5]]
    same = [r for r in cands if (r["ac"], r["attn"]) == want[3:5]]
    cands = same if exact or same else cands
    return max(cands, key=lambda r: r["tps"]) if cands else None


def _bar(row: dict | None, rows: list[dict], p: dict) -> tuple | None:
    """(TPS, peak GiB or None, lowest TPS, highest TPS, whether its AC or attention differs from
    published row ``p``) of a row; the TPS range is over its repeats: the ``runs_tps`` it carries,
    else the runs of its key on its commit."""
    if row is None:
        return None
    runs = row.get("runs_tps")
    if not runs:
        commit = (row.get("env") or {}).get("git_commit")
        runs = [r["tps"] for r in rows
                if row_key(r) == row_key(row) and (r.get("env") or {}).get("git_commit") == commit]
    runs = list(runs) + [row["tps"]]
    return row["tps"], row.get("peak_mem_gib"), min(runs), max(runs), (row["ac"], row["attn"]) != (p["ac"], p["attn"])


def colours(mine: list[dict]) -> dict[str, tuple[str, str]]:
    """Series -> (legend label, colour): ours and the published, then one per peer implementation."""
    out = {s: (label, c) for s, label, c in SERIES}
    peers = sorted({implementation(r) for r in mine} - {NATIVE})
    out.update({impl: (f"peer: {impl}", c) for impl, c in zip(peers, PEER_COLOURS)})
    return out


def _bars(pubs: list[dict], mine: list[dict], views: dict | None) -> dict[str, list]:
    """Series -> one bar (or None) per published row; series without any bar are left out."""
    out: dict[str, list] = {s: [] for s in colours(mine)}
    for p in pubs:
        view = views.get(config_key(p), {}) if views is not None else {"same": _fastest(mine, p, NATIVE, True)}
        out["published"].append((p["tps"], p["peak_mem_gib"], p["tps"], p["tps"], False))
        out["same"].append(_bar(view.get("same"), mine, p))
        out["best"].append(_bar(view.get("best"), mine, p))
        for impl in list(out)[len(SERIES):]:
            out[impl].append(_bar(_fastest(mine, p, impl, False), mine, p))
    return {s: bars for s, bars in out.items() if any(bars)}


def _draw(plt, title: str, pubs: list[dict], bars: dict[str, list], names: dict, path: Path) -> None:
    """Two panels (TPS with whiskers, peak memory) of grouped bars, the legend below them."""
    from matplotlib.patches import Patch

    n, k = len(pubs), len(bars)
    width = 0.8 / k
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, layout="constrained",
                                      figsize=(1.5 + n * max(1.0, 0.22 * k), 7.5))
    for i, (series, values) in enumerate(bars.items()):
        colour = names[series][1]
        for j, v in enumerate(values):
            if v is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            tps, mem, lo, hi, other = v
            style = {"color": colour, "edgecolor": "white", "linewidth": 0.5, "hatch": "///" if other else None}
            err = [[(tps - lo) / 1e3], [(hi - tps) / 1e3]] if hi > lo else None
            top.bar(x, tps / 1e3, width, **style, yerr=err,
                    error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"})
            labels = [(top, hi / 1e3, f"{tps / 1e3:.1f}")]
            if mem is not None:
                bottom.bar(x, mem, width, **style)
                labels.append((bottom, mem, f"{mem:.1f}"))
            for ax, y, text in labels:
                ax.annotate(text, (x, y), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                            rotation=90, fontsize=6)
    for ax, ylabel in ((top, "throughput (k tokens/s)"), (bottom, "peak GPU memory (GiB)")):
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    bottom.set_xticks(range(n), [f"{p['type']}\n{p['seq_len']}\n{p['ac']} {p['attn']}" for p in pubs], fontsize=7)
    bottom.set_xlim(-0.6, n - 0.4)
    top.set_title("whiskers: slowest to fastest of repeated runs (same key and commit); "
                  "hatched: another AC or attention than published; no bar: not measured", fontsize=8, color="#555555")
    fig.suptitle(title, fontsize=12)
    fig.legend(handles=[Patch(color=names[s][1], label=names[s][0]) for s in bars], loc="outside lower center",
               ncol=k, fontsize=8, frameon=False)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120, metadata={"Software": PLOT_SOFTWARE}))
    plt.close(fig)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


#: the PNG ``Software`` text of stepbench's plots (matplotlib's own, "Matplotlib version...", marks
#: the plots written before stepbench named itself there)
PLOT_SOFTWARE = "stepbench report"


def png_software(path: Path) -> str | None:
    """The ``Software`` text chunk of a PNG (read up to its image data), or None."""
    import struct

    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return None
        for _ in range(64):
            head = f.read(8)
            if len(head) < 8:
                return None
            size, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND") or size > 1 << 20:
                return None
            data = f.read(size)
            f.read(4)  # CRC
            if kind == b"tEXt" and data.startswith(b"Software\0"):
                return data[9:].decode("latin-1")
    return None


def foreign_plots(out_dir: Path, prefix: str) -> list[Path]:
    """Files named like the report's plots (``<prefix>-plot-*.png``) beside it that a plot must not
    write over: anything but a regular file (a FIFO, a device, a folder: never opened, so a FIFO
    cannot block the report), and PNG images that stepbench's plots (matplotlib's) did not write."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{prefix}-plot-")
    out = []
    for p in sorted(Path(out_dir).glob(f"{glob.escape(name)}*.png")):
        try:
            software = png_software(p) if p.is_file() else None
        except OSError:
            software = None
        if software is None or not software.startswith((PLOT_SOFTWARE, "Matplotlib")):
            out.append(p)
    return out


def plots(rows: list[dict], published: list[dict], out_dir: Path, prefix: str,
          views: dict | None = None) -> list[Path]:
    """Write one PNG per published model and hardware that our rows measured, named
    ``<prefix>-plot-<model>-<hardware>.png``, and return their paths ([] without matplotlib).
    ``views``: {config_key: {"same": row or None, "best": row or None}} from the caller; without it,
    "same" is our fastest native row of the configuration and "best" is left out."""
    import os

    # PNG files: matplotlib's Agg whatever MPLBACKEND says (a bogus one fails matplotlib's import,
    # which reads it): left out of the environment while matplotlib is imported, then put back
    saved = os.environ.pop("MPLBACKEND", None) if "matplotlib" not in sys.modules else None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (model, hw), (pubs, mine) in figure_groups(rows, published).items():
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{prefix}-plot-{model}-{hw}")
        path = out_dir / f"{name}.png"
        _draw(plt, f"{model} on {hw}: prime-rl published vs stepbench", pubs, _bars(pubs, mine, views),
              colours(mine), path)
        written.append(path)
    return written
