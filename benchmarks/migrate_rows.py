"""Bring committed rows to the current schema (3), once: labels only, never a measured figure.

    python benchmarks/migrate_rows.py benchmarks/results          # rewrites the JSONL files in place

Schema 3 rows carry what the report once worked out from a row's plugin names at read time:
``impl`` (who ran the model: "native", "hf" or "plain HF", the model family's own declaration) and
``own_loop`` (transformers' plain loop, which runs its own checkpointing and attention choice),
``variant`` (the options off their defaults; rows written before it existed get it from their
stored config), stored options whose default changed since the row ran spelled out as they ran
(``adapter.experts`` as a mode where old rows stored a boolean; ``ac.inside: false`` on recompute
rows from before the checkpoint moved inside the block), and
``sync_info.includes_gpu_tail`` on the rows of commit db4c6f0, which timed the hand-off together
with the GPU's tail of the step (their TPS is right, their hand-off figure is not). Every other
field is left byte-for-byte as it was (tests/test_migrate.py checks it against git).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: the commit whose rows timed the hand-off with the step's GPU tail (fixed in 17f6d6f)
GPU_TAIL_COMMIT = "db4c6f0"
PLAIN, HF = " (plain HF)", " (hf)"


def migrate(row: dict) -> dict:
    """The row at schema 3 (a row of another kind, or already migrated, comes back unchanged)."""
    if "kind" in row or row.get("schema", 0) >= 3 or "type" not in row:
        return row
    out = dict(row)
    model = str(row.get("model", ""))
    if row.get("family") == "hf" or model.endswith((PLAIN, HF)):
        out["impl"] = "plain HF" if model.endswith(PLAIN) else "hf"
        out["own_loop"] = model.endswith(PLAIN)
    elif row.get("status") == "ok" or row.get("family"):
        out["impl"] = "native"
    cfg = row.get("config")
    if isinstance(cfg, dict):
        adapter, ac = cfg.get("adapter") or {}, cfg.get("ac") or {}
        if isinstance(adapter.get("experts"), bool):
            cfg = {**cfg, "adapter": {**adapter, "experts": "grouped" if adapter["experts"] else "none"}}
        if "variant" not in row:
            from core.resolve import variant_label

            out["variant"] = variant_label(cfg)
        if ac.get("name") == "recompute" and "inside" not in ac:  # before ac.inside existed: around the block
            cfg = {**cfg, "ac": {**ac, "inside": False}}
        if cfg is not row["config"]:
            out["config"] = cfg
    commit = str((row.get("env") or {}).get("git_commit") or "")
    if commit.startswith(GPU_TAIL_COMMIT) and isinstance(row.get("sync_info"), dict):
        out["sync_info"] = {**row["sync_info"], "includes_gpu_tail": True}
    out["schema"] = 3
    return out


def migrate_file(path: Path) -> int:
    """Rewrite ``path`` with every row migrated (unreadable lines kept as they are); returns how many
    rows changed."""
    lines, changed = path.read_text(encoding="utf-8").splitlines(), 0
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            out.append(line)
            continue
        new = migrate(row) if isinstance(row, dict) else row
        changed += new is not row
        out.append(json.dumps(new, sort_keys=True) if new is not row else line)
    path.write_text("\n".join(out) + ("\n" if lines else ""), encoding="utf-8")
    return changed


def main(argv: list[str]) -> int:
    for folder in argv or [str(ROOT / "benchmarks" / "results")]:
        for f in sorted(Path(folder).rglob("*.jsonl")):
            n = migrate_file(f)
            if n:
                print(f"{f}: {n} rows migrated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
