"""Per-case metrics and their aggregation (definitions: :mod:`tunepp_deploy.metrics`).

Per case and label: Dice, IoU, HD95 (mm), Betti error and both Betti tables. Per case: mean Dice,
topological violation, and — when the inputs allow — calibration (ECE all voxels / foreground, Brier,
NLL; needs ``NAME_probs``), voxel-error ranking per uncertainty map (AUROC, AUPRC on the TAUS region
near the anatomy; AURC / E-AURC of the total map), TAUS per map, the seed's TAUS (Pearson r of the
total map with the complexity map), and the case score for triage. When probabilities exist, the
max-softmax uncertainty ``1 - max_k p_k`` is added as a single-pass baseline map named ``msp``.

Pooled over cases: reliability bins (a voxel-weighted reliability diagram / ECE), a voxel subsample
of (total uncertainty, error) for the risk-coverage curve and the histogram, the triage curve.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunepp_deploy.config.schema import LossConfig
from tunepp_deploy.evaluation.cases import LoadedEval
from tunepp_deploy.metrics.calibration import ReliabilityBins, brier, foreground_region, nll, reliability
from tunepp_deploy.metrics.distance import hd95_per_class
from tunepp_deploy.metrics.overlap import dice_per_class, iou_per_class
from tunepp_deploy.metrics.ranking import auprc, auroc, risk_coverage
from tunepp_deploy.metrics.taus import near_foreground, taus, taus_seed
from tunepp_deploy.metrics.topology import betti_tables, has_violation, topological_error_mask
from tunepp_deploy.metrics.triage import (
    DEFAULT_BUDGET,
    DEFAULT_DICE_THRESHOLD,
    case_failed,
    case_score,
    triage_curve,
)

POOL_PER_CASE = 20_000


@dataclass(frozen=True)
class EvalOptions:
    """What counts as a failed case, and the triage budget."""

    dice_threshold: float | None = DEFAULT_DICE_THRESHOLD
    betti_fails: bool = True
    budget: float = DEFAULT_BUDGET
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0


@dataclass
class CaseResult:
    """Everything computed for one case."""

    name: str
    labels: list[dict[str, Any]]
    case: dict[str, Any]
    reliability_all: ReliabilityBins | None = None
    reliability_fg: ReliabilityBins | None = None
    pool_unc: np.ndarray | None = None
    pool_err: np.ndarray | None = None
    worst_slice: int = 0


def _f(x: float) -> float | None:
    """JSON-safe float: NaN and inf become None (CSV writes them as text separately)."""
    return float(x) if math.isfinite(x) else None


def evaluate_case(c: LoadedEval, classes: list[str], opts: EvalOptions) -> CaseResult:
    """All metrics of one loaded case."""
    k = len(classes)
    pred, true = c.pred, c.truth
    dice = dice_per_class(pred, true, k)
    iou = iou_per_class(pred, true, k)
    hd = hd95_per_class(pred, true, k, c.spacing)
    be, bp, bt = betti_tables(pred, true, k)
    labels = [
        {"label": i, "name": classes[i], "dice": float(dice[i - 1]), "iou": float(iou[i - 1]),
         "hd95": float(hd[i - 1]), "betti_error": int(be[i - 1]), "betti_pred": bp[i - 1].tolist(),
         "betti_true": bt[i - 1].tolist()}
        for i in range(1, k)
    ]
    mean_dice = float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan")
    violation = has_violation(be)
    case: dict[str, Any] = {
        "mean_dice": mean_dice,
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "betti_error": int(be.sum()),
        "violation": violation,
        "failed": case_failed(mean_dice, be, opts.dice_threshold, opts.betti_fails),
    }
    res = CaseResult(c.name, labels, case)
    error = pred != true
    topo = topological_error_mask(pred, true, k)
    case["topological_error_voxels"] = int(topo.sum())
    case["error_voxels"] = int(error.sum())
    # the axial slice (last axis) with the most topological errors, else the most voxel errors
    score = topo.sum((0, 1)) if topo.any() else error.sum((0, 1))
    res.worst_slice = int(np.argmax(score)) if score.any() else pred.shape[2] // 2

    maps = dict(c.unc)
    if c.probs is not None:
        fg = foreground_region(pred, true)
        res.reliability_all = reliability(c.probs, true)
        res.reliability_fg = reliability(c.probs, true, fg)
        case.update({
            "ece": res.reliability_all.ece, "ece_fg": res.reliability_fg.ece,
            "brier": brier(c.probs, true), "brier_fg": brier(c.probs, true, fg),
            "nll": nll(c.probs, true), "nll_fg": nll(c.probs, true, fg),
        })
        maps["msp"] = 1.0 - c.probs.max(0)
    if maps:
        region = near_foreground(pred, true)
        for m, u in maps.items():
            case[f"auroc_{m}"] = auroc(u[region], error[region]) if region.any() else float("nan")
            case[f"auprc_{m}"] = auprc(u[region], error[region]) if region.any() else float("nan")
            case[f"taus_{m}"] = taus(u, pred, true, k, topo_errors=topo)
        main = c.main_map or next(iter(maps))  # the method's flag map, else msp (probabilities only)
        case["uncertainty_map"] = main
        u = maps[main]
        if region.any():
            rc = risk_coverage(u[region], error[region])
            case["aurc"], case["eaurc"] = rc.aurc, rc.eaurc
        case["taus_seed_pearson"] = taus_seed(u, pred, true, k, opts.loss)
        case["case_score"] = case_score(u, pred)
        rng = np.random.default_rng([opts.seed, zlib.crc32(c.name.encode())])
        idx = np.flatnonzero(region.ravel())
        if idx.size > POOL_PER_CASE:
            idx = rng.choice(idx, POOL_PER_CASE, replace=False)
        res.pool_unc, res.pool_err = u.ravel()[idx].astype(np.float64), error.ravel()[idx]
    return res


def _mean(values: list[float]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def aggregate(results: list[CaseResult], classes: list[str], opts: EvalOptions) -> dict[str, Any]:
    """metrics.json's summary: per label, overall, calibration, ranking, TAUS, triage."""
    per_label = []
    for i in range(1, len(classes)):
        rows = [r.labels[i - 1] for r in results]
        hd = [row["hd95"] for row in rows]
        per_label.append({
            "label": i, "name": classes[i],
            "dice": _mean([row["dice"] for row in rows]), "iou": _mean([row["iou"] for row in rows]),
            "hd95_mean": _mean(hd), "hd95_median": _f(float(np.median([h for h in hd if math.isfinite(h)])))
            if any(math.isfinite(h) for h in hd) else None,
            "hd95_infinite": sum(1 for h in hd if h == math.inf),
            "betti_error": _mean([float(row["betti_error"]) for row in rows]),
            "violation_share": float(np.mean([row["betti_error"] > 0 for row in rows])) if rows else None,
        })
    cases = [r.case for r in results]
    out: dict[str, Any] = {
        "cases": len(results),
        "classes": classes,
        "mean_dice": _mean([c["mean_dice"] for c in cases]),
        "mean_iou": _mean([c["mean_iou"] for c in cases]),
        "mean_betti_error_per_case": _mean([float(c["betti_error"]) for c in cases]),
        "mean_betti_error_per_label": _mean([row["betti_error"] for row in per_label]),
        "violation_share": float(np.mean([c["violation"] for c in cases])) if cases else None,
        "per_label": per_label,
        "failure_rule": {"dice_below": opts.dice_threshold, "any_betti_violation": opts.betti_fails},
        "failed_cases": [r.name for r in results if r.case["failed"]],
    }
    notes = []
    rel = [r for r in results if r.reliability_all is not None]
    if rel:
        pooled_all, pooled_fg = rel[0].reliability_all, rel[0].reliability_fg
        for r in rel[1:]:
            pooled_all = pooled_all.merge(r.reliability_all)  # type: ignore[union-attr, arg-type]
            pooled_fg = pooled_fg.merge(r.reliability_fg)  # type: ignore[union-attr, arg-type]
        out["calibration"] = {
            "ece_pooled": _f(pooled_all.ece), "ece_fg_pooled": _f(pooled_fg.ece),  # type: ignore[union-attr]
            **{f"{k}_mean": _mean([c.get(k) for c in cases]) for k in ("ece", "ece_fg", "brier", "brier_fg", "nll",
                                                                       "nll_fg")},
            "bins": 15, "foreground": "union of predicted and true foreground",
            "cases_with_probabilities": len(rel),
        }
    if len(rel) < len(results):
        notes.append(f"calibration metrics need NAME_probs.nii.gz: {len(results) - len(rel)} of {len(results)} "
                     "cases have none (ECE/Brier/NLL computed on the others only)" if rel else
                     "no NAME_probs.nii.gz: calibration metrics (ECE, Brier, NLL, reliability diagram) not computed")
    scored = [r for r in results if "case_score" in r.case]
    if scored:
        map_names = sorted({k[len("auroc_"):] for c in cases for k in c if k.startswith("auroc_")})
        ranking = {}
        for m in map_names:
            tv = [c.get(f"taus_{m}") for c in cases]
            ranking[m] = {
                "auroc": _mean([c.get(f"auroc_{m}") for c in cases]),
                "auprc": _mean([c.get(f"auprc_{m}") for c in cases]),
                "taus": _mean(tv),
                "taus_cases": sum(1 for v in tv if v is not None and math.isfinite(v)),
            }
        out["ranking"] = ranking
        out["ranking_region"] = "union of predicted and true foreground dilated by 2 voxels"
        main = scored[0].case["uncertainty_map"]
        out["taus"] = out["ranking"][main]["taus"]
        out["taus_map"] = main
        out["taus_seed_pearson"] = _mean([c.get("taus_seed_pearson") for c in cases])
        out["aurc"] = _mean([c.get("aurc") for c in cases])
        out["eaurc"] = _mean([c.get("eaurc") for c in cases])
        curve = triage_curve([r.case["case_score"] for r in scored], [r.case["failed"] for r in scored])
        out["triage"] = {
            "budget": opts.budget, "found_at_budget": _f(curve.at(opts.budget)), "failures": curve.failures,
            "cases": len(scored), "reviewed": curve.reviewed.tolist(), "found": curve.found.tolist(),
            "case_score": f"mean {main} uncertainty over the predicted foreground",
        }
    else:
        notes.append("no uncertainty maps (NAME_total.nii.gz ...) or probabilities: ranking, TAUS, risk-coverage "
                     "and triage not computed")
    out["notes"] = notes
    return out


__all__ = ["CaseResult", "EvalOptions", "aggregate", "evaluate_case"]
