"""``tunepp export onnx`` of a SegWithU head checkpoint and ``tunepp infer`` on it (ONNX Runtime): the
ONNX file alone is enough, and its maps equal the torch checkpoint's. Apart from test_segwithu_cli.py
because the dynamo export alone takes ~20 s here."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch
from cli_helpers import cli
from tiny_config import ROOT, TINY

from tunepp_deploy.config.load import load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.methods.segwithu.model import SegWithU, save_segwithu
from tunepp_deploy.model import build_network


def test_onnx_file_alone_gives_the_torch_maps(tmp_path) -> None:
    data = write_phantom_dataset(tmp_path / "data", 1, seed=3, shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))
    cfg = load_config(ROOT / "configs" / "phantom.yaml", TINY)
    torch.manual_seed(0)
    head = save_segwithu(tmp_path / "head.pt", SegWithU(build_network(cfg), width=8).eval(), cfg)
    r = cli("export", "onnx", "--checkpoint", head, "--out", tmp_path / "m" / "segwithu.onnx")
    assert r.exit_code == 0 and "segwithu single pass" in r.output, r.output
    images = data / "imagesTr"
    for backend, model in (("torch", head), ("ort", tmp_path / "m" / "segwithu.onnx")):
        r = cli("infer", "-i", images, "-o", tmp_path / backend, "-m", model)
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / backend / "phantom_000_report.json").read_text())["backend"] == backend
    for what in ("seg", "temperature", "calibration", "ranking"):
        a = nib.load(str(tmp_path / "torch" / f"phantom_000_{what}.nii.gz")).get_fdata()
        b = nib.load(str(tmp_path / "ort" / f"phantom_000_{what}.nii.gz")).get_fdata()
        assert (np.array_equal(a, b) if what == "seg" else np.abs(a - b).max() <= 1e-4), what
