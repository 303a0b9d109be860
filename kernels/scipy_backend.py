"""Reference backend built on scipy.ndimage and NumPy, so users can cross-check the fast ones.

It follows the same conventions as the other backends (including ``inf`` distances when a mask
has no zero voxel, where scipy itself returns distances to a phantom point outside the array), so
results are comparable value for value. Euler characteristics use the same 2x2x2 tables as the
numba backend, applied with vectorised NumPy (a histogram of block configurations).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from .euler_numba import euler_lut

_RANK = {6: 1, 18: 2, 26: 3}


def edt3(mask3: np.ndarray, spacing3: tuple[float, float, float]) -> np.ndarray:
    if mask3.size == 0:
        return np.zeros(mask3.shape, np.float32)
    if mask3.all():
        return np.full(mask3.shape, np.inf, np.float32)
    return ndi.distance_transform_edt(mask3, sampling=spacing3).astype(np.float32)


def label3(mask3: np.ndarray, connectivity: int, invert: bool = False) -> tuple[np.ndarray, int]:
    m = mask3 == 0 if invert else mask3 != 0
    labels, count = ndi.label(m, ndi.generate_binary_structure(3, _RANK[connectivity]), output=np.int32)
    return labels, int(count)


def euler3(mask3: np.ndarray, connectivity: int) -> int:
    p = np.pad(mask3 != 0, 1).astype(np.uint8)
    idx = np.zeros(tuple(s - 1 for s in p.shape), np.int64)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                sl = p[dz:dz + idx.shape[0], dy:dy + idx.shape[1], dx:dx + idx.shape[2]]
                idx |= sl.astype(np.int64) << (dx * 4 + dz * 2 + dy)
    hist = np.bincount(idx.ravel(), minlength=256)
    return int(hist @ euler_lut(connectivity)) // 8


def cavities3(mask3: np.ndarray, connectivity: int, planar: bool) -> int:
    from .backends import cavities_from_labels

    labels, count = label3(mask3, connectivity, invert=True)
    return cavities_from_labels(labels, count, planar)


def signed3(mask3: np.ndarray, spacing3: tuple[float, float, float]) -> np.ndarray:
    from .backends import signed_from_edts

    return signed_from_edts(edt3(mask3, spacing3), edt3((mask3 == 0).astype(np.uint8), spacing3), mask3)


def count3(mask3: np.ndarray, connectivity: int) -> int:
    return label3(mask3, connectivity)[1]
