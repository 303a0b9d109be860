"""Per-case metrics shared by every method of the comparison (definitions in :mod:`tunepp_deploy.metrics`).

For a case with mean probabilities ``p [K, ...]``, uncertainty ``u [...]`` and truth ``y``:
Dice and IoU (means over foreground classes; IoU because the variational seed reports it), summed
Betti error over labels (also with predicted components under 10 voxels removed), top-label ECE over all
voxels and over the foreground (union of predicted and true foreground), AUROC and AURC of ``u`` for voxel
errors (argmax != truth) near the foreground (and over all voxels, as before), the method's max-softmax
AUROC as a baseline, the case score for triage (mean ``u`` over the predicted foreground), and
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
    case_score,
    dice_per_class,
    ece,
    foreground_region,
    iou_per_class,
    risk_coverage,
    triage_curve,
)
from tunepp_deploy.metrics.taus import ranking_metrics
from tunepp_deploy.metrics.triage import DEFAULT_BUDGET, FailureRule

#: The failure rule of the fidelity experiment v2 (docs/results/fidelity_v2.md), so triage is not all-fail.
RULE = FailureRule()


def case_metrics(probs: np.ndarray, u: np.ndarray, labels: np.ndarray, rule: FailureRule = RULE) -> dict[str, float]:
    """Every per-case number of the table for mean probabilities ``probs [K, ...]`` and map ``u [...]``.

    AUROC / AURC rank the voxel errors **near the foreground** (:func:`~tunepp_deploy.metrics.taus.ranking_metrics`),
    as the fidelity experiment v2 does; ``auroc_all`` / ``aurc_all`` over every voxel (the v1 definition) and
    ``auroc_msp`` (the method's own ``1 - max p``, the single-map baseline) sit beside them. A case fails by
    :class:`~tunepp_deploy.metrics.triage.FailureRule` (Dice < 0.8, or Betti error > 1 once predicted
    components under 10 voxels are removed), not by "any Betti error", under which every case failed.
    """
    from tunepp_deploy.postprocess.topology import remove_small_components

    k = probs.shape[0]
    pred = probs.argmax(0)
    err = pred != labels
    dice = float(np.nanmean(dice_per_class(pred, labels, k)))
    betti = np.asarray(betti_error_per_label(pred, labels, k))
    small = int(np.asarray(betti_error_per_label(remove_small_components(pred, k, rule.min_voxels), labels, k)).sum())
    near = ranking_metrics(u, pred, labels)
    return {
        "dice": dice, "iou": float(np.nanmean(iou_per_class(pred, labels, k))), "betti_error": float(betti.sum()),
        "betti_error_small_removed": float(small),
        "ece": ece(probs, labels), "ece_fg": ece(probs, labels, foreground_region(pred, labels)),
        "auroc": near["auroc"], "aurc": near["aurc"],
        "auroc_msp": ranking_metrics(1.0 - probs.max(0), pred, labels)["auroc"],
        "auroc_all": auroc(u, err) if err.any() and (~err).any() else float("nan"),
        "aurc_all": risk_coverage(u, err).aurc, "u_ece_fg": uncertainty_calibration(u, probs, labels)["fg_ece"],
        "case_score": case_score(u, pred), "failed": float(rule.failed(dice, small)),
    }


def summarise(per_case: list[dict[str, float]]) -> dict[str, Any]:
    """Means over cases plus the share of failed cases found when reviewing 25% (by case score), and the
    per-case rows themselves (so a table can be re-scored without rerunning the models)."""
    keys = ["dice", "iou", "betti_error", "betti_error_small_removed", "ece", "ece_fg", "u_ece_fg", "auroc", "aurc",
            "auroc_msp", "auroc_all", "aurc_all"]
    out: dict[str, Any] = {k: float(np.nanmean([c[k] for c in per_case])) for k in keys}
    curve = triage_curve([c["case_score"] for c in per_case], [bool(c["failed"]) for c in per_case])
    out["triage_at_25"] = curve.at(DEFAULT_BUDGET)
    out["failed_cases"] = curve.failures
    out["cases"] = len(per_case)
    out["per_case"] = [{k: float(v) for k, v in c.items()} for c in per_case]
    return out


__all__ = ["case_metrics", "summarise"]
