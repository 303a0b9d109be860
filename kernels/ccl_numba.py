"""Connected-component labelling on the CPU with numba (two-pass union-find).

Why union-find rather than flood fill: one raster scan with a fixed set of "already visited"
neighbours touches each voxel once, needs no queue, and its memory (one int32 per voxel) doubles as
the output label volume.

Invariants that make the second pass trivial:

* Every union links the larger root under the smaller one, and path halving only ever shortens a
  chain, so ``parent[i] <= i`` at all times and each root is the smallest raster index of its
  component.
* Hence a single raster pass can turn parents into final labels in place: when we reach ``i`` its
  parent ``p < i`` has already been rewritten to its final label, so ``label[i] = label[p]``; and a
  voxel with ``parent[i] == i`` opens a new label. Labels therefore come out in raster order of
  each component's first voxel, the same numbering as ``scipy.ndimage.label``.

26-connectivity shortcut: if the left neighbour ``(z, y, x-1)`` is foreground, every backward
neighbour with ``dx in {-1, 0}`` is also a neighbour of that left voxel and was merged with it when
it was visited, so only the four ``dx = +1`` backward neighbours still need a union. For
6-connectivity the left voxel's root is likewise inherited and only "up" and "back" remain.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Backward (already visited in raster order) half of each neighbourhood, as (dz, dy, dx).
_BACK6 = np.array([(0, 0, -1), (0, -1, 0), (-1, 0, 0)], np.int64)
_BACK18 = np.array(
    [(dz, dy, dx) for dz in (-1, 0) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
     if (dz, dy, dx) < (0, 0, 0) and abs(dz) + abs(dy) + abs(dx) <= 2],
    np.int64,
)
_BACK26 = np.array(
    [(dz, dy, dx) for dz in (-1, 0) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) < (0, 0, 0)],
    np.int64,
)
_RIGHT26 = np.array([(0, -1, 1), (-1, -1, 1), (-1, 0, 1), (-1, 1, 1)], np.int64)
# 6-connectivity: with the left neighbour set, the up and back neighbours still need a union.
_RIGHT6 = np.array([(0, -1, 0), (-1, 0, 0)], np.int64)


@njit(cache=True, nogil=True, inline="always")
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        gp = parent[parent[i]]
        parent[i] = gp
        i = gp
    return i


@njit(cache=True, nogil=True, inline="always")
def _union(parent: np.ndarray, a: int, b: int) -> None:
    if parent[a] == parent[b]:  # common case: already in the same tree one step up
        return
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@njit(cache=True, nogil=True)
def _label(mask: np.ndarray, invert: bool, back: np.ndarray, right: np.ndarray, use_left: bool,
           out: np.ndarray) -> int:
    """Label ``mask != 0`` (or ``mask == 0`` when ``invert``) into ``out``; return the count."""
    Z, Y, X = mask.shape
    flat = mask.reshape(-1)
    parent = out.reshape(-1)
    fgv = 0 if invert else 1
    nb_ = back.shape[0]
    nr = right.shape[0]
    for z in range(Z):
        for y in range(Y):
            base = (z * Y + y) * X
            for x in range(X):
                i = base + x
                if (flat[i] != 0) != (fgv == 1):
                    continue
                parent[i] = i
                if use_left and x > 0 and (flat[i - 1] != 0) == (fgv == 1):
                    parent[i] = _find(parent, i - 1)
                    for k in range(nr):
                        zz = z + right[k, 0]
                        yy = y + right[k, 1]
                        xx = x + right[k, 2]
                        if zz < 0 or yy < 0 or yy >= Y or xx >= X:
                            continue
                        j = (zz * Y + yy) * X + xx
                        if (flat[j] != 0) == (fgv == 1):
                            _union(parent, i, j)
                    continue
                for k in range(nb_):
                    zz = z + back[k, 0]
                    yy = y + back[k, 1]
                    xx = x + back[k, 2]
                    if zz < 0 or yy < 0 or yy >= Y or xx < 0 or xx >= X:
                        continue
                    j = (zz * Y + yy) * X + xx
                    if (flat[j] != 0) == (fgv == 1):
                        _union(parent, i, j)
    count = 0
    for i in range(flat.size):
        if (flat[i] != 0) != (fgv == 1):
            parent[i] = 0
            continue
        p = parent[i]
        if p == i:
            count += 1
            parent[i] = count
        else:
            parent[i] = parent[p]
    return count


def _tables(connectivity: int) -> tuple[np.ndarray, np.ndarray, bool]:
    if connectivity == 26:
        return _BACK26, _RIGHT26, True
    if connectivity == 18:
        return _BACK18, _RIGHT26[:0], False
    return _BACK6, _RIGHT6, True


def label3(mask3: np.ndarray, connectivity: int, invert: bool = False) -> tuple[np.ndarray, int]:
    """Label a C-contiguous uint8 3D mask; 2D 4/8-connectivity maps to 3D 6/26 on one slice."""
    if mask3.size >= 2**31:
        raise ValueError("volumes with 2^31 voxels or more are not supported by the numba labeller")
    back, right, use_left = _tables(connectivity)
    out = np.empty(mask3.shape, np.int32)
    count = _label(mask3, invert, back, right, use_left, out)
    return out, int(count)
