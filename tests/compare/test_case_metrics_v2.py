"""compare/evaluate.py with the fidelity v2 definitions: the failure rule ignores fragments under 10 voxels
(not "any Betti error"), AUROC ranks errors near the foreground (scikit-learn as the oracle), and the
per-case rows are kept for re-scoring."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from tunepp_deploy.compare.evaluate import case_metrics, summarise
from tunepp_deploy.metrics.taus import near_foreground


def _case(fragments: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Truth: one 12^3 cube of class 1 in a 32^3 volume; prediction: the cube plus spurious cubes of class 1
    with the given voxel counts (as n x 1 x 1 rods, far from the organ)."""
    truth = np.zeros((32, 32, 32), np.int64)
    truth[4:16, 4:16, 4:16] = 1
    pred = truth.copy()
    for i, n in enumerate(fragments):
        pred[26 - 3 * i, 20 : 20 + n, 28] = 1
    return pred, truth


def _probs(pred: np.ndarray, conf: float = 0.9) -> np.ndarray:
    p = np.full((2, *pred.shape), 1 - conf)
    p[1][pred == 1] = conf
    p[0][pred == 0] = conf
    return p


def test_small_fragment_is_not_a_failure_but_two_real_ones_are() -> None:
    pred, truth = _case([3])
    m = case_metrics(_probs(pred), np.random.default_rng(0).random(pred.shape), truth)
    assert m["betti_error"] == 1 and m["betti_error_small_removed"] == 0 and m["failed"] == 0.0
    pred, truth = _case([11, 11])
    m = case_metrics(_probs(pred), np.random.default_rng(0).random(pred.shape), truth)
    assert m["betti_error_small_removed"] == 2 and m["failed"] == 1.0  # Betti error 2 > tolerance 1


def test_auroc_is_near_the_foreground_and_all_voxel_kept() -> None:
    pred, truth = _case([5])
    u = np.random.default_rng(1).random(pred.shape)
    u[pred != truth] += 0.5  # errors a little more uncertain
    m = case_metrics(_probs(pred), u, truth)
    region = near_foreground(pred, truth)
    err = pred != truth
    assert abs(m["auroc"] - roc_auc_score(err[region], u[region])) < 1e-9
    assert abs(m["auroc_all"] - roc_auc_score(err.ravel(), u.ravel())) < 1e-9
    s = summarise([m, m])
    assert s["cases"] == 2 and len(s["per_case"]) == 2 and s["per_case"][0]["auroc"] == m["auroc"]
