"""``tunepp train-vi`` -> ``tunepp export onnx`` -> ``tunepp infer --method variational`` at a tiny size:
a loadable checkpoint, torch/ONNX Runtime parity, maps against a direct computation, the input grid,
resume, seeds and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from cli_helpers import cli, oblique_scan, one_line_error
from tiny_config import ROOT, TINY

from tunepp_deploy.config.load import config_to_dict, load_config
from tunepp_deploy.data.phantom import write_phantom_dataset
from tunepp_deploy.data.preprocess import normalize_intensity
from tunepp_deploy.infer.sliding_window import sliding_window
from tunepp_deploy.infer.uncertainty import maps_from_samples
from tunepp_deploy.methods.variational.noise import sample_weight_noise
from tunepp_deploy.methods.variational.train import load_variational

TRAIN = ["--iters", "3", "--batch", "1", "--widths", "4,8", "--seed", "1"]
MAPS = ("seg", "aleatoric", "epistemic", "total")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vi")
    data = write_phantom_dataset(root / "data", 4, seed=2, shape=(24, 24, 16), spacing=(4.0, 4.0, 5.0))
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(load_config(ROOT / "configs" / "phantom.yaml", TINY))))
    res = cli("train-vi", "--config", config, "--data", data, "--out", root / "run", *TRAIN)
    assert res.exit_code == 0, res.output
    assert "validation mean Dice" in res.output
    ckpt = root / "run" / "vi_unet.pt"
    res = cli("export", "onnx", "--checkpoint", ckpt, "--out", root / "vi.onnx")
    assert res.exit_code == 0, res.output
    return {"root": root, "data": data, "config": config, "ckpt": ckpt, "onnx": root / "vi.onnx"}


def _load(folder: Path, name: str) -> dict[str, np.ndarray]:
    return {k: nib.load(str(folder / f"{name}_{k}.nii.gz")).get_fdata() for k in MAPS}


def test_train_vi_checkpoint_loads_and_is_not_overwritten(trained: dict[str, Path]) -> None:
    net, cfg, settings = load_variational(trained["ckpt"])
    assert settings["arch"] == "unet" and list(settings["widths"]) == [4, 8] and settings["iters"] == 3
    assert cfg.data.crop_size == (16, 16, 8) and type(net).__name__ == "VariationalUNet"
    ckpt = torch.load(trained["ckpt"], weights_only=True)
    assert len(ckpt["split"]["train"]) == 3 and len(ckpt["split"]["val"]) == 1 and "val_dice" in ckpt["validation"]
    assert 0.0 <= ckpt["validation"]["val_iou"] <= ckpt["validation"]["val_dice"] + 1e-9
    before = trained["ckpt"].stat().st_mtime_ns
    res = cli("train-vi", "--config", trained["config"], "--data", trained["data"], "--out", trained["ckpt"].parent,
               *TRAIN)
    one_line_error(res, "--overwrite")
    assert trained["ckpt"].stat().st_mtime_ns == before


def test_torch_and_ort_agree_and_outputs_overlay_the_input(trained: dict[str, Path]) -> None:
    scan = oblique_scan(trained["root"] / "obl" / "obl.nii.gz")
    outs = {}
    for backend, model in (("torch", trained["ckpt"]), ("ort", trained["onnx"])):
        out = trained["root"] / f"obl_{backend}"
        res = cli("infer", "-i", scan, "-o", out, "-m", model, "--samples", "3", "--seed", "4")
        assert res.exit_code == 0, res.output
        outs[backend] = _load(out, "obl")
        report = json.loads((out / "obl_report.json").read_text())
        assert report["method"] == "variational" and report["backend"] == backend and report["samples"] == 3
        assert report["seed"] == 4 and report["name"] == "obl" and "triage_score" in report["case"]
    src = nib.load(str(scan))
    for k in MAPS:
        img = nib.load(str(trained["root"] / "obl_ort" / f"obl_{k}.nii.gz"))
        assert img.shape == src.shape and np.allclose(img.affine, src.affine, atol=1e-5)
        if k == "seg":
            assert np.array_equal(outs["torch"][k], outs["ort"][k])
        else:
            assert np.abs(outs["torch"][k] - outs["ort"][k]).max() <= 1e-4, k
    o = outs["ort"]
    assert np.allclose(o["total"], o["aleatoric"] + o["epistemic"], atol=1e-6)
    assert o["epistemic"].max() > 0 and (o["epistemic"] >= 0).all() and o["total"].max() <= 1.0 + 1e-6


def test_maps_equal_a_direct_computation_on_the_model_grid(trained: dict[str, Path]) -> None:
    """A scan already on the model's grid is not resampled: the maps must be the textbook formulas."""
    scan = trained["data"] / "imagesTr" / "phantom_000_0000.nii.gz"
    out = trained["root"] / "direct"
    assert cli("infer", "-i", scan, "-o", out, "-m", trained["ckpt"], "--samples", "4").exit_code == 0
    got = _load(out, "phantom_000")
    net, cfg, _ = load_variational(trained["ckpt"])
    image = normalize_intensity(nib.load(str(scan)).get_fdata().astype(np.float32), cfg.data.intensity)
    noise = sample_weight_noise(net.noise_shapes(), 4, cfg.infer.seed)
    vol = torch.from_numpy(image)[None]
    with torch.no_grad():  # each sample stitched on its own, then the all-samples formulas
        probs = torch.stack([sliding_window(vol, lambda x, s=s: [torch.softmax(net(x, noise.sample(s)), 1)],
                                            cfg.window, cfg.infer.overlap, cfg.infer.max_batch)[0] for s in range(4)])
    ref = maps_from_samples(probs.double())
    assert np.array_equal(got["seg"], ref.mean_probs.argmax(0).numpy())
    assert np.abs(got["epistemic"] - ref.epistemic.numpy()).max() < 1e-5
    assert np.abs(got["aleatoric"] - ref.aleatoric.numpy()).max() < 1e-5
    pbar = probs.double().mean(0)
    assert np.abs(got["total"] - (1.0 - (pbar * pbar).sum(0)).numpy()).max() < 1e-5  # law of total variance


def test_folder_resumes_and_redoes_a_case_without_report(trained: dict[str, Path]) -> None:
    images, out = trained["data"] / "imagesTr", trained["root"] / "resume"
    args = ("infer", "-i", images, "-o", out, "-m", trained["onnx"], "--samples", "2")
    res = cli(*args)
    assert res.exit_code == 0 and "4 done, 0 skipped" in res.output, res.output
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = cli(*args)
    assert res.exit_code == 0 and "0 done, 4 skipped" in res.output, res.output
    (out / "phantom_002_report.json").unlink()
    res = cli(*args)
    assert res.exit_code == 0 and "1 done, 3 skipped" in res.output, res.output
    changed = {p.name for p in out.iterdir() if stamps.get(p.name) != p.stat().st_mtime_ns}
    assert changed == {f"phantom_002_{k}.nii.gz" for k in MAPS} | {"phantom_002_report.json", "phantom_002_preview.png",
                       "index.html"}  # the triage page and the redone case's thumbnail


def test_seed_decides_the_samples(trained: dict[str, Path]) -> None:
    scan = trained["data"] / "imagesTr" / "phantom_001_0000.nii.gz"
    epi = {}
    for tag, seed in (("a", "3"), ("b", "3"), ("c", "9")):
        out = trained["root"] / f"seed_{tag}"
        assert cli("infer", "-i", scan, "-o", out, "-m", trained["onnx"], "--samples", "2", "--seed", seed
                    ).exit_code == 0
        epi[tag] = _load(out, "phantom_001")["epistemic"]
    assert np.array_equal(epi["a"], epi["b"]) and not np.array_equal(epi["a"], epi["c"])


def test_wrong_method_or_option_is_one_line(trained: dict[str, Path]) -> None:
    scan = trained["data"] / "imagesTr" / "phantom_003_0000.nii.gz"
    out = trained["root"] / "errors"
    for model in (trained["ckpt"], trained["onnx"]):
        one_line_error(cli("infer", "-i", scan, "-o", out, "-m", model, "--method", "tunepp"), "variational model")
        one_line_error(cli("infer", "-i", scan, "-o", out, "-m", model, "--method", "segwithu"), "not segwithu")
    one_line_error(cli("infer", "-i", scan, "-o", out, "-m", trained["ckpt"], "--blend", "window"), "--blend")
    one_line_error(cli("infer", "-i", scan, "-o", out, "-m", trained["ckpt"], "--backend", "ort"), "--backend torch")
    assert not out.exists() or not any(out.iterdir())
    # evaluate --model opens any method's model through the same predictors as infer
    res = cli("evaluate", "--model", trained["ckpt"], "--data", trained["data"], "-o", trained["root"] / "ev",
              "--samples", "2")
    assert res.exit_code == 0 and "4 cases" in res.output, res.output
