"""``tunepp train-head`` + ``tunepp infer-segwithu`` end to end at a tiny size."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from conftest import ROOT, TINY
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.model import build_network
from tunepp_deploy.train.checkpoint import save_checkpoint


def test_train_head_and_infer(tmp_path) -> None:
    data = write_phantom_dataset(tmp_path / "data", 3, seed=2, shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))
    cfg = load_config(ROOT / "configs" / "phantom.yaml", TINY)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "best.pt", build_network(cfg), cfg)
    runner = CliRunner()
    r = runner.invoke(app, ["train-head", "--backbone", str(ckpt), "--data", str(data), "--out",
                            str(tmp_path / "head"), "--iters", "2", "--batch", "1", "--width", "8"])
    assert r.exit_code == 0, r.output
    head = tmp_path / "head" / "head.pt"
    assert head.is_file()
    scan = data / "imagesTr" / "phantom_000_0000.nii.gz"
    r = runner.invoke(app, ["infer-segwithu", "-i", str(scan), "-o", str(tmp_path / "out"), "-m", str(head)])
    assert r.exit_code == 0, r.output
    ref = nib.load(scan)
    for what in ("seg", "calibration", "ranking", "temperature"):
        img = nib.load(tmp_path / "out" / f"phantom_000_{what}.nii.gz")
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
    t = nib.load(tmp_path / "out" / "phantom_000_temperature.nii.gz").get_fdata()
    assert t.min() >= 1.0 - 1e-5
    r = runner.invoke(app, ["infer-segwithu", "-i", str(scan), "-o", str(tmp_path / "o2"), "-m", str(ckpt)])
    assert r.exit_code == 2 and "not a SegWithU head checkpoint" in r.output
