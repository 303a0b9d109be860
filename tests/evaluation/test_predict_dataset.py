"""``predict_dataset`` / ``tunepp evaluate --model`` for any method: the one case pipeline, resumable.

A stub predictor stands in for a non-TUNE++ method (its own map names, a flag map other than
``total``), so these tests are fast and prove the plumbing: every case goes through ``run_case`` with
``write_probs`` (seg, the method's maps, probabilities, report last), the evaluation reads the maps
the reports list and ranks / triages by the report's flag map, cases with a report are kept when
resuming, and a failing case is isolated (nothing of it left) and named in one line by the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.evaluation.run import evaluate_folders, predict_dataset
from tunepp_deploy.predictors.base import Prediction, Predictor

ROOT = Path(__file__).resolve().parents[2]
SPACING = (4.0, 4.0, 5.0)


class StubPredictor(Predictor):
    """A method with maps ``confidence`` and ``ranking`` (flag map), predicting from intensity alone."""

    method = "stub"
    map_names = ("confidence", "ranking")
    flag_map = "ranking"
    definitions = "stub: ranking = 1 - max p"

    def __init__(self, fail_on: str | None = None) -> None:
        cfg = load_config(ROOT / "configs" / "phantom.yaml", {"data.spacing": list(SPACING)})
        super().__init__(cfg, (16, 16, 8), "torch", torch.device("cpu"))
        self.fail_on = fail_on
        self.calls = 0
        self.closed = False

    def predict(self, image: np.ndarray, progress=None) -> Prediction:
        self.calls += 1
        if self.fail_on is not None and self.calls == int(self.fail_on):
            raise RuntimeError("backend failure on this case\nsecond line")
        x = torch.from_numpy(image).float()
        k = len(self.classes)
        logits = torch.stack([-(x - (i / (k - 1))).abs() * 8.0 for i in range(k)])
        probs = torch.softmax(logits, 0)
        ranking = 1.0 - probs.max(0).values
        return Prediction(probs, {"confidence": 1.0 - ranking, "ranking": ranking}, {"stub_info": 1})

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("d") / "phantom", 3, seed=1, shape=(20, 20, 12),
                                 spacing=SPACING)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """``open_predictor`` returns a StubPredictor; records the arguments it was called with."""
    seen: dict[str, object] = {"fail_on": None}

    def fake_open(model, method="auto", backend="auto", device="auto", options=None, threads=None, amp=True,
                  cuda_graphs=False, temperature=True, saliency_target="bottleneck"):
        p = StubPredictor(seen["fail_on"])  # type: ignore[arg-type]
        seen.update(model=model, method=method, backend=backend, device=device, options=options,
                    temperature=temperature, predictor=p)
        return p

    monkeypatch.setattr("tunepp_deploy.predictors.open.open_predictor", fake_open)
    return seen


def test_every_case_through_the_case_pipeline(data: Path, tmp_path: Path, stub: dict[str, object]) -> None:
    out = tmp_path / "pred"
    res = predict_dataset(tmp_path / "model.pt", data, out, samples=3, seed=7, method="segwithu",
                          use_temperature=False)
    assert res.done == ["phantom_000", "phantom_001", "phantom_002"] and not res.failed
    opts = stub["options"]
    assert opts.samples == 3 and opts.seed == 7  # type: ignore[attr-defined]
    assert stub["method"] == "segwithu" and stub["temperature"] is False
    assert stub["predictor"].closed  # type: ignore[attr-defined]
    for name in res.done:
        for suffix in ("seg", "confidence", "ranking", "probs"):
            assert (out / f"{name}_{suffix}.nii.gz").is_file(), suffix
        rep = json.loads((out / f"{name}_report.json").read_text())
        assert rep["method"] == "stub" and rep["flag_map"] == "ranking" and rep["stub_info"] == 1
        assert set(rep["outputs"]) == {"seg", "confidence", "ranking", "probs"}
        probs = np.asarray(nib.load(str(out / f"{name}_probs.nii.gz")).dataobj)
        truth = nib.load(str(data / "labelsTr" / f"{name}.nii.gz"))
        assert probs.shape == (*truth.shape, 5) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert np.allclose(nib.load(str(out / f"{name}_seg.nii.gz")).affine, truth.affine)

    ev = evaluate_folders(out, data, tmp_path / "report", worst=1)
    s = ev.summary
    assert s["cases"] == 3 and s["calibration"]["cases_with_probabilities"] == 3
    assert s["taus_map"] == "ranking"  # the report's flag map drives ranking, TAUS and triage
    assert set(s["ranking"]) == {"confidence", "ranking", "msp"}
    assert s["triage"]["case_score"] == "mean ranking uncertainty over the predicted foreground"


def test_resume_keeps_complete_cases(data: Path, tmp_path: Path, stub: dict[str, object]) -> None:
    out = tmp_path / "pred"
    predict_dataset(tmp_path / "m.pt", data, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "phantom_001_report.json").unlink()  # an interrupted case: redone from scratch
    told: list[tuple[str, str]] = []
    res = predict_dataset(tmp_path / "m.pt", data, out, overwrite=False, on_case=lambda n, st, _m: told.append((n, st)))
    assert res.skipped == ["phantom_000", "phantom_002"] and res.done == ["phantom_001"]
    assert told == [("phantom_000", "skipped"), ("phantom_001", "done"), ("phantom_002", "skipped")]
    assert stub["predictor"].calls == 1  # type: ignore[attr-defined]
    assert (out / "phantom_000_seg.nii.gz").stat().st_mtime_ns == before["phantom_000_seg.nii.gz"]
    res = predict_dataset(tmp_path / "m.pt", data, out)  # the default predicts every case again
    assert len(res.done) == 3 and not res.skipped


def test_failing_case_is_isolated(data: Path, tmp_path: Path, stub: dict[str, object]) -> None:
    stub["fail_on"] = "2"
    out = tmp_path / "pred"
    res = predict_dataset(tmp_path / "m.pt", data, out)
    assert res.done == ["phantom_000", "phantom_002"]
    assert res.failed == [("phantom_001", "RuntimeError: backend failure on this case")]
    assert not list(out.glob("phantom_001_*"))


def test_cli_names_a_failed_case_in_one_line(data: Path, tmp_path: Path, stub: dict[str, object]) -> None:
    stub["fail_on"] = "2"
    args = ["evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(data), "--worst", "0", "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "r1")])
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert "1 case(s) could not be predicted" in last and "phantom_001" in last and "--allow-missing" in last
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "r2"), "--allow-missing", "--method", "variational"])
    assert res.exit_code == 0, res.output
    assert stub["method"] == "variational"
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["summary"]["cases"] == 2
    # --resume: the two complete cases are kept, only the failed one is tried again (and now works)
    stub["fail_on"] = None
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "r2"), "--resume"])
    assert res.exit_code == 0, res.output
    assert "skipped phantom_000" in res.output and "predicted phantom_001" in res.output
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["summary"]["cases"] == 3
