"""``tunepp evaluate --model --data``: the TUNE++ predictor through the one case pipeline, then the report.

The model is opened by ``open_predictor`` (stored temperature applied), every case goes through
``run_case`` with ``write_probs`` — the files and report ``tunepp infer`` writes, plus the 4D
probabilities the calibration metrics need — and ``--resume`` keeps the complete cases.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunepp_deploy.calibrate.temperature import TemperatureFit, store_temperature
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app


def test_evaluate_with_model_has_probabilities(tiny_ckpt: Path, tiny_data: Path, tmp_path: Path) -> None:
    fit = TemperatureFit([1.5], False, 0, 0, 0, 0, 0, 0, 1, 1, ["x"], "test")
    model = store_temperature(tiny_ckpt, fit, tmp_path / "cal.pt")
    out = tmp_path / "rep"
    args = ["evaluate", "--model", str(model), "--data", str(tiny_data), "-o", str(out), "--samples", "2",
            "--device", "cpu", "--worst", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    pred = out / "predictions"
    assert len(list(pred.glob("*_probs.nii.gz"))) == 4 and len(list(pred.glob("*_total.nii.gz"))) == 4
    rep = json.loads((pred / "phantom_000_report.json").read_text())
    assert rep["temperature"] == [1.5]
    # the case pipeline's report: method, maps, the streamed engine's run, the probabilities listed
    assert rep["method"] == "tunepp" and rep["flag_map"] == "total" and rep["samples"] == 2
    assert set(rep["outputs"]) == {"seg", "aleatoric", "epistemic", "total", "probs"}
    assert rep["exact_blend"] and rep["trunk"] in ("once", "cached", "recomputed") and rep["sample_chunk"] >= 1
    assert "triage_score" in rep["case"] and rep["labels"]  # the topology report of tunepp infer
    s = json.loads((out / "metrics.json").read_text())["summary"]
    assert s["cases"] == 4 and "calibration" in s and "triage" in s and s["taus_map"] == "total"
    assert (out / "reliability.png").is_file() and (out / "report.md").is_file()

    before = {p.name: p.stat().st_mtime_ns for p in pred.glob("*_seg.nii.gz")}
    res = CliRunner().invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert res.output.count("skipped") == 4
    assert {p.name: p.stat().st_mtime_ns for p in pred.glob("*_seg.nii.gz")} == before
