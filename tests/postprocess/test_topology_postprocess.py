"""Topology post-processing baseline: component filters against cc3d, the prior repair on a phantom
(Betti numbers checked with our kernel and GUDHI), identity on correct input, other labels kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tunepp_deploy.kernels import betti_numbers, betti_per_label

from tunepp_deploy.data.phantom import PHANTOM_CLASSES, generate_case, write_phantom_dataset
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.metrics.overlap import dice_per_class
from tunepp_deploy.postprocess import (
    betti_prior_from_dataset,
    fill_enclosed_background,
    keep_largest_components,
    remove_small_components,
    topology_postprocess,
)

K = len(PHANTOM_CLASSES)


def _random_labels(seed: int, shape: tuple[int, int, int] = (18, 20, 16), n_labels: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, n_labels + 1, size=shape).astype(np.uint8)
    seg[rng.random(shape) < 0.55] = 0  # sparse enough for many small components
    return seg


@pytest.mark.parametrize("seed", range(4))
def test_remove_small_components_matches_cc3d(seed: int) -> None:
    cc3d = pytest.importorskip("cc3d")
    seg = _random_labels(seed)
    cc = cc3d.connected_components(seg, connectivity=26)  # multi-label: one id per label component
    sizes = np.bincount(cc.ravel())
    for k in (0, 1, 2, 3, 6, 40):
        expected = seg.copy()
        expected[(sizes[cc] < k) & (seg > 0)] = 0
        got = remove_small_components(seg, 5, k)
        assert got.dtype == seg.dtype
        np.testing.assert_array_equal(got, expected, err_msg=f"seed {seed}, k {k}")


@pytest.mark.parametrize("seed", range(3))
def test_keep_largest_components_matches_cc3d(seed: int) -> None:
    cc3d = pytest.importorskip("cc3d")
    seg = _random_labels(seed + 10)
    counts = {1: 0, 2: 1, 3: 3}  # label 4 untouched
    out = keep_largest_components(seg, 5, counts)
    np.testing.assert_array_equal(out == 4, seg == 4)
    assert not ((out != seg) & (out != 0)).any()  # only ever sets voxels to background
    for c, k in counts.items():
        cc = cc3d.connected_components(seg == c, connectivity=26)
        sizes = np.bincount(cc.ravel())[1:]
        kept_ids = np.unique(cc[out == c])
        kept_ids = kept_ids[kept_ids > 0]
        for i in range(1, sizes.size + 1):  # each component kept whole or dropped whole
            part = out[cc == i] == c
            assert part.all() or not part.any()
        assert kept_ids.size == min(k, sizes.size)
        dropped = np.setdiff1d(np.arange(1, sizes.size + 1), kept_ids)
        if kept_ids.size and dropped.size:
            assert sizes[kept_ids - 1].min() >= sizes[dropped - 1].max()


def _phantom() -> tuple[np.ndarray, dict[int, tuple[int, int, int]]]:
    case = generate_case(np.random.default_rng([3, 1]))
    prior = {i: tuple(case.betti[name]) for i, name in enumerate(PHANTOM_CLASSES) if i}
    return case.labels.copy(), prior


def gudhi_betti(mask: np.ndarray) -> tuple[int, ...]:
    gudhi = pytest.importorskip("gudhi")
    cells = np.pad(np.where(mask, 0.0, 1.0), 1, constant_values=1.0)
    cx = gudhi.CubicalComplex(top_dimensional_cells=cells)
    cx.persistence(homology_coeff_field=2, min_persistence=0)
    out = []
    for d in range(3):
        iv = cx.persistence_intervals_in_dimension(d)
        out.append(int(np.sum((iv[:, 0] <= 0.0) & (iv[:, 1] > 0.5))) if len(iv) else 0)
    return tuple(out)


def _inside(mask: np.ndarray) -> tuple[int, int, int]:
    """A voxel deep inside ``mask`` (largest distance to its border)."""
    from scipy.ndimage import distance_transform_edt

    d = distance_transform_edt(mask)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(d)), mask.shape))  # type: ignore[return-value]


def _corrupt(labels: np.ndarray) -> np.ndarray:
    """Two spurious fragments, a spurious cavity in the solid organ, an extra cavity in the hollow one."""
    pred = labels.copy()
    free = np.argwhere(labels == 0)
    far = free[np.linalg.norm(free - free.mean(0), axis=1).argsort()[-1]]  # a corner, away from organs
    z, y, x = (int(v) for v in far)
    zs, ys, xs = (slice(max(v - 2, 0), max(v - 2, 0) + 2) for v in (z, y, x))
    pred[zs, ys, xs] = 3  # spurious fragment of the hollow organ (8 voxels)
    centre = np.array(pred.shape) // 2
    pred[centre[0], centre[1] - 1 : centre[1] + 1, 1] = 4  # spurious fragment of the tube, 2 voxels
    solid = labels == 1
    cz, cy, cx = _inside(solid)
    pred[cz, cy, cx] = 0  # a one-voxel cavity in the solid organ
    shell = labels == 3
    wall = np.argwhere(shell)
    hz, hy, hx = (int(v) for v in wall[len(wall) // 2])
    hole = np.zeros_like(shell)
    for dz, dy, dx in np.argwhere(np.ones((3, 3, 3), bool)) - 1:
        q = (hz + dz, hy + dy, hx + dx)
        if shell[q] and all(shell[q[0] + a, q[1] + b, q[2] + c] for a, b, c in
                            [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]):
            hole[q] = True
            break
    assert hole.any(), "phantom wall too thin for a test cavity"
    pred[hole] = 0  # a second cavity inside the wall of the hollow organ
    return pred


def test_postprocess_restores_the_prior_on_a_corrupted_phantom() -> None:
    labels, prior = _phantom()
    designed = np.array([prior[c] for c in range(1, K)])
    np.testing.assert_array_equal(betti_per_label(labels, K - 1), designed)
    pred = _corrupt(labels)
    before = betti_per_label(pred, K - 1)
    assert before[0].tolist() == [prior[1][0], 0, 1]  # solid: extra cavity
    assert before[2].tolist() == [2, 0, 2]  # hollow: fragment + extra cavity
    assert before[3][0] == 2  # tube: fragment
    out = topology_postprocess(pred, K, prior)
    np.testing.assert_array_equal(betti_per_label(out, K - 1), designed)
    for c in range(1, K):
        assert gudhi_betti(out == c) == tuple(prior[c]), c
    np.testing.assert_array_equal(out, labels)  # here every corruption is undone exactly


def test_postprocess_is_identity_on_correct_input() -> None:
    labels, prior = _phantom()
    out = topology_postprocess(labels, K, prior)
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_allclose(dice_per_class(out, labels, K), 1.0)


def test_postprocess_never_overwrites_other_labels() -> None:
    labels, prior = _phantom()
    pred = _corrupt(labels)
    sub = {1: prior[1], 3: prior[3]}  # labels 2 and 4 without a prior
    out = topology_postprocess(pred, K, sub)
    changed = out != pred
    assert not (changed & (out != 0) & (pred != 0)).any()  # never label -> other label
    for c in (2, 4):
        np.testing.assert_array_equal(out == c, pred == c)
    assert set(np.unique(pred[changed & (out == 0)])) <= {1, 3}
    assert set(np.unique(out[changed & (pred == 0)])) <= {1, 3}


def test_cavity_holding_another_organ_is_not_filled() -> None:
    seg = np.zeros((15, 15, 15), np.uint8)
    seg[2:13, 2:13, 2:13] = 1
    seg[4:11, 4:11, 4:11] = 0  # cavity ...
    seg[6:9, 6:9, 6:9] = 2  # ... holding organ 2 with a background gap around it
    assert betti_numbers(seg == 1) == (1, 0, 1)
    np.testing.assert_array_equal(fill_enclosed_background(seg, 3, {1: 0}), seg)
    alone = seg.copy()
    alone[alone == 2] = 0
    filled = fill_enclosed_background(alone, 3, {1: 0})
    assert betti_numbers(filled == 1) == (1, 0, 0) and (filled[4:11, 4:11, 4:11] == 1).all()


def test_fill_keeps_the_largest_cavities_of_a_hollow_label() -> None:
    seg = np.zeros((20, 12, 12), np.uint8)
    seg[1:19, 1:11, 1:11] = 3
    seg[3:9, 3:9, 3:9] = 0  # the organ's cavity (216 voxels)
    seg[13, 5, 5] = 0  # a spurious one-voxel cavity
    seg[15:17, 5, 5] = 0  # a spurious two-voxel cavity
    out = fill_enclosed_background(seg, 4, {3: 1})
    assert betti_numbers(out == 3) == (1, 0, 1)
    assert (out[3:9, 3:9, 3:9] == 0).all() and out[13, 5, 5] == 3 and (out[15:17, 5, 5] == 3).all()


def test_missing_structure_is_not_invented() -> None:
    solid = np.zeros((12, 12, 12), np.uint8)
    solid[2:10, 2:10, 2:10] = 3  # a hollow organ predicted solid, with b0 prior 2
    np.testing.assert_array_equal(topology_postprocess(solid, 4, {3: (2, 0, 1)}), solid)


def test_betti_prior_from_dataset(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "ph", cases=1, seed=5)
    meta = json.loads((root / "dataset.json").read_text())
    expected = {i: tuple(meta["cases"]["phantom_000"]["betti"][n]) for i, n in enumerate(PHANTOM_CLASSES) if i}
    assert betti_prior_from_dataset(root, "phantom_000") == expected
    assert betti_prior_from_dataset(root / "dataset.json", "phantom_000", PHANTOM_CLASSES) == expected
    assert betti_prior_from_dataset(meta, "phantom_000", ["background", "hollow"]) == {1: (1, 0, 1)}
    assert expected[2] == (1, 1, 0) and expected[3] == (1, 0, 1) and expected[4] == (1, 0, 0)
    with pytest.raises(TuneppError, match="phantom_009"):
        betti_prior_from_dataset(meta, "phantom_009")
    with pytest.raises(TuneppError, match="liver"):
        betti_prior_from_dataset(meta, "phantom_000", ["background", "liver"])
    with pytest.raises(TuneppError, match="no such"):
        betti_prior_from_dataset(tmp_path / "nowhere", "phantom_000")


@pytest.mark.parametrize(
    ("call", "msg"),
    [
        (lambda s: remove_small_components(s, 3, -1), "min_voxels"),
        (lambda s: remove_small_components(s, 2, 3), "outside"),
        (lambda s: remove_small_components(s[0], 3, 3), "3-D"),
        (lambda s: remove_small_components(s.astype(np.float32), 3, 3), "integer"),
        (lambda s: topology_postprocess(s, 3, {5: (1, 0, 0)}), "label 5"),
        (lambda s: topology_postprocess(s, 3, {1: (1, 0)}), "three"),
    ],
)
def test_bad_input_is_a_clear_error(call, msg: str) -> None:  # type: ignore[no-untyped-def]
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[1, 1, 1] = 2
    with pytest.raises(TuneppError, match=msg):
        call(seg)
