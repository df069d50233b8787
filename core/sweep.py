"""Sweeps: many rows, each in a fresh child process; a bad, refused or crashed row becomes a
failed row and the sweep goes on. Re-running resumes (rows already done are skipped, up to
``repeats`` successful rows per key)."""

from __future__ import annotations

import os
import selectors
import shlex
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from core.measure import say

ROOT = Path(__file__).resolve().parent.parent
CHILD_ENV = "STEPBENCH_CHILD_ROW_ID"
#: one id for every row of one invocation (a sweep's children inherit it; export it to make several
#: invocations on one machine one run): the report compares rows as "same call" by it
RUN_ENV = "STEPBENCH_RUN_ID"


def run_id() -> str:
    """This invocation's run id (set in the environment on first use, so child rows share it)."""
    if not os.environ.get(RUN_ENV):
        os.environ[RUN_ENV] = uuid.uuid4().hex[:16]
    return os.environ[RUN_ENV]

_SWEEP = {"done": 0, "failed": 0, "skipped": 0, "start": None}
_SWEEP_IDS: set[str] = set()  # rows this sweep started (its closing table)


def override_key(o: str) -> str:
    return o.lstrip("+~").split("=", 1)[0]


def merge_overrides(row: list[str], extra: list[str]) -> list[str]:
    """A sweep row's overrides with the command line's: the command line wins key by key (so
    ``+sweep=cpu_smoke +attn=fa2`` replaces each row's own ``+attn=...``)."""
    keys = {override_key(o) for o in extra}
    return [o for o in row if override_key(o) not in keys] + extra


def base_row(cfg_or_none, overrides: list[str]) -> dict:
    return {"id": uuid.uuid4().hex, "schema": 2, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": run_id(), "tag": getattr(cfg_or_none, "tag", "") if cfg_or_none is not None else "",
            "overrides": overrides}


def failed_row(base: dict, cfg, error: str, r: dict | None = None) -> dict:
    """A failed row with whatever labels are known (a row refused before it resolved still has
    its model, type, seq_len, AC and attention, so it reaches the report's Failed section)."""
    from core.resolve import config_adapter_label, row_labels

    labels = {}
    if cfg is not None:
        try:
            labels = row_labels(cfg, r, config_adapter_label(cfg), 1)
        except Exception:  # labels of a config that does not even compose
            labels = {}
    labels.setdefault("type", "?")
    labels.setdefault("model", " ".join(base.get("overrides", [])) or "?")
    return {**base, **labels, "status": "failed", "error": error}


def run_sweep_config(cfg, base_overrides: list[str]) -> None:
    """``+sweep=<name>``: run the rows listed in ``conf/sweep/<name>.yaml`` as a sweep."""
    from hydra import compose

    from core.results import append_row

    rows = list(cfg.sweep.rows)
    extra = [o for o in base_overrides if override_key(o) != "sweep"]
    say(f"sweep '{cfg.sweep.get('name', '?')}': {len(rows)} rows x {cfg.repeats} -> {cfg.results}")
    for spec in rows:
        overrides = merge_overrides(shlex.split(spec), extra)
        try:
            row_cfg = compose("bench", overrides=overrides)
        except Exception as e:  # a bad row in the sweep file is a failed row
            _SWEEP["failed"] += 1
            msg = f"refused: bad overrides ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
            say(f"[row] {spec}: {msg}")
            append_row(cfg.results, failed_row(base_row(None, overrides), None, msg))
            continue
        sweep_row(row_cfg, overrides, total=len(rows))
    say(f"sweep done: {_SWEEP['done']} done, {_SWEEP['failed']} failed, {_SWEEP['skipped']} skipped")
    from core.results import load_rows

    mine = [r for r in load_rows(cfg.results) if r.get("id") in _SWEEP_IDS]
    if mine:
        print("\n" + table(mine), flush=True)


def table(rows: list[dict]) -> str:
    """A short fixed-width table of rows (printed last by a sweep)."""
    head = (f"{'model':<15} {'type':<14} {'seq':>6} {'AC':<20} {'attn':<5} {'sync':<18} {'MFU':>6} {'TPS':>8} "
            f"{'cv':>5} {'step/mb':>8} {'peak':>6} {'host':>5} {'sync s':>7} {'roofl':>5} {'attain':>6}")
    out = [head]
    for r in rows:
        if r.get("status") != "ok":
            cell = lambda k, d="-": str(r.get(k) if r.get(k) is not None else d)  # noqa: E731 (refused: few labels)
            out.append(f"{cell('model', '?'):<15} {cell('type'):<14} {cell('seq_len', ''):>6} "
                       f"{cell('ac'):<20} {cell('attn'):<5} FAILED: {cell('error')[:100]}")
            continue
        sp = r.get("spread") or {}
        host = (r.get("ac_info") or {}).get("host_offload_gib") or 0.0
        out.append(f"{r['model']:<15} {r['type']:<14} {r['seq_len']:>6} {r['ac']:<20} {r['attn']:<5} "
                   f"{str(r.get('sync')):<18} {r['mfu']:5.1f}% {r['tps'] / 1e3:7.2f}k {100 * sp.get('cv', 0):4.1f}% "
                   f"{r['step_time']:7.3f}s {r['peak_mem_gib'] or 0:6.1f} {host:5.1f} "
                   f"{r.get('sync_s_per_step', 0):7.3f} {100 * r['roofline_frac']:4.0f}% "
                   f"{100 * (r.get('step_budget') or {}).get('attainable', float('nan')):5.0f}%"
                   + (f"  {r['variant']}" if r.get("variant") else ""))
    return "\n".join(out)


def sweep_row(cfg, overrides: list[str], total: int | None = None) -> int:
    """One row of a sweep (``repeats`` times), each run in a fresh child process."""
    from core.resolve import UserError, config_adapter_label, resolve, row_labels
    from core.results import append_row, done_keys, read_rows, row_key

    if _SWEEP["start"] is None:
        _SWEEP["start"] = time.time()
        for problem in read_rows(cfg.results)[1]:  # said once per sweep; such lines are skipped
            say(f"results: skipped unreadable line {problem}")
    n = sum(_SWEEP[k] for k in ("done", "failed", "skipped")) + 1
    elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - _SWEEP["start"]))
    of = f"/{total}" if total else ""
    say(f"[row {n}{of}] {' '.join(overrides)}  (done {_SWEEP['done']}, failed {_SWEEP['failed']}, "
        f"skipped {_SWEEP['skipped']}, {elapsed} elapsed)")
    try:
        r = resolve(cfg)
    except UserError as e:
        _SWEEP["failed"] += 1
        append_row(cfg.results, failed_row(base_row(cfg, overrides), cfg, f"refused: {e}"))
        say(f"  refused: {e}")
        return 0
    except Exception as e:  # noqa: BLE001 - a plugin that breaks while resolving fails its row only
        _SWEEP["failed"] += 1
        append_row(cfg.results, failed_row(base_row(cfg, overrides), cfg, f"refused: {type(e).__name__}: {e}"))
        say(f"  refused: {type(e).__name__}: {e}")
        return 0
    labels = row_labels(cfg, r, config_adapter_label(cfg), 1)
    have = 0 if cfg.redo else done_keys(cfg.results).get(row_key(labels), 0)
    todo = max(0, int(cfg.repeats) - have)
    if not todo:
        _SWEEP["skipped"] += 1
        say(f"  skipped: already in results {have}x (redo=true runs it again)")
        return 0
    for i in range(todo):
        if todo > 1:
            say(f"  repeat {have + i + 1}/{cfg.repeats}")
        run_child(cfg, overrides, r, labels)
    return 0


def stream_child(cmd: list[str], env: dict, timeout_s: float, out=None, prefix: str = "    ") -> tuple[int, list[str]]:
    """Run ``cmd`` from the repository root, echoing its output (stdout and stderr, line by line,
    with ``prefix``) to ``out`` (default: stderr) as it comes; return its exit status and its last
    50 lines. Past ``timeout_s`` the child is killed: status -1 and a TimeoutError line."""
    out = out or sys.stderr
    tail: list[str] = []
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + float(timeout_s)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        if time.time() > deadline:
            proc.kill()
            proc.wait()
            return -1, tail + [f"TimeoutError: the row exceeded {timeout_s:g} s"]
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            if not line:
                break
            out.write(prefix + line)
            out.flush()
            tail = (tail + [line.rstrip()])[-50:]
    return proc.wait(), tail


def child_error(rc: int, tail: list[str]) -> str:
    """The one line a failed row keeps for a child that wrote no row of its own: a refusal's line
    (status 2: the bench refused the row before measuring, saying what to type instead), else the
    last line that names an error, else the exit status."""
    said = [ln for ln in tail if ln.startswith("stepbench: ")]
    if rc == 2 and said:
        err = said[-1]
    else:
        err = next((ln for ln in reversed(tail) if "Error" in ln or "error" in ln), None)
    err = err or (f"child exited with status {rc}" + (f" (signal {-rc})" if rc < 0 else ""))
    return err.strip().removeprefix("stepbench: ")


def run_child(cfg, overrides: list[str], r: dict, labels: dict) -> None:
    from core.results import append_row, load_rows

    base = base_row(cfg, overrides)
    _SWEEP_IDS.add(base["id"])
    cmd = [sys.executable, "-m", "core.bench", *overrides]
    rc, tail = stream_child(cmd, dict(os.environ, **{CHILD_ENV: base["id"]}), float(cfg.row_timeout_s))
    written = any(x.get("id") == base["id"] for x in load_rows(cfg.results))
    if rc == 0 and written:
        _SWEEP["done"] += 1
        return
    _SWEEP["failed"] += 1
    if not written:
        append_row(cfg.results, {**base, **labels, "status": "failed", "error": child_error(rc, tail)})
