"""ECE against a direct NumPy loop and torchmetrics; Brier and NLL by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from tunepp_deploy.metrics.calibration import brier, ece, foreground_region, nll, reliability


def _random_probs(rng: np.random.Generator, k: int, shape: tuple[int, ...], sharp: float) -> np.ndarray:
    z = rng.normal(size=(k, *shape)) * sharp
    e = np.exp(z - z.max(0))
    return e / e.sum(0)


def _ece_loop(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al.'s ECE written as plainly as possible: bins ((m-1)/M, m/M], last closed."""
    p = probs.reshape(probs.shape[0], -1)
    y = labels.ravel()
    conf = p.max(0)
    correct = p.argmax(0) == y
    total = 0.0
    for m in range(bins):
        lo, hi = m / bins, (m + 1) / bins
        sel = (conf >= lo) & ((conf < hi) if m < bins - 1 else (conf <= hi))
        if sel.any():
            total += sel.sum() / y.size * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


@pytest.mark.parametrize("seed", range(3))
def test_ece_matches_loop_and_torchmetrics(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = _random_probs(rng, 4, (10, 12, 8), sharp=2.0).astype(np.float64)
    labels = rng.integers(0, 4, size=(10, 12, 8))
    ours = ece(probs, labels)
    assert ours == pytest.approx(_ece_loop(probs, labels), abs=1e-12)
    assert probs.max() < 1.0  # no confidence of exactly 1: torchmetrics' extra bin stays empty
    tm = MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")
    ref = tm(torch.from_numpy(probs.reshape(4, -1).T), torch.from_numpy(labels.ravel()))
    assert ours == pytest.approx(float(ref), abs=1e-6)  # torchmetrics computes in float32


def test_ece_confidence_one_is_in_last_bin_torchmetrics_differs() -> None:
    # 2 voxels at confidence 1.0 (one wrong), 2 at 0.95 (both right): our last bin pools all four
    probs = np.array([[1.0, 1.0, 0.95, 0.95], [0.0, 0.0, 0.05, 0.05]])
    labels = np.array([0, 1, 0, 0])
    # ours: one bin, acc 3/4, conf 0.975 -> 0.225
    assert ece(probs, labels) == pytest.approx(0.225)
    assert ece(probs, labels) == pytest.approx(_ece_loop(probs, labels))
    tm = MulticlassCalibrationError(num_classes=2, n_bins=15, norm="l1")
    ref = float(tm(torch.from_numpy(probs.T), torch.from_numpy(labels)))
    # torchmetrics: bin {1.0}: |0.5 - 1| * 2/4, bin [14/15,1): |1 - 0.95| * 2/4 -> 0.275
    assert ref == pytest.approx(0.275)


def test_foreground_region_and_reliability_merge() -> None:
    rng = np.random.default_rng(5)
    probs = _random_probs(rng, 3, (6, 6, 6), sharp=3.0)
    labels = rng.integers(0, 3, size=(6, 6, 6))
    pred = probs.argmax(0)
    region = foreground_region(pred, labels)
    assert region.sum() == ((pred > 0) | (labels > 0)).sum()
    p2 = probs.reshape(3, -1)[:, region.ravel()]
    assert ece(probs, labels, region) == pytest.approx(_ece_loop(p2, labels.ravel()[region.ravel()]))
    half = np.zeros_like(region)
    half[:3] = True
    merged = reliability(probs, labels, half).merge(reliability(probs, labels, ~half))
    assert merged.ece == pytest.approx(ece(probs, labels))


def test_brier_and_nll_by_hand() -> None:
    probs = np.array([[0.7, 0.2], [0.2, 0.5], [0.1, 0.3]])
    labels = np.array([0, 2])
    # voxel 0: (0.3^2 + 0.2^2 + 0.1^2) = 0.14; voxel 1: 0.2^2 + 0.5^2 + 0.7^2 = 0.78
    assert brier(probs, labels) == pytest.approx((0.14 + 0.78) / 2)
    assert nll(probs, labels) == pytest.approx(-(np.log(0.7) + np.log(0.3)) / 2)
    assert np.isnan(nll(probs, labels, np.zeros(2, bool)))
