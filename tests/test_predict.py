"""``core.predict``: predicted rows from terms, checked against our measured rows; clear errors;
predictions never share a report section with measured rows."""

import json

import pytest

from core import predict as P
from core.fits import fits_from_rows
from core.models.flavours import QWEN3


@pytest.fixture(scope="module")
def fitted():
    return fits_from_rows()


def test_fits_come_from_our_rows_and_predict_them(fitted):
    """In-sample check: the compute and sync fits reproduce the TPS of every current 1xH100 table row
    within 25% (the fits never see published rows)."""
    current, sync_fits, fits = fitted
    assert ("fa3", "dense") in fits and ("fa2", "dense") in fits
    assert 1.0 < sync_fits["filesystem disk"].gb_per_s < 50.0
    preds, _ = P.predict_published(fits, sync_fits, current)
    mine = [p for p in preds if p["measured_tps"]]
    assert len(mine) >= 20
    for p in mine:
        assert 0.75 <= p["tps"] / p["measured_tps"] <= 1.25, (p["model"], p["type"], p["seq_len"], p["attn"])
        assert 0.9 <= p["peak_mem_gib"] / p["measured_mem_gib"] <= 1.1
        # out of sample: refitted without every row of this configuration
        assert 0.7 <= p["loo_tps"] / p["measured_tps"] <= 1.35, (p["model"], p["type"], p["seq_len"], p["attn"])


def test_eight_gpus_shard_state_pay_collectives_and_scale_below_linear(fitted):
    _, sync_fits, fits = fitted
    from core import hardware
    from core.memory import Layout
    from core.plugins import make

    hw = hardware.load("h100")
    kw = dict(seq_len=16384, task="rl", adapter=make("adapter", {"name": "full"}), ac=make("ac", {"name": "recompute"}),
              attn="FA3", hw=hw, fits=fits, sync_fits=sync_fits, sync_label="filesystem disk",
              layout=Layout(inside_compiled=True, lora_fused=True, unwrapped=True))
    one, eight = P.predict(QWEN3["4B"], gpus=1, **kw), P.predict(QWEN3["4B"], gpus=8, **kw)
    assert eight["memory_terms_gib"]["states"] == pytest.approx(one["memory_terms_gib"]["states"] / 8)
    assert one["collectives"]["seconds"] == 0 and eight["collectives"]["seconds"] > 0
    assert eight["sync_s"] > one["sync_s"]  # the shards are gathered before the write
    assert one["tps"] < eight["tps"] <= 8 * one["tps"]
    # the terms add up to what is reported
    assert eight["step_s"] == pytest.approx(2 * (eight["compute_s"] + eight["collectives"]["exposed_s"])
                                            + eight["sync_s"])
    assert eight["tps"] == pytest.approx(8 * 16384 * 2 / eight["step_s"])


@pytest.mark.parametrize("args,needle", [
    (["model=qwen3_4b", "hardware=h300", "gpus=8"], "unknown hardware 'h300'"),
    (["model=qwen3_4b", "hardware=h200", "gpus=0"], "gpus=0"),
    (["model=qwen3_4b", "hardware=h200", "gpus=eight"], "gpus=eight"),
    (["model=qwen3_4b", "gpus=8"], "name the hardware"),
    (["model=qwen3_4b", "hardware=h200", "adapter=lora", "adapter.rank=0"], "adapter.rank=16"),
])
def test_bad_input_is_one_line_exit_2(capsys, args, needle):
    assert P.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_an_unmeasured_kernel_gets_its_peak_and_no_time(capsys):
    """A kernel no row measured (sdpa here): the peak is predicted (memory does not depend on the
    kernel's speed), the time is said not to be, and nothing else is printed as a prediction."""
    assert P.main(["model=qwen3_4b", "hardware=h200", "+attn=sdpa"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("predicted (not measured): Qwen3-4B RL") and out[0].endswith("on 1xH200")
    assert out[1].startswith("  peak memory per GPU ") and " GiB = states " in out[1]
    assert out[2].startswith("  time: not predicted (no measured rows of +attn=sdpa") and len(out) == 3
    assert "TPS" not in "\n".join(out)


def test_one_prediction_prints_its_terms(capsys):
    assert P.main(["model=qwen3_4b", "+attn=fa3", "+ac=recompute", "seq_len=65536", "hardware=h200", "gpus=8",
                   "adapter=lora", "+sync=filesystem"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("predicted (not measured): Qwen3-4B RL LoRA(r=16) 65536 Recompute FA3 on 8xH200")
    for term in ("peak memory per GPU", "states", "efficiency", "collectives per micro-batch", "weight sync", "TPS"):
        assert term in out


def test_a_transformers_config_can_be_predicted(capsys):
    assert P.main(["model=hf_qwen3_4b", "hardware=h100", "gpus=8", "seq_len=16384"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("predicted (not measured): Qwen3-4B (hf) RL Full 16384") and "native model code" in out
    assert "picks its kernel when the row runs" in out  # +attn=auto: the fastest measured kernel


def test_predicted_rows_never_share_a_report_section_with_measured_rows(tmp_path):
    from core import report
    from core.published import parse_published
    from tests.test_report import h100, ours

    results, predicted = tmp_path / "results", tmp_path / "predicted"
    results.mkdir()
    predicted.mkdir()
    published, _, _ = parse_published()
    measured = ours(h100(published), mfu=30.0)
    pred = {"kind": "prediction", "model": "Qwen3-4B-Instruct-2507", "type": "RL Full", "seq_len": 16384,
            "ac": "Recompute", "attn": "FA3", "hardware_label": "8xH200", "tps": 123456.0, "step_time": 1.5,
            "peak_mem_gib": 17.0, "published_tps": 25500.0, "published_mem_gib": 17.1}
    (results / "rows.jsonl").write_text(json.dumps(measured) + "\n" + json.dumps(pred) + "\n")
    (predicted / "p.jsonl").write_text(json.dumps(pred) + "\n")
    out = tmp_path / "B.md"
    assert report.main(["--results", str(results), "--out", str(out), "--no-plots", "--predictions",
                        str(predicted), "--baseline", "none"]) == 0
    text = out.read_text()
    head, tail = text.split("## Predicted rows (not measured)")
    assert "123.46k" not in head and "123.46k" in tail  # the prediction only in its own section
    assert "8xH200" not in head


def test_hardware_overrides_reach_the_prediction(capsys):
    """hardware.* overrides are the profile the prediction uses (they were read from the yaml
    alone, round seven): a halved link bandwidth slows the 8-GPU step's collectives."""
    from core.predict import main

    assert main(["model=qwen3_4b", "hardware=h100", "gpus=8"]) == 0
    base = capsys.readouterr().out
    assert main(["model=qwen3_4b", "hardware=h100", "gpus=8", "hardware.link_gbps=36"]) == 0
    slow = capsys.readouterr().out
    assert "at 360 GB/s" in base and "at 36 GB/s" in slow
