"""The SegWithU predictor against the head applied by hand, its invariants, and its one-line refusals
(torch vs ONNX Runtime: test_segwithu.py::test_onnx_single_pass_parity, which already pays for the export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.sliding_window import count_windows
from tunepp_deploy.methods.segwithu import SegWithU, save_segwithu
from tunepp_deploy.methods.segwithu.runner import TorchSegWithURunner
from tunepp_deploy.predictors.segwithu import MAP_NAMES, SegWithUPredictor, open_segwithu_predictor
from tunepp_deploy.predictors.settings import RunOptions, resolve

WIN = (16, 16, 8)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tiny_backbone) -> SegWithU:
    torch.manual_seed(3)
    m = SegWithU(tiny_backbone, width=8, rank=8)
    with torch.no_grad():  # a head that actually tempers (fresh init is near-neutral)
        for p in m.head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return m.eval()


def _predictor(model, cfg, **opts) -> SegWithUPredictor:
    return SegWithUPredictor(TorchSegWithURunner(model, CPU), cfg, WIN, resolve(cfg, RunOptions(**opts)))


def test_single_window_is_the_head_by_hand(model, tiny_cfg) -> None:
    """A volume of exactly one window: the Gaussian blend divides its own weight out, so the maps
    are the head's outputs on that window."""
    image = np.random.default_rng(0).standard_normal(WIN).astype(np.float32) * 2
    pred = _predictor(model, tiny_cfg).predict(image)
    with torch.no_grad():
        logits, o = model(torch.from_numpy(image)[None, None])
    assert torch.allclose(pred.probs, torch.softmax(o.tempered_logits, 1)[0], atol=1e-6)
    for name, want in (("temperature", o.temperature), ("calibration", o.u_cal), ("ranking", o.u_rnk)):
        assert torch.allclose(pred.maps[name], want[0, 0], atol=1e-6), name
    assert torch.equal(pred.probs.argmax(0), logits[0].argmax(0))  # tempering keeps the argmax
    assert float(pred.maps["temperature"].max()) > 1.01  # it does temper: the check is not vacuous
    assert pred.info == {"samples": 1, "windows": 1, "overlap": tiny_cfg.infer.overlap}


def test_whole_volume_maps_and_progress(model, tiny_cfg) -> None:
    image = np.random.default_rng(1).standard_normal((24, 20, 12)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    p = _predictor(model, tiny_cfg, overlap=0.25, max_batch=3)
    pred = p.predict(image, lambda d, t: calls.append((d, t)))
    windows = count_windows(image.shape, WIN, 0.25)
    assert pred.probs.shape == (5, *image.shape) and set(pred.maps) == set(MAP_NAMES)
    assert torch.allclose(pred.probs.sum(0), torch.ones(image.shape), atol=1e-5)
    assert float(pred.maps["temperature"].min()) >= 1.0 - 1e-6  # a blend of T >= 1 stays >= 1
    assert calls[-1] == (windows, windows) and pred.info["windows"] == windows
    assert p.flag_map == "ranking" and p.report_maps(pred.maps)["total"] is pred.maps["ranking"]
    assert "segwithu single pass" in p.describe_runner() and p.describe()["method"] == "segwithu"


def test_finish_maps_clamps_the_temperature(model, tiny_cfg) -> None:
    maps = {"temperature": np.array([0.9999999, 1.5], np.float32), "calibration": np.zeros(2, np.float32),
            "ranking": np.ones(2, np.float32)}
    out = _predictor(model, tiny_cfg).finish_maps(maps)
    assert out["temperature"].tolist() == [1.0, 1.5] and out["ranking"] is maps["ranking"]


def test_open_checks_backend_and_options(model, tiny_cfg, tmp_path) -> None:
    head = save_segwithu(tmp_path / "head.pt", model, tiny_cfg)
    with open_segwithu_predictor(head, "auto", CPU, None, RunOptions(overlap=0.25)) as p:
        assert p.backend == "torch" and p.settings.overlap == 0.25 and p.window == WIN
    with pytest.raises(TuneppError, match="--backend torch"):
        open_segwithu_predictor(head, "ort", CPU, None, RunOptions())
    with pytest.raises(TuneppError, match="--samples"):
        open_segwithu_predictor(head, "auto", CPU, None, RunOptions(samples=3))
    with pytest.raises(TuneppError, match="--blend"):
        open_segwithu_predictor(head, "auto", CPU, None, RunOptions(blend="window"))
