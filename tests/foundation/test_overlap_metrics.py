"""Dice / IoU against scikit-learn's f1 / jaccard."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, jaccard_score

from tunepp_deploy.metrics.overlap import dice_per_class, iou_per_class


def test_against_sklearn() -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, size=(9, 8, 7))
    p = np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, 4, size=t.shape))
    np.testing.assert_allclose(dice_per_class(p, t, 4), f1_score(t.ravel(), p.ravel(), labels=[1, 2, 3], average=None))
    expected = jaccard_score(t.ravel(), p.ravel(), labels=[1, 2, 3], average=None)
    np.testing.assert_allclose(iou_per_class(p, t, 4), expected)


def test_absent_class_is_nan() -> None:
    t = np.zeros((3, 3, 3), int)
    t[0] = 1
    d = dice_per_class(t, t, 3)
    assert d[0] == 1.0 and np.isnan(d[1])
