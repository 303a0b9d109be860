"""Per-case metrics of the fidelity experiment (v2): a deterministic pass (and its post-processed
segmentation) and an MC prediction, against the truth (definitions in docs/results/fidelity_v2.md).

Everything here reads arrays, not files. The uncertainty
scores are evaluated on the errors of the segmentation they come with (the MC maps on the MC
prediction, the deterministic pass's max-softmax / entropy on the deterministic prediction), each
over the voxels near its own foreground (the union of predicted and true foreground dilated by
``TAUS_DILATION`` voxels): 98% of a phantom is trivially certain background, and counting it would
make every map look excellent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tunepp_deploy.metrics.calibration import foreground_region, reliability
from tunepp_deploy.metrics.distance import hd95_per_class
from tunepp_deploy.metrics.overlap import dice_per_class
from tunepp_deploy.metrics.taus import ranking_metrics
from tunepp_deploy.metrics.topology import betti_error_per_label
from tunepp_deploy.metrics.triage import FailureRule, case_score


def _mean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def segmentation_metrics(seg: np.ndarray, truth: np.ndarray, num_classes: int, spacing: Sequence[float],
                         min_voxels: int) -> dict[str, float]:
    """Dice, HD95 (mm), Betti error (all / small components removed) and Betti-matching error."""
    from tunepp_deploy.metrics.betti_matching import betti_matching_error
    from tunepp_deploy.postprocess.topology import remove_small_components

    be = betti_error_per_label(seg, truth, num_classes)
    be_k = betti_error_per_label(remove_small_components(seg, num_classes, min_voxels), truth, num_classes)
    hd = hd95_per_class(seg, truth, num_classes, spacing)
    return {
        "dice": _mean(dice_per_class(seg, truth, num_classes)),
        "hd95": _mean(np.where(np.isfinite(hd), hd, np.nan)),
        "hd95_missing": int((~np.isfinite(hd)).sum()),
        "betti_error": int(be.sum()),
        "betti_error_small_removed": int(be_k.sum()),
        "betti_matching_error": int(np.asarray(betti_matching_error(seg, truth, num_classes)).sum()),
    }


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the class axis 0."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(0)


def _common_metrics(truth: np.ndarray, spacing: Sequence[float], num_classes: int, seg: np.ndarray,
                    probs: np.ndarray, rule: FailureRule) -> dict[str, Any]:
    """What both passes report: segmentation and topology, fg ECE, the max-softmax ranking, failure."""
    row: dict[str, Any] = segmentation_metrics(seg, truth, num_classes, spacing, rule.min_voxels)
    fg = foreground_region(seg, truth)
    row["ece_fg"] = reliability(probs, truth, fg).ece if fg.any() else float("nan")
    row.update({f"{k}_msp": v for k, v in ranking_metrics(1.0 - probs.max(0), seg, truth).items()})
    row["failed"] = rule.failed(row["dice"], row["betti_error_small_removed"])
    return row


def det_case_metrics(
    truth: np.ndarray,
    spacing: Sequence[float],
    num_classes: int,
    seg: np.ndarray,
    probs: np.ndarray,
    rule: FailureRule,
    prior: Mapping[int, tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """One case's deterministic pass: segmentation and topology, fg ECE, max-softmax / entropy
    rankings; with ``prior`` also the post-processing baseline on this segmentation."""
    row = _common_metrics(truth, spacing, num_classes, seg, probs, rule)
    row.update({f"{k}_entropy": v for k, v in ranking_metrics(entropy(probs), seg, truth).items()})
    if prior is not None:
        from tunepp_deploy.postprocess.topology import topology_postprocess

        pp = topology_postprocess(seg, num_classes, prior)
        row.update({f"pp_{k}": v for k, v in segmentation_metrics(pp, truth, num_classes, spacing,
                                                                   rule.min_voxels).items()})
    return row


def mc_case_metrics(
    truth: np.ndarray,
    spacing: Sequence[float],
    num_classes: int,
    seg: np.ndarray,
    probs: np.ndarray,
    total: np.ndarray,
    rule: FailureRule,
) -> dict[str, Any]:
    """One case's MC prediction: segmentation and topology, fg ECE, the total map's ranking (and the
    MC mean's max-softmax), the case score and the failure flag for triage / OOD."""
    row = _common_metrics(truth, spacing, num_classes, seg, probs, rule)
    row.update({f"{k}_total": v for k, v in ranking_metrics(total, seg, truth).items()})
    row["case_score"] = case_score(total, seg)
    return row


__all__ = ["FailureRule", "det_case_metrics", "entropy", "mc_case_metrics", "ranking_metrics", "segmentation_metrics"]
