"""The report reproduces the published file's tables from rows built from it."""

from core.report import PUBLISHED, main, parse_published, render


def published_table_lines():
    return [ln for ln in PUBLISHED.read_text().splitlines() if ln.startswith("| ") and ln[2:4] in ("RL", "SF")]


def test_report_reproduces_published_tables_diffs_and_failures():
    rows, baseline, failed = parse_published()
    assert len(rows) == len(published_table_lines()) and len(failed) == 13
    text = render(rows, baseline, failed)
    ours = [ln for ln in text.splitlines() if ln.startswith("| ") and ln[2:4] in ("RL", "SF")]
    assert ours == published_table_lines()
    for section in ("## INTELLECT-3", "## Qwen3-0.6B", "## Qwen3-4B-Instruct-2507", "## Failed Benchmarks"):
        assert section in text
    fail_lines = [ln for ln in PUBLISHED.read_text().splitlines() if ln.startswith("- **")]
    assert all(ln in text for ln in fail_lines)


def test_regression_marked():
    rows, baseline, _ = parse_published()
    slower = [dict(rows[0], tps=rows[0]["tps"] * 0.9, mfu=rows[0]["mfu"] * 0.9)]
    text = render(slower, baseline[:1])
    assert ":warning: (-10.0%)" in text


def test_report_cli_writes_markdown_and_baseline(tmp_path):
    from core.results import append_row

    rows, _, _ = parse_published()
    res = tmp_path / "rows.jsonl"
    for r in rows[:5]:
        append_row(res, r)
    append_row(res, dict(rows[0], seq_len=123, status="failed", error="OOM: boom"))
    base = tmp_path / "base.jsonl"
    main(["--results", str(res), "--out", str(tmp_path / "B.md"), "--baseline", str(base), "--save-baseline"])
    main(["--results", str(res), "--out", str(tmp_path / "B.md"), "--baseline", str(base), "--no-plots"])
    md = (tmp_path / "B.md").read_text()
    assert "## INTELLECT-3" in md and "OOM: boom" in md and "Against prime-rl" in md
