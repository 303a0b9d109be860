"""Betti-matching error: hand-counted cases, and the matched counts against brute-force GF(2) homology.

The oracle builds the cubical complex of each mask (closed voxel cubes) explicitly and computes
``dim(im ι_P ∩ im ι_G)`` in ``H_k(P ∪ G)`` by Gaussian elimination over GF(2); the Betti numbers
are checked against GUDHI. Neither shares code with the module under test.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from tunepp_deploy.kernels import betti_error

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.metrics.betti_matching import (
    betti_matching,
    betti_matching_error,
    betti_matching_error_per_dim,
    binary_betti_matching,
)

# ---------------------------------------------------------------- shapes


def _grid(shape: tuple[int, int, int], centre: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(float)
    return z - centre[0], y - centre[1], x - centre[2]


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], r: float) -> np.ndarray:
    z, y, x = _grid(shape, centre)
    return z * z + y * y + x * x < r * r


def torus(
    shape: tuple[int, int, int], centre: tuple[float, float, float], R: float = 7.0, r: float = 2.6
) -> np.ndarray:
    z, y, x = _grid(shape, centre)
    return (np.sqrt(x * x + y * y) - R) ** 2 + z * z < r * r


S = (30, 30, 60)


def test_identical_is_zero() -> None:
    lab = np.zeros(S, np.int16)
    lab[torus(S, (15, 15, 15))] = 2
    lab[ball(S, (15, 15, 45), 9) & ~ball(S, (15, 15, 45), 5)] = 3
    lab[2:6, 2:6, 30:40] = 1
    np.testing.assert_array_equal(betti_matching_error(lab, lab, 4), [0, 0, 0])
    res = betti_matching(lab, lab, 4)
    np.testing.assert_array_equal(res.matched, res.betti_true)
    np.testing.assert_array_equal(res.betti_true, [[1, 0, 0], [1, 1, 0], [1, 0, 1]])


def test_spurious_plus_missed_scores_two_where_betti_error_is_zero() -> None:
    true = np.zeros(S, np.uint8)
    true[5:12, 5:12, 5:12] = 1  # found
    true[5:12, 5:12, 40:47] = 1  # missed
    pred = np.zeros(S, np.uint8)
    pred[6:12, 5:12, 5:13] = 1
    pred[20:26, 20:26, 20:26] = 1  # spurious, touches no true voxel
    assert betti_error(pred, true, num_labels=1).per_label.tolist() == [0]
    assert betti_matching_error(pred, true, 2).tolist() == [2]
    res = betti_matching(pred, true, 2)
    assert res.unmatched_pred[0].tolist() == [1, 0, 0] and res.unmatched_true[0].tolist() == [1, 0, 0]


def test_torus_predicted_as_solid_ball_scores_one() -> None:
    true = torus(S, (15, 15, 20)).astype(np.uint8)
    pred = ball(S, (15, 15, 20), 10.5).astype(np.uint8)
    assert (pred >= true).all()  # the ball covers the torus: the tunnel is filled in P ∪ G
    assert betti_matching_error_per_dim(pred, true, 2).tolist() == [[0, 1, 0]]


def test_split_organ_scores_one() -> None:
    true = np.zeros(S, np.uint8)
    true[5:20, 5:20, 10:40] = 1
    pred = true.copy()
    pred[:, :, 24:26] = 0  # cut in two
    assert betti_matching_error_per_dim(pred, true, 2).tolist() == [[1, 0, 0]]


def test_merged_organ_scores_one() -> None:
    true = np.zeros(S, np.uint8)
    true[5:20, 5:20, 10:24] = 1
    true[5:20, 5:20, 26:40] = 1
    pred = true.copy()
    pred[10:12, 10:12, 24:26] = 1  # a bridge
    assert betti_matching_error(pred, true, 2).tolist() == [1]


def _hollow(centre_cavity: tuple[float, float, float], r_cavity: float) -> np.ndarray:
    return ball(S, (15, 15, 30), 12) & ~ball(S, centre_cavity, r_cavity)


def test_cavity_moved_without_overlap_scores_two() -> None:
    true = _hollow((15, 15, 24), 3.5).astype(np.uint8)
    pred = _hollow((15, 15, 36), 3.5).astype(np.uint8)
    assert not ((true == 0) & (pred == 0) & ball(S, (15, 15, 30), 12)).any()  # cavities disjoint
    assert betti_error(pred, true, num_labels=1).per_label.tolist() == [0]
    assert betti_matching_error_per_dim(pred, true, 2).tolist() == [[0, 0, 2]]


def test_cavity_shifted_with_overlap_scores_zero() -> None:
    true = _hollow((15, 15, 29), 4.5).astype(np.uint8)
    pred = _hollow((15, 15, 31), 4.5).astype(np.uint8)
    assert betti_matching_error(pred, true, 2).tolist() == [0]


def test_tunnel_shifted_matches_and_tunnel_elsewhere_does_not() -> None:
    true = torus(S, (15, 15, 18)).astype(np.uint8)
    near = torus(S, (15, 16, 19)).astype(np.uint8)
    assert betti_matching_error(near, true, 2).tolist() == [0]
    far = torus(S, (15, 15, 45)).astype(np.uint8)
    assert not (far & true).any()
    assert betti_matching_error_per_dim(far, true, 2).tolist() == [[2, 2, 0]]


def test_torus_pierced_ball_spurious_tunnel() -> None:
    true = ball(S, (15, 15, 30), 9).astype(np.uint8)
    pred = true.copy()
    pred[14:17, 14:17, :] = 0  # drill a tunnel through the ball
    assert betti_matching_error_per_dim(pred, true, 2).tolist() == [[0, 1, 0]]


def test_empty_and_absent_labels() -> None:
    true = np.zeros((8, 8, 8), np.uint8)
    true[2:5, 2:5, 2:5] = 1
    empty = np.zeros_like(true)
    assert betti_matching_error(empty, true, 3).tolist() == [1, 0]
    assert betti_matching_error(true, empty, 3).tolist() == [1, 0]
    assert betti_matching_error(empty, empty, 3).tolist() == [0, 0]


@pytest.mark.parametrize(
    ("pred", "true", "k", "msg"),
    [
        (np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8), 2, "shape"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), 2, "3-D"),
        (np.full((4, 4, 4), 3, np.uint8), np.zeros((4, 4, 4), np.uint8), 2, "outside"),
        (np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 4), np.uint8), 2, "integer"),
    ],
)
def test_bad_input_is_a_clear_error(pred: np.ndarray, true: np.ndarray, k: int, msg: str) -> None:
    with pytest.raises(TuneppError, match=msg):
        betti_matching_error(pred, true, k)


# ---------------------------------------------------------------- brute-force oracle


def _cells(mask: np.ndarray) -> dict[tuple[int, int, int], int]:
    """Cells of the closed cubes of ``mask`` on the doubled grid, mapped to their dimension."""
    out: dict[tuple[int, int, int], int] = {}
    for z, y, x in zip(*np.nonzero(mask), strict=True):
        for dz, dy, dx in itertools.product(range(3), repeat=3):
            q = (2 * int(z) + dz, 2 * int(y) + dy, 2 * int(x) + dx)
            out[q] = sum(c % 2 for c in q)
    return out


def _boundary(q: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    faces = []
    for a in range(3):
        if q[a] % 2:
            for s in (-1, 1):
                f = list(q)
                f[a] += s
                faces.append(tuple(f))
    return faces


def _rank2(m: np.ndarray) -> int:
    """Rank over GF(2) of a 0/1 matrix (rows are vectors)."""
    m = m.astype(bool).copy()
    rank = 0
    for col in range(m.shape[1]):
        piv = np.nonzero(m[rank:, col])[0]
        if piv.size == 0:
            continue
        p = rank + piv[0]
        m[[rank, p]] = m[[p, rank]]
        rows = np.nonzero(m[:, col])[0]
        rows = rows[rows != rank]
        m[rows] ^= m[rank]
        rank += 1
        if rank == m.shape[0]:
            break
    return rank


def _kernel2(m: np.ndarray) -> np.ndarray:
    """Basis (rows) of the GF(2) null space of ``x -> x @ m`` (x a row vector over m's rows)."""
    n = m.shape[0]
    aug = np.concatenate([m.astype(bool), np.eye(n, dtype=bool)], axis=1)
    rank = 0
    for col in range(m.shape[1]):
        piv = np.nonzero(aug[rank:, col])[0]
        if piv.size == 0:
            continue
        p = rank + piv[0]
        aug[[rank, p]] = aug[[p, rank]]
        rows = np.nonzero(aug[:, col])[0]
        rows = rows[rows != rank]
        aug[rows] ^= aug[rank]
        rank += 1
    return aug[rank:, m.shape[1] :]


def oracle_matching(p: np.ndarray, g: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """``(m_k, b_k(P), b_k(G))`` for k = 0, 1, 2 by explicit chain complexes over GF(2)."""
    cc = _cells(p | g)
    cp, cg = _cells(p), _cells(g)
    by_dim = {k: sorted(q for q, d in cc.items() if d == k) for k in range(4)}
    index = {k: {q: i for i, q in enumerate(by_dim[k])} for k in range(4)}

    def bmat(k: int, cells: list[tuple[int, int, int]]) -> np.ndarray:
        """Boundary of the given k-cells as rows over all (k-1)-cells of C."""
        m = np.zeros((len(cells), max(len(by_dim[k - 1]), 1)), bool) if k else np.zeros((len(cells), 1), bool)
        if k:
            for r, q in enumerate(cells):
                for f in _boundary(q):
                    m[r, index[k - 1][f]] = True
        return m

    def cycles(k: int, sub: dict[tuple[int, int, int], int]) -> np.ndarray:
        cells = [q for q in by_dim[k] if q in sub]
        z = _kernel2(bmat(k, cells))  # combinations of sub's k-cells with zero boundary
        full = np.zeros((z.shape[0], len(by_dim[k])), bool)
        cols = [index[k][q] for q in cells]
        full[:, cols] = z
        return full

    def betti(k: int, sub: dict[tuple[int, int, int], int]) -> int:
        z = cycles(k, sub).shape[0]
        up = [q for q in by_dim[k + 1] if q in sub] if k < 3 else []
        return z - (_rank2(bmat(k + 1, up)) if up else 0)

    m_out, bp_out, bg_out = [], [], []
    for k in range(3):
        bc = bmat(k + 1, by_dim[k + 1]) if by_dim[k + 1] else np.zeros((0, len(by_dim[k])), bool)
        zp, zg = cycles(k, cp), cycles(k, cg)
        rb = _rank2(bc)
        rp = _rank2(np.concatenate([zp, bc])) - rb
        rg = _rank2(np.concatenate([zg, bc])) - rb
        rs = _rank2(np.concatenate([zp, zg, bc])) - rb
        m_out.append(rp + rg - rs)
        bp_out.append(betti(k, cp))
        bg_out.append(betti(k, cg))
    return m_out, bp_out, bg_out


def gudhi_betti(mask: np.ndarray) -> list[int]:
    gudhi = pytest.importorskip("gudhi")
    cells = np.pad(np.where(mask, 0.0, 1.0), 1, constant_values=1.0)
    cx = gudhi.CubicalComplex(top_dimensional_cells=cells)
    cx.persistence(homology_coeff_field=2, min_persistence=0)
    out = []
    for d in range(3):
        iv = cx.persistence_intervals_in_dimension(d)
        out.append(int(np.sum((iv[:, 0] <= 0.0) & (iv[:, 1] > 0.5))) if len(iv) else 0)
    return out


def test_oracle_on_hand_cases() -> None:
    """The oracle itself on cases counted by hand (so a wrong oracle cannot pass the random test)."""
    a = np.zeros((5, 5, 5), bool)
    a[1:4, 1:4, 1:4] = True
    a[2, 2, 2] = False  # hollow cube: (1, 0, 1)
    assert oracle_matching(a, a) == ([1, 0, 1], [1, 0, 1], [1, 0, 1])
    full = a.copy()
    full[2, 2, 2] = True
    assert oracle_matching(full, a) == ([1, 0, 0], [1, 0, 0], [1, 0, 1])
    ring = np.zeros((5, 5, 4), bool)
    ring[1:4, 1:4, 1] = True
    ring[2, 2, 1] = False  # a square ring: (1, 1, 0)
    other = np.zeros_like(ring)
    other[0, 0, 3] = True  # not even corner-adjacent to the ring
    assert oracle_matching(ring, other) == ([0, 0, 0], [1, 1, 0], [1, 0, 0])
    assert oracle_matching(ring, ring | other) == ([1, 1, 0], [1, 1, 0], [2, 1, 0])
    disc = ring.copy()
    disc[2, 2, 1] = True
    assert oracle_matching(ring, disc) == ([1, 0, 0], [1, 1, 0], [1, 0, 0])


@pytest.mark.parametrize("seed", range(6))
def test_matching_matches_brute_force_homology(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(4):
        shape = (5, 5, 4)
        p = rng.random(shape) < rng.uniform(0.35, 0.75)
        g = rng.random(shape) < rng.uniform(0.35, 0.75)
        if rng.random() < 0.5:  # correlated pairs, as predictions and truths are
            g = p.copy()
            flip = rng.random(shape) < 0.15
            g[flip] = ~g[flip]
        matched, bp, bg = binary_betti_matching(p, g)
        m_o, bp_o, bg_o = oracle_matching(p, g)
        assert bp.tolist() == bp_o == gudhi_betti(p), seed
        assert bg.tolist() == bg_o == gudhi_betti(g), seed
        assert matched.tolist() == m_o, (seed, bp_o, bg_o)
        assert binary_betti_matching(g, p)[0].tolist() == m_o  # symmetric in pred and truth
        assert (matched <= np.minimum(bp, bg)).all()  # so BM >= BE in every dimension


@pytest.mark.parametrize("seed", range(3))
def test_cavity_matching_matches_brute_force_homology(seed: int) -> None:
    """Blocks riddled with cavities that partly overlap, split and merge between the two sides."""
    rng = np.random.default_rng(200 + seed)
    hits = 0
    for _ in range(3):
        p = np.zeros((7, 7, 5), bool)
        p[1:-1, 1:-1, 1:-1] = True
        g = p.copy()
        p[2:-2, 2:-2, 2:-2] &= rng.random((3, 3, 1)) > 0.4
        g[2:-2, 2:-2, 2:-2] &= rng.random((3, 3, 1)) > 0.4
        matched, _bp, _bg = binary_betti_matching(p, g)
        assert matched.tolist() == oracle_matching(p, g)[0], seed
        hits += int(matched[2] > 0)
    assert hits > 0  # the draw really exercised matched cavities


def test_tunnel_ranks_without_cripser_use_gudhi(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both persistence back ends give the same matching (cripser is an optional dependency)."""
    pytest.importorskip("gudhi")
    rng = np.random.default_rng(42)
    cases = [(torus(S, (15, 16, 19)), torus(S, (15, 15, 18))), (ball(S, (15, 15, 20), 10.5), torus(S, (15, 15, 20)))]
    for _ in range(6):
        p = rng.random((6, 6, 5)) < 0.6
        g = p.copy()
        flip = rng.random(p.shape) < 0.2
        g[flip] = ~g[flip]
        cases.append((p, g))
    with_cripser = [binary_betti_matching(p, g) for p, g in cases]
    # the draw has matched tunnels and tunnels filled by the other side
    assert any(m[1] > 0 for m, _, _ in with_cripser)
    assert any(m[1] < min(bp[1], bg[1]) for m, bp, bg in with_cripser)
    monkeypatch.setitem(sys.modules, "cripser", None)  # import cripser -> ImportError
    without = [binary_betti_matching(p, g)[0].tolist() for p, g in cases]
    assert without == [m.tolist() for m, _, _ in with_cripser]
