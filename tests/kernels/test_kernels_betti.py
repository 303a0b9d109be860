"""Betti numbers against GUDHI's cubical persistence, on random blobs and hand-made shapes."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import gudhi_betti, smooth_blobs
from tunepp_deploy.kernels import betti_error, betti_numbers, betti_per_label

pytest.importorskip("gudhi")


def _grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (n - 1) / 2
    return np.mgrid[0:n, 0:n, 0:n] - c


def ball(n: int = 21, r: float = 7.5) -> np.ndarray:
    z, y, x = _grid(n)
    return x * x + y * y + z * z < r * r


def shell(n: int = 21) -> np.ndarray:
    return ball(n, 8.5) & ~ball(n, 5.5)


def torus(n: int = 25, R: float = 7.0, r: float = 2.6, shift: float = 0.0) -> np.ndarray:
    z, y, x = _grid(n)
    return (np.sqrt((x - shift) ** 2 + y * y) - R) ** 2 + z * z < r * r


def double_torus() -> np.ndarray:
    return torus(35, 7.0, 2.6, -6.5) | torus(35, 7.0, 2.6, 6.5)


def cube_frame(n: int = 12) -> np.ndarray:
    m = np.zeros((n, n, n), bool)
    e = [1, n - 2]
    for a in e:
        for b in e:
            m[a, b, 1:-1] = m[a, 1:-1, b] = m[1:-1, a, b] = True
    return m


def corner_balls() -> np.ndarray:
    m = np.zeros((12, 12, 12), bool)
    m[1:6, 1:6, 1:6] = True
    m[6:11, 6:11, 6:11] = True  # touches the first only through the corner (5,5,5)-(6,6,6)
    return m


SHAPES = {
    "ball": (ball(), (1, 0, 0)),
    "hollow shell": (shell(), (1, 0, 1)),
    "solid torus": (torus(), (1, 1, 0)),
    "double torus": (double_torus(), (1, 2, 0)),
    "cube frame": (cube_frame(), (1, 5, 0)),
    "corner-touching balls": (corner_balls(), (1, 0, 0)),
    "empty": (np.zeros((5, 6, 7), bool), (0, 0, 0)),
    "full": (np.ones((5, 6, 7), bool), (1, 0, 0)),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_known_shapes(name: str) -> None:
    mask, expected = SHAPES[name]
    assert betti_numbers(mask) == expected
    assert betti_numbers(mask, backend="scipy") == expected
    assert gudhi_betti(mask) == expected  # checks the reference itself on shapes we know


def test_corner_touching_is_26_not_6() -> None:
    from tunepp_deploy.kernels import connected_components

    m = corner_balls()
    assert connected_components(m, 26)[1] == 1 and connected_components(m, 6)[1] == 2
    # background: a one-voxel cavity seen only through a diagonal is still a cavity (6-conn)
    cube = np.ones((5, 5, 5), bool)
    cube[2, 2, 2] = False
    assert betti_numbers(cube) == (1, 0, 1)


@pytest.mark.parametrize("seed", range(4))
def test_random_blobs_match_gudhi(seed: int) -> None:
    f = smooth_blobs((22, 20, 18), 1.6 + 0.4 * seed, seed)
    for t in np.linspace(-1.5, 1.5, 13):
        mask = f > t
        assert betti_numbers(mask) == gudhi_betti(mask), (seed, t)


def test_random_noise_matches_gudhi() -> None:
    rng = np.random.default_rng(7)
    for p in (0.15, 0.3, 0.5, 0.7, 0.85):
        mask = rng.random((10, 11, 12)) < p
        assert betti_numbers(mask) == gudhi_betti(mask), p


def test_2d_matches_gudhi() -> None:
    f = smooth_blobs((48, 52), 2.0, seed=11)
    for t in np.linspace(-1.2, 1.2, 9):
        mask = f > t
        assert betti_numbers(mask) == gudhi_betti(mask), t
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert betti_numbers(ring) == (1, 1)


def test_betti_per_label_and_error() -> None:
    lab = np.zeros((30, 30, 30), np.int16)
    lab[:21, :21, :21][shell(21)] = 1  # label 1: hollow shell
    lab[22:28, 22:28, 22:28] = 3  # label 3: a cube; label 2 absent
    table = betti_per_label(lab)
    np.testing.assert_array_equal(table, [[1, 0, 1], [0, 0, 0], [1, 0, 0]])
    assert betti_per_label(lab, num_labels=4).shape == (4, 3)
    np.testing.assert_array_equal(betti_per_label(lab, num_labels=1), [[1, 0, 1]])
    pred = lab.copy()
    pred[:21, :21, :21][ball(21, 8.5)] = 1  # label 1 becomes a solid ball: b2 1 -> 0
    pred[2:5, 2:5, 2:5] = 2  # spurious label 2
    err = betti_error(pred, lab)
    np.testing.assert_array_equal(err.per_label, [1, 1, 0])
    assert err.mean == pytest.approx(2 / 3)
    assert err.as_dict()["per_label"] == [1, 1, 0]
    assert betti_error(lab, lab).mean == 0.0
    two_d = np.zeros((10, 10), np.uint8)
    two_d[2:8, 2:8] = 2
    two_d[4, 4] = 0
    np.testing.assert_array_equal(betti_per_label(two_d), [[0, 0], [1, 1]])
