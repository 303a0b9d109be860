"""The flag-threshold measurement's parts against independent references (scikit-learn's ROC curve,
hand-built components)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from tunepp_deploy.experiments.flag_threshold import best_threshold, component_table, rates_at


def test_best_threshold_is_sklearns_youden_optimum() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        wrong = rng.random(60) < 0.3
        scores = rng.random(60) + 0.4 * wrong
        fpr, tpr, _ = roc_curve(wrong, scores)
        got = best_threshold(scores, wrong)
        assert abs(got["youden_j"] - float(np.max(tpr - fpr))) < 1e-12
        again = rates_at(scores, wrong, got["threshold"])
        assert abs(again["tpr"] - got["tpr"]) < 1e-12 and abs(again["fpr"] - got["fpr"]) < 1e-12


def test_component_table_finds_wrong_fragment() -> None:
    seg = np.zeros((10, 10, 10), np.int16)
    ref = np.zeros_like(seg)
    seg[1:5, 1:5, 1:5] = 1
    ref[1:5, 1:5, 1:5] = 1  # right
    seg[7:9, 7:9, 7:9] = 1  # a fragment where the reference has label 2: wrong
    ref[7:9, 7:9, 7:9] = 2
    seg[7, 1, 1] = 1  # touches nothing: a one-voxel fragment, background in the reference
    total = np.zeros(seg.shape, np.float32)
    total[7:9, 7:9, 7:9] = 0.4
    rows = sorted(component_table(seg, ref, {"total": total}), key=lambda r: -r["voxels"])
    assert [r["voxels"] for r in rows] == [64, 8, 1]
    assert [r["fragment"] for r in rows] == [False, True, True]
    assert [r["error"] for r in rows] == [0.0, 1.0, 1.0]
    assert abs(rows[1]["mean_total"] - 0.4) < 1e-6 and rows[0]["mean_total"] == 0.0
