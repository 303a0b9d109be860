r"""Structural-complexity weight maps for the topology loss (NumPy, CPU, no gradient).

    W = 1 + w_b * B + w_j * J + w_a * A

computed per volume from the ground-truth labels (B, J) and the detached arg-max prediction (A).
Distances are Euclidean in voxels, from the exact EDT of :func:`tunepp_deploy.kernels.distance_transform`
(components from :func:`tunepp_deploy.kernels.connected_components`).

Boundary proximity ``B``
    For every label l present, ``D_l = EDT(labels != l)`` is the distance to the nearest voxel of l
    (0 inside l). For a voxel x of label y(x), ``d1(x) = min_{l != y(x)} D_l(x)`` is the distance to
    the nearest voxel of another label; the boundary surface lies half a voxel before it, so

        B = exp(-max(d1 - 1/2, 0)^2 / (2 sigma^2))           (1 at the boundary, -> 0 inside)

    on both sides of every interface (background included).

Junctions ``J``
    ``d2(x)`` = the second-smallest ``D_l(x)`` over labels l != y(x) (infinite if fewer than two
    other labels are present). ``J = exp(-max(d2 - 1/2, 0)^2 / (2 sigma^2))`` is high where **two or
    more other labels** are close: where three structures meet, or in the thin gap between two organs
    where predictions merge. A plain boundary (one other label) has J ~ 0.

Anomalies ``A`` (1 on anomalous voxels, else 0), per foreground class c, with G = (labels == c),
P = (pred == c), components 26-connected, holes 6-connected (the dual connectivity):

    * spurious components: components of P that do not touch G;
    * missed components: components of G that P does not touch;
    * splits: the voxels of G \ P inside a G component that two or more P components touch (the gap
      that fragments the organ) — and merges: P \ G inside a P component touching two or more G
      components (the bridge);
    * false holes: cavities of P (3-D holes, and 2-D holes in slices along each axis, which catch
      tunnels) that G mostly (> 1/2) fills -> their voxels in G; and the dual, holes of G that P
      mostly fills -> their voxels in P (a closed tunnel/cavity).

Fixes the audit's map: its ``A = 1 / (EDT(foreground) + 1)`` is 1 on all background, so "anomaly"
was highest far from every organ; its J was a slow Python loop over 3x3x3 label counts; and nothing
compared the prediction with the ground truth. Here A marks exactly the voxels where the
prediction's topology differs from the labels'.
"""

from __future__ import annotations

import numpy as np

from tunepp_deploy.kernels import connected_components, distance_transform


def _gauss(d: np.ndarray, sigma: float) -> np.ndarray:
    r = np.maximum(d - 0.5, 0.0)
    return np.exp(-(r * r) / (2.0 * sigma * sigma)).astype(np.float32)


def boundary_junction_maps(labels: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``(B, J)`` for one 3-D label volume (module docstring), float32 in [0, 1]."""
    labels = np.asarray(labels)
    present = np.unique(labels)
    if present.size < 2:
        zero = np.zeros(labels.shape, np.float32)
        return zero, zero.copy()
    dists = np.stack([np.asarray(distance_transform(labels != lab), np.float32) for lab in present])
    dists[dists == 0] = np.inf  # a voxel's own label is not "another label"
    if present.size == 2:
        d1, d2 = dists.min(0), np.full(labels.shape, np.inf, np.float32)
    else:
        part = np.partition(dists, 1, axis=0)
        d1, d2 = part[0], part[1]
    return _gauss(d1, sigma), _gauss(d2, sigma)


def _components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    lab, n = connected_components(mask, connectivity=connectivity)
    return np.asarray(lab, np.int64), int(n)


def _untouched(lab: np.ndarray, n: int, other: np.ndarray) -> np.ndarray:
    """Voxels of components of ``lab`` that share no voxel with ``other``."""
    hits = np.bincount(lab[other], minlength=n + 1)
    bad = hits == 0
    bad[0] = False
    return bad[lab]


def _touching_several(lab: np.ndarray, n: int, other_lab: np.ndarray, n_other: int) -> np.ndarray:
    """Per component of ``lab``: does it share voxels with two or more components of ``other_lab``?"""
    both = (lab > 0) & (other_lab > 0)
    pairs = np.unique(lab[both] * (n_other + 1) + other_lab[both])
    count = np.bincount(pairs // (n_other + 1), minlength=n + 1)
    return count >= 2


def _enclosed(lab: np.ndarray, n: int, axes: tuple[int, ...]) -> np.ndarray:
    """Per component id (0..n), True where it touches none of the border faces of ``axes``
    (id 0, the foreground, is never enclosed)."""
    faces = [np.take(lab, i, axis=ax).ravel() for ax in axes for i in (0, -1)]
    inner = np.ones(n + 1, bool)
    inner[np.unique(np.concatenate(faces))] = False
    inner[0] = False
    return inner


def _holes(mask: np.ndarray) -> np.ndarray:
    """Holes of ``mask``: 3-D cavities plus 2-D holes of the slices along each axis (6/4-connected).

    A hole is a connected piece of the complement that does not reach the volume (slice) border.
    The per-slice holes are found with one 3-D labelling per axis: slices are interleaved with empty
    planes, so 6-connected components cannot cross from one slice to the next.
    """
    comp = ~mask
    holes = np.zeros(mask.shape, bool)
    lab, n = _components(comp, connectivity=6)
    if n:
        holes |= _enclosed(lab, n, axes=(0, 1, 2))[lab]
    for axis in range(3):
        sl = np.moveaxis(comp, axis, 0)
        if sl.shape[1] < 3 or sl.shape[2] < 3:
            continue
        spaced = np.zeros((2 * sl.shape[0] - 1, *sl.shape[1:]), bool)
        spaced[::2] = sl
        lab, n = _components(spaced, connectivity=6)
        if not n:
            continue
        holes |= np.moveaxis(_enclosed(lab, n, axes=(1, 2))[lab[::2]], 0, axis)
    return holes


def _filled_holes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Voxels of ``b`` inside holes of ``a`` whose connected piece ``b`` fills by more than half."""
    holes = _holes(a)
    if not holes.any():
        return holes
    lab, n = _components(holes, connectivity=6)
    size = np.bincount(lab.ravel(), minlength=n + 1)
    filled = np.bincount(lab[b], minlength=n + 1)
    ok = filled * 2 > size
    ok[0] = False
    return ok[lab] & b


def class_anomalies(labels: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    """Boolean map of the anomalies (module docstring) of foreground class ``c`` in one 3-D volume."""
    g, p = labels == c, pred == c
    out = np.zeros(labels.shape, bool)
    if not g.any() and not p.any():
        return out
    lab_g, n_g = _components(g)
    lab_p, n_p = _components(p)
    out |= _untouched(lab_p, n_p, g)  # spurious
    out |= _untouched(lab_g, n_g, p)  # missed
    if n_g and n_p:
        out |= _touching_several(lab_g, n_g, lab_p, n_p)[lab_g] & ~p  # split gaps
        out |= _touching_several(lab_p, n_p, lab_g, n_g)[lab_p] & ~g  # merge bridges
    out |= _filled_holes(p, g)  # the prediction has a hole the labels fill
    out |= _filled_holes(g, p)  # the prediction fills a real hole
    return out


def anomaly_map(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``A`` (module docstring) for one 3-D volume: float32, 1 on anomalous voxels."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    out = np.zeros(labels.shape, bool)
    for c in range(1, num_classes):
        out |= class_anomalies(labels, pred, c)
    return out.astype(np.float32)


def anomaly_components(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    """The anomalies as separate components: ``(ids, n)``, ``ids`` int64 with 0 = no anomaly and
    1..n one id per 26-connected anomalous piece of each class (a spurious fragment, a split's gap,
    a merge's bridge, a false hole...). What the component-level topology term charges per piece.

    A voxel anomalous for two classes keeps the id of the higher class (rare: it must be a voxel
    error for both).
    """
    labels, pred = np.asarray(labels), np.asarray(pred)
    ids = np.zeros(labels.shape, np.int64)
    n = 0
    for c in range(1, num_classes):
        a = class_anomalies(labels, pred, c)
        if not a.any():
            continue
        lab, k = _components(a)
        ids[a] = lab[a] + n
        n += k
    if n:  # overwritten pieces leave gaps in the id range: renumber densely
        present = np.unique(ids)
        remap = np.zeros(n + 1, np.int64)
        remap[present] = np.arange(present.size)
        ids, n = remap[ids], int(present.size - 1)
    return ids, n


def structure_weights(labels: np.ndarray, w_b: float, w_j: float, sigma: float) -> np.ndarray:
    """The label-only part ``1 + w_b B + w_j J`` of one volume (cacheable per case, then cropped)."""
    b, j = boundary_junction_maps(labels, sigma)
    return (1.0 + w_b * b + w_j * j).astype(np.float32)


def complexity_weights(
    labels: np.ndarray,
    pred: np.ndarray | None,
    num_classes: int,
    w_b: float,
    w_j: float,
    w_a: float,
    sigma: float,
    structure: np.ndarray | None = None,
) -> np.ndarray:
    """``W`` for a batch ``[B, D, H, W]`` of labels and arg-max predictions (None: no A term).

    ``structure`` may hold precomputed :func:`structure_weights` for the batch (same shape).
    """
    labels = np.asarray(labels)
    out = np.empty(labels.shape, np.float32)
    for i in range(labels.shape[0]):
        w = structure[i] if structure is not None else structure_weights(labels[i], w_b, w_j, sigma)
        if pred is not None and w_a > 0:
            w = w + w_a * anomaly_map(labels[i], pred[i], num_classes)
        out[i] = w
    return out


__all__ = [
    "anomaly_components",
    "anomaly_map",
    "boundary_junction_maps",
    "class_anomalies",
    "complexity_weights",
    "structure_weights",
]
