"""Betti error on known shapes, TAUS and the seed's TAUS on constructed cases, triage and OOD by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tunepp_deploy.metrics.taus import near_foreground, pearson, taus, taus_seed
from tunepp_deploy.metrics.topology import (
    betti_error_per_label,
    betti_tables,
    topological_error_mask,
    violation_share,
)
from tunepp_deploy.metrics.triage import case_failed, case_score, ood_auroc, triage_curve

N = 24


def _grid() -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(N) - (N - 1) / 2] * 3, indexing="ij"))


def _ball(r: float) -> np.ndarray:
    return (_grid() ** 2).sum(0) <= r * r


def _torus(major: float, minor: float) -> np.ndarray:
    x, y, z = _grid()
    return (np.sqrt(x * x + y * y) - major) ** 2 + z * z <= minor * minor


def test_betti_error_known_shapes() -> None:
    ball = _ball(8).astype(np.uint8)
    shell = (_ball(9) & ~_ball(5)).astype(np.uint8)
    torus = _torus(7, 3).astype(np.uint8)
    _, bp, bt = betti_tables(ball, shell, 2)
    assert bp.tolist() == [[1, 0, 0]] and bt.tolist() == [[1, 0, 1]]
    assert betti_error_per_label(ball, shell, 2).tolist() == [1]   # missing cavity
    assert betti_error_per_label(torus, ball, 2).tolist() == [1]   # extra tunnel
    assert betti_error_per_label(torus, shell, 2).tolist() == [2]  # tunnel vs cavity
    two = ball.copy()
    two[0:2, 0:2, 0:2] = 1  # a spurious second component
    assert betti_error_per_label(two, ball, 2).tolist() == [1]
    # multi-label: label 2 absent in prediction counts its full Betti numbers
    lab = ball.copy()
    lab[0:3, 0:3, 0:3] = 2
    assert betti_error_per_label(ball, lab, 3).tolist() == [0, 1]
    assert violation_share([np.array([0, 0]), np.array([0, 2]), np.array([1, 0]), np.array([0, 0])]) == 0.5


def test_topological_error_mask_and_taus() -> None:
    true = _ball(6).astype(np.uint8)
    pred = true.copy()
    pred[1:4, 1:4, 1:4] = 1  # spurious component: 27 voxels
    pred[11:13, 11:13, 11:13] = 0  # a cavity inside the ball (8 voxels) that the truth fills
    boundary_err = np.zeros_like(true, bool)
    boundary_err[16, 15, 11] = True  # a one-voxel dent in the boundary (not topological)
    pred[boundary_err] = 1 - pred[boundary_err]
    topo = topological_error_mask(pred, true, 2)
    assert topo[1:4, 1:4, 1:4].all() and topo[11:13, 11:13, 11:13].all()
    assert topo.sum() == 27 + 8
    assert not topo[boundary_err].any()
    assert (pred[topo] != true[topo]).all()

    rng = np.random.default_rng(0)
    unc = rng.random(true.shape) * 0.5
    unc[topo] += 0.4  # topological errors more uncertain on average
    unc[boundary_err] = 5.0  # must be ignored by TAUS
    region = near_foreground(pred, true)
    neg = (pred == true) & region
    keep = topo | neg
    ref = roc_auc_score(topo[keep], unc[keep])
    assert taus(unc, pred, true, 2) == pytest.approx(ref, abs=1e-12)
    assert 0.5 < ref < 1.0
    assert np.isnan(taus(unc, true, true, 2))  # no topological error: nothing to detect


def test_near_foreground_is_radius_two() -> None:
    m = np.zeros((9, 9, 9), np.uint8)
    m[4, 4, 4] = 1
    reg = near_foreground(m, m)
    assert reg[4, 4, 6] and not reg[4, 4, 7] and reg[4, 5, 5] and not reg[4, 6, 6]


def test_seed_taus_is_pearson_with_complexity() -> None:
    true = (_ball(6).astype(np.uint8))
    pred = true.copy()
    rng = np.random.default_rng(1)
    u = rng.random(true.shape)
    from tunepp_deploy.metrics.taus import complexity_map

    c = complexity_map(pred, true, 2)
    assert taus_seed(u, pred, true, 2) == pytest.approx(np.corrcoef(u.ravel(), c.ravel())[0, 1])
    assert taus_seed(c * 3 + 1, pred, true, 2) == pytest.approx(1.0)
    assert np.isnan(pearson(np.ones(4), np.arange(4)))


def test_triage_curve_by_hand() -> None:
    scores = [0.9, 0.8, 0.1, 0.5, 0.3, 0.2, 0.7, 0.05]
    failed = [True, False, False, True, False, False, True, True]
    cur = triage_curve(scores, failed)
    # review order: 0.9 F, 0.8 ok, 0.7 F, 0.5 F, 0.3, 0.2, 0.1, 0.05 F  (4 failures)
    np.testing.assert_allclose(cur.found, [0, 0.25, 0.25, 0.5, 0.75, 0.75, 0.75, 0.75, 1.0])
    assert cur.at(0.25) == pytest.approx(0.25)  # 2 of 8 cases reviewed
    assert cur.at(0.3125) == pytest.approx(0.375)  # half-way between cases 2 and 3
    assert np.isnan(triage_curve([0.1, 0.2], [False, False]).at())
    assert triage_curve([0.5] * 4, [True, False, False, False]).at(0.5) == pytest.approx(0.5)


def test_failure_rule_score_and_ood() -> None:
    assert case_failed(0.7, [0, 0])
    assert not case_failed(0.9, [0, 0])
    assert case_failed(0.9, [0, 1])
    assert not case_failed(0.9, [0, 1], betti=False)
    assert not case_failed(0.5, [0], dice_threshold=None)
    u = np.array([[[0.1, 0.5]]])
    assert case_score(u, np.array([[[0, 1]]])) == pytest.approx(0.5)
    assert case_score(u, np.zeros((1, 1, 2))) == pytest.approx(0.3)
    assert ood_auroc([0.1, 0.2, 0.3], [0.25, 0.4]) == pytest.approx(roc_auc_score([0, 0, 0, 1, 1],
                                                                                  [0.1, 0.2, 0.3, 0.25, 0.4]))
