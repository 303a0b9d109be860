"""``tunepp evaluate``: a tiny report with every plot, the tables, and one-line errors (exit 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app

SHAPE = (20, 18, 12)
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _save(arr: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def _truth(rng: np.random.Generator) -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    lab = np.zeros(SHAPE, np.uint8)
    c1 = np.array([6, 6, 6]) + rng.integers(-1, 2, 3)
    lab[(((g - c1) / [4, 4, 3]) ** 2).sum(-1) <= 1] = 1
    c2 = np.array([14, 12, 6])
    shell = (((g - c2) / [4, 4, 4]) ** 2).sum(-1)
    lab[(shell <= 1) & (shell > 0.3)] = 2
    return lab


def _make(root: Path, n: int = 4, probs: bool = True) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    gt, pred = root / "gt", root / "pred"
    (gt / "labelsTr").mkdir(parents=True)
    for i in range(n):
        name = f"case_{i}"
        t = _truth(rng)
        p = t.copy()
        if i % 2:
            p[1:3, 14:16, 1:3] = 1  # spurious component: a topological error
            p[14, 12, 6] = 2  # fill the cavity of the shell
        xs = np.nonzero((t == 1).any((1, 2)))[0]
        p[xs[0]][t[xs[0]] == 1] = 0  # shave one face of the ball: a voxel error that keeps topology
        _save(t, gt / "labelsTr" / f"{name}.nii.gz")
        _save((rng.normal(size=SHAPE) * 50).astype(np.float32), gt / "imagesTr" / f"{name}_0000.nii.gz")
        _save(p, pred / f"{name}_seg.nii.gz")
        err = (p != t).astype(np.float32)
        tot = (0.3 * err + 0.2 * rng.random(SHAPE)).astype(np.float32)
        for m, scale in (("total", 1.0), ("epistemic", 0.6), ("aleatoric", 0.4)):
            _save(tot * scale, pred / f"{name}_{m}.nii.gz")
        if probs:
            pr = np.full((*SHAPE, 3), 0.05, np.float32)
            np.put_along_axis(pr, p[..., None].astype(np.int64), 0.9, axis=-1)
            _save(pr, pred / f"{name}_probs.nii.gz")
    (gt / "dataset.json").write_text(json.dumps({"classes": ["background", "ball", "shell"]}))
    return pred, gt


def test_report_has_every_file(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path)
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out), "--worst", "2"])
    assert res.exit_code == 0, res.output
    for f in ("metrics.json", "metrics.csv", "report.md", "reliability.png", "risk_coverage.png", "triage.png",
              "uncertainty_vs_error.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert len(list(out.glob("worst_*.png"))) == 2
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 4 * 2 and {r["name"] for r in rows} == {"ball", "shell"}
    s = json.loads((out / "metrics.json").read_text())["summary"]
    assert s["violation_share"] == pytest.approx(0.5)
    assert s["calibration"]["ece_pooled"] is not None
    assert set(s["ranking"]) == {"total", "epistemic", "aleatoric", "msp"}
    assert s["taus"] is not None and s["taus"] > 0.5
    assert s["triage"]["failures"] == 2 and s["triage"]["found_at_budget"] == pytest.approx(0.5)
    md = (out / "report.md").read_text()
    assert "TAUS" in md and "seed's TAUS" in md and "![reliability diagram](reliability.png)" in md


def test_without_probabilities_says_so(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=2, probs=False)
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out), "--worst", "0"])
    assert res.exit_code == 0, res.output
    assert "not computed" in (out / "report.md").read_text()
    assert not (out / "reliability.png").exists() and (out / "triage.png").exists()


def _invoke(pred: Path, gt: Path, out: Path):
    return CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out)])


def test_grid_mismatch_is_one_line_error(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=2, probs=False)
    _save(np.zeros((20, 18, 11), np.uint8), pred / "case_1_seg.nii.gz")
    res = _invoke(pred, gt, tmp_path / "r")
    assert res.exit_code == 2
    assert "case case_1" in res.output and "grid" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_affine_mismatch_is_an_error(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=2, probs=False)
    seg = nib.load(str(pred / "case_0_seg.nii.gz"))
    _save(np.asarray(seg.dataobj), pred / "case_0_seg.nii.gz", np.diag([1.0, 1.5, 2.0, 1.0]))
    res = _invoke(pred, gt, tmp_path / "r")
    assert res.exit_code == 2 and "case case_0" in res.output and "affine" in res.output


def test_missing_case_is_an_error(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=3, probs=False)
    (pred / "case_2_seg.nii.gz").unlink()
    res = _invoke(pred, gt, tmp_path / "r")
    assert res.exit_code == 2 and "case case_2" in res.output
    ok = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "r2"),
                                  "--allow-missing", "--worst", "0"])
    assert ok.exit_code == 0, ok.output
    _save(np.zeros(SHAPE, np.uint8), pred / "extra_seg.nii.gz")
    res = _invoke(pred, gt, tmp_path / "r3")
    assert res.exit_code == 2 and "case extra" in res.output


def test_label_set_mismatch_is_an_error(tmp_path: Path) -> None:
    pred, gt = _make(tmp_path, n=2, probs=False)
    seg = np.asarray(nib.load(str(pred / "case_1_seg.nii.gz")).dataobj).copy()
    seg[0, 0, 0] = 5
    _save(seg, pred / "case_1_seg.nii.gz")
    res = _invoke(pred, gt, tmp_path / "r")
    assert res.exit_code == 2 and "case case_1" in res.output and "label set" in res.output
    assert len(res.output.strip().splitlines()) == 1
