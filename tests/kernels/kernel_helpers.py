"""Shared helpers for the kernel tests: test volumes and an independent Betti reference (GUDHI).

Imported by module name: pytest puts tests/kernels on sys.path (no __init__.py here).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi


def smooth_blobs(shape: tuple[int, ...], sigma: float, seed: int) -> np.ndarray:
    """Gaussian-smoothed white noise; thresholding it at different levels gives phantom-like blobs."""
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / f.std()  # unit variance, so thresholds mean the same at any sigma


def gudhi_betti(mask: np.ndarray) -> tuple[int, ...]:
    """Betti numbers of the union of closed foreground voxels, by persistent homology in GUDHI.

    Top-dimensional cells get 0 (foreground) or 1 (background), the volume is padded with
    background, and a class counts if it is born at 0 and still alive at 0.5. At level 1 the whole
    padded box (contractible) is present, so every finite bar dies there and only the dimension-0
    class of the box is infinite; it is one of the classes alive at 0.5 whenever the mask is not
    empty, and it is born at 1 (so not counted) when it is.
    """
    gudhi = pytest.importorskip("gudhi")
    cells = np.pad(np.where(mask != 0, 0.0, 1.0), 1, constant_values=1.0)
    cc = gudhi.CubicalComplex(top_dimensional_cells=cells)
    cc.persistence(homology_coeff_field=2, min_persistence=0)
    out = []
    for d in range(mask.ndim):
        iv = cc.persistence_intervals_in_dimension(d)
        out.append(int(np.sum((iv[:, 0] <= 0.0) & (iv[:, 1] > 0.5))) if len(iv) else 0)
    return tuple(out)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two label volumes describe the same partition (equal up to renumbering)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    fa, fb = a[a != 0].ravel(), b[b != 0].ravel()
    if fa.size == 0:
        return True
    pairs = np.unique(np.stack([fa, fb], 1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))
