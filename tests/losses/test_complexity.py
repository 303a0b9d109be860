"""Structural-complexity maps: boundaries > interior, junctions > plain boundaries, anomalies > correct."""

from __future__ import annotations

import numpy as np

from tunepp_deploy.losses import anomaly_map, boundary_junction_maps, complexity_weights, structure_weights


def _cube_scene() -> np.ndarray:
    lab = np.zeros((24, 24, 16), np.int64)
    lab[2:12, 4:20, 4:12] = 1
    lab[12:22, 4:12, 4:12] = 2  # touches label 1 along x = 12
    return lab


def test_boundary_higher_than_interior_and_far_background() -> None:
    lab = _cube_scene()
    b, _ = boundary_junction_maps(lab, sigma=2.0)
    assert b[2, 10, 8] > 0.9  # face voxel of label 1 (background neighbour)
    assert b[1, 10, 8] > 0.9  # the background voxel just outside
    assert b[7, 12, 8] < 0.25  # 4 voxels inside label 1: exp(-3.5^2 / 8) = 0.216
    assert b[23, 23, 15] < 0.01  # background far from every organ (the audit's A peaked here)


def test_junction_higher_than_plain_boundary() -> None:
    lab = _cube_scene()
    _, j = boundary_junction_maps(lab, sigma=2.0)
    w = structure_weights(lab, w_b=1.0, w_j=2.0, sigma=2.0)
    junction = (11, 4, 8)  # label 1, next to label 2 and to background
    plain = (11, 15, 8)  # label 1, next to label 2 only (interface between the two organs, interior)
    plain_bg = (2, 10, 8)  # label 1, next to background only
    assert j[junction] > 0.9 and j[plain] < 0.2 and j[plain_bg] < 0.2
    assert w[junction] > w[plain] + 1.0 and w[junction] > w[plain_bg] + 1.0


def test_anomalies_mark_spurious_missed_split_and_holes() -> None:
    lab = np.zeros((24, 24, 16), np.int64)
    lab[2:10, 2:10, 2:10] = 1
    lab[14:22, 14:22, 4:8] = 2
    pred = lab.copy()
    pred[18:21, 2:5, 10:13] = 1  # spurious component of class 1
    pred[2:4, 2:10, 2:10] = np.where(pred[2:4, 2:10, 2:10] == 1, 1, 0)  # unchanged (correct voxels)
    pred[5, 5, 5] = 0  # a cavity inside the class-1 prediction the labels fill
    pred[14:22, 14:22, 4:8] = 0  # class 2 missed entirely
    a = anomaly_map(lab, pred, num_classes=3)
    assert a[19, 3, 11] == 1  # spurious
    assert a[5, 5, 5] == 1  # false hole
    assert a[16, 16, 5] == 1  # missed component
    assert a[3, 3, 3] == 0 and a[0, 0, 0] == 0 and a[12, 12, 12] == 0  # correct voxels
    assert anomaly_map(lab, lab, 3).sum() == 0


def test_anomaly_split_gap_and_closed_tunnel() -> None:
    lab = np.zeros((20, 20, 12), np.int64)
    lab[2:18, 8:12, 4:8] = 1  # a bar
    pred = lab.copy()
    pred[9:11, 8:12, 4:8] = 0  # cut in two: the gap splits the organ
    a = anomaly_map(lab, pred, 2)
    assert a[9:11, 8:12, 4:8].all() and a[3, 9, 5] == 0
    ring = np.zeros((20, 20, 12), np.int64)
    ring[4:16, 4:16, 4:8] = 1
    ring[8:12, 8:12, :] = 0  # a tunnel through the block (a torus-like ring)
    filled = ring.copy()
    filled[8:12, 8:12, 4:8] = 1  # the prediction closes the tunnel
    a = anomaly_map(ring, filled, 2)
    assert a[8:12, 8:12, 4:8].all() and a[5, 5, 5] == 0


def test_weights_larger_on_spurious_component_than_on_correct_voxels() -> None:
    lab = _cube_scene()
    pred = lab.copy()
    pred[16:19, 16:19, 12:15] = 1
    w = complexity_weights(lab[None], pred[None], 3, w_b=1.0, w_j=2.0, w_a=3.0, sigma=2.0)[0]
    assert w[17, 17, 13] >= 4.0 - 1e-5
    assert w[17, 17, 13] > w[lab == 1].max() - 0.5  # at least as high as any correct boundary voxel
    assert w[7, 12, 8] < 1.5  # interior, correct
    assert w.min() >= 1.0
