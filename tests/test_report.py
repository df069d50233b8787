"""The report: the published format reproduced, the comparison views, provenance, repeats, safety."""


import pytest

from core.published import PUBLISHED_NAME, parse_published, reference_dir
from core.report import main, render
from core.results import append_row

CLEAN = {"git_commit": "a" * 40, "git_dirty": False}


def published_table_lines():
    return [ln for ln in (reference_dir() / PUBLISHED_NAME).read_text().splitlines()
            if ln.startswith("| ") and ln[2:4] in ("RL", "SF")]


def ours(p, **kw):
    """A stepbench row with the published row's key and per-step work, from a clean commit; ``impl``
    as the model family declares it (transformers' rows: "hf", or "plain HF" for its own loop)."""
    work = {"micro_batches": 2, "packing": "single", "compile": True,
            "sync": "filesystem disk" if p["type"].startswith("RL") else "none"}
    row = {**p, **work, "env": CLEAN, "spread": {"n": 5, "cv": 0.01}, "time": "2026-11-25T00:00:00+00:00",
           "roofline_frac": 0.5, **kw}
    if "impl" not in kw:
        row["impl"] = ("plain HF" if str(row.get("model")).endswith("(plain HF)") else "hf") \
            if row.get("family") == "hf" else "native"
        row["own_loop"] = row["impl"] == "plain HF"
    return row


def test_report_reproduces_published_tables_diffs_and_failures():
    rows, baseline, failed = parse_published()
    assert len(rows) == len(published_table_lines()) and len(failed) == 13
    text = render(rows, baseline, failed)
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and ln[2:4] in ("RL", "SF")]
    assert lines == published_table_lines()
    for section in ("## INTELLECT-3", "## Qwen3-0.6B", "## Qwen3-4B-Instruct-2507", "## Failed Benchmarks"):
        assert section in text
    fail_lines = [ln for ln in (reference_dir() / PUBLISHED_NAME).read_text().splitlines() if ln.startswith("- **")]
    assert all(ln in text for ln in fail_lines)


def test_regression_marked():
    rows, baseline, _ = parse_published()
    slower = [dict(rows[0], tps=rows[0]["tps"] * 0.9, mfu=rows[0]["mfu"] * 0.9)]
    text = render(slower, baseline[:1])
    assert ":warning: (-10.0%)" in text


def h100(published, type_="RL LoRA(r=16)", seq=65536, ac="Offload", attn="FA3"):
    return next(r for r in published if r["hardware_label"] == "1xH100 HBM3" and r["model"] == "Qwen3-0.6B"
                and r["type"] == type_ and r["seq_len"] == seq and (r["ac"], r["attn"]) == (ac, attn))


def write(path, rows):
    for r in rows:
        append_row(path, r)


def test_cli_writes_views_baseline_and_failed_rows(tmp_path):
    published, _, _ = parse_published()
    res = tmp_path / "rows.jsonl"
    p = h100(published)
    write(res, [ours(p, tps=p["tps"] * 1.5),
                # failed before its type was known: still reaches the Failed section
                {"status": "failed", "error": "refused: bad overrides (nope)", "overrides": ["+attn=nope"]}])
    base = tmp_path / "base.jsonl"
    assert main(["--results", str(res), "--baseline", str(base), "--save-baseline"]) == 0
    assert main(["--results", str(res), "--out", str(tmp_path / "B.md"), "--baseline", str(base)]) == 0
    md = (tmp_path / "B.md").read_text()
    assert "View (a): same configuration" in md and "View (b)" in md
    assert "1 row: geomean 1.50x, min 1.50x" in md
    assert "refused: bad overrides (nope)" in md and "+attn=nope" in md
    assert list(tmp_path.glob("B-plot-Qwen3-0.6B-*.png"))  # one figure per model and hardware


def test_same_configuration_needs_the_same_per_step_work():
    from core.report import versus_published

    published, _, _ = parse_published()
    p = h100(published, "RL Full", 8192, "Recompute", "FA2")
    no_sync = ours(p, tps=p["tps"] * 3, sync="none")  # RL without the hand-off: not like for like
    text = versus_published([no_sync], published)
    assert "No row of ours matches" in text
    text = versus_published([ours(p, tps=p["tps"] * 2)], published)
    assert "| 2.00x |" in text


def test_dirty_rows_are_left_out_of_the_headline_and_listed(tmp_path):
    published, _, _ = parse_published()
    p = h100(published)
    res = tmp_path / "rows.jsonl"
    write(res, [ours(p), ours(p, ac="Recompute", env={"git_commit": "b" * 40, "git_dirty": True}),
                ours(p, ac="Recompute (selective)", env={"git_commit": "HEAD"})])
    assert main(["--results", str(res), "--out", str(tmp_path / "B.md"), "--no-plots"]) == 0
    md = (tmp_path / "B.md").read_text()
    head, left = md.split("## Rows left out of the headline")
    assert "| Recompute |" not in head.split("## View (a)")[0] and "| dirty |" in left and "| unknown |" in left
    assert f"**Commit:** `{'a' * 12}`" in md


def test_best_at_no_more_memory_holds_gpu_and_host_budgets():
    from core.report import best_at_no_more_memory

    published, _, _ = parse_published()
    pub = h100(published)  # 9.66k, 7.9 GiB
    fast_but_big = ours(pub, ac="Recompute (selective)", tps=pub["tps"] * 3, peak_mem_gib=pub["peak_mem_gib"] + 1)
    host_hungry = ours(pub, ac="Offload (attention)", tps=pub["tps"] * 2, peak_mem_gib=pub["peak_mem_gib"] - 0.5,
                       ac_info={"host_offload_gib": 23.7})
    lean = ours(pub, ac="Offload", tps=pub["tps"] * 1.4, peak_mem_gib=pub["peak_mem_gib"] - 1,
                ac_info={"host_offload_gib": 3.4})
    text = best_at_no_more_memory([fast_but_big, host_hungry, lean], published, host_budget_gib=16)
    line = next(ln for ln in text.splitlines() if "| Offload, FA3 |" in ln and "| 65536 |" in ln)
    assert "| Offload, FA3, filesystem disk | 13.52k" in line and "| 3.4 GiB | 1.40x |" in line
    text = best_at_no_more_memory([fast_but_big, host_hungry, lean], published, host_budget_gib=32)
    line = next(ln for ln in text.splitlines() if "| Offload, FA3 |" in ln and "| 65536 |" in ln)
    assert "Offload (attention), FA3, filesystem disk" in line and line.endswith("| 2.00x |")
    # one micro-batch a step: not the same work (a LoRA row may hand nothing off: the published bench
    # rows did not either)
    other_work = ours(pub, ac="Offload", tps=pub["tps"] * 5, peak_mem_gib=1.0, micro_batches=1)
    text = best_at_no_more_memory([other_work], published)
    assert not any("| Offload, FA3 |" in ln and "| 65536 |" in ln for ln in text.splitlines())


def test_repeats_show_the_median_run_and_spread(tmp_path):
    published, _, _ = parse_published()
    p = h100(published)
    res = tmp_path / "rows.jsonl"
    write(res, [ours(p, tps=t, spread={"n": 5, "cv": cv}, time=f"2026-11-25T00:00:0{i}+00:00")
                for i, (t, cv) in enumerate([(10e3, 0.01), (30e3, 0.08), (20e3, 0.02)])])
    assert main(["--results", str(res), "--out", str(tmp_path / "B.md"), "--no-plots"]) == 0
    md = (tmp_path / "B.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| RL LoRA(r=16) | 65536 |"))
    assert "| 20.00k |" in line and "| 2.0% (5) | 3 |" in line
    write(res, [ours(p, ac="Recompute", tps=5e3, spread={"n": 5, "cv": 0.09})])
    main(["--results", str(res), "--out", str(tmp_path / "B.md"), "--no-plots"])
    assert "9.0% (5) :warning:" in (tmp_path / "B.md").read_text()


@pytest.mark.parametrize("args", [["--results", "benchmarks/reslts"], ["--save-baseline", "--results", "EMPTY"]])
def test_report_refuses_to_write_from_zero_rows(tmp_path, capsys, args):
    out, base = tmp_path / "B.md", tmp_path / "base.jsonl"
    base.write_text('{"model": "keep"}\n')  # a baseline of rows (a file of anything else is refused first)
    (tmp_path / "empty.jsonl").write_text("")
    args = [a.replace("EMPTY", str(tmp_path / "empty.jsonl")) for a in args]
    assert main([*args, *([] if "--save-baseline" in args else ["--out", str(out)]), "--baseline", str(base)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("nothing written" in err[0] or "no such results" in err[0] or "holds no rows" in err[0])
    assert not out.exists() and base.read_text() == '{"model": "keep"}\n'


def test_unreadable_lines_are_reported_and_skipped(tmp_path, capsys):
    published, _, _ = parse_published()
    res = tmp_path / "rows.jsonl"
    res.write_bytes(b'{"torn": \n[1, 2]\n\xff\xfe\n')
    write(res, [ours(h100(published))])
    assert main(["--results", str(res), "--out", str(tmp_path / "B.md"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert f"{res}:1: not JSON" in err and f"{res}:2: a JSON list" in err and f"{res}:3: not UTF-8" in err


def test_newest_row_by_time_wins():
    from core.report import latest_ok

    published, _, _ = parse_published()
    old = dict(published[0], time="2026-01-02T00:00:00+00:00", tps=1.0)
    new = dict(published[0], time="2026-03-01T00:00:00+00:00", tps=2.0)
    assert [r["tps"] for r in latest_ok([new, old])] == [2.0]


def test_a_row_whose_digest_is_a_later_commits_is_taken_as_that_commit(monkeypatch):
    """A device copy with a stale .git records an older commit; its source digest names the commit
    that ran. Without such a commit the row is dirty."""
    import core.provenance as prov
    import core.report as rep

    digests = {"old": "d-old", "mid": "d-mid", "new": "d-new"}
    monkeypatch.setattr(prov, "source_digest_at", lambda c: digests.get(c))
    monkeypatch.setattr(prov, "descendants", lambda c: ["mid", "new"] if c == "old" else [])
    monkeypatch.setattr(rep, "_DIGESTS", {})
    r = {"env": {"git_commit": "old", "git_dirty": False, "source_digest": "d-new"}}
    rep.verify_source(r)
    assert r["env"]["git_commit"] == "new" and r["env"]["git_commit_recorded"] == "old"
    assert rep.row_provenance(r) == "clean"
    r = {"env": {"git_commit": "old", "git_dirty": False, "source_digest": "d-unknown"}}
    rep.verify_source(r)
    assert r["env"]["git_commit"] == "old" and rep.row_provenance(r) == "dirty"


def test_budget_view_splits_each_row_and_shows_the_profiled_step():
    """The report's "Where the step goes": a row's stored step budget, its GPU idle share and its
    memory-bound kernels from the profiled step; a row of several documents per micro-batch
    without a stored budget is left out (its FLOPs are not worked out from the config)."""
    from core.report import budget_view

    published, _, _ = parse_published()
    p = h100(published)
    budget = {"useful": 0.5, "recompute": 0.2, "handoff": 0.1, "other": 0.2, "attainable": 0.625}
    r = ours(p, family="qwen3", step_budget=budget, gpu_busy=0.9,
             gpu_time_by_kind={"attention": 0.5, "matmul": 0.2, "copy": 0.05, "elementwise": 0.1, "reduction": 0.05,
                               "launches": 100})
    line = next(ln for ln in budget_view([r]).splitlines() if ln.startswith("| Qwen3-0.6B"))
    assert line.endswith("| 50% | 20% | 10% | 20% | 62% | 10% | 20% |")
    assert budget_view([ours(p, family="qwen3", packing="random")]) == ""


def test_row_line_says_when_a_ceiling_is_low():
    """A row above its own attainable figure (kernels faster than their measured ceilings) says so
    instead of printing "79% of 77% attainable"."""
    from core.bench import format_row

    row = {"status": "ok", "peak_mem_gib": 17.7, "model": "Qwen3-0.6B", "type": "RL Full", "seq_len": 65536,
           "ac": "Recompute", "attn": "FA2", "hardware_label": "1xH100 HBM3", "mfu": 23.4, "tps": 8850.0,
           "step_time": 7.4, "attn_provider": "torch", "roofline_frac": 0.79,
           "step_budget": {"attainable": 0.77}}
    assert "roofline 79% (above the 77% attainable at its measured ceilings" in format_row(row)
    row["roofline_frac"] = 0.62
    assert "roofline 62% of 77% attainable" in format_row(row)


def test_reruns_view_shows_the_same_code_in_other_calls(tmp_path):
    """The reruns view lists a row measured in two calls on the same source code with each call's
    TPS and the spread; a run on other code, or a row of one call only, is not a rerun."""
    from core.report import main

    published, _, _ = parse_published()
    p = h100(published)

    def run(tps, run_id, digest, t):
        return ours(p, tps=tps, family="qwen3", run_id=run_id, env={**CLEAN, "source_digest": digest},
                    time=f"2026-11-25T0{t}:00:00+00:00")

    other = next(q for q in published if q is not p and q["hardware_label"] == p["hardware_label"])
    rows = [run(20000.0, "a", "d1", 1), run(20400.0, "a", "d1", 1), run(21000.0, "b", "d1", 2),
            run(30000.0, "c", "d2", 3), ours(other, tps=5000.0, family="qwen3", run_id="a",
                                             env={**CLEAN, "source_digest": "d1"})]
    res, out = tmp_path / "rows.jsonl", tmp_path / "B.md"
    write(res, rows)
    assert main(["--results", str(res), "--out", str(out), "--no-plots", "--baseline", "none",
                 "--predictions", "none"]) == 0
    view = out.read_text().split("## Reruns")[1].split("\n## ")[0]
    (line,) = [ln for ln in view.splitlines() if ln.startswith("| Qwen3")]
    assert "20.00k" in line and "21.00k" in line and "30.00k" not in line  # call a's median: 20.00k
    assert line.rstrip(" |").endswith("5.0%") and "5.00k" not in view
    assert "1 rows run again: median spread 5.0%, largest 5.0%." in view


def test_rows_read_through_a_bom_and_odd_rows_each_get_a_line(tmp_path, capsys):
    """A byte-order mark (an editor's) does not cost the row behind it; a line without a status and
    a tps beyond any measurement are each skipped with a line that says why, and the rest reported."""
    import json

    published, _, _ = parse_published()
    p = h100(published)
    good = ours(p, tps=p["tps"] * 1.5, status="ok")
    res = tmp_path / "rows.jsonl"
    res.write_bytes(b"\xef\xbb\xbf" + json.dumps(good).encode() + b"\n"
                    + json.dumps({"model": "qwen3-tiny", "tps": "fast"}).encode() + b"\n"
                    + json.dumps({**good, "tps": 1e308}).encode() + b"\n"
                    + json.dumps({**good, "spread": {"cv": "high", "n": "five"}}).encode() + b"\n")
    capsys.readouterr()
    assert main(["--results", str(res), "--out", str(tmp_path / "B.md"), "--baseline", "none", "--predictions",
                 "none", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "BOM" not in err and "not JSON" not in err, err
    assert "skipped a row of 'qwen3-tiny': its status is missing" in err
    assert "is beyond any measurement" in err
    assert "its spread's cv is a str" in err
    md = (tmp_path / "B.md").read_text()
    assert "1 row: geomean 1.50x" in md and "e+" not in md and len(max(md.splitlines(), key=len)) < 2000


@pytest.mark.parametrize("change", [
    {"env": {"git_commit": 5, "git_dirty": False, "source_digest": "x"}},
    {"ac_info": {"host_offload_gib": "lots"}},
    {"roofline_frac": "high"},
    {"peer": "hf"},
    {"variant": ["a", "b"]},
    {"mfu": float("nan")},
    {"peak_mem_gib": float("inf")},
], ids=["commit-int", "acinfo-str", "roofline-str", "peer-str", "variant-list", "mfu-nan", "peak-inf"])
def test_a_row_with_an_odd_field_is_skipped_and_the_rest_reported(tmp_path, capsys, change):
    """A field of a type stepbench never writes (round eight): the row is skipped with one line, a
    good run of the same key is reported, nothing raises; alone, it is one line and status 2."""
    import json

    published, _, _ = parse_published()
    p = h100(published)
    good = ours(p, tps=p["tps"] * 1.5, status="ok", roofline_frac=0.5)
    bad = {**good, **change}
    args = ["--out", str(tmp_path / "B.md"), "--baseline", "none", "--predictions", "none", "--no-plots"]
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    (tmp_path / "good.jsonl").write_text(json.dumps(good) + "\n")
    capsys.readouterr()
    assert main(["--results", str(tmp_path / "bad.jsonl"), *args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "nothing written" in err[0] and not (tmp_path / "B.md").exists(), err
    assert main(["--results", str(tmp_path / "bad.jsonl"), str(tmp_path / "good.jsonl"), *args]) == 0
    err = capsys.readouterr().err
    assert "skipped a row of" in err and "Traceback" not in err
    assert "1 row: geomean 1.50x" in (tmp_path / "B.md").read_text()


def test_a_plot_that_cannot_be_written_is_one_line_and_nothing_written(tmp_path, monkeypatch, capsys):
    """Round ten: an immutable plot file ended the report in a PermissionError traceback."""
    import core.plots

    published, _, _ = parse_published()
    res = tmp_path / "rows.jsonl"
    p = h100(published)
    write(res, [ours(p, tps=p["tps"] * 1.5)])

    def refuse(*a, **k):
        raise PermissionError(1, "Operation not permitted", str(tmp_path / "B-plot.png"))

    monkeypatch.setattr(core.plots, "plots", refuse)
    capsys.readouterr()
    assert main(["--results", str(res), "--out", str(tmp_path / "B.md"), "--baseline", "none",
                 "--predictions", "none"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "a plot cannot be written" in lines[0] and "--no-plots" in lines[0], lines
    assert not (tmp_path / "B.md").exists()


def test_plots_replace_their_own_and_refuse_other_files(tmp_path):
    """Round twelve: a FIFO named like a plot hung the report (it was opened to read its signature),
    and a user's PNG named like one was written over. Plots carry stepbench's PNG Software text; a
    report replaces its own plots, and refuses a FIFO or another program's PNG in one line."""
    import os

    from core.plots import PLOT_SOFTWARE, png_software

    published, _, _ = parse_published()
    res = tmp_path / "rows.jsonl"
    p = h100(published)
    write(res, [ours(p, tps=p["tps"] * 1.5)])
    args = ["--results", str(res), "--out", str(tmp_path / "B.md"), "--baseline", "none", "--predictions", "none"]
    assert main(args) == 0
    plot = next(tmp_path.glob("B-plot-*.png"))
    assert png_software(plot) == PLOT_SOFTWARE
    assert main(args) == 0  # its own plots are replaced
    mine = tmp_path / plot.name.replace("B-plot-", "B-plot-zz-")
    mine.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + b"\0" * 17)  # another program's PNG
    assert main(args) == 2 and mine.read_bytes().startswith(b"\x89PNG")
    mine.unlink()
    os.mkfifo(tmp_path / "B-plot-fifo.png")
    assert main(args) == 2  # returns at once: the FIFO is not opened


def test_odd_text_in_a_row_cannot_break_the_report(tmp_path):
    """Round twelve: a model name holding a newline, an escape sequence and a '|' broke the report's
    headings and tables (a new line, an extra column) and wrote the escape byte into it."""
    published, _, _ = parse_published()
    res = tmp_path / "rows.jsonl"
    p = h100(published)
    write(res, [ours(p, tps=p["tps"] * 1.5), ours(p, model="Odd\nname \x1b[31m|x", tps=1.0, attn="A|B")])
    out = tmp_path / "R.md"
    assert main(["--results", str(res), "--out", str(out), "--baseline", "none", "--predictions", "none",
                 "--no-plots"]) == 0
    md = out.read_text()
    assert "\x1b" not in md and "Odd\nname" not in md
    assert "| A\\|B |" in md and "| A|B |" not in md  # one cell, not two
