"""Rows: append-only JSON lines, one write per row, and the key that identifies a row."""

from __future__ import annotations

import json
import os
from pathlib import Path

KEY_FIELDS = ("model", "type", "seq_len", "ac", "attn", "hardware_label")


def row_key(row: dict) -> tuple:
    """What defines a row: model, type, seq_len, AC (with mode), attention, NxGPU."""
    return tuple(row.get(k) for k in KEY_FIELDS)


def append_row(path: str | Path, row: dict) -> None:
    """Append one row as a single write, flushed and fsynced (an interrupted sweep loses nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def load_rows(*paths: str | Path) -> list[dict]:
    """Every row in the given JSONL files (or folders of them); unreadable lines are skipped."""
    rows = []
    files = []
    for p in paths:
        p = Path(p)
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def done_keys(path: str | Path) -> set[tuple]:
    """Keys of the rows that already succeeded in a results file."""
    return {row_key(r) for r in load_rows(path) if r.get("status") == "ok"}
