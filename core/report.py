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
import json
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.provenance import row_provenance  # noqa: E402
from core.published import host_gib, implementation, parse_published, section_name, sync_per_step  # noqa: E402
from core.errors import first_line  # noqa: E402
from core.results import read_rows, row_key, row_variant  # noqa: E402
from core.views import (best_at_no_more_memory, budget_view, failures_view, peers_view, plot_views,  # noqa: E402
                        reruns_view, trainers_view, versus_published)
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
> inside each step (RL full fine-tuning: `host`, the published rows' per-step work, or `filesystem
> disk`, a file every step, in older rows; `none` for RL LoRA and SFT), with its seconds per
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
    if not isinstance(commit, str) or not isinstance(digest, str):  # not what stepbench writes: left as recorded
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


#: what a successful row must carry, and the types the report reads them as
ROW_FIELDS = {"model": str, "type": str, "seq_len": int, "ac": str, "attn": str, "hardware_label": str,
              "mfu": (int, float), "tps": (int, float), "step_time": (int, float)}
ROW_OPTIONAL = {"env": dict, "spread": dict, "peak_mem_gib": (int, float, type(None)), "sync_info": dict,
                "ac_info": dict, "config": dict, "step_budget": (dict, type(None))}


#: the numeric fields of a row's step spread that the report formats
SPREAD_NUMBERS = ("cv", "n", "min", "max", "median", "mean", "std")

#: bounds no measured row reaches (a billion tokens a second; a step of a day): a row beyond them was
#: typed or corrupted, and would print a 300-digit cell
MAX_TPS, MAX_STEP_S = 1e9, 86400.0


def who() -> str:
    """The prefix of the report's one-line errors: ``stepbench report`` from the console command
    (which sets ``sys.argv[0]``), ``report`` from ``python -m core.report``."""
    return sys.argv[0] if sys.argv and str(sys.argv[0]).startswith("stepbench ") else "report"


def malformed(r: dict) -> str | None:
    """Why a successful row cannot be reported (a field missing or of another type), or None."""
    for k, t in ROW_FIELDS.items():
        if not isinstance(r.get(k), t) or isinstance(r.get(k), bool):
            return f"its {k} is {'missing' if k not in r else type(r[k]).__name__}"
    for k, t in ROW_OPTIONAL.items():
        if k in r and not isinstance(r[k], t):
            return f"its {k} is a {type(r[k]).__name__}"
    for k, v in (r.get("spread") or {}).items():  # the step spread's numbers (cv, n, min, max, ...)
        if k in SPREAD_NUMBERS and v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            return f"its spread's {k} is a {type(v).__name__}"
    for k in ("mfu", "peak_mem_gib"):  # NaN or infinity would print as "nan%" and travel into a baseline
        if isinstance(r.get(k), float) and not math.isfinite(r[k]):
            return f"its {k} is {r[k]}, not a finite number"
    if not r["tps"] > 0 or not r["step_time"] > 0:
        return "its tps and step_time must be above 0"
    if r["tps"] >= MAX_TPS or r["step_time"] >= MAX_STEP_S:
        return (f"its tps {r['tps']:.3g} or step_time {r['step_time']:.3g} s is beyond any measurement "
                f"(tps below {MAX_TPS:.0e}, a step below {MAX_STEP_S:.0e} s)")
    return None


def fingerprint(r: dict) -> str:
    """A row's content, as one string (a row and its copies have one fingerprint)."""
    return json.dumps(r, sort_keys=True, default=repr, ensure_ascii=True)


def gather(results: list[str], exclude=frozenset()) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(headline rows: the median run of each key, rows left out for provenance, failed rows, every
    clean run) from the results files."""
    missing = [p for p in results if not Path(p).exists()]
    if missing:
        raise ReportError(f"no such results file or folder: {', '.join(missing)} (the default is "
                          "--results benchmarks/results)")
    all_rows, problems = read_rows(*results)
    for p in problems:
        print(f"report: skipped {p}", file=sys.stderr)
    all_rows = [r for r in all_rows if not r.get("profiled") and "memory_profile" not in r and "kind" not in r
                and not (exclude and fingerprint(r) in exclude)]  # rows found unreportable: said by the caller
    all_rows = [cell_safe(r) for r in all_rows]
    ok, failed_rows = [], []
    for r in all_rows:
        if r.get("status") not in ("ok", "failed"):
            print(f"report: skipped a row of {r.get('model')!r}: its status is "
                  f"{'missing' if 'status' not in r else repr(r['status'])} (stepbench's rows say ok or failed)",
                  file=sys.stderr)
            continue
        why = malformed(r) if r.get("status") == "ok" else None
        try:  # what every view reads of a row: its key (hashable) and provenance
            hash(row_key(r))
            row_provenance(r)
        except Exception as e:
            why = why or f"its key or provenance cannot be read ({first_line(e)})"
        if why:
            print(f"report: skipped a row of {printable(str(r.get('model')))!r}: {why}", file=sys.stderr)
        elif r.get("status") == "ok":
            ok.append(r)
        else:
            failed_rows.append(r)
    for r in ok:
        verify_source(r)
    clean = [r for r in ok if row_provenance(r) == "clean"]
    dirty = [r for r in ok if row_provenance(r) != "clean"]
    ok_keys = {row_key(r) for r in ok}
    failed = [r for r in failed_rows if row_key(r) not in ok_keys]
    if not ok and not failed:
        raise ReportError(f"no rows in {', '.join(results)}: nothing written (point --results at the rows' "
                          "JSONL files or folder)")
    return median_runs(clean), latest_ok(dirty), failed, clean


def predictions_section(preds: list[dict]) -> str:
    """Predicted rows (``python -m core.predict``, ``kind: "prediction"``) in a section of their own,
    never among measured rows."""
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    preds = [p for p in preds if p.get("kind") == "prediction"
             and all(num(p.get(k)) for k in ("tps", "step_time", "peak_mem_gib"))]
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
        pub_t = f"{p['published_tps'] / 1e3:.2f}k" if num(p.get("published_tps")) else "-"
        pub_m = f"{p['published_mem_gib']:.1f} GiB" if num(p.get("published_mem_gib")) else "-"
        out.append(f"| {p.get('model')} | {p.get('type')} | {p.get('seq_len')} | {p.get('ac')} | {p.get('attn')} "
                   f"| {p.get('hardware_label')} | {p['tps'] / 1e3:.2f}k | {p['step_time']:.2f}s "
                   f"| {p['peak_mem_gib']:.1f} GiB | {pub_t} | {pub_m} |")
    return "\n".join(out) + "\n"


def _budget(v: str) -> float:
    """--host-budget-gib: GiB of pinned host memory, 0 or more."""
    import math

    try:
        x = float(v)
    except ValueError:
        x = math.nan
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"must be a number of GiB, 0 or more (got {v!r}): e.g. --host-budget-gib 32")
    return x


def _gather_quietly(results: list[str], exclude=frozenset()):
    """:func:`gather`, with the lines it skipped said on stderr only where there are rows to report;
    where there are none, the refusal's one line counts them."""
    import contextlib
    import io

    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            got = gather(results, exclude)
    except ReportError as e:
        skipped = [ln[len("report: skipped "):] for ln in buf.getvalue().splitlines()
                   if ln.startswith("report: skipped ")]
        if skipped:
            raise ReportError(f"{e} [{len(skipped)} line(s) could not be read, the first {skipped[0]}]") from None
        raise
    except BaseException:
        sys.stderr.write(buf.getvalue())
        raise
    sys.stderr.write(buf.getvalue())
    return got


def path_has_no_rows(path) -> bool:
    """Whether a non-empty file has no readable row (an empty file is an empty baseline): no line is a
    JSON object with a row's model and TPS."""
    if Path(path).stat().st_size == 0:
        return False
    rows, _ = read_rows(path)
    return not [r for r in rows if "model" in r and "tps" in r]


def num(v) -> bool:
    """A number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def cell_safe(row: dict) -> dict:
    """The row with its top-level text fields fit for one markdown table cell or heading: control
    characters (a newline, an escape sequence) shown as spaces, ``|`` escaped (it would add a
    column)."""
    return {k: _CONTROL.sub(" ", v).replace("|", "\\|") if isinstance(v, str) else v for k, v in row.items()}


def printable(text: str) -> str:
    """``text`` as UTF-8 can write it (a file name's undecodable bytes, a lone surrogate: replaced)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace") \
        .encode("utf-8", "replace").decode("utf-8")


def compose(rows, dirty, failed, runs, baseline, sources, a, no_predictions) -> str:
    """The report's text (every view, without the plots); raises where a row's field cannot be
    reported. The text is checked to be writable as UTF-8."""
    commits = sorted({str((r.get("env") or {}).get("git_commit")) for r in rows
                      if (r.get("env") or {}).get("git_commit") is not None}) or ["unknown"]
    text = render(rows, baseline, failed, commit=", ".join(c[:12] for c in commits), sources=sources)
    published, _, _ = parse_published()
    native = [r for r in rows if implementation(r) == "native"]  # the views compare stepbench's own rows
    text += "\n" + versus_published(native, published)
    text += "\n" + best_at_no_more_memory(native, published, a.host_budget_gib)
    peers = peers_view(rows, published, failed, runs)
    if peers:
        text += "\n" + peers
    trainers = trainers_view(runs, failed, published, a.host_budget_gib)
    if trainers:
        text += "\n" + trainers
    failures = failures_view(rows, failed, parse_published()[2])
    if failures:
        text += "\n" + failures
    reruns = reruns_view(runs)
    if reruns:
        text += "\n" + reruns
    budget = budget_view(native)
    if budget:
        text += "\n" + budget
    lo = left_out(dirty)
    if lo:
        text += "\n" + lo
    if not no_predictions and Path(a.predictions).exists():
        text += "\n" + predictions_section(read_rows(a.predictions)[0])
    text.encode("utf-8")  # a lone surrogate in a field would fail the write after all the work
    return text


def _breaks(r, baseline, sources, a) -> BaseException | None:
    """The error a report of ``r`` alone raises (None where it reports)."""
    try:
        failed = r.get("status") == "failed"
        compose([] if failed else [r], [], [r] if failed else [], [] if failed else [r], baseline, sources, a, True)
    except Exception as e:
        return e
    return None


def main(argv=None) -> int:
    from core.cli import arg_parser
    from core.results import BASELINE, ResultsError, check_output, too_long, write_atomic

    ap = arg_parser("core.report", __doc__.splitlines()[0],
                    "--results benchmarks/results --out benchmarks/BENCHMARKS.md")
    ap.add_argument("--results", nargs="+", default=[str(ROOT / "benchmarks" / "results")])
    ap.add_argument("--out", default=None, help="the report (default: benchmarks/BENCHMARKS.md)")
    ap.add_argument("--baseline", default=None, help="rows to compare against (default: benchmarks/baseline.jsonl "
                    "where it exists; none: no baseline)")
    ap.add_argument("--save-baseline", action="store_true", help="store the current rows as the baseline")
    ap.add_argument("--host-budget-gib", type=_budget, default=None,
                    help="pinned host memory allowed in view (b) (default: 32)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--predictions", default=None,
                    help="predicted rows (python -m core.predict), shown in their own section (default: "
                         "benchmarks/results/predicted where it exists)")
    a = ap.parse_args(argv)
    if a.save_baseline:  # it writes the baseline only: what shapes the report would be silently ignored
        unused = [f for f, v in (("--out", a.out), ("--host-budget-gib", a.host_budget_gib),
                                 ("--predictions", a.predictions)) if v is not None] + (["--no-plots"] if a.no_plots else [])
        if unused:
            print(f"{who()}: {unused[0]} does nothing with --save-baseline (it writes the baseline only): leave it out, "
                  "or make the report in a second command", file=sys.stderr)
            return 2
    a.out = a.out if a.out is not None else str(ROOT / "benchmarks" / "BENCHMARKS.md")
    a.host_budget_gib = 32.0 if a.host_budget_gib is None else a.host_budget_gib
    given_baseline = a.baseline is not None and a.baseline != "none"
    given_predictions = a.predictions is not None and a.predictions != "none"
    no_predictions = a.predictions == "none"
    if not given_predictions:
        a.predictions = str(ROOT / "benchmarks" / "results" / "predicted")
    a.results = list(dict.fromkeys(a.results))  # a file named twice is read once
    no_baseline = a.baseline == "none"
    a.baseline = a.baseline if given_baseline else str(ROOT / "benchmarks" / "baseline.jsonl")
    try:  # where it writes, before anything is read: never over an input, never into a file's place
        for flag, v, eg in (("--baseline", a.baseline, "benchmarks/baseline.jsonl"),
                            ("--predictions", a.predictions, "benchmarks/results/predicted"),
                            *(("--results", r, "benchmarks/results") for r in a.results)):
            if not str(v).strip():
                raise ReportError(f"{flag} is empty: name a file or folder, e.g. {flag} {eg}")
            if too_long(v):
                raise ReportError(f"{flag} {too_long(v)}: name a shorter path, e.g. {flag} {eg}")
        if a.save_baseline:
            base_out = check_output(a.baseline, "--baseline", "benchmarks/baseline.jsonl", a.results,
                                    "an input (one of the --results)", holds=BASELINE)
        else:
            out = check_output(a.out, "--out", "benchmarks/BENCHMARKS.md", [*a.results, a.baseline, a.predictions],
                               "an input of this report (--results, --baseline or --predictions)",
                               holds=(lambda line: line == HEADER.splitlines()[0], "a stepbench report"))
            if Path(a.out).suffix.lower() not in ("", ".md", ".markdown", ".txt"):  # a Markdown table in a .png
                raise ReportError(f"--out {a.out} ends in {Path(a.out).suffix}, and the report is Markdown: name a .md "
                                  "file, e.g. --out benchmarks/BENCHMARKS.md")
        if not a.save_baseline and Path(a.baseline).is_dir():
            raise ReportError(f"--baseline {a.baseline} is a folder: name the baseline file, e.g. --baseline "
                              "benchmarks/baseline.jsonl")
        if given_baseline and not a.save_baseline and not Path(a.baseline).exists():
            raise ReportError(f"--baseline {a.baseline} does not exist: name a file of rows (python -m core.report "
                              "--save-baseline writes one), or --baseline none")
        if given_predictions and str(a.predictions).strip() and not Path(a.predictions).exists():
            raise ReportError(f"--predictions {a.predictions} does not exist: name a file or folder of predicted rows "
                              "(python -m core.predict writes them), or leave --predictions out")
        if no_baseline and a.save_baseline:
            raise ReportError("--save-baseline needs a file to write: name one, e.g. --baseline benchmarks/baseline.jsonl")
        for flag, path, given in (("--baseline", a.baseline, given_baseline),
                                  ("--predictions", a.predictions, given_predictions)):
            if given and not a.save_baseline and Path(path).exists() and not (Path(path).is_file() or Path(path).is_dir()):
                raise ReportError(f"{flag} {path} is not a regular file (a device, a FIFO, ...): name a file of rows, "
                                  f"or {flag} none")
            if given and not a.save_baseline and Path(path).is_file() and Path(path).stat().st_size == 0:
                raise ReportError(f"{flag} {path} is empty: name a file of rows, or {flag} none")
            if given and Path(path).is_dir() and not sorted(Path(path).glob("*.jsonl")):
                raise ReportError(f"{flag} {path} holds no .jsonl file: name a folder or file of rows, or {flag} none")
        for flag, path in (("--baseline", a.baseline), ("--predictions", a.predictions)):
            if not a.save_baseline and Path(path).is_file() and path_has_no_rows(path):
                raise ReportError(f"{flag} {path} holds no rows (no line is a JSON object with a row's model and tps): name a file of rows, or "
                                  f"leave {flag} out")
        if given_predictions and not a.save_baseline and Path(a.predictions).exists() \
                and not [r for r in read_rows(a.predictions)[0] if r.get("kind") == "prediction"]:
            raise ReportError(f"--predictions {a.predictions} holds no predicted rows (kind: prediction, as python -m "
                              "core.predict writes them): name its output, or --predictions none")
        if not a.save_baseline and not a.no_plots:
            from core.plots import foreign_plots

            foreign = foreign_plots(out.parent, out.stem)
            if foreign:
                raise ReportError(f"{foreign[0]} is named like one of this report's plots but is not one (not a "
                                  "stepbench plot, or not a regular file): it would be written over; move it, name "
                                  "another --out, or add --no-plots")
        rows, dirty, failed, runs = _gather_quietly(a.results)
        if a.save_baseline and not rows:
            raise ReportError("no headline rows to save as the baseline: nothing written")
    except (ReportError, ResultsError) as e:
        print(f"{who()}: {e}", file=sys.stderr)
        return 2
    if a.save_baseline:
        keep = ("model", "hf_name", "type", "seq_len", "ac", "attn", "hardware_label", "micro_batches", "packing",
                "compile", "sync", "mfu", "tps", "step_time", "peak_mem_gib")
        write_atomic(base_out, "".join(json.dumps({k: r.get(k) for k in keep}, sort_keys=True, default=str) + "\n"
                                       for r in rows))
        print(f"baseline: {len(rows)} rows -> {a.baseline}")
        return 0
    baseline = [b for b in (read_rows(a.baseline)[0] if not no_baseline and Path(a.baseline).exists() else [])
                if all(b.get(k) is None or num(b.get(k)) for k in ("tps", "mfu", "step_time", "peak_mem_gib"))]
    sources = ", ".join(printable(Path(p).name) for p in a.results)
    published = parse_published()[0]
    try:
        text = compose(rows, dirty, failed, runs, baseline, sources, a, no_predictions)
    except Exception as e:  # a row whose fields cannot be reported: find it, say so, and report the rest
        every = list({id(r): r for r in [*rows, *failed, *dirty, *runs]}.values())
        bad = {id(r): (r, err) for r in every if (err := _breaks(r, baseline, sources, a)) is not None}
        said = list(dict.fromkeys(  # a row and its copy among the runs: one line
            f"a row of {printable(str(r.get('model')))!r}: a field cannot be reported ({first_line(err)})"
            for r, err in bad.values()))
        try:  # gathered again without them: a good run of the same key becomes the headline
            rows, dirty, failed, runs = _gather_quietly(a.results, {fingerprint(r) for r, _ in bad.values()}
                                                        | {fingerprint(r) for r in every if id(r) in bad})
        except ReportError:
            rows = dirty = failed = runs = []
        if not rows and not failed:
            print(f"{who()}: no row in {', '.join(a.results)} can be reported: nothing written [{len(said)} skipped, "
                  f"the first {said[0] if said else first_line(e)}]", file=sys.stderr)
            return 2
        for line in said:
            print(f"report: skipped {line}", file=sys.stderr)
        try:
            text = compose(rows, dirty, failed, runs, baseline, sources, a, no_predictions)
        except Exception:
            print(f"{who()}: the rows cannot be reported ({first_line(e)}): nothing written", file=sys.stderr)
            return 2
    native = [r for r in rows if implementation(r) == "native"]
    out.parent.mkdir(parents=True, exist_ok=True)
    if not a.no_plots:
        from core.plots import plots

        # a trainer run by +peer is drawn at its best: its fastest run of each key (the headline row is
        # each key's median run, which for another trainer would pick its slower call)
        fastest: dict = {}
        for r in runs:
            if r.get("peer") and r.get("status", "ok") == "ok" and r.get("tps"):
                k = row_key(r)
                fastest[k] = max(fastest.get(k, r), r, key=lambda x: x["tps"])
        drawn = [r for r in rows if not r.get("peer")] + list(fastest.values())
        try:
            pngs = plots(drawn, published, out.parent, out.stem, plot_views(native, published, a.host_budget_gib))
        except OSError as e:  # a plot's file that cannot be written (read-only, immutable): the report is not written
            print(f"{who()}: a plot cannot be written in {out.parent} ({e.strerror or first_line(e)}: "
                  f"{getattr(e, 'filename', '') or ''}): nothing written; free it, name another --out, or add "
                  "--no-plots", file=sys.stderr)
            return 2
        if pngs:
            text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    try:
        write_atomic(out, text)
    except OSError as e:
        print(f"{who()}: --out {out} cannot be written ({e.strerror or first_line(e)}): nothing written; name a file you "
              "can write", file=sys.stderr)
        return 2
    print(f"{len(rows)} rows ({len(dirty)} left out), {len(failed)} failed -> {out}")
    return 0


if __name__ == "__main__":
    from core.errors import run_main

    run_main(main, "report")
