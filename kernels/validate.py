"""Input checks shared by every kernel backend.

All public kernels accept "a mask" in many shapes of the same idea (bool, uint8, int or float
arrays, any memory order, possibly a strided view). The numba kernels want one layout only, a
C-contiguous ``uint8`` array with values 0/1, so we normalise here once instead of teaching every
kernel about dtypes and strides. User mistakes (wrong dimensionality, bad spacing, bad
connectivity) become :class:`tunepp_deploy.errors.DataError`, which is a ``ValueError``, with a
one-line message the CLI can print as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunepp_deploy.errors import DataError

CONNECTIVITIES = {2: (4, 8), 3: (6, 18, 26)}
EULER_CONNECTIVITIES = {2: (4, 8), 3: (6, 26)}


def is_cuda_array(x: Any) -> bool:
    """True for objects living in GPU memory (CuPy arrays, numba device arrays, torch CUDA tensors)."""
    return hasattr(x, "__cuda_array_interface__")


def is_cupy_array(x: Any) -> bool:
    """True for a ``cupy.ndarray`` without importing CuPy (it may be absent or unusable here)."""
    return type(x).__module__.split(".")[0] == "cupy" and hasattr(x, "__cuda_array_interface__")


def check_ndim(shape: Sequence[int], name: str = "mask", allowed: tuple[int, ...] = (2, 3)) -> int:
    """Return the dimensionality or raise a one-line DataError."""
    ndim = len(shape)
    if ndim not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise DataError(f"{name} must be {want}, got a {ndim}D array of shape {tuple(shape)}")
    return ndim


def as_mask(mask: Any, name: str = "mask", allowed: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Return a C-contiguous ``uint8`` 0/1 copy-or-view of ``mask`` (non-zero is foreground).

    NaN counts as non-zero, like ``mask != 0`` in NumPy, so float masks behave as users expect
    from ``astype(bool)``.
    """
    arr = np.asarray(mask)
    check_ndim(arr.shape, name, allowed)
    if arr.dtype == np.uint8 and arr.flags.c_contiguous and (arr.size == 0 or arr.max() <= 1):
        return arr
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr).view(np.uint8)
    return np.ascontiguousarray(arr != 0).view(np.uint8)


def as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Return a C-contiguous ``int32`` label volume; labels must be non-negative integers."""
    arr = np.asarray(labels)
    check_ndim(arr.shape, name)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr, dtype=np.int32)
    if arr.dtype.kind == "f":
        if arr.size and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
            raise DataError(f"{name} must hold integer label values, got non-integer floats")
    elif arr.dtype.kind not in "iu":
        raise DataError(f"{name} must be an integer label array, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise DataError(f"{name} must be non-negative, got minimum {arr.min()}")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise DataError(f"{name} has a label above int32 range: {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    """Return the voxel spacing as a tuple of ``ndim`` positive finite floats.

    ``None`` means unit spacing; a scalar applies to every axis (as in scipy's ``sampling``).
    """
    if spacing is None:
        return (1.0,) * ndim
    values = [spacing] * ndim if np.isscalar(spacing) else list(np.asarray(spacing, dtype=object).ravel())
    if len(values) != ndim:
        raise DataError(f"spacing must have {ndim} values for a {ndim}D mask, got {len(values)}")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise DataError(f"spacing values must be numbers, got {v!r}") from None
        if not math.isfinite(f) or f <= 0:
            raise DataError(f"spacing values must be finite and positive, got {tuple(values)}")
        out.append(f)
    return tuple(out)


def check_connectivity(connectivity: int, ndim: int, table: dict[int, tuple[int, ...]] | None = None) -> int:
    """Return ``connectivity`` if it is valid for ``ndim`` dimensions, else raise DataError."""
    allowed = (table or CONNECTIVITIES)[ndim]
    if connectivity not in allowed:
        raise DataError(f"connectivity must be one of {allowed} for a {ndim}D mask, got {connectivity}")
    return int(connectivity)


def as_3d(arr: np.ndarray) -> np.ndarray:
    """View a 2D array as a single-slice 3D one so the kernels only need a 3D code path."""
    return arr[None] if arr.ndim == 2 else arr
