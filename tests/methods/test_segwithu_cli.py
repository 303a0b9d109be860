"""``tunepp train-head`` + ``tunepp infer --method segwithu`` end to end at a tiny size: maps on the
input grid, the report, resume, and one-line errors (ONNX: test_segwithu_onnx_infer.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_helpers import cli, oblique_scan, one_line_error
from tiny_config import ROOT, TINY

from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import save_checkpoint

MAPS = ("seg", "temperature", "calibration", "ranking")


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swu")
    data = write_phantom_dataset(root / "data", 4, seed=2, shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))
    cfg = load_config(ROOT / "configs" / "phantom.yaml", TINY)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "best.pt", build_network(cfg), cfg)
    r = cli("train-head", "--backbone", ckpt, "--data", data, "--out", root / "head", "--iters", "2", "--batch", "1",
            "--width", "8")
    assert r.exit_code == 0, r.output
    assert (root / "head" / "head.pt").is_file()
    return {"root": root, "data": data, "backbone": ckpt, "head": root / "head" / "head.pt"}


def test_maps_on_the_input_grid_and_report(head: dict[str, Path]) -> None:
    scan = oblique_scan(head["root"] / "obl" / "obl.nii.gz")
    out = head["root"] / "out"
    r = cli("infer", "-i", scan, "-o", out, "-m", head["head"], "--method", "segwithu")
    assert r.exit_code == 0, r.output
    ref = nib.load(str(scan))
    for what in MAPS:
        img = nib.load(str(out / f"obl_{what}.nii.gz"))
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-5), what
    maps = {k: nib.load(str(out / f"obl_{k}.nii.gz")).get_fdata() for k in MAPS}
    assert maps["temperature"].min() >= 1.0
    assert np.allclose(maps["temperature"], np.sqrt(1.0 + maps["calibration"]), atol=0.05)  # T = sqrt(1 + U_cal)
    report = json.loads((out / "obl_report.json").read_text())
    assert report["method"] == "segwithu" and report["backend"] == "torch" and report["name"] == "obl"
    assert report["input_shape"] == list(ref.shape) and len(report["labels"]) == 4
    seg = maps["seg"].astype(int)
    fg = seg > 0
    if fg.any():  # the report's "total" is the ranking map
        assert abs(report["case"]["triage_score"] - maps["ranking"][fg].mean()) < 1e-4
    assert {"load", "inference", "write"} <= set(report["timing_s"])


def test_folder_resumes_and_redoes_a_case_without_report(head: dict[str, Path]) -> None:
    images, out = head["data"] / "imagesTr", head["root"] / "resume"
    args = ("infer", "-i", images, "-o", out, "-m", head["head"])  # --method auto reads the checkpoint
    r = cli(*args)
    assert r.exit_code == 0 and "4 done, 0 skipped" in r.output, r.output
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = cli(*args)
    assert r.exit_code == 0 and "0 done, 4 skipped" in r.output, r.output
    (out / "phantom_001_report.json").unlink()
    r = cli(*args)
    assert r.exit_code == 0 and "1 done, 3 skipped" in r.output, r.output
    changed = {p.name for p in out.iterdir() if stamps.get(p.name) != p.stat().st_mtime_ns}
    assert changed == {f"phantom_001_{k}.nii.gz" for k in MAPS} | {"phantom_001_report.json", "phantom_001_preview.png",
                       "index.html"}  # the triage page and the redone case's thumbnail


def test_wrong_model_or_option_is_one_line(head: dict[str, Path]) -> None:
    scan = head["data"] / "imagesTr" / "phantom_000_0000.nii.gz"
    out = head["root"] / "errors"
    one_line_error(cli("infer", "-i", scan, "-o", out, "-m", head["backbone"], "--method", "segwithu"),
                   "is a tunepp model")
    one_line_error(cli("infer", "-i", scan, "-o", out, "-m", head["head"], "--method", "tunepp"), "segwithu model")
    one_line_error(cli("infer", "-i", scan, "-o", out, "-m", head["head"], "--samples", "3"), "--samples")
    one_line_error(cli("infer", "-i", scan, "-o", out, "-m", head["head"], "--backend", "trt"), "--backend torch")
    assert not out.exists() or not any(out.iterdir())
