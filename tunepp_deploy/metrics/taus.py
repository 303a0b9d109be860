r"""Topology-aware uncertainty scores: our TAUS (an AUROC) and the seed's TAUS (a Pearson r).

**TAUS** (topology-aware uncertainty score, as defined in this toolkit): the AUROC
(:func:`tunepp_deploy.metrics.ranking.auroc`) of a voxel uncertainty map ``u`` for separating

* positives: voxels of topological errors (:func:`tunepp_deploy.metrics.topology.topological_error_mask`:
  spurious and missed components, split gaps and merge bridges, holes/cavities present in only one
  of prediction and truth), from
* negatives: correctly predicted voxels (pred == truth) inside the region ``R`` = the union of
  predicted and true foreground dilated by 2 voxels (Euclidean ball of radius 2 voxels, via the
  EDT of the complement).

Voxel errors that do not change topology (a boundary one voxel off) are in neither set: the score
asks whether uncertainty singles out *structural* mistakes, not whether it is high on boundaries.
The region keeps the far background — trivially certain and correct — from inflating the AUROC.
0.5 = chance, 1 = every topological-error voxel is more uncertain than every correct voxel near
the anatomy. NaN when a case has no topological error (nothing to detect).

**Seed TAUS** (the audited public code's definition, reported under the seed's name): the Pearson
correlation ``r`` between ``u`` and the structural-complexity map ``C`` over all voxels. Here C is
the map the topology loss uses, :func:`tunepp_deploy.losses.complexity.complexity_weights`
``W = 1 + w_b B + w_j J + w_a A`` (Pearson r is unchanged by the constant 1 and by a global scale,
so this matches ``C = (w_b B + w_j J + w_a A) / max``). It rewards uncertainty that is high
wherever structure is complex (every boundary), whether or not the prediction is wrong there, so
it measures something different from TAUS; the seed's r = 0.78 is not comparable with an AUROC.
"""

from __future__ import annotations

import numpy as np

from tunepp_deploy.config.schema import LossConfig
from tunepp_deploy.kernels import distance_transform
from tunepp_deploy.losses.complexity import complexity_weights
from tunepp_deploy.metrics.ranking import auroc, risk_coverage
from tunepp_deploy.metrics.topology import topological_error_mask

TAUS_DILATION = 2.0


def near_foreground(pred: np.ndarray, true: np.ndarray, dilation: float = TAUS_DILATION) -> np.ndarray:
    """Union of predicted and true foreground dilated by ``dilation`` voxels (Euclidean)."""
    union = (np.asarray(pred) > 0) | (np.asarray(true) > 0)
    if not union.any():
        return union
    if union.all():
        return union
    return np.asarray(distance_transform(~union), np.float64) <= dilation


def ranking_metrics(score: np.ndarray, seg: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Voxel AUROC and AURC of ``score`` for the errors of ``seg`` within :func:`near_foreground` (98% of a
    phantom is trivially certain background: counted, it makes every map look excellent)."""
    region = near_foreground(seg, truth)
    err = (seg != truth)[region]
    if not region.any() or err.all() or not err.any():
        return {"auroc": float("nan"), "aurc": float("nan")}
    rc = risk_coverage(score[region], err)
    return {"auroc": auroc(score[region], err), "aurc": rc.aurc}


def taus(
    uncertainty: np.ndarray, pred: np.ndarray, true: np.ndarray, num_classes: int,
    dilation: float = TAUS_DILATION, topo_errors: np.ndarray | None = None,
) -> float:
    """TAUS of one case (module docstring); ``topo_errors`` may pass a precomputed error mask."""
    u = np.asarray(uncertainty, np.float64)
    pred, true = np.asarray(pred), np.asarray(true)
    if u.shape != pred.shape or pred.shape != true.shape:
        raise ValueError(f"shapes differ: uncertainty {u.shape}, pred {pred.shape}, truth {true.shape}")
    pos = topological_error_mask(pred, true, num_classes) if topo_errors is None else np.asarray(topo_errors, bool)
    neg = (pred == true) & near_foreground(pred, true, dilation)
    keep = pos | neg
    return auroc(u[keep], pos[keep])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays (flattened); NaN if either is constant."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def complexity_map(pred: np.ndarray, true: np.ndarray, num_classes: int, loss: LossConfig | None = None) -> np.ndarray:
    """The topology loss's complexity map ``W`` for one volume (labels = truth, A from ``pred``)."""
    lc = loss or LossConfig()
    return complexity_weights(
        np.asarray(true)[None], np.asarray(pred)[None], num_classes, lc.w_b, lc.w_j, lc.w_a, lc.topo_sigma
    )[0]


def taus_seed(
    uncertainty: np.ndarray, pred: np.ndarray, true: np.ndarray, num_classes: int,
    loss: LossConfig | None = None, complexity: np.ndarray | None = None,
) -> float:
    """The seed's TAUS: Pearson r between ``uncertainty`` and the complexity map, over all voxels."""
    c = complexity_map(pred, true, num_classes, loss) if complexity is None else complexity
    return pearson(uncertainty, c)


__all__ = ["TAUS_DILATION", "complexity_map", "near_foreground", "pearson", "ranking_metrics", "taus", "taus_seed"]
