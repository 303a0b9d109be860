"""``tunepp evaluate --model --data``: MC inference in-process (temperature applied), then the report."""

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
    res = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(tiny_data), "-o", str(out),
                                   "--samples", "2", "--device", "cpu", "--worst", "1"])
    assert res.exit_code == 0, res.output
    pred = out / "predictions"
    assert len(list(pred.glob("*_probs.nii.gz"))) == 4 and len(list(pred.glob("*_total.nii.gz"))) == 4
    assert json.loads((pred / "phantom_000_report.json").read_text())["temperature"] == [1.5]
    s = json.loads((out / "metrics.json").read_text())["summary"]
    assert s["cases"] == 4 and "calibration" in s and "triage" in s
    assert (out / "reliability.png").is_file() and (out / "report.md").is_file()
