"""Temperature scaling recovers known temperatures; storage in checkpoints and ONNX; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tunepp_deploy.calibrate.temperature import (
    TemperatureFit,
    TemperedRunner,
    fit_temperature,
    read_temperature,
    scale_logits,
    store_temperature,
)
from typer.testing import CliRunner

from tunepp_deploy.cli.app import app
from tunepp_deploy.train.checkpoint import read_checkpoint


def _synthetic(t0: torch.Tensor, n: int = 40_000, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3.0
    p = torch.softmax(z / t0, dim=1)
    y = torch.multinomial(p, 1, generator=g)[:, 0]
    return z, y


def test_recovers_scalar_temperature() -> None:
    z, y = _synthetic(torch.tensor([2.0]))
    t = fit_temperature(z, y)
    assert t.shape == (1,)
    assert float(t[0]) == pytest.approx(2.0, rel=0.05)


def test_recovers_per_class_temperatures() -> None:
    t0 = torch.tensor([1.0, 2.0, 0.6, 1.5], dtype=torch.float64)
    z, y = _synthetic(t0, n=80_000, seed=1)
    t = fit_temperature(z, y, per_class=True)
    np.testing.assert_allclose(t.numpy(), t0.numpy(), rtol=0.1)


def test_scale_logits_broadcasts_on_class_axis() -> None:
    z = torch.ones(2, 3, 4, 4, 4)
    out = scale_logits(z, [1.0, 2.0, 4.0])
    assert out[:, 1].eq(0.5).all() and out[:, 2].eq(0.25).all()


def _fit(t: list[float]) -> TemperatureFit:
    return TemperatureFit(t, len(t) > 1, 0.1, 0.05, 0.2, 0.1, 0.3, 0.2, 100, 1000, ["a"], "test")


def test_store_in_checkpoint_new_file_and_in_place(tiny_ckpt: Path, tmp_path: Path) -> None:
    dst = store_temperature(tiny_ckpt, _fit([1.7]), tmp_path / "cal.pt")
    assert read_temperature(dst) == [1.7]
    assert read_checkpoint(dst)["temperature_fit"]["ece_after"] == 0.05
    assert read_temperature(tiny_ckpt) is None  # source untouched
    copy = tmp_path / "copy.pt"
    copy.write_bytes(tiny_ckpt.read_bytes())
    store_temperature(copy, _fit([1.2]))
    assert read_temperature(copy) == [1.2]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind


def test_store_in_onnx_metadata(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(graph)
    helper.set_model_props(m, {"tunepp.format": "1"})
    path = tmp_path / "m.onnx"
    onnx.save_model(m, str(path))
    store_temperature(path, _fit([1.0, 2.0, 3.0]))
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["temperature"]) == [1.0, 2.0, 3.0]
    assert json.loads(props["tunepp.temperature"]) == [1.0, 2.0, 3.0]
    assert props["tunepp.format"] == "1"
    assert read_temperature(path) == [1.0, 2.0, 3.0]


def test_tempered_runner_scales_logits_and_log_var(tiny_ckpt: Path) -> None:
    from tunepp_deploy.infer.masks import identity_masks
    from tunepp_deploy.infer.runners import open_runner

    with open_runner(tiny_ckpt, "torch", "cpu") as inner:
        x = torch.randn(1, 1, *inner.meta.window)
        masks = identity_masks(inner.meta.sites, inner.meta.window, 1).rows([0], 1)
        z, lv = inner(x, masks)
        tz, tlv = TemperedRunner(inner, [2.0])(x, masks)
    torch.testing.assert_close(tz, z / 2.0)
    torch.testing.assert_close(tlv, lv - 2.0 * float(np.log(2.0)))


def test_cli_temperature_fits_and_stores(tiny_ckpt: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated.pt"
    res = CliRunner().invoke(app, ["calibrate", "temperature", "--model", str(tiny_ckpt), "--data", str(tiny_data),
                                   "--out", str(out), "--voxels", "5000", "--eval-voxels", "2000", "--samples", "2",
                                   "--noise-draws", "2", "--mc-seed", "5", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    t = read_temperature(out)
    assert t is not None and len(t) == 1 and t[0] > 0
    fit = read_checkpoint(out)["temperature_fit"]
    assert fit["nll_fit_after"] <= fit["nll_fit_before"] + 1e-9  # the fit's own objective never gets worse
    assert (fit["samples"], fit["noise_draws"], fit["mc_seed"], fit["seed"]) == (2, 2, 5, 0)
    assert fit["eval_voxels"] == 2000 and 0 < fit["fit_voxels"] <= 5000 and "disjoint" in fit["voxel_split"]
    assert "ECE (all voxels)" in res.output and "disjoint from the fit" in res.output


def test_cli_temperature_defaults_to_the_configured_samples(tiny_ckpt: Path, tiny_data: Path, tmp_path: Path) -> None:
    from tunepp_deploy.infer.logit_noise import DEFAULT_NOISE_DRAWS

    ckpt = read_checkpoint(tiny_ckpt)
    ckpt["config"]["infer"]["samples"] = 3
    model = tmp_path / "s3.pt"
    torch.save(ckpt, model)
    res = CliRunner().invoke(app, ["calibrate", "temperature", "--model", str(model), "--data", str(tiny_data),
                                   "--voxels", "2000", "--eval-voxels", "1000", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    fit = read_checkpoint(model)["temperature_fit"]  # in place
    assert fit["samples"] == 3 and fit["noise_draws"] == DEFAULT_NOISE_DRAWS
