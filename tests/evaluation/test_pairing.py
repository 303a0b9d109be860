"""Pairing predictions with truths: ``NAME_seg.nii.gz`` (tunepp) or plain ``NAME.nii.gz`` (nnU-Net,
TotalSegmentator), one naming per folder; every ambiguity a one-line error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_evaluate_cli import _make
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.errors import DataError
from tunepp_deploy.evaluation.cases import pair_cases


def _plain(pred: Path, root: Path) -> Path:
    """The same predictions as nnU-Net writes them: ``NAME.nii.gz`` label maps only."""
    out = root / "nnunet"
    out.mkdir()
    for p in pred.glob("*_seg.nii.gz"):
        shutil.copy(p, out / p.name.replace("_seg.nii.gz", ".nii.gz"))
    (out / "plans.json").write_text("{}")  # nnU-Net's side files are not NIfTI: ignored
    return out


def _one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for n in needles:
        assert n in lines[0], lines[0]


def _evaluate(pred: Path, gt: Path, out: Path):
    return CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out), "--worst", "0"])


def test_plain_names_score_like_tunepp_names(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=3, probs=False)
    plain = _plain(pred, tmp_path)
    ours = pair_cases(pred, gt)
    theirs = pair_cases(plain, gt)
    assert [c.name for c in theirs] == [c.name for c in ours] == ["case_0", "case_1", "case_2"]
    assert all(c.seg.name == f"{c.name}.nii.gz" and not c.unc and c.probs is None for c in theirs)
    a, b = _evaluate(pred, gt, tmp_path / "r1"), _evaluate(plain, gt, tmp_path / "r2")
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    sa = json.loads((tmp_path / "r1" / "metrics.json").read_text())["summary"]
    sb = json.loads((tmp_path / "r2" / "metrics.json").read_text())["summary"]
    assert sb["mean_dice"] == sa["mean_dice"] and sb["violation_share"] == sa["violation_share"]


def test_both_names_for_one_case_is_an_error(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=2, probs=False)
    shutil.copy(pred / "case_0_seg.nii.gz", pred / "case_0.nii.gz")
    _one_line_error(_evaluate(pred, gt, tmp_path / "r"), "case case_0", "case_0_seg.nii.gz", "case_0.nii.gz")


def test_mixed_namings_are_an_error(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=2, probs=False)
    (pred / "case_1_seg.nii.gz").rename(pred / "case_1.nii.gz")
    _one_line_error(_evaluate(pred, gt, tmp_path / "r"), "mixes", "case_0_seg.nii.gz", "case_1.nii.gz")


def test_scan_next_to_its_own_outputs_is_not_a_prediction(tmp_path: Path) -> None:
    """``tunepp infer -i D -o D`` leaves ``NAME.nii.gz`` (the scan) beside ``NAME_seg``: the report names it."""
    pred, gt = _make(tmp_path, n=2, probs=False)
    for n in ("case_0", "case_1"):
        shutil.copy(gt / "imagesTr" / f"{n}_0000.nii.gz", pred / f"{n}.nii.gz")
        (pred / f"{n}_report.json").write_text(json.dumps({"input": str(pred / f"{n}.nii.gz")}))
    assert [c.seg.name for c in pair_cases(pred, gt)] == ["case_0_seg.nii.gz", "case_1_seg.nii.gz"]


def test_file_that_is_both_namings_is_an_error(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=1, probs=False)
    shutil.copy(gt / "labelsTr" / "case_0.nii.gz", gt / "labelsTr" / "case_0_seg.nii.gz")
    with pytest.raises(DataError, match="ambiguous prediction"):
        pair_cases(pred, gt)


def test_truth_named_like_our_suffix_pairs_plainly(tmp_path: Path) -> None:
    """A case really called ``liver_seg`` (no case ``liver``) is a plain prediction, not ours."""
    pred, gt = _make(tmp_path, n=1, probs=False)
    (gt / "labelsTr" / "case_0.nii.gz").rename(gt / "labelsTr" / "liver_seg.nii.gz")
    plain = tmp_path / "p"
    plain.mkdir()
    shutil.copy(pred / "case_0_seg.nii.gz", plain / "liver_seg.nii.gz")
    assert [(c.name, c.seg.name) for c in pair_cases(plain, gt)] == [("liver_seg", "liver_seg.nii.gz")]


def test_plain_prediction_without_truth_and_missing_ones_are_named(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=3, probs=False)
    plain = _plain(pred, tmp_path)
    (plain / "case_2.nii.gz").unlink()
    _one_line_error(_evaluate(plain, gt, tmp_path / "r"), "case case_2", "no prediction case_2.nii.gz")
    assert len(pair_cases(plain, gt, allow_missing=True)) == 2
    shutil.copy(plain / "case_0.nii.gz", plain / "other.nii.gz")
    _one_line_error(_evaluate(plain, gt, tmp_path / "r"), "other.nii.gz", "no truth")


def test_prediction_folder_equal_to_truth_folder_is_an_error(tmp_path: Path) -> None:
    _, gt = _make(tmp_path, n=1, probs=False)
    with pytest.raises(DataError, match="is the truth folder"):
        pair_cases(gt / "labelsTr", gt)
