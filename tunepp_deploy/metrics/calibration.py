r"""Calibration of voxel class probabilities: ECE (15 equal-width bins), Brier score and NLL.

Inputs: ``probs`` ``[K, ...]`` (class probabilities per voxel, summing to 1 along axis 0) and
``labels`` ``[...]`` (true class per voxel); an optional boolean ``region`` ``[...]`` restricts every
metric to its voxels.

**ECE** (expected calibration error, top-label, L1): with confidence ``c = max_k p_k`` and
correctness ``a = [argmax_k p_k == y]``, voxels are put in M = 15 equal-width bins
``B_m = [(m-1)/M, m/M)`` for m < M and ``B_M = [(M-1)/M, 1]`` (the last bin is closed, so a
confidence of exactly 1 — common for saturated float32 softmax — lands in it), and

    ECE = sum_m (|B_m| / N) * | mean_{B_m} a - mean_{B_m} c |.

Empty bins contribute nothing. This is Guo et al. (2017)'s estimator; it equals torchmetrics'
``MulticlassCalibrationError(n_bins=15, norm="l1")`` except that torchmetrics gives confidences of
exactly 1.0 a sixteenth bin of their own (``torch.bucketize(right=True)``) — the tests check both
the agreement and this one difference.

**Foreground-only ECE**: the same over voxels in the union of the predicted and the true
foreground (``pred > 0 | labels > 0``). Several definitions are in use (true foreground only,
predicted foreground only, or MONAI's dropping of channel 0); the union is chosen because it
contains every foreground error — missed organ voxels (true only) and false positives (predicted
only) — while the all-voxel ECE is dominated by easy, confidently correct background.

**Brier** = mean over voxels of ``sum_k (p_k - [y == k])^2`` (multi-class form, in [0, 2]).
**NLL** = mean over voxels of ``-log max(p_y, 1e-12)`` (nats; the floor keeps a single p_y = 0 from
making it infinite).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15
_P_FLOOR = 1e-12


def _flatten(probs: np.ndarray, labels: np.ndarray, region: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs)
    y = np.asarray(labels)
    if p.shape[1:] != y.shape:
        raise ValueError(f"probabilities {p.shape} do not match labels {y.shape} (expected [K, *labels.shape])")
    p2 = p.reshape(p.shape[0], -1)
    y1 = y.reshape(-1).astype(np.int64)
    if region is not None:
        m = np.asarray(region, bool).reshape(-1)
        p2, y1 = p2[:, m], y1[m]
    if y1.size and (y1.min() < 0 or y1.max() >= p.shape[0]):
        raise ValueError(f"labels {int(y1.min())}..{int(y1.max())} outside the {p.shape[0]} probability channels")
    return p2, y1


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy (NaN in empty bins) and the ECE they give."""

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float

    def merge(self, other: ReliabilityBins) -> ReliabilityBins:
        """Pool two sets of voxels (e.g. cases) into one reliability diagram."""
        c = self.count + other.count
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = (np.nan_to_num(self.confidence) * self.count + np.nan_to_num(other.confidence) * other.count) / c
            acc = (np.nan_to_num(self.accuracy) * self.count + np.nan_to_num(other.accuracy) * other.count) / c
        return _finish(self.edges, c, conf, acc)


def _finish(edges: np.ndarray, count: np.ndarray, conf: np.ndarray, acc: np.ndarray) -> ReliabilityBins:
    n = count.sum()
    nz = count > 0
    ece = float((count[nz] / n * np.abs(acc[nz] - conf[nz])).sum()) if n else float("nan")
    return ReliabilityBins(edges, count, np.where(nz, conf, np.nan), np.where(nz, acc, np.nan), ece)


def confidence_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin top-label ``confidence`` with ``correct`` flags (module docstring's bins)."""
    c = np.asarray(confidence, np.float64).ravel()
    a = np.asarray(correct).ravel().astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=c, minlength=bins) / count
        acc = np.bincount(idx, weights=a, minlength=bins) / count
    return _finish(edges, count, conf, acc)


def reliability(
    probs: np.ndarray, labels: np.ndarray, region: np.ndarray | None = None, bins: int = ECE_BINS
) -> ReliabilityBins:
    """Reliability bins (and ECE) of ``probs`` against ``labels`` over ``region`` (default: all voxels)."""
    p, y = _flatten(probs, labels, region)
    if y.size == 0:
        edges = np.linspace(0.0, 1.0, bins + 1)
        z = np.zeros(bins)
        return ReliabilityBins(edges, z, np.full(bins, np.nan), np.full(bins, np.nan), float("nan"))
    pred = p.argmax(0)
    conf = p[pred, np.arange(y.size)]
    return confidence_bins(conf, pred == y, bins)


def ece(probs: np.ndarray, labels: np.ndarray, region: np.ndarray | None = None, bins: int = ECE_BINS) -> float:
    """Top-label L1 ECE with ``bins`` equal-width bins (module docstring); NaN on an empty region."""
    return reliability(probs, labels, region, bins).ece


def foreground_region(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The voxels of foreground-only ECE: union of predicted and true foreground."""
    return (np.asarray(pred) > 0) | (np.asarray(labels) > 0)


def brier(probs: np.ndarray, labels: np.ndarray, region: np.ndarray | None = None) -> float:
    """Multi-class Brier score, mean over voxels of sum_k (p_k - onehot_k)^2."""
    p, y = _flatten(probs, labels, region)
    if y.size == 0:
        return float("nan")
    sq = (p.astype(np.float64) ** 2).sum(0)
    py = p[y, np.arange(y.size)].astype(np.float64)
    return float((sq - 2.0 * py + 1.0).mean())


def nll(probs: np.ndarray, labels: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of the true class (nats, p floored at 1e-12)."""
    p, y = _flatten(probs, labels, region)
    if y.size == 0:
        return float("nan")
    py = p[y, np.arange(y.size)].astype(np.float64)
    return float(-np.log(np.maximum(py, _P_FLOOR)).mean())


__all__ = ["ECE_BINS", "ReliabilityBins", "brier", "confidence_bins", "ece", "foreground_region", "nll", "reliability"]
