r"""Betti-matching error per label: topological features of prediction and truth matched in space.

The plain Betti error (:mod:`tunepp_deploy.metrics.topology`) compares counts, so a prediction
that misses the true organ and puts one spurious blob elsewhere scores 0. The Betti-matching error
of Stucki et al. (ICML 2023, "Topologically faithful image segmentation via induced matching of
persistence barcodes") counts the features of either side that have **no spatially corresponding
feature** on the other side; that prediction scores 2.

What is computed, per label c, with ``P = (pred == c)``, ``G = (true == c)`` and the comparison
image ``C = P ∪ G`` (the paper's comparison image for binary masks: its code takes the pointwise
``min`` of sublevel inputs ``1 - likelihood``, i.e. the union of foregrounds). Homology is that of
the union of closed voxel cubes (foreground 26-connected, background 6-connected, the convention of
:mod:`tunepp_deploy.kernels.betti`), over GF(2). The inclusions ``P ⊆ C`` and ``G ⊆ C`` induce
``ι_P : H_k(P) → H_k(C)`` and ``ι_G : H_k(G) → H_k(C)``. A feature of P is matched to one of G when
both are sent to the same feature of C; the number of matched pairs in dimension k is

    m_k = dim(im ι_P ∩ im ι_G)        (classes of C carried by a feature of P *and* one of G)

and the error is ``BM_c = sum_k (b_k(P) - m_k) + (b_k(G) - m_k)``. Per dimension:

* k = 0: ``m_0`` = number of components of C that contain a component of P and one of G. A split
  organ (two P pieces in one C component) scores 1, a spurious plus a missed component 2.
* k = 2: cavities are bounded 6-connected background components. By Alexander duality a cavity B
  of P is sent to the sum of the cavities of C inside B (zero when G fills B). ``m_2`` = number of
  connected groups of (P-cavity, C-cavity, G-cavity) incidences whose C-cavities all lie in a cavity
  of P and in one of G: a cavity shifted but overlapping matches (0), a moved cavity that does not
  overlap the true one scores 2 (it and the true cavity are both filled in C).
* k = 1: ``m_1 = rank ι_P + rank ι_G - dim(im ι_P + im ι_G)``. The ranks come from the persistence
  of the two-step filtration ``P ⊆ C`` (tunnels of P still alive in C; Cubical Ripser,
  T-construction, or GUDHI's cubical complex when cripser is not installed) and the sum from
  Mayer–Vietoris on ``C = P ∪ G``:
  ``dim(im ι_P + im ι_G) = b1(C) - b0(C) + b0(P) + b0(G) - b0(P ∩ G)``, where ``P ∩ G`` is the
  intersection of the closed cube unions (faces and edges where P and G voxels touch count), whose
  components are counted on the doubled cell grid. A torus predicted as a solid ball scores 1.

**Where this differs from the paper.** The paper matches barcode intervals of real-valued
likelihood maps through Bauer–Lesnick induced matchings; for 0/1 inputs every interval has the same
endpoints, so which of several equal intervals of C a feature is matched to is fixed by the
implementation's voxel-order tie-break. ``m_k`` above is the tie-free version: for components it is
the paper's count under any tie-break; for cavities and tunnels it is the paper's count whenever
each feature of P and of G lands on a single feature of C (the usual case), and otherwise the
dimension of what P and G provably share (the paper's voxel-order-dependent count can be higher).
Only counts are returned (no matched voxel pairs), and the error is per label, not on the union of
labels. The 0/1 masks are thresholded predictions, not likelihoods (the loss version of the paper
is not this metric). Longer discussion and worked cases: docs/topology_metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as graph_components

from tunepp_deploy.errors import DataError, TuneppError
from tunepp_deploy.kernels import betti_numbers, connected_components


@dataclass(frozen=True)
class BettiMatching:
    """Matched feature counts of prediction vs truth, per label (row i = label i + 1) and dimension.

    ``matched[i, k]`` is ``m_k`` of the module docstring; ``betti_pred`` / ``betti_true`` are the
    Betti numbers ``(b0, b1, b2)`` of each side, so the unmatched counts follow by subtraction.
    """

    matched: np.ndarray
    betti_pred: np.ndarray
    betti_true: np.ndarray

    @property
    def unmatched_pred(self) -> np.ndarray:
        """Features of the prediction with no counterpart in the truth (spurious), ``(L, 3)``."""
        return self.betti_pred - self.matched

    @property
    def unmatched_true(self) -> np.ndarray:
        """Features of the truth with no counterpart in the prediction (missed), ``(L, 3)``."""
        return self.betti_true - self.matched

    @property
    def per_dim(self) -> np.ndarray:
        """Betti-matching error per label and dimension, ``(L, 3)`` int64."""
        return self.unmatched_pred + self.unmatched_true

    @property
    def per_label(self) -> np.ndarray:
        """Betti-matching error per label, ``(L,)`` int64 (sum over dimensions)."""
        return self.per_dim.sum(axis=1)


def _check_pair(pred: np.ndarray, true: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise DataError(f"betti matching: pred and true differ in shape: {pred.shape} vs {true.shape}")
    if pred.ndim != 3:
        raise DataError(f"betti matching needs 3-D label volumes, got shape {pred.shape}")
    if int(num_classes) < 1:
        raise DataError(f"betti matching: num_classes must be >= 1, got {num_classes}")
    for name, arr in (("pred", pred), ("true", true)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise DataError(f"betti matching: {name} must hold integer labels, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= num_classes):
            raise DataError(
                f"betti matching: {name} labels span {int(arr.min())}..{int(arr.max())}, "
                f"outside 0..{num_classes - 1}"
            )
    return pred, true


def _crop_pad(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union with one voxel of background around it.

    Nothing is lost: outside the box both are background, and with the frame the one unbounded
    background component of any subset is the one that holds the frame.
    """
    box = ndi.find_objects((p | g).view(np.uint8))[0]
    return np.pad(p[box], 1), np.pad(g[box], 1)


def _doubled_closure(mask: np.ndarray) -> np.ndarray:
    """All cells (cubes, faces, edges, vertices) of the closed cubes of ``mask`` on the doubled grid.

    A cube at voxel ``i`` is cell ``2i + 1``; its faces are the cells within one step, so a 3x3x3
    dilation gives the closure. Two cells are in one component of the cell complex iff they are
    linked by 26-neighbours here (26-neighbour cells always share a face of both).
    """
    out = np.zeros(tuple(2 * s + 1 for s in mask.shape), bool)
    out[1::2, 1::2, 1::2] = mask
    return ndi.binary_dilation(out, structure=np.ones((3, 3, 3), bool))


def _surviving_tunnels(inner: np.ndarray, outer: np.ndarray) -> int:
    """``rank(H1(inner) → H1(outer))`` for ``inner ⊆ outer``: tunnels of inner still alive in outer.

    Persistence of the filtration inner (value 0) ⊆ outer (1) ⊆ whole box (2): a dimension-1 bar
    born at 0 that lives past 1 is a tunnel that outer does not fill.
    """
    if np.array_equal(inner, outer):
        return betti_numbers(inner)[1]
    values = np.where(inner, 0.0, np.where(outer, 1.0, 2.0))
    try:
        import cripser
    except ImportError:
        return _surviving_tunnels_gudhi(values)
    ph = np.asarray(cripser.computePH_T(np.ascontiguousarray(values), maxdim=1))
    if ph.size == 0:
        return 0
    ph = ph.reshape(-1, 9)
    return int(np.sum((ph[:, 0] == 1) & (ph[:, 1] < 0.5) & (ph[:, 2] > 1.5)))


def _surviving_tunnels_gudhi(values: np.ndarray) -> int:
    """The same count with GUDHI's cubical persistence (top-dimensional cells = T-construction)."""
    try:
        import gudhi
    except ImportError as exc:
        raise TuneppError(
            "betti matching of tunnels needs cripser or gudhi (pip install cripser); neither is installed"
        ) from exc
    cx = gudhi.CubicalComplex(top_dimensional_cells=values)
    cx.persistence(homology_coeff_field=2, min_persistence=-1)
    iv = cx.persistence_intervals_in_dimension(1)
    if len(iv) == 0:
        return 0
    return int(np.sum((iv[:, 0] < 0.5) & (iv[:, 1] > 1.5)))


def _match_components(p: np.ndarray, g: np.ndarray, c: np.ndarray) -> int:
    lab, n = connected_components(c, 26)
    lab = np.asarray(lab)
    in_p = np.bincount(lab[p], minlength=n + 1) > 0
    in_g = np.bincount(lab[g], minlength=n + 1) > 0
    return int(np.sum((in_p & in_g)[1:]))


def _match_cavities(p: np.ndarray, g: np.ndarray, c: np.ndarray) -> int:
    """``m_2``: connected (P-cavity, C-cavity, G-cavity) groups whose C-cavities are all covered."""
    lab_c, n_c = connected_components(~c, 6)
    lab_c = np.asarray(lab_c)
    outside_c = lab_c[0, 0, 0]
    if n_c <= 1:
        return 0
    lab_p, _ = connected_components(~p, 6)
    lab_g, _ = connected_components(~g, 6)
    lab_p, lab_g = np.asarray(lab_p), np.asarray(lab_g)
    ids, first = np.unique(lab_c.ravel(), return_index=True)
    keep = (ids > 0) & (ids != outside_c)
    first = first[keep]
    n_d = first.size
    host_p = lab_p.ravel()[first]  # the background component of P that holds each C-cavity
    host_g = lab_g.ravel()[first]
    cov_p = host_p != lab_p[0, 0, 0]  # ... and whether it is a cavity of P (bounded)
    cov_g = host_g != lab_g[0, 0, 0]
    # Graph on nodes [C-cavities | P-background comps | G-background comps]; an edge joins a
    # C-cavity to the cavity of P (of G) that holds it. A group counts when every C-cavity in it
    # is covered on both sides (module docstring).
    np_off, ng_off = n_d, n_d + int(lab_p.max()) + 1
    n_nodes = ng_off + int(lab_g.max()) + 1
    d_idx = np.arange(n_d)
    rows = np.concatenate([d_idx[cov_p], d_idx[cov_g]])
    cols = np.concatenate([np_off + host_p[cov_p], ng_off + host_g[cov_g]])
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n_nodes, n_nodes))
    _, comp = graph_components(graph, directed=False)
    comp_d = comp[:n_d]
    bad = np.zeros(int(comp.max()) + 1, bool)
    bad[comp_d[~(cov_p & cov_g)]] = True
    return int(np.sum(~bad[np.unique(comp_d)]))


def _match_tunnels(p: np.ndarray, g: np.ndarray, c: np.ndarray, bp: tuple[int, ...], bg: tuple[int, ...],
                   bc: tuple[int, ...]) -> int:
    if (bp[1] == 0 and bg[1] == 0) or bc[1] == 0:
        return 0
    r_p = _surviving_tunnels(p, c) if bp[1] else 0
    r_g = _surviving_tunnels(g, c) if bg[1] else 0
    if r_p == 0 or r_g == 0:
        return 0
    inter = _doubled_closure(p) & _doubled_closure(g)
    b0_inter = connected_components(inter, 26)[1] if inter.any() else 0
    span = bc[1] - bc[0] + bp[0] + bg[0] - b0_inter
    m = r_p + r_g - span
    if not 0 <= m <= min(r_p, r_g):  # pragma: no cover - would mean the homology above is wrong
        raise AssertionError(f"tunnel matching out of range: ranks {r_p}, {r_g}, span {span}")
    return m


def binary_betti_matching(pred_mask: np.ndarray, true_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(matched, betti_pred, betti_true)`` (each ``(3,)`` int64) for two 3-D binary masks."""
    p, g = np.asarray(pred_mask) != 0, np.asarray(true_mask) != 0
    if p.shape != g.shape or p.ndim != 3:
        raise DataError(f"betti matching needs two 3-D masks of one shape, got {p.shape} and {g.shape}")
    zero = np.zeros(3, np.int64)
    if not p.any() and not g.any():
        return zero, zero.copy(), zero.copy()
    p, g = _crop_pad(p, g)
    c = p | g
    bp, bg, bc = betti_numbers(p), betti_numbers(g), betti_numbers(c)
    matched = np.zeros(3, np.int64)
    if p.any() and g.any():
        matched[0] = _match_components(p, g, c)
        matched[1] = _match_tunnels(p, g, c, bp, bg, bc)
        matched[2] = _match_cavities(p, g, c) if (bp[2] and bg[2] and bc[2]) else 0
    return matched, np.asarray(bp, np.int64), np.asarray(bg, np.int64)


def betti_matching(pred: np.ndarray, true: np.ndarray, num_classes: int) -> BettiMatching:
    """Matched counts and Betti tables for labels ``1..num_classes-1`` of two 3-D label volumes."""
    pred, true = _check_pair(pred, true, num_classes)
    L = int(num_classes) - 1
    matched = np.zeros((L, 3), np.int64)
    bp = np.zeros((L, 3), np.int64)
    bt = np.zeros((L, 3), np.int64)
    for i in range(L):
        matched[i], bp[i], bt[i] = binary_betti_matching(pred == i + 1, true == i + 1)
    return BettiMatching(matched=matched, betti_pred=bp, betti_true=bt)


def betti_matching_error(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """Betti-matching error ``BM_c`` of labels ``1..num_classes-1`` (int64, module docstring)."""
    return betti_matching(pred, true, num_classes).per_label


def betti_matching_error_per_dim(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """Betti-matching error split by dimension: ``(L, 3)`` int64, columns components/tunnels/cavities."""
    return betti_matching(pred, true, num_classes).per_dim


__all__ = [
    "BettiMatching",
    "betti_matching",
    "betti_matching_error",
    "betti_matching_error_per_dim",
    "binary_betti_matching",
]
