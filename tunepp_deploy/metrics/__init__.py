"""Segmentation and uncertainty metrics, each with its definition in the docstring.

One topic per module: ``overlap`` (Dice, IoU), ``distance`` (HD95), ``topology`` (Betti error,
violations, topological-error voxels), ``calibration`` (ECE, Brier, NLL), ``ranking`` (AUROC,
AUPRC, risk-coverage, AURC, E-AURC), ``taus`` (TAUS and the seed's Pearson-r TAUS) and ``triage``
(case-level failure triage and OOD detection).
"""

from tunepp_deploy.metrics.calibration import brier, ece, foreground_region, nll, reliability
from tunepp_deploy.metrics.distance import hd95, hd95_per_class
from tunepp_deploy.metrics.overlap import dice_per_class, iou_per_class
from tunepp_deploy.metrics.ranking import auprc, auroc, risk_coverage
from tunepp_deploy.metrics.taus import taus, taus_seed
from tunepp_deploy.metrics.topology import betti_error_per_label, topological_error_mask, violation_share
from tunepp_deploy.metrics.triage import case_failed, case_score, ood_auroc, triage_curve

__all__ = [
    "auprc",
    "auroc",
    "betti_error_per_label",
    "brier",
    "case_failed",
    "case_score",
    "dice_per_class",
    "ece",
    "foreground_region",
    "hd95",
    "hd95_per_class",
    "iou_per_class",
    "nll",
    "ood_auroc",
    "reliability",
    "risk_coverage",
    "taus",
    "taus_seed",
    "topological_error_mask",
    "triage_curve",
    "violation_share",
]
