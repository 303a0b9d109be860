"""Whole-volume MC inference: torch vs ONNX Runtime, stochasticity, the p -> 0 and S = 1 limits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tunepp_deploy.export.metadata import meta_for

from tunepp_deploy.infer.masks import sample_masks
from tunepp_deploy.infer.mc import MCSettings, mc_predict
from tunepp_deploy.infer.runners import open_runner
from tunepp_deploy.infer.runners.torch_runner import TorchRunner
from tunepp_deploy.model import TUNEPP


@pytest.fixture(scope="module")
def ort_runner(onnx_file: Path):
    with open_runner(onnx_file, backend="ort", device="cpu") as r:
        yield r


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    # 52 x 40 x 30 at model spacing: two windows along the first axis, padding on the others
    return torch.rand(1, 52, 40, 30, generator=torch.Generator().manual_seed(0))


def test_whole_volume_torch_vs_ort(net: TUNEPP, cfg, ort_runner, volume: torch.Tensor) -> None:
    torch_runner = TorchRunner(net, meta_for(net, cfg), torch.device("cpu"))
    masks = sample_masks(torch_runner.meta.sites, torch_runner.meta.window, 2, seed=0)
    a = mc_predict(volume, torch_runner, masks, MCSettings(samples=2)).maps.stacked()
    b = mc_predict(volume, ort_runner, masks, MCSettings(samples=2)).maps.stacked()
    assert float((a - b).abs().max()) <= 1e-4


def test_seed_changes_samples_and_same_seed_reproduces(ort_runner, volume: torch.Tensor) -> None:
    meta = ort_runner.meta
    run = lambda seed: mc_predict(  # noqa: E731
        volume, ort_runner, sample_masks(meta.sites, meta.window, 3, seed), MCSettings(samples=3)
    ).maps
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.stacked(), b.stacked())
    assert not torch.allclose(a.epistemic, c.epistemic)
    assert float(a.epistemic.max()) > 0


def test_epistemic_zero_for_one_sample_or_p_zero(ort_runner, volume: torch.Tensor) -> None:
    meta = ort_runner.meta
    one = mc_predict(volume, ort_runner, sample_masks(meta.sites, meta.window, 1, 0), MCSettings(samples=1)).maps
    assert float(one.epistemic.abs().max()) == 0.0 and float(one.mutual_information.max()) == 0.0
    p0 = tuple(replace(s, p=0.0) for s in meta.sites)
    # p = 0 and no logit noise: every sample is the same network -> no epistemic spread at all
    zero = mc_predict(volume, ort_runner, sample_masks(p0, meta.window, 3, 0), MCSettings(samples=3, noise_draws=0))
    assert float(zero.maps.epistemic.abs().max()) <= 1e-12
    assert float(zero.maps.aleatoric.max()) > 0  # the softmax's own label noise remains
    # with logit noise the samples differ only by their T draws: the spread is the draws' MC error, small
    noisy = mc_predict(volume, ort_runner, sample_masks(p0, meta.window, 3, 0), MCSettings(samples=3)).maps
    assert float(noisy.epistemic.max()) < 0.1 * float(noisy.total.max())


def test_mc_mean_approaches_deterministic_output_as_p_goes_to_zero(ort_runner) -> None:
    meta = ort_runner.meta
    x = torch.rand(1, 1, *meta.window, generator=torch.Generator().manual_seed(3))
    ones = [torch.ones(1, s.channels) for s in meta.sites]
    det = torch.softmax(ort_runner(x, ones)[0], 1)
    errors = []
    for p in (0.5, 0.2, 0.05, 0.0):
        sites = tuple(replace(s, p=p) for s in meta.sites)
        m = sample_masks(sites, meta.window, 8, seed=0)
        probs = torch.softmax(ort_runner(x, m.rows(range(8), 1))[0], 1)
        errors.append(float((probs.mean(0) - det[0]).abs().max()))
    assert errors[-1] <= 1e-6
    assert errors[0] > errors[2] > errors[3]
