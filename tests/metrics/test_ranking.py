"""AUROC / AUPRC against scikit-learn; risk-coverage, AURC and E-AURC by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tunepp_deploy.metrics.ranking import auprc, auroc, risk_coverage


@pytest.mark.parametrize("seed", range(5))
def test_auroc_auprc_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    err = rng.random(n) < 0.2
    score = np.round(rng.random(n) + 0.5 * err, 1)  # rounding makes many ties
    assert auroc(score, err) == pytest.approx(roc_auc_score(err, score), abs=1e-12)
    assert auprc(score, err) == pytest.approx(average_precision_score(err, score), abs=1e-12)


def test_degenerate_cases_are_nan() -> None:
    assert np.isnan(auroc([0.1, 0.2], [False, False]))
    assert np.isnan(auroc([0.1, 0.2], [True, True]))
    assert np.isnan(auprc([0.1, 0.2], [False, False]))


def test_aurc_five_voxels_by_hand() -> None:
    # uncertainty 0.1 0.2 0.3 0.4 0.5, errors at the 2nd and 5th most certain voxel
    score = np.array([0.3, 0.1, 0.5, 0.2, 0.4])
    err = np.array([False, False, True, True, False])
    # order by score: 0.1 ok, 0.2 err, 0.3 ok, 0.4 ok, 0.5 err
    # risk(k): 0/1, 1/2, 1/3, 1/4, 2/5
    rc = risk_coverage(score, err)
    expected_risk = [0.0, 1 / 2, 1 / 3, 1 / 4, 2 / 5]
    np.testing.assert_allclose(rc.risk, expected_risk)
    np.testing.assert_allclose(rc.coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    aurc = sum(expected_risk) / 5
    # oracle: errors last -> risk* = 0, 0, 0, 1/4, 2/5
    optimal = (1 / 4 + 2 / 5) / 5
    assert rc.aurc == pytest.approx(aurc)
    assert rc.eaurc == pytest.approx(aurc - optimal)
    assert rc.error_rate == pytest.approx(0.4)


def test_aurc_ties_use_expected_risk() -> None:
    # all scores equal: any order, expected risk at every coverage is the error rate
    rc = risk_coverage(np.zeros(4), np.array([True, False, False, False]))
    np.testing.assert_allclose(rc.risk, 0.25)
    # a perfect ranking has E-AURC 0
    assert risk_coverage(np.array([0.0, 0.1, 0.9]), np.array([False, False, True])).eaurc == pytest.approx(0.0)
