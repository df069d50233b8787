"""prime-rl's published table: its rows, how each is written as stepbench overrides, and the
per-step work a row of ours must do to compare with it (``benchmarks/reference/``: the table as
published, and ``prime-rl-configs.yaml``, the data that maps its cells to config overrides)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from core.paths import reference_dir


PUBLISHED_NAME = "prime-rl-benchmarks-2026-01.md"
CONFIGS_NAME = "prime-rl-configs.yaml"
_NUM = re.compile(r"([-+]?[0-9.]+)")


def _value_and_change(cell: str) -> tuple[float, float | None]:
    nums = _NUM.findall(cell)
    return float(nums[0]), (float(nums[1]) if len(nums) > 1 else None)


def parse_published(path: Path | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """Rows, baseline rows (undoing the shown changes) and failed rows of a published report."""
    rows, baseline, failed, section = [], [], [], None
    for line in Path(path or reference_dir() / PUBLISHED_NAME).read_text(encoding="utf-8").splitlines():
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


@lru_cache(maxsize=1)
def configs() -> dict:
    """The published cells as overrides, and the published per-step work (``prime-rl-configs.yaml``)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(reference_dir() / CONFIGS_NAME), resolve=True)


def overrides_of(p: dict) -> list[str]:
    """The stepbench overrides of a published row: its model, type, AC, attention, hardware, seq_len."""
    c = configs()
    words = [c["model"][p["model"]], c["type"][p["type"]], c["ac"][p["ac"]], c["attn"][p["attn"]],
             c["hardware"][p["hardware"]], f"seq_len={p['seq_len']}"]
    return [w for ws in words for w in str(ws).split()]


def accepted_sync(type_: str) -> list[str]:
    """The Sync labels of rows that do at least a published row's hand-off (the first: exactly it)."""
    return list(configs()["work"]["sync"].get(type_, ["none"]))


def same_work(r: dict, p: dict, exact: bool = False) -> bool:
    """Whether our row does at least the published row's per-step work (2 micro-batches of one
    packed sample and a hand-off its Sync label names in the data); ``exact``: exactly that work."""
    work = configs()["work"]
    if r.get("micro_batches") != work["micro_batches"] or r.get("packing") != work["packing"]:
        return False
    ok = accepted_sync(p["type"])
    return r.get("sync") == ok[0] if exact else r.get("sync") in ok


def work_rank(r: dict, p: dict) -> int:
    """How close a row's hand-off is to the published one (0: exactly it), for picking among rows."""
    ok = accepted_sync(p["type"])
    return ok.index(r["sync"]) if r.get("sync") in ok else len(ok)


# ---------------------------------------------------------------------------- what a row says
def implementation(row: dict) -> str:
    """Who ran the model: the row's ``impl`` (its model family's declaration: "native" for
    stepbench's own model code, "hf", "plain HF", ...)."""
    return row.get("impl") or "native"


def model_name(row: dict) -> str:
    """The published model a row stands for: the Hugging Face repo name (else the row's model)."""
    hf = row.get("hf_name") or ""
    return hf.split("/")[-1] if hf else str(row.get("model"))


def section_name(row: dict) -> str:
    """Published section names: :func:`model_name`, with the implementation for rows not run by
    stepbench's own model code (they get sections of their own)."""
    impl = implementation(row)
    return model_name(row) if impl == "native" or not row.get("hf_name") else f"{model_name(row)} ({impl})"


def sync_per_step(r: dict) -> tuple[float, float]:
    """(hand-off seconds, seconds the step waited for it) per measured step, from the row's
    per-step lists (their first entry is the warm-up step's and is left out)."""
    info = r.get("sync_info") or {}
    total, exposed = (info.get("sync_s") or [])[1:], (info.get("sync_exposed_s") or [])[1:]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return (mean(total), mean(exposed)) if total else (float(r.get("sync_s_per_step") or 0.0), 0.0)


def host_gib(r: dict) -> float:
    """Pinned host memory of a row's activation strategy (GiB)."""
    info = r.get("ac_info") or {}
    if "host_offload_gib" in info:
        return float(info["host_offload_gib"])
    if "host_offload_bytes" in info:
        return float(info["host_offload_bytes"]) / 2**30
    return float(r.get("predicted_host_gib") or 0.0)


def row_args(r: dict):
    """The model shapes of a stored row: its family's flavour (KeyError where not registered here)."""
    from core.plugins import PluginError, registry

    try:
        return registry().get("model_family", r["family"]).factory.flavours[str(r["flavour"])]
    except PluginError:
        raise KeyError(r.get("family")) from None
