"""INT8 calibration windows: preprocessed like inference, npy batches, npz for ModelOpt, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tunepp_deploy.calibrate.int8 import preprocess_for_model
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.runners import read_model_meta


def test_cli_int8_writes_batches_npz_manifest(tiny_ckpt: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "calib"
    res = CliRunner().invoke(app, ["calibrate", "int8", "--model", str(tiny_ckpt), "--data", str(tiny_data),
                                   "--out", str(out), "--windows", "6", "--batch", "4"])
    assert res.exit_code == 0, res.output
    meta = read_model_meta(tiny_ckpt)
    man = json.loads((out / "manifest.json").read_text())
    assert man["windows"] == 6 and len(man["batches"]) == 2
    assert [i["name"] for i in man["inputs"]] == meta.input_names
    batches = sorted(out.glob("batch_*.npy"))
    assert [np.load(b).shape for b in batches] == [(4, 1, *meta.window), (2, 1, *meta.window)]
    npz = np.load(out / "calibration_data.npz")
    assert set(npz.files) == set(meta.input_names)
    x = npz["x"]
    np.testing.assert_array_equal(np.concatenate([np.load(b) for b in batches]), x)
    # masks are the draw the TensorRT builder makes: sample_masks(sites, window, N, seed=0)
    ref = sample_masks(meta.sites, meta.window, 6, seed=0)
    for name, m in zip(meta.mask_names, ref.per_site, strict=True):
        np.testing.assert_array_equal(npz[name], m)
    # every window is a crop of the inference preprocessing of its scan
    origin = man["window_origins"][0]
    vol = preprocess_for_model(tiny_data / "imagesTr" / f"{origin['scan']}_0000.nii.gz", meta)
    sl = tuple(slice(s, s + w) for s, w in zip(origin["start"], meta.window, strict=True))
    np.testing.assert_array_equal(x[0], vol[(slice(None), *sl)])
    assert x.min() >= 0.0 and x.max() <= 1.0  # CT window normalisation
