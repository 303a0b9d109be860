"""Per-case metrics shared by every method of the comparison (definitions in :mod:`tunepp_deploy.metrics`).

For a case with mean probabilities ``p [K, ...]``, uncertainty ``u [...]`` and truth ``y``:
Dice and IoU (means over foreground classes; IoU because the variational seed reports it), summed
Betti error over labels, top-label ECE over all voxels and over the foreground (union of predicted
and true foreground), AUROC and AURC of ``u`` for voxel
errors (argmax != truth), the case score for triage (mean ``u`` over the predicted foreground), and
the saliency-fusion seed's calibration of the *uncertainty map itself* (``u_ece_fg``: ECE of the
confidence ``1 - norm(u)`` for argmax correctness over the same foreground region,
:func:`tunepp_deploy.methods.saliency.fusion.uncertainty_calibration`) — ECE/ECE fg judge the
probabilities, ``u_ece_fg`` judges the map, which is what the seed's "fusion helps" claim is about.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunepp_deploy.methods.saliency.fusion import uncertainty_calibration
from tunepp_deploy.metrics import (
    auroc,
    betti_error_per_label,
    case_failed,
    case_score,
    dice_per_class,
    ece,
    foreground_region,
    iou_per_class,
    risk_coverage,
    triage_curve,
)
from tunepp_deploy.metrics.triage import DEFAULT_BUDGET


def case_metrics(probs: np.ndarray, u: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every per-case number of the table for mean probabilities ``probs [K, ...]`` and map ``u [...]``."""
    k = probs.shape[0]
    pred = probs.argmax(0)
    err = pred != labels
    dice = float(np.nanmean(dice_per_class(pred, labels, k)))
    betti = np.asarray(betti_error_per_label(pred, labels, k))
    return {
        "dice": dice, "iou": float(np.nanmean(iou_per_class(pred, labels, k))), "betti_error": float(betti.sum()),
        "ece": ece(probs, labels), "ece_fg": ece(probs, labels, foreground_region(pred, labels)),
        "auroc": auroc(u, err) if err.any() and (~err).any() else float("nan"),
        "aurc": risk_coverage(u, err).aurc, "u_ece_fg": uncertainty_calibration(u, probs, labels)["fg_ece"],
        "case_score": case_score(u, pred), "failed": float(case_failed(dice, betti)),
    }


def summarise(per_case: list[dict[str, float]]) -> dict[str, Any]:
    """Means over cases plus the share of failed cases found when reviewing 25% (by case score)."""
    keys = ["dice", "iou", "betti_error", "ece", "ece_fg", "u_ece_fg", "auroc", "aurc"]
    out: dict[str, Any] = {k: float(np.nanmean([c[k] for c in per_case])) for k in keys}
    curve = triage_curve([c["case_score"] for c in per_case], [bool(c["failed"]) for c in per_case])
    out["triage_at_25"] = curve.at(DEFAULT_BUDGET)
    out["failed_cases"] = curve.failures
    return out


__all__ = ["case_metrics", "summarise"]
