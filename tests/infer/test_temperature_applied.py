"""A stored temperature reaches inference through open_predictor (and can be switched off); a corrupt
one is refused in one line instead of producing NaN maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tunepp_deploy.calibrate.temperature import TemperedRunner

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.mc import mc_predict
from tunepp_deploy.infer.runners import open_runner
from tunepp_deploy.model import TUNEPP
from tunepp_deploy.predictors.open import open_predictor
from tunepp_deploy.predictors.settings import RunOptions
from tunepp_deploy.train.checkpoint import save_checkpoint

OPTS = RunOptions(samples=3, noise_draws=4)


def test_checkpoint_temperature_reaches_the_predictive(net: TUNEPP, cfg: TuneppConfig, tmp_path: Path) -> None:
    p = save_checkpoint(tmp_path / "t.pt", net, cfg, temperature=torch.tensor([2.5]))
    image = np.random.default_rng(0).random(cfg.window, dtype=np.float32)
    x = torch.from_numpy(image)[None]
    with open_predictor(p, "auto", "torch", "cpu", OPTS) as tempered, \
            open_predictor(p, "auto", "torch", "cpu", OPTS, temperature=False) as plain, \
            open_runner(p, "torch", "cpu") as raw:
        assert tempered.temperature == [2.5] and plain.temperature is None
        got = tempered.predict(image).probs
        # reference: calibrate's TemperedRunner (logits / T, log_var - 2 log T) through the same engine
        want = mc_predict(x, TemperedRunner(raw, [2.5]), tempered.masks, tempered.mc).maps.mean_probs
        untempered = plain.predict(image).probs
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float((got - untempered).abs().max()) > 1e-4  # T = 2.5 softens the predictive
    assert float(got.max()) < float(untempered.max())


@pytest.mark.parametrize("bad", [float("nan"), 1e-30, -1.0, float("inf")])
def test_corrupt_temperature_is_refused(net: TUNEPP, cfg: TuneppConfig, tmp_path: Path, bad: float) -> None:
    p = save_checkpoint(tmp_path / "bad.pt", net, cfg, temperature=torch.tensor([bad]))
    with pytest.raises(TuneppError, match="temperature"):
        open_predictor(p, "auto", "torch", "cpu", OPTS)
