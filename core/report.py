"""``python -m core.report``: rows -> BENCHMARKS.md (prime-rl's published format) and PNG plots.

    python -m core.report                      # benchmarks/results/*.jsonl -> benchmarks/BENCHMARKS.md
    python -m core.report --save-baseline      # store the current rows as the baseline
    python -m core.report --results F.jsonl --out X.md --baseline B.jsonl --host-budget-gib 32

One section per model, rows ordered by type then sequence length. Repeated runs of a row (same
key) are shown as their median run by TPS, with the spread of step times and the number of runs;
a :warning: marks a spread (coefficient of variation) above 5%. Only rows from a clean, named
commit are in the headline tables; dirty or unknown-commit rows are listed apart. Two comparison
views, each saying what it compares: **same configuration** (the headline) and **best at no more
memory** (GPU peak and pinned host memory both within budget). Failed rows are listed last.
Nothing is written when no row can be read.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.provenance import row_provenance  # noqa: E402
from core.published import (host_gib, implementation, model_name, parse_published, same_work,  # noqa: E402
                            row_args, section_name, sync_per_step, work_rank)
from core.results import append_row, read_rows, row_key, row_variant  # noqa: E402
DIFF_MIN, REGRESSION, SPREAD_WARN = 1.0, 5.0, 0.05
HEADER = """# Performance Benchmarks

Automated benchmark results for stepbench (`python -m core.bench`), in prime-rl's `--bench` format.

**Last Updated:** {updated}  
**Commit:** `{commit}`  
**Rows:** {nrows} successful, {nfailed} failed, from {sources}

> :warning: indicates regression > 5% from baseline
> diffs shown when abs(change) >= 1.0% (except regressions, which always show diffs)

> :clock10: The Step Time shown is the time taken per micro batch. This differs from what gets displayed in the bench table which is the total step time.
"""
EXTENDED_NOTE = """
> TPS is tokens over the total measured time; Spread is the coefficient of variation of whole-step
> times (:warning: above 5%) over n measured steps; Runs is the number of repeated runs (fresh
> processes) of the row, of which the median by TPS is shown. Sync is the weight hand-off timed
> inside each step (RL rows: `filesystem` as prime-rl's rows; `none` for SFT), with its seconds per
> measured step (and, overlapped, the part the step waited for). Host is the pinned
> host memory of offload. Roofline: the step time the measured matmul and attention ceilings of
> the backend that ran allow, over the measured step time. Busy: the share of one extra, profiled
> step's wall time in which the GPU ran a kernel or copy (low: the step is host-bound). Compiled
> also names the row's variant, the options it ran off their defaults (e.g. `fsdp=true`), where any.
"""
COLUMNS = "| Type | SeqLen | AC | Attn | Hardware | MFU | TPS | Step Time | Peak Mem |\n" \
          "|------|--------|----|----|----------|-----|-----|-----------|----------|"
EXT_COLUMNS = ("| Type | SeqLen | AC | Attn | Hardware | Sync | Compiled | MFU | TPS | Step Time | Peak Mem | Host "
               "| Spread (n) | Runs | Roofline | Busy |\n"
               "|------|--------|----|----|----------|------|----------|-----|-----|-----------|----------|------"
               "|------------|------|----------|------|")


class ReportError(Exception):
    """Reported as one line, exit status 2; nothing is written."""





def ratio_summary(label: str, ratios: list[float]) -> str:
    """The closing line of a comparison view over its (non-empty) ratios."""
    return f"\n{label}, {len(ratios)} rows: geomean {_geomean(ratios):.2f}x, min {min(ratios):.2f}x."


def fmt_change(value: float, base: float | None) -> str:
    if not base:
        return ""
    change = 100.0 * (value - base) / base
    if change < -REGRESSION:
        return f" :warning: ({change:+.1f}%)"
    return f" ({change:+.1f}%)" if abs(change) >= DIFF_MIN - 1e-9 else ""




def table_line(r: dict, base: dict | None, extended: bool = False) -> str:
    mfu = f"{r['mfu']:.1f}%" + fmt_change(r["mfu"], base and base.get("mfu"))
    tps = f"{r['tps'] / 1e3:.2f}k" + fmt_change(r["tps"], base and base.get("tps"))
    peak = f"{r['peak_mem_gib']:.1f} GiB" if r.get("peak_mem_gib") is not None else "-"
    if not extended:
        return (f"| {r['type']} | {r['seq_len']} | {r['ac']} | {r['attn']} | {r['hardware_label']} | {mfu} | {tps} "
                f"| {r['step_time']:.2f}s | {peak} |")
    sp = r.get("spread") or {}
    cv = sp.get("cv")
    spread = "-" if cv is None else f"{100 * cv:.1f}% ({sp.get('n')})" + (" :warning:" if cv > SPREAD_WARN else "")
    host = host_gib(r)
    roof = r.get("roofline_frac")
    busy = "-" if r.get("gpu_busy") is None else f"{100 * r['gpu_busy']:.0f}%"
    sync = r.get("sync") or "-"
    if sync not in ("-", "none"):
        total, exposed = sync_per_step(r)
        sync += f" {total:.2f}s" + (f" ({exposed:.2f}s exposed)" if "overlap" in sync else "")
    variant = f", {row_variant(r)}" if row_variant(r) else ""  # an option off its default (an A/B of ours)
    return (f"| {r['type']} | {r['seq_len']} | {r['ac']} | {r['attn']} | {r['hardware_label']} | "
            f"{sync} | {'yes' if r.get('compile') else 'no'}{variant} | {mfu} | {tps} | "
            f"{r['step_time']:.2f}s | {peak} | {f'{host:.1f} GiB' if host else '-'} | {spread} | "
            f"{r.get('runs', 1)} | {f'{100 * roof:.0f}%' if roof else '-'} | "
            f"{busy} |")


def median_runs(rows: list[dict]) -> list[dict]:
    """One row per key: the median run by TPS among the repeats of the newest commit that ran the
    key (with ``runs`` and the TPS of every run), in the order keys first appeared (by time)."""
    groups: dict = {}
    for r in sorted(rows, key=lambda r: str(r.get("time", ""))):
        if r.get("status") == "ok":
            groups.setdefault(row_key(r), []).append(r)
    out = []
    for rs in groups.values():
        newest = (rs[-1].get("env") or {}).get("git_commit")
        rs = [r for r in rs if (r.get("env") or {}).get("git_commit") == newest]
        ranked = sorted(rs, key=lambda r: r["tps"])
        med = dict(ranked[(len(ranked) - 1) // 2])
        med["runs"], med["runs_tps"] = len(rs), [r["tps"] for r in rs]
        out.append(med)
    return out


def latest_ok(rows: list[dict]) -> list[dict]:
    """The newest (by its ``time``) successful row of each key, in the order keys first appeared."""
    by_key: dict = {}
    for r in sorted(rows, key=lambda r: str(r.get("time", ""))):
        if r.get("status") == "ok":
            by_key[row_key(r)] = r
    return list(by_key.values())


def render(rows: list[dict], baseline: list[dict] = (), failed: list[dict] = (), commit: str = "unknown",
           sources: str = "", updated: str | None = None) -> str:
    """The markdown report (sections in first-appearance order, rows sorted by type and seq_len).
    Rows that carry step spreads (stepbench's) get the extended columns; published rows keep
    prime-rl's nine."""
    base = {row_key(b): b for b in baseline}
    sections: dict[str, list[dict]] = {}
    for r in rows:
        sections.setdefault(section_name(r), []).append(r)
    updated = updated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    extended = any("spread" in r for r in rows)
    out = [HEADER.format(updated=updated, commit=commit, nrows=len(rows), nfailed=len(failed),
                         sources=sources or "-")]
    if extended:
        out.append(EXTENDED_NOTE)
    for name, rs in sections.items():
        rs = sorted(rs, key=lambda r: (r["type"], int(r["seq_len"])))
        out.append(f"## {name}\n\n{EXT_COLUMNS if extended else COLUMNS}")
        out += [table_line(r, base.get(row_key(r)), extended) for r in rs]
        out.append("")
    if failed:
        out.append("## Failed Benchmarks\n")
        for f in failed:
            who = f.get("hf_name") or f.get("model") or " ".join(f.get("overrides") or []) or "?"
            out.append(f"- **{who}** ({f.get('type', '?')}) on {f.get('hardware_label', '?')}: {f.get('error')}")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------- the published file




# ---------------------------------------------------------------------------- comparison views


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def _pub_key(r: dict) -> tuple:
    return section_name(r), r["type"], r["seq_len"], r["hardware_label"]


def versus_published(rows: list[dict], published: list[dict]) -> str:
    """View (a), same configuration: each published row beside ours with the same model, type,
    seq_len, AC, attention, GPUs and per-step work (2 micro-batches, one packed sample, and for RL
    the filesystem weight hand-off)."""
    ours = {}
    # among rows of one key, the one doing the published per-step work: the default configuration's
    # where measured (a variant, e.g. fsdp=true, runs the same work with an option off its default)
    for r in sorted(rows, key=lambda r: bool(row_variant(r))):
        ours.setdefault((*_pub_key(r), r["ac"], r["attn"]), []).append(r)
    # the row doing exactly the published work where there is one, else the one closest to it
    lines = ["## View (a): same configuration\n",
             "Each published prime-rl row beside the stepbench row with the same model, type, sequence "
             "length, AC, attention, GPUs and per-step work: 2 micro-batches of one packed sample, and "
             "the published hand-off (prime-rl's bench mode: RL Full gathers the bf16 weights to the host "
             "every step, RL LoRA hands nothing off) or more (a file written every step: the Sync column "
             "says which), timed inside every step. stepbench's LoRA rows also take the optimizer step "
             "that prime-rl's bench mode skipped. `compile` is ours to choose (it does not change the "
             "work) and is shown. Ratio = our TPS / prime-rl's TPS.\n",
             "| Model | Type | SeqLen | AC | Attn | Hardware | Sync (s/step) | Compiled | TPS (ours / prime-rl) | "
             "ratio | Peak Mem (ours / prime-rl) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for p in published:
        cands = [x for x in ours.get((*_pub_key(p), p["ac"], p["attn"]), []) if same_work(x, p)]
        r = min(cands, key=lambda x: (work_rank(x, p), bool(row_variant(x)))) if cands else None
        if r is None:
            continue
        ratio = r["tps"] / p["tps"]
        ratios.append(ratio)
        lines.append(f"| {section_name(p)} | {p['type']} | {p['seq_len']} | {p['ac']} | {p['attn']} | "
                     f"{p['hardware_label']} | {r.get('sync')} ({sync_per_step(r)[0]:.2f}) | "
                     f"{'yes' if r.get('compile') else 'no'} | {r['tps'] / 1e3:.2f}k / {p['tps'] / 1e3:.2f}k | "
                     f"{ratio:.2f}x | {r['peak_mem_gib']:.1f} / {p['peak_mem_gib']:.1f} GiB |")
    if ratios:
        lines.append(f"\nSame configuration, {len(ratios)} rows: geomean {_geomean(ratios):.2f}x, "
                     f"min {min(ratios):.2f}x, max {max(ratios):.2f}x.")
    else:
        lines.append("\nNo row of ours matches a published row with the same per-step work yet.")
    return "\n".join(lines) + "\n"


def best_at_no_more_memory(rows: list[dict], published: list[dict], host_budget_gib: float = 32.0) -> str:
    """View (b): for each published row on hardware we measured, our fastest row of the same
    model, type, sequence length, GPUs and per-step work, any AC or attention, whose GPU peak is
    at most the published peak and whose pinned host memory is within ``host_budget_gib``."""
    lines = ["## View (b): fastest stepbench configuration at no more memory\n",
             "For each published row: our fastest row of the same model, type, sequence length, GPUs "
             "and at least the published per-step work (2 micro-batches of one packed sample; the published "
             "hand-off or more, overlapped with the next step or not), with any AC and attention backend, "
             "whose GPU peak is "
             f"at most the published row's and whose pinned host memory is at most {host_budget_gib:g} GiB "
             "(`--host-budget-gib`). The winning configuration is named.\n",
             "| Model | Type | SeqLen | Hardware | prime-rl (AC, Attn) | TPS | Peak Mem | stepbench (AC, Attn, Sync) "
             "| TPS | Peak Mem | Host | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    hw = {r["hardware_label"] for r in rows}
    ratios = []
    for p in published:
        if p["hardware_label"] not in hw:
            continue
        cands = [r for r in rows if _pub_key(r) == _pub_key(p) and same_work(r, p)
                 and r.get("peak_mem_gib") is not None and r["peak_mem_gib"] <= p["peak_mem_gib"]
                 and host_gib(r) <= host_budget_gib]
        if not cands:
            continue
        b = max(cands, key=lambda r: r["tps"])
        ratios.append(b["tps"] / p["tps"])
        h = host_gib(b)
        lines.append(f"| {section_name(p)} | {p['type']} | {p['seq_len']} | {p['hardware_label']} | "
                     f"{p['ac']}, {p['attn']} | {p['tps'] / 1e3:.2f}k | {p['peak_mem_gib']:.1f} GiB | "
                     f"{b['ac']}, {b['attn']}, {b.get('sync')} | {b['tps'] / 1e3:.2f}k | {b['peak_mem_gib']:.1f} GiB | "
                     f"{f'{h:.1f} GiB' if h else '-'} | {b['tps'] / p['tps']:.2f}x |")
    if ratios:
        lines.append(ratio_summary("Best at no more memory", ratios))
    return "\n".join(lines) + "\n"


def left_out(rows: list[dict]) -> str:
    """Rows kept out of the headline: from a dirty tree or an unknown commit."""
    if not rows:
        return ""
    lines = ["## Rows left out of the headline (dirty tree or unknown commit)\n",
             "| Model | Type | SeqLen | AC | Attn | Hardware | TPS | commit | why |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        env = r.get("env") or {}
        lines.append(f"| {section_name(r)} | {r['type']} | {r['seq_len']} | {r['ac']} | {r['attn']} | "
                     f"{r['hardware_label']} | {r['tps'] / 1e3:.2f}k | {str(env.get('git_commit'))[:12]} | "
                     f"{row_provenance(r)} |")
    return "\n".join(lines) + "\n"



#: (recorded commit, source digest) -> the commit whose sources have that digest, or None
_DIGESTS: dict = {}


def verify_source(r: dict) -> None:
    """Check the source digest a row recorded against its commit's. A row whose digest differs ran
    other code: where a later commit has exactly that digest (a device copy whose stale ``.git``
    named an older commit), the row is taken as that commit's, the recorded one kept beside it;
    else it is marked dirty. Rows of commits git does not know keep their recorded flags."""
    from core.provenance import commit_with_digest, source_digest_at

    env = r.get("env") or {}
    commit, digest = env.get("git_commit"), env.get("source_digest")
    if not commit or not digest or env.get("git_dirty") is not False:
        return
    at = source_digest_at(commit)  # cached per commit
    if at is None or at == digest:
        return
    key = (commit, digest)
    if key not in _DIGESTS:
        _DIGESTS[key] = commit_with_digest(digest, commit)
    if _DIGESTS[key]:
        r["env"] = {**env, "git_commit": _DIGESTS[key], "git_commit_recorded": commit,
                    "commit_why": "its source digest is this commit's"}
    else:
        r["env"] = {**env, "git_dirty": True, "dirty_why": "source digest differs from the commit's"}


def gather(results: list[str]) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(headline rows: the median run of each key, rows left out for provenance, failed rows, every
    clean run) from the results files."""
    missing = [p for p in results if not Path(p).exists()]
    if missing:
        raise ReportError(f"no such results file or folder: {', '.join(missing)} (the default is "
                          "--results benchmarks/results)")
    all_rows, problems = read_rows(*results)
    for p in problems:
        print(f"report: skipped {p}", file=sys.stderr)
    all_rows = [r for r in all_rows if not r.get("profiled") and "memory_profile" not in r and "kind" not in r]
    ok = [r for r in all_rows if r.get("status") == "ok" and "type" in r and "mfu" in r]
    for r in ok:
        verify_source(r)
    clean = [r for r in ok if row_provenance(r) == "clean"]
    dirty = [r for r in ok if row_provenance(r) != "clean"]
    ok_keys = {row_key(r) for r in ok}
    failed = [r for r in all_rows if r.get("status") == "failed" and row_key(r) not in ok_keys]
    if not ok and not failed:
        raise ReportError(f"no rows in {', '.join(results)}: nothing written (point --results at the rows' "
                          "JSONL files or folder)")
    return median_runs(clean), latest_ok(dirty), failed, clean


def same_run(a: dict, b: dict) -> bool:
    """Whether two row dicts are one run (copies of it: the headline's median is a copy)."""
    return all(a.get(k) == b.get(k) for k in ("id", "time", "tps"))


def same_call(a: dict, b: dict, window_s: float = 1800.0) -> bool:
    """Whether two rows ran in one call on one machine: the same ``run_id`` where both have one;
    for older rows, the same commit and GPU within ``window_s`` (a lease is at most 30 minutes)."""
    if a.get("run_id") and b.get("run_id"):
        return a["run_id"] == b["run_id"]
    ea, eb = a.get("env") or {}, b.get("env") or {}
    if not ea.get("git_commit") or ea.get("git_commit") != eb.get("git_commit") or ea.get("gpu") != eb.get("gpu"):
        return False
    try:
        ta, tb = (datetime.fromisoformat(str(r["time"])) for r in (a, b))
    except (KeyError, ValueError):
        return False
    return abs((ta - tb).total_seconds()) <= window_s


def peers_view(rows: list[dict], published: list[dict], failed: list[dict] = (), pool: list[dict] = ()) -> str:
    """For each published row: stepbench's native row, the ``hf`` row with the same plugins and the
    plain HF loop's row (same model, type, sequence length, GPUs and per-step work), side by side.
    The hf and plain HF rows are taken from the native row's own call where ``pool`` (every run,
    not only each key's median) has one there. A plain HF row that only failed (e.g. out of memory
    on the full logits) shows its error."""
    by_impl: dict = {"native": {}, "hf": {}, "plain HF": {}}
    runs: dict = {"native": {}, "hf": {}, "plain HF": {}}

    def peer_key(r, impl):
        key = (model_name(r), r["type"], r["seq_len"], r["hardware_label"])
        # plain HF: its own AC; its attention "sdpa" (torch's pick) or the kernel it was held to
        return (*key, str(r["attn"]).lower()) if impl == "plain HF" else (*key, r["ac"], r["attn"])

    for r in rows:  # default configurations only (a variant, e.g. fsdp=true, is an A/B of ours)
        if same_work(r, {"type": r["type"]}) and not row_variant(r):
            by_impl[implementation(r)].setdefault(peer_key(r, implementation(r)), r)
    for r in pool:
        impl = implementation(r)
        if impl in runs and same_work(r, {"type": r["type"]}) and not row_variant(r):
            runs[impl].setdefault(peer_key(r, impl), []).append(r)

    def partner(impl, key, nat):
        here = [r for r in runs[impl].get(key, []) if nat and same_call(nat, r)]
        return here[-1] if here else by_impl[impl].get(key)

    def pairs_of_call(nat_key, plain_key):
        """Every (native run, plain HF run) of one call for these keys, oldest plain run first."""
        return [(n, pl) for pl in runs["plain HF"].get(plain_key, []) for n in runs["native"].get(nat_key, [])
                if same_call(n, pl)]

    def native_of(key, pairs):
        """The key's native row; where it has no plain HF run of its own call (``pairs``) but another
        native run of the key has one, the latest such run (the view compares rows of one call)."""
        nat = by_impl["native"].get(key)
        paired = [n for n, _ in pairs]
        if nat is None or not paired or any(n is nat or same_run(n, nat) for n in paired):
            return nat
        return max(paired, key=lambda n: runs["native"][key].index(n))
    plain_failed = {}
    for r in failed:
        if implementation(r) == "plain HF" and all(k in r for k in ("type", "seq_len", "hardware_label")):
            plain_failed.setdefault((model_name(r), r["type"], r["seq_len"], r["hardware_label"],
                                     str(r.get("attn")).lower()), r)
    if not by_impl["hf"] and not by_impl["plain HF"] and not plain_failed:
        return ""
    cell = lambda r: f"{r['tps'] / 1e3:.2f}k ({r['peak_mem_gib']:.1f} GiB)" if r and r.get("peak_mem_gib") \
        else (f"{r['tps'] / 1e3:.2f}k" if r else "-")  # noqa: E731
    lines = ["## Peers: stepbench against the Hugging Face loop\n",
             "For each published row, measured by the same harness (same timing, data, loss and per-step "
             "work): **native** = stepbench's model code with the row's plugins; **hf** = the transformers "
             "model (`model=hf_*`) with the same plugins; **plain HF** = what users run today "
             "(`model.plain=true`: transformers' forward with `attn_implementation=\"sdpa\"`, its gradient "
             "checkpointing, the loss over full fp32 logits, LoRA through peft), named with its AC and "
             "attention: `sdpa` = torch's pick of kernel (cuDNN attention on Hopper, faster than FA2); "
             "**plain HF, same kernel** = the same loop held to the published row's attention kernel "
             "(`+attn=fa2`: torch's vendored FlashAttention-2, the kernel of stepbench's FA2 rows here), the "
             "matching row. Cells: TPS (peak memory); an hf cell from another call than the native row says "
             "so; a plain HF row that failed (e.g. out of memory on its full logits) shows the error. "
             "Ratios = native TPS / that plain HF row's TPS, counted only where "
             "both rows ran in the same call on the same machine (else shown in parentheses and left out "
             "of the summary).\n",
             "| Model | Type | SeqLen | AC | Attn | Hardware | prime-rl | native | hf | plain HF | native / plain HF "
             "| plain HF, same kernel | native / same kernel |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios: dict = {"plain": [], "same": []}

    def versus(nat, other, which, pair=None):
        """The ratio of a plain HF column: of the native and plain runs of one call where there are
        (with that native run's TPS where it is not the one shown), else of the rows shown in
        parentheses."""
        if pair:
            n, pl = pair
            x = n["tps"] / pl["tps"]
            ratios[which].append(x)
            shown = nat is not None and same_run(n, nat)
            return f"{x:.2f}x" + ("" if shown else f" (native {n['tps'] / 1e3:.2f}k of its call)")
        if not (nat and other):
            return "-"
        return f"({nat['tps'] / other['tps']:.2f}x, not one call)"

    def plain_cell(r, broke):
        if r:
            return f"{cell(r)} [{r['ac']}, {r['attn']}]"
        if broke:
            return f"failed: {str(broke.get('error') or 'error').split(':')[0]} [{broke.get('ac')}, {broke.get('attn')}]"
        return "-"

    for p in published:
        key = (p["model"], p["type"], p["seq_len"], p["hardware_label"])
        nat_key = (*key, p["ac"], p["attn"])
        pairs, pairs_same = pairs_of_call(nat_key, (*key, "sdpa")), pairs_of_call(nat_key, (*key, p["attn"].lower()))
        nat = native_of(nat_key, pairs + pairs_same)
        hfr = partner("hf", nat_key, nat)
        pair, pair_same = (pairs or [None])[-1], (pairs_same or [None])[-1]
        plain = pair[1] if pair else partner("plain HF", (*key, "sdpa"), nat)
        same = pair_same[1] if pair_same else partner("plain HF", (*key, p["attn"].lower()), nat)
        broke = plain_failed.get((*key, "sdpa")) if not plain else None
        broke_same = plain_failed.get((*key, p["attn"].lower())) if not same else None
        if not (hfr or plain or broke or same or broke_same):
            continue
        hf_cell = cell(hfr) + (" (other call)" if hfr and nat and not same_call(nat, hfr) else "")
        lines.append(f"| {p['model']} | {p['type']} | {p['seq_len']} | {p['ac']} | {p['attn']} | {p['hardware_label']} "
                     f"| {p['tps'] / 1e3:.2f}k | {cell(nat)} | {hf_cell} | {plain_cell(plain, broke)} "
                     f"| {versus(nat, plain, 'plain', pair)} | {plain_cell(same, broke_same)} "
                     f"| {versus(nat, same, 'same', pair_same)} |")
    if ratios["plain"]:
        lines.append(ratio_summary("native / plain HF", ratios["plain"]))
    if ratios["same"]:
        lines.append(ratio_summary("native / plain HF with the same attention kernel", ratios["same"]))
    return "\n".join(lines) + "\n"


def reruns_view(pool: list[dict]) -> str:
    """Rows run again on the same code in another call (often another lent machine): each call's
    TPS (its median run) and their spread, max / min - 1. The same code means the same
    ``env.source_digest`` (a digest of the source files), so the spread is what a rerun gives:
    machine and run-to-run variation, no code change."""
    groups: dict = {}
    for r in sorted(pool, key=lambda r: str(r.get("time", ""))):
        digest = (r.get("env") or {}).get("source_digest")
        if digest:
            groups.setdefault((row_key(r), digest), []).append(r)
    lines, spreads = [], []
    for (_, digest), rs in groups.items():
        calls: list[list[dict]] = []
        for r in rs:
            home = next((c for c in calls if same_call(c[0], r)), None)
            home.append(r) if home is not None else calls.append([r])
        if len(calls) < 2:
            continue
        tps = [sorted(x["tps"] for x in c)[(len(c) - 1) // 2] for c in calls]
        spread = max(tps) / min(tps) - 1
        spreads.append(spread)
        r = rs[0]
        each = ", ".join(f"{t / 1e3:.2f}k ({str((c[0].get('env') or {}).get('git_commit') or '?')[:7]}, "
                         f"{str(c[0].get('time', '?'))[:10]})" for t, c in zip(tps, calls))
        lines.append(f"| {r['model']} | {r['type']} | {r['seq_len']} | {r['ac']} | {r['attn']} | "
                     f"{r.get('hardware_label', '-')} | {r.get('variant') or '-'} | {digest[:8]} | {each} | "
                     f"{100 * spread:.1f}% |")
    if not lines:
        return ""
    head = ["## Reruns: the same row on the same code in another call\n",
            "Rows measured in more than one device call (a fresh process, often on another lent machine) "
            "with the same source code (`env.source_digest`): each call's TPS (its median run) with the "
            "commit that ran it, and the spread max / min - 1. Differences here are the call's (machine, "
            "where it changed, and run to run), not the code's.\n",
            "| Model | Type | SeqLen | AC | Attn | Hardware | Variant | Source | TPS per call | Spread |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    srt = sorted(spreads)
    tail = f"\n{len(spreads)} rows run again: median spread {100 * srt[(len(srt) - 1) // 2]:.1f}%, " \
           f"largest {100 * srt[-1]:.1f}%."
    return "\n".join(head + lines) + "\n" + tail + "\n"


def step_budget_of(r: dict) -> dict | None:
    """A row's ``step_budget`` (:func:`core.flops.step_budget`): stored in rows since it was added,
    worked out from the stored row for older rows of one packed document per micro-batch."""
    if r.get("step_budget"):
        return r["step_budget"]
    from core import flops
    from core.plugins import make

    c, ceil = r.get("config") or {}, r.get("ceilings")
    if r.get("packing") != "single" or not ceil or not c.get("ac") or not r.get("step_time") \
            or (r.get("sync_info") or {}).get("includes_gpu_tail"):
        return None  # several documents, no ceilings, or a hand-off figure that includes GPU work
    try:
        a = row_args(r)
        ac, adapter = make("ac", c["ac"]), make("adapter", c["adapter"])
    except Exception:  # a row of a family or plugin not installed here
        return None
    sf = flops.micro_batch_flops(a, [int(r["seq_len"])], adapter.frozen_base,
                                 (r.get("counts") or {}).get("adapter", 0), ac.recompute)
    total, exposed = sync_per_step(r)
    handoff = exposed if "overlap" in str(r.get("sync")) else total
    return flops.step_budget([sf], ceil, r["step_time"], handoff / (r.get("micro_batches") or 2))


def plot_views(rows: list[dict], published: list[dict], host_budget_gib: float) -> dict:
    """Per published configuration, the rows views (a) and (b) show: ``same`` and ``best``."""
    from core.plots import config_key

    out = {}
    for p in published:
        same = [r for r in rows if (*_pub_key(r), r["ac"], r["attn"]) == (*_pub_key(p), p["ac"], p["attn"])
                and same_work(r, p)]
        best = [r for r in rows if _pub_key(r) == _pub_key(p) and same_work(r, p) and r.get("peak_mem_gib")
                and r["peak_mem_gib"] <= p["peak_mem_gib"] and host_gib(r) <= host_budget_gib]
        if same or best:
            out[config_key(p)] = {"same": min(same, key=lambda x: (work_rank(x, p), bool(row_variant(x))))
                                  if same else None, "best": max(best, key=lambda x: x["tps"]) if best else None}
    return out


def budget_view(rows: list[dict]) -> str:
    """Where the time of each native row doing a published row's per-step work goes: the useful work
    at the measured ceilings (the roofline fraction), what its configuration runs again (recompute,
    the chunked head) and its weight hand-off, and the rest; ``attainable`` is the roofline fraction
    with the rest at zero."""
    lines = ["## Where the step goes\n",
             "Each native row's time per micro-batch, split: **useful** = its useful FLOPs at the measured "
             "matmul and attention ceilings (the Roofline column); **recompute** = what the configuration "
             "executes again (activation recompute; the chunked head's logits in backward) at the same "
             "ceilings; **hand-off** = the weight hand-off the step waited for; **other** = the rest (kernels "
             "below their ceilings, memory-bound kernels, an idle GPU). **Attainable** = useful / (useful + "
             "recompute + hand-off): the roofline fraction this configuration would reach if every kernel ran "
             "at its ceiling and nothing else took time. Rows doing a published row's per-step work (2 micro-batches "
             "of one document; RL: the filesystem hand-off on disk, not overlapped); a negative `other` means "
             "kernels ran above the ceilings measured for them. From the row's one profiled step "
             "(`busy_step`, timed apart from the measured steps, profiler overhead included): **GPU idle** = "
             "the share of its wall time with no kernel or copy on the GPU (a host-bound step; the hand-off's "
             "host-side copy counts here too), **memory-bound** = the device time of elementwise, reduction "
             "and copy kernels (what fused kernels would shrink).\n",
             "| Model | Type | SeqLen | AC | Attn | Compiled | Variant | useful | recompute | hand-off | other "
             "| attainable | GPU idle | memory-bound |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    n = 0
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    for r in sorted(rows, key=lambda r: (section_name(r), r["type"], int(r["seq_len"]), r["ac"], r["attn"])):
        b = step_budget_of(r) if same_work(r, {"type": r["type"]}) else None
        if not b:
            continue
        n += 1
        kinds = r.get("gpu_time_by_kind") or {}
        idle = 1.0 - r["gpu_busy"] if r.get("gpu_busy") is not None else None
        mem = sum(kinds.get(k, 0.0) for k in ("elementwise", "reduction", "copy")) if kinds else None
        lines.append(f"| {section_name(r)} | {r['type']} | {r['seq_len']} | {r['ac']} | {r['attn']} | "
                     f"{'yes' if r.get('compile') else 'no'} | {r.get('variant') or '-'} | {pct(b['useful'])} | "
                     f"{pct(b['recompute'])} | {pct(b['handoff'])} | {pct(b['other'])} | {pct(b['attainable'])} | "
                     f"{pct(idle)} | {pct(mem)} |")
    return "\n".join(lines) + "\n" if n else ""


def predictions_section(preds: list[dict]) -> str:
    """Predicted rows (``python -m core.predict``, ``kind: "prediction"``) in a section of their own,
    never among measured rows."""
    preds = [p for p in preds if p.get("kind") == "prediction"]
    if not preds:
        return ""
    out = ["## Predicted rows (not measured)\n",
           "Predictions of stepbench's step on hardware and GPU counts not measured here, from "
           "`python -m core.predict --published` (terms and fits: `benchmarks/PREDICTIONS.md`). "
           "They are not measurements and enter no view above.\n",
           "| Model | Type | SeqLen | AC | Attn | Hardware | predicted TPS | predicted Step Time "
           "| predicted Peak Mem | prime-rl TPS | prime-rl Peak Mem |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in preds:
        pub_t = f"{p['published_tps'] / 1e3:.2f}k" if p.get("published_tps") else "-"
        pub_m = f"{p['published_mem_gib']:.1f} GiB" if p.get("published_mem_gib") else "-"
        out.append(f"| {p.get('model')} | {p.get('type')} | {p.get('seq_len')} | {p.get('ac')} | {p.get('attn')} "
                   f"| {p.get('hardware_label')} | {p['tps'] / 1e3:.2f}k | {p['step_time']:.2f}s "
                   f"| {p['peak_mem_gib']:.1f} GiB | {pub_t} | {pub_m} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", nargs="+", default=[str(ROOT / "benchmarks" / "results")])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "BENCHMARKS.md"))
    ap.add_argument("--baseline", default=str(ROOT / "benchmarks" / "baseline.jsonl"))
    ap.add_argument("--save-baseline", action="store_true", help="store the current rows as the baseline")
    ap.add_argument("--host-budget-gib", type=float, default=32.0, help="pinned host memory allowed in view (b)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--predictions", default=str(ROOT / "benchmarks" / "results" / "predicted"),
                    help="predicted rows (python -m core.predict), shown in their own section")
    a = ap.parse_args(argv)
    try:
        rows, dirty, failed, runs = gather(a.results)
        if a.save_baseline and not rows:
            raise ReportError("no headline rows to save as the baseline: nothing written")
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    if a.save_baseline:
        tmp = Path(a.baseline).with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        for r in rows:
            append_row(tmp, {k: r.get(k) for k in ("model", "hf_name", "type", "seq_len", "ac", "attn",
                                                   "hardware_label", "micro_batches", "packing", "compile", "sync",
                                                   "mfu", "tps", "step_time", "peak_mem_gib")})
        tmp.replace(a.baseline)
        print(f"baseline: {len(rows)} rows -> {a.baseline}")
        return 0
    commits = sorted({(r.get("env") or {}).get("git_commit") for r in rows} - {None}) or ["unknown"]
    baseline = read_rows(a.baseline)[0] if Path(a.baseline).exists() else []
    text = render(rows, baseline, failed, commit=", ".join(c[:12] for c in commits),
                  sources=", ".join(Path(p).name for p in a.results))
    published, _, _ = parse_published()
    native = [r for r in rows if implementation(r) == "native"]  # the views compare stepbench's own rows
    text += "\n" + versus_published(native, published)
    text += "\n" + best_at_no_more_memory(native, published, a.host_budget_gib)
    peers = peers_view(rows, published, failed, runs)
    if peers:
        text += "\n" + peers
    reruns = reruns_view(runs)
    if reruns:
        text += "\n" + reruns
    budget = budget_view(native)
    if budget:
        text += "\n" + budget
    lo = left_out(dirty)
    if lo:
        text += "\n" + lo
    if Path(a.predictions).exists():
        text += "\n" + predictions_section(read_rows(a.predictions)[0])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not a.no_plots:
        from core.plots import plots

        pngs = plots(rows, published, out.parent, out.stem, plot_views(native, published, a.host_budget_gib))
        if pngs:
            text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    out.write_text(text, encoding="utf-8")
    print(f"{len(rows)} rows ({len(dirty)} left out), {len(failed)} failed -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
