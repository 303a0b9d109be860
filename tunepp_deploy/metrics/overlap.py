"""Overlap metrics between two label maps.

Dice_c = 2 |P_c ∩ T_c| / (|P_c| + |T_c|) and IoU_c = |P_c ∩ T_c| / |P_c ∪ T_c| for each foreground
class c. A class absent from both prediction and truth is NaN (undefined, so it is left out of
means with ``nanmean``) rather than 1 or 0, which would bias averages over cases.
"""

from __future__ import annotations

import numpy as np


def _counts(pred: np.ndarray, true: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    p = pred.ravel().astype(np.int64)
    t = true.ravel().astype(np.int64)
    inter = np.bincount(p[p == t], minlength=num_classes)[:num_classes]
    n_pred = np.bincount(p, minlength=num_classes)[:num_classes]
    n_true = np.bincount(t, minlength=num_classes)[:num_classes]
    return inter[1:], n_pred[1:], n_true[1:]


def dice_per_class(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of classes 1..num_classes-1 (float64, NaN where both are empty)."""
    inter, n_p, n_t = _counts(pred, true, num_classes)
    denom = (n_p + n_t).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / denom, np.nan)


def iou_per_class(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """IoU (Jaccard) of classes 1..num_classes-1 (float64, NaN where both are empty)."""
    inter, n_p, n_t = _counts(pred, true, num_classes)
    union = (n_p + n_t - inter).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)
