"""The deterministic pass (``RunOptions(deterministic=True)``): the eval-mode network once, no dropout
masks and no logit noise — the single-pass baseline the fidelity experiment compares MC against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.data.phantom import generate_case
from tunepp_deploy.data.preprocess import preprocess_image
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.model import TUNEPP
from tunepp_deploy.predictors.open import open_predictor
from tunepp_deploy.predictors.settings import RunOptions


def test_one_window_equals_the_eval_mode_softmax(ckpt: Path, net: TUNEPP, cfg: TuneppConfig) -> None:
    window = tuple(cfg.data.crop_size)
    img = generate_case(np.random.default_rng(3), shape=window, spacing=tuple(cfg.data.spacing)).image
    pre = preprocess_image(img, cfg.data.spacing, cfg.data.spacing, cfg.data.intensity)
    with open_predictor(ckpt, backend="torch", device="cpu", options=RunOptions(deterministic=True),
                        temperature=False) as pr:
        assert pr.mc.samples == 1 and pr.mc.noise_draws == 0
        got = pr.predict(pre).probs.float().numpy()
    with torch.no_grad():
        ref = torch.softmax(net.eval()(torch.from_numpy(pre)[None, None]).logits.float(), 1)[0].numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-5


def test_deterministic_differs_from_mc_and_is_seed_free(ckpt: Path, cfg: TuneppConfig) -> None:
    img = generate_case(np.random.default_rng(4), shape=(56, 52, 36), spacing=tuple(cfg.data.spacing)).image
    pre = preprocess_image(img, cfg.data.spacing, cfg.data.spacing, cfg.data.intensity)
    runs = []
    for opts in (RunOptions(deterministic=True, seed=1), RunOptions(deterministic=True, seed=2),
                 RunOptions(samples=4, seed=1)):
        with open_predictor(ckpt, backend="torch", device="cpu", options=opts, temperature=False) as pr:
            runs.append(pr.predict(pre).probs.float().numpy())
    assert np.array_equal(runs[0], runs[1])  # no randomness left
    assert np.abs(runs[0] - runs[2]).max() > 1e-4  # dropout really is off


def test_other_methods_refuse_a_deterministic_pass(ckpt: Path) -> None:
    with pytest.raises(TuneppError, match="deterministic"):
        open_predictor(ckpt, method="saliency", backend="torch", device="cpu", options=RunOptions(deterministic=True))
